"""A run whose run.output_dir is s3:// (a local S3 server, tests/conftest.py): each stage writes
in its machine's cache and publishes to the URI; the next stage, on a machine with an empty cache,
reads it back from there; a re-run skips against the URI; a bad bucket fails before any stage."""

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pyarrow import fs as pafs

from mortgagellm import manifest, routing
from mortgagellm.cluster import storage
from mortgagellm.config import load_recipe
from mortgagellm.pipelines.recipe import run_recipe, run_stage
from mortgagellm.training import inputs

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"corpus.synthetic_docs": 400, "corpus.synthetic_shards": 2, "corpus.seq_len": 128,
         "corpus.docs_per_shard": 150, "corpus.batch_docs": 100,
         "corpus.tasks.sft_per_task": 8, "corpus.tasks.dpo_pairs": 8,
         "corpus.tasks.routing_requests": 200, "corpus.tasks.eval_per_task": 8,
         "corpus.tasks.eval_qa_pairs": 8, "corpus.tasks.eval_routing": 40}


def machine(recipe_path, output_dir, cache):
    """The tiny recipe as one machine runs it: output_dir, with its own local cache."""
    return load_recipe(recipe_path, SMALL | {"run.output_dir": output_dir,
                                             "run.cache_dir": str(cache)})


def test_a_missing_bucket_fails_the_run_before_any_stage(tiny_recipe_path, s3_bucket, tmp_path):
    recipe = machine(tiny_recipe_path, "s3://mllm-no-such-bucket/run", tmp_path / "cache")
    with pytest.raises(storage.StorageError, match=r"s3://mllm-no-such-bucket/run is not usable "
                       r"as run.output_dir: writing the test file .*NO_SUCH_BUCKET"):
        run_recipe(recipe, first="pretrain")  # which reads bootstrap and corpus first
    assert not (tmp_path / "cache").exists()


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_corpus_on_s3_reads_bootstrap_from_the_uri_and_is_read_back(
        ray_cluster, tiny_recipe_path, tiny_pair, s3_bucket, tmp_path, caplog):
    run = f"{s3_bucket}/run"
    # The session's tiny bootstrap output, published as a machine that ran it on s3 would.
    local = Path(tiny_pair.output_path("base")).parent
    original = (local / "manifest.json").read_bytes()
    boot = manifest.publish(manifest.read(str(local)), local, f"{run}/bootstrap")
    (local / "manifest.json").write_bytes(original)  # publish keeps the URIs' one: undone
    assert boot.output_path("base") == f"{run}/bootstrap/base"
    assert storage.exists(f"{run}/bootstrap/base/config.json")

    # Another machine: its cache has no bootstrap output, so corpus fetches it from the URI.
    # `mortgagellm corpus` in a process of its own, whose embedded Ray has the S3 settings as a
    # cluster's nodes would: its Ray Data tasks write their work under the stage's URI.
    done = subprocess.run(
        [sys.executable, "-m", "mortgagellm", "corpus", str(tiny_recipe_path),
         f"--run.output_dir={run}", f"--run.cache_dir={tmp_path / 'b'}", "--ray.num_cpus=4",
         "--ray.object_store_mb=256", *(f"--{k}={v}" for k, v in SMALL.items())],
        capture_output=True, text=True, timeout=840, env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"-> {run}/corpus/staging" in done.stderr and f"-> {run}/corpus/shards" in done.stderr
    corpus = manifest.read(f"{run}/corpus")
    assert (tmp_path / "b" / "bootstrap" / "base" / "config.json").is_file()
    assert sorted(p.name for p in (tmp_path / "b" / "corpus").iterdir()) == [
        "duplicates.parquet", "manifest.json", "quarantine.parquet", "shards", "tasks",
        "tier1.json"]
    assert not storage.exists(f"{run}/corpus/staging") and not storage.exists(
        f"{run}/corpus/dedupe")  # removed when the stage is done
    assert corpus.inputs["base"] == boot.outputs["base"]  # named by its URI, same hash
    assert corpus.output_path("shards") == f"{run}/corpus/shards"
    files = sorted(s["file"] for s in corpus.metrics["shards"])
    fs, path = storage.filesystem(f"{run}/corpus/shards")
    assert sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path))) == files

    # The same corpus built with a local output_dir (the session's Ray) is the same, byte for
    # byte: the same fingerprint and the same hash of every output.
    shutil.copytree(local, tmp_path / "local" / "bootstrap")
    here = run_stage(load_recipe(tiny_recipe_path, SMALL | {
        "run.output_dir": str(tmp_path / "local")}), "corpus")
    assert here.fingerprint == corpus.fingerprint
    assert {k: v["sha256"] for k, v in here.outputs.items()} == {
        k: v["sha256"] for k, v in corpus.outputs.items()}

    # A third reads the corpus stage's outputs from the URI, as pretrain, sft and serve do.
    c = machine(tiny_recipe_path, run, tmp_path / "c")
    shards = Path(manifest.require_manifest(c, "corpus").output_path("shards"))
    assert shards == tmp_path / "c" / "corpus" / "shards"
    assert sorted(p.name for p in shards.glob("*.parquet")) == files
    assert manifest.sha256_path(shards) == corpus.outputs["shards"]["sha256"]
    assert routing.tier1_path(c) == tmp_path / "c" / "corpus" / "tier1.json"
    assert inputs.task_dir(c, "corpus", tmp_path / "unused") == tmp_path / "c" / "corpus" / "tasks"

    # A re-run from a fourth machine finds both stages done at the URI and skips them.
    with caplog.at_level(logging.INFO, logger="mortgagellm"):
        again = run_recipe(machine(tiny_recipe_path, run, tmp_path / "d"), last="corpus")
    assert [m.started_at for m in again] == [boot.started_at, corpus.started_at]
    assert caplog.text.count("up to date") == 2


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pretrain_on_s3_keeps_ray_train_checkpoints_at_the_uri(tiny_pair, s3_bucket, tmp_path):
    """`mortgagellm pretrain` in a process of its own, whose embedded Ray inherits the S3
    settings as a cluster's processes would have them (Ray Train's controller and workers open
    the bucket themselves): checkpoints go to the URI, the model is published there."""
    from transformers import AutoModelForCausalLM

    from mortgagellm.pipelines import pretrain
    from tests.pipelines.packing_fixture import write_corpus
    from tests.pipelines.test_pretrain import STEPS

    run, local = f"{s3_bucket}/run", tmp_path / "elsewhere"
    shutil.copytree(tiny_pair.output_path("base"), local / "bootstrap" / "base")
    manifest.write(str(local / "bootstrap"), manifest.Manifest(
        stage="bootstrap", fingerprint="test", config={},
        outputs={"base": manifest.artifact(local / "bootstrap" / "base")}))
    write_corpus(local, str(local / "bootstrap" / "base"), 300, 128)
    for stage in ("bootstrap", "corpus"):
        manifest.publish(manifest.read(str(local / stage)), local / stage, f"{run}/{stage}")
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(f"run:\n  output_dir: {run}\n  cache_dir: {tmp_path / 'a'}\n"
                           "ray:\n  num_cpus: 4\n  object_store_mb: 256\n")
    subprocess.run([sys.executable, "-m", "mortgagellm", "pretrain", str(recipe_path),
                    *(f"--{s}" for s in STEPS)], check=True, timeout=840,
                   env=os.environ | {"PYTHONPATH": str(ROOT)})

    m = manifest.read(f"{run}/pretrain")
    assert m.output_path("model") == f"{run}/pretrain/model"
    trial = f"dapt-{m.fingerprint[:12]}"
    assert storage.subdirs(f"{run}/pretrain/ray") == [trial]  # Ray Train's storage_path
    assert [n for n in storage.subdirs(f"{run}/pretrain/ray/{trial}")
            if n.startswith("checkpoint_")]
    assert not (tmp_path / "a" / "pretrain" / "ray").exists()
    other = load_recipe(recipe_path, [*STEPS, f"run.cache_dir={tmp_path / 'b'}"])
    model = Path(manifest.require_manifest(other, "pretrain").output_path("model"))
    assert model == tmp_path / "b" / "pretrain" / "model"
    assert AutoModelForCausalLM.from_pretrained(model).num_parameters() > 0
    assert pretrain.run(other).started_at == m.started_at  # done at the URI: skipped
