"""What a training worker is given when run.output_dir is a URI: nothing under the driver's cache
(a worker on another node, with no volume in common, could not read it); what it reads is a URI,
fetched into that worker's own node cache or read in place."""

import dataclasses

from mortgagellm import manifest
from mortgagellm.cluster.data import rank_rows
from mortgagellm.config import Recipe
from mortgagellm.training.worker import worker_config, write_rows


def strings(value):
    """Every string inside nested dicts and lists."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from strings(item)


def test_a_remote_runs_workers_get_uris_and_no_path_in_the_drivers_cache(s3_bucket, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "driver"))
    run = f"{s3_bucket}/run"
    recipe = Recipe.model_validate({"run": {"output_dir": run}})
    cache = recipe.run.local_dir
    assert cache.is_relative_to(tmp_path / "driver")
    base = cache / "residual" / "model"  # the driver's fetched copy of the start model
    base.mkdir(parents=True)
    (base / "config.json").write_text('{"n": 1}')
    start = manifest.artifact(base)
    manifest.publish(manifest.Manifest(stage="residual", fingerprint="f", config={},
                                       outputs={"model": start}), cache / "residual",
                     f"{run}/residual")
    out = manifest.stage_dir(recipe, "sft")
    rows = write_rows(recipe, [{"x": i} for i in range(4)], [3, 1, 0, 2],
                      out / "data" / "train.parquet")
    worker = worker_config(recipe, recipe.sft, start, [rows], out, seq_len=8, max_steps=2,
                           warmup_steps=0)

    assert [s for s in strings(dataclasses.asdict(worker)) if str(tmp_path) in s] == []
    assert (worker.base_model, worker.base_model_sha256) == (f"{run}/residual/model",
                                                             start["sha256"])
    assert worker.shards == [f"{run}/sft/data/train.parquet"]  # uploaded by the driver
    assert [r["x"] for r in rank_rows(worker.shards, 0, 1)] == [3, 1, 0, 2]  # read in place
    assert (worker.placement_dir, worker.tensorboard_dir) == (f"{run}/sft/scratch/placement",
                                                              f"{run}/sft/tensorboard")

    # A worker on another node resolves its own cache root and fetches the model there.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "node2"))
    fetched = worker.start_model()
    assert fetched.startswith(str(tmp_path / "node2")) and fetched.endswith("residual/model")
    assert manifest.sha256_path(fetched) == start["sha256"]
    assert str(worker.local(worker.scratch)).startswith(str(tmp_path / "node2"))


def test_a_local_runs_workers_get_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = Recipe.model_validate({"run": {"output_dir": "runs/demo"}})
    base = tmp_path / "runs/demo/residual/model"
    base.mkdir(parents=True)
    (base / "config.json").write_text("{}")
    out = manifest.stage_dir(recipe, "sft")
    rows = write_rows(recipe, [{"x": 1}], [0], out / "data" / "train.parquet")
    worker = worker_config(recipe, recipe.sft, {"uri": "runs/demo/residual/model",
                                                "sha256": "h"}, [rows], out, seq_len=8,
                           max_steps=1, warmup_steps=0)
    assert (worker.base_model, worker.start_model()) == (str(base), str(base))
    assert worker.shards == [str(tmp_path / "runs/demo/sft/data/train.parquet")]
    assert worker.placement_dir == str(tmp_path / "runs/demo/sft/scratch/placement")
