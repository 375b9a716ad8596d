"""pretrain on the shared local Ray cluster: loss falls, the export loads and models mortgage text
better than base, a worker failure and a relaunch both resume to the same weights, and bad set-ups
fail before any worker starts."""

import shutil

import pytest
import torch

from mortgagellm import manifest
from mortgagellm.config import ConfigError, load_recipe
from mortgagellm.pipelines import pretrain
from tests.pipelines.packing_fixture import write_corpus

STEPS = ["pretrain.max_steps=16", "pretrain.warmup_steps=2", "pretrain.checkpoint_every=8",
         "pretrain.log_every=4", "pretrain.deepspeed.micro_batch_size=4",
         "pretrain.deepspeed.lr=1e-3", "pretrain.domain_docs=10"]


def make_run(tmp_path, tiny_pair, seq_len=128, extra=()):
    """A run directory holding the tiny bootstrap output and a packed corpus."""
    run = tmp_path / "run"
    shutil.copytree(tiny_pair.output_path("base"), run / "bootstrap" / "base")
    manifest.write(str(run / "bootstrap"), manifest.Manifest(
        stage="bootstrap", fingerprint="test", config={},
        outputs={"base": manifest.artifact(run / "bootstrap" / "base")}))
    write_corpus(run, str(run / "bootstrap" / "base"), 300, seq_len)
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(f"run:\n  output_dir: {run}\n")
    return load_recipe(recipe_path, [*STEPS, *extra])


def weights(model_dir):
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(ray_cluster, tiny_pair, tmp_path_factory):
    recipe = make_run(tmp_path_factory.mktemp("dapt"), tiny_pair)
    return recipe, pretrain.run(recipe)


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_dapt_lowers_loss_and_domain_perplexity_and_exports(uninterrupted, tiny_pair):
    from transformers import AutoModelForCausalLM

    recipe, m = uninterrupted
    history = m.metrics["history"]
    assert [h["step"] for h in history] == [4, 8, 12, 16]
    assert history[-1]["loss"] < history[0]["loss"]
    assert m.metrics["perplexity_dapt"] < m.metrics["perplexity_base"]
    assert 0 <= history[-1]["data_wait_fraction"] < 1 and history[-1]["tokens_per_s"] > 0
    model_dir = m.output_path("model")
    AutoModelForCausalLM.from_pretrained(model_dir)  # loads as an ordinary HF model
    base = weights(manifest.Path(tiny_pair.output_path("base")))
    dapt = weights(manifest.Path(model_dir))
    assert base.keys() == dapt.keys()
    assert not torch.equal(base["model.layers.0.mlp.down_proj.weight"],
                           dapt["model.layers.0.mlp.down_proj.weight"])
    assert [p["node_id"] for p in m.metrics["placement"]]  # rank 0 recorded where it ran
    assert list((manifest.Path(recipe.run.output_dir) / "pretrain/tensorboard").glob("events.*"))


@pytest.mark.integration
def test_rerun_is_skipped(uninterrupted, caplog):
    recipe, m = uninterrupted
    caplog.set_level("INFO")
    assert pretrain.run(recipe).started_at == m.started_at
    assert "up to date" in caplog.text


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_worker_failure_resumes_to_the_uninterrupted_weights(uninterrupted, tiny_pair, tmp_path):
    """Rank 0 raises once at step 11; Ray restarts the group from the step-8 checkpoint."""
    _, clean = uninterrupted
    recipe = make_run(tmp_path, tiny_pair)
    m = pretrain.run(recipe, fail_at_step=11)
    assert m.metrics["history"][-1]["start_step"] == 8
    a = weights(manifest.Path(clean.output_path("model")))
    b = weights(manifest.Path(m.output_path("model")))
    for name in a:  # same data order, optimizer and RNG state: equal to float tolerance
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=0)


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_zero_0_resumes_and_trains_the_weights_zero_2_trains(uninterrupted, tiny_pair, tmp_path):
    """ZeRO 0 (the CPU recipes' stage: no flat fp32 copy of the weights, no gradient buckets)
    is the same optimisation: after a failure at step 11 it resumes from its step-8 checkpoint
    and exports the weights the uninterrupted ZeRO-2 run exports."""
    _, clean = uninterrupted
    recipe = make_run(tmp_path, tiny_pair, extra=["pretrain.deepspeed.zero_stage=0"])
    m = pretrain.run(recipe, fail_at_step=11)
    assert m.config["pretrain"]["deepspeed"]["zero_stage"] == 0
    assert m.metrics["history"][-1]["start_step"] == 8
    a = weights(manifest.Path(clean.output_path("model")))
    b = weights(manifest.Path(m.output_path("model")))
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=0)


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_relaunched_stage_continues_from_the_latest_checkpoint(uninterrupted, tiny_pair, tmp_path):
    _, clean = uninterrupted
    recipe = make_run(tmp_path, tiny_pair, extra=["pretrain.max_failures=0"])
    with pytest.raises(Exception, match="injected failure"):
        pretrain.run(recipe, fail_at_step=11)
    m = pretrain.run(recipe)  # the job, started again
    assert m.metrics["history"][-1]["start_step"] == 8
    a = weights(manifest.Path(clean.output_path("model")))
    b = weights(manifest.Path(m.output_path("model")))
    torch.testing.assert_close(b["lm_head.weight"], a["lm_head.weight"], atol=1e-6, rtol=0)

    # A changed config must not resume from (or crash on) the other run's checkpoints.
    changed = load_recipe(tmp_path / "recipe.yaml", [*STEPS, "pretrain.max_failures=0",
                                                      "pretrain.method=lora"])
    lora = pretrain.run(changed)
    assert lora.metrics["history"][-1]["start_step"] == 0
    runs = [p.name for p in (manifest.Path(changed.run.output_dir) / "pretrain" / "ray").iterdir()]
    assert runs == [f"dapt-{lora.fingerprint[:12]}"]


def test_sequence_longer_than_the_model_fails_before_workers(tiny_pair, tmp_path):
    recipe = make_run(tmp_path, tiny_pair, seq_len=512)  # tiny preset: 256 positions
    with pytest.raises(ValueError, match="exceeds the base model's max_position_embeddings 256"):
        pretrain.run(recipe)


def test_missing_shards_fail_before_workers(tiny_pair, tmp_path):
    recipe = make_run(tmp_path, tiny_pair)
    for shard in (manifest.Path(recipe.run.output_dir) / "corpus/shards").glob("*.parquet"):
        shard.unlink()
    with pytest.raises(FileNotFoundError, match="no packed shards"):
        pretrain.run(recipe)


def test_workers_get_absolute_shard_paths_from_a_relative_output_dir(tmp_path, monkeypatch):
    (tmp_path / "runs" / "shards").mkdir(parents=True)
    for name in ("shard-b.parquet", "shard-a.parquet"):
        (tmp_path / "runs" / "shards" / name).write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert pretrain.find_shards(manifest.Path("runs/shards")) == [
        str(tmp_path / "runs" / "shards" / n) for n in ("shard-a.parquet", "shard-b.parquet")]


def test_more_workers_than_the_local_cluster_fails_before_workers(tiny_pair, tmp_path):
    recipe = make_run(tmp_path, tiny_pair, extra=["pretrain.scaling.workers_per_node=8",
                                                   "ray.num_cpus=4"])
    with pytest.raises(ValueError, match="raise ray.num_cpus"):
        pretrain.run(recipe)


def test_zero_stage_5_is_refused_by_the_recipe(tiny_pair, tmp_path):
    with pytest.raises(ConfigError, match="pretrain.deepspeed.zero_stage"):
        make_run(tmp_path, tiny_pair, extra=["pretrain.deepspeed.zero_stage=5"])


def test_lora_dapt_runs_in_one_process_and_exports_merged(tiny_pair, tmp_path):
    """The same loop without Ray (as on a GPU box without Ray), with LoRA adapters merged at
    export: only the adapted projections change."""
    recipe = make_run(tmp_path, tiny_pair, extra=["pretrain.method=lora", "pretrain.max_steps=6",
                                                   "pretrain.checkpoint_every=6",
                                                   "pretrain.lora.dropout=0.0"])
    m = pretrain.run(recipe, on_ray=False)
    base = weights(manifest.Path(tiny_pair.output_path("base")))
    dapt = weights(manifest.Path(m.output_path("model")))
    assert base.keys() == dapt.keys()
    changed = {k for k in base if not torch.equal(base[k], dapt[k])}
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed)
