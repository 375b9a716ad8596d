"""The recipe's stages in flow order, chained through their manifests.

Run: mortgagellm run configs/cpu-demo.yaml [--from STAGE] [--to STAGE]

Stages that read nothing of each other (the two experts) run side by side, each a Ray task in
a process of its own, unless run.parallel_stages is false.

Each stage is a module in this package with `run(recipe, force) -> Manifest`; none imports
another: they meet only in the manifests they write (mortgagellm/manifest.py). The stage list is
mortgagellm/stages.py, so serve and cluster read it without importing this package.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable

from mortgagellm.cluster import storage
from mortgagellm.config import Recipe
from mortgagellm.manifest import Manifest
from mortgagellm.stages import STAGES, select, waves

log = logging.getLogger(__name__)

def run_stage(recipe: Recipe, stage: str, force: bool = False) -> Manifest:
    """Run one stage (imported on demand so unrelated heavy imports never happen)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are: {', '.join(STAGES)}")
    if storage.is_remote(recipe.run.output_dir):  # before the stage reads earlier ones there
        storage.check_writable(recipe.run.output_dir)
    module = importlib.import_module(f"mortgagellm.pipelines.{stage}")
    return module.run(recipe, force=force)


def run_recipe(recipe: Recipe, first: str | None = None, last: str | None = None,
               force: bool = False,
               on_done: Callable[[Manifest, float], None] | None = None) -> list[Manifest]:
    """Run the selected stages; each reads what the earlier ones wrote. Returns their manifests
    in flow order; `on_done(manifest, seconds)` is called as each stage ends.

    With run.parallel_stages the stages of one wave (`stages.waves`: the sft and dpo experts)
    run side by side, each a Ray task in a process of its own on this node, with its own Ray
    Train job (cluster.runtime.side_by_side). When one of them fails, the others still finish
    (their manifests stand), then the first failure in flow order is raised.
    """
    selected = select(first, last)
    groups = waves(selected) if recipe.run.parallel_stages else [(s,) for s in selected]
    done: dict[str, Manifest] = {}
    for wave in groups:
        if len(wave) == 1:
            log.info("== stage %s ==", wave[0])
            t0 = time.monotonic()
            done[wave[0]] = run_stage(recipe, wave[0], force=force)
            if on_done:
                on_done(done[wave[0]], time.monotonic() - t0)
            continue
        done |= _side_by_side(recipe, wave, force, on_done)
    return [done[stage] for stage in selected]


def _side_by_side(recipe: Recipe, wave: tuple[str, ...], force: bool,
                  on_done: Callable[[Manifest, float], None] | None) -> dict[str, Manifest]:
    from mortgagellm.cluster.runtime import ensure_ray, side_by_side

    log.info("== stages %s side by side ==", " and ".join(wave))
    ensure_ray(recipe.ray, recipe.run.local_dir)
    t0, done, failed = time.monotonic(), {}, {}
    # run_stage is looked up now, so a test's stand-in travels to the tasks by value.
    for stage, manifest, error in side_by_side(
            {stage: (run_stage, (recipe, stage, force)) for stage in wave}):
        if error is not None:
            log.error("stage %s failed after %.0f s: %s", stage, time.monotonic() - t0, error)
            failed[stage] = error
            continue
        done[stage] = manifest
        if on_done:
            on_done(manifest, time.monotonic() - t0)
    if failed:
        raise failed[min(failed, key=STAGES.index)]
    return done
