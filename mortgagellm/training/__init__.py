"""Training shared by the pretrain, sft and dpo stages: one loop (loop.py), one export
(export.py), chat prompts (chat.py), the typed worker config (worker.py), the artifacts stages
start from (inputs.py), and `run`, which runs the loop on Ray Train or in this process.

A training stage reads: settings -> data -> Objective -> training.run -> export -> measure.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mortgagellm import manifest
from mortgagellm.cluster import storage

if TYPE_CHECKING:
    from mortgagellm.config import Recipe
    from mortgagellm.training.loop import Objective
    from mortgagellm.training.worker import WorkerConfig

log = logging.getLogger(__name__)


def run(objective: Objective, worker: WorkerConfig, recipe: Recipe, cfg: Any, out: Path,
        on_ray: bool, fingerprint: str, name: str | None = None
        ) -> tuple[list[dict], Path, list[dict]]:
    """Run the loop with `objective` on Ray Train or in this process, resuming from the latest
    checkpoint of the same run; returns (logged history, final checkpoint, rank placement).

    `cfg` is the stage's recipe section (scaling, keep_checkpoints, max_failures). Checkpoints
    live under <out>/ray/<name>-<fingerprint[:12]> (or <out>/checkpoints/<fingerprint[:12]>
    in-process; `name` defaults to the objective's): a relaunch of the same stage, config and
    inputs resumes there; a changed config starts fresh, and the other runs' checkpoints are
    removed (they could never be resumed). With a remote run.output_dir Ray Train keeps them
    at the stage's URI (<output_dir>/<stage>/ray/...), which every node can reach.
    """
    from mortgagellm.cluster.training import read_placement
    from mortgagellm.training.loop import train_loop

    name, key = name or objective.name, fingerprint[:12]
    config = dataclasses.asdict(worker)
    train_fn = functools.partial(train_loop, objective=objective)
    storage.delete(worker.placement_dir)
    if not on_ray:
        from mortgagellm.cluster.training import LocalSession, init_single_process

        _drop_other_runs(str(out / "checkpoints"), key)
        init_single_process(cfg.scaling.use_gpu)
        session = LocalSession(worker.shards, out / "checkpoints" / key, cfg.keep_checkpoints,
                               worker.shuffle_seed)
        history = train_fn(config, session)
        return history, session.latest_checkpoint(), []
    from mortgagellm.cluster.runtime import ensure_ray
    from mortgagellm.cluster.training import run_on_ray

    ensure_ray(recipe.ray, recipe.run.local_dir)
    ray_storage = manifest.published(recipe, out / "ray")
    _drop_other_runs(ray_storage, f"{name}-{key}")
    result = run_on_ray(train_fn, config, cfg.scaling, ray_storage, f"{name}-{key}",
                        cfg.max_failures, cfg.keep_checkpoints)
    shutil.rmtree(out / "final_checkpoint", ignore_errors=True)
    final = Path(result.checkpoint.to_directory(str(out / "final_checkpoint")))
    return (json.loads((final / "history.json").read_text()), final,
            read_placement(worker.placement_dir))


def _drop_other_runs(parent: str, keep: str) -> None:
    """Remove every run directory under `parent` (path or URI) but `keep`: checkpoints of
    another config."""
    for name in storage.subdirs(parent):
        if name != keep:
            log.info("removing checkpoints of an earlier, different run: %s/%s", parent, name)
            storage.delete(f"{parent}/{name}")
