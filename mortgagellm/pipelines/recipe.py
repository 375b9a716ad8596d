"""The recipe's stages in flow order, chained through their manifests.

Run: mortgagellm run configs/cpu-demo.yaml [--from STAGE] [--to STAGE]

Stages that read nothing of each other (the two experts) run side by side unless
run.parallel_stages is false.

Each stage is a module in this package with `run(recipe, force) -> Manifest`; none imports
another: they meet only in the manifests they write (mortgagellm/manifest.py). The stage list is
mortgagellm/stages.py, so serve and cluster read it without importing this package.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

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
    in flow order.

    With run.parallel_stages the stages of one wave (`stages.waves`: the sft and dpo experts)
    run side by side, each in its own thread with its own Ray Train job; torch and the models
    release the GIL, so each gets a core. When one of them fails, the others still finish (their
    manifests stand) and then the first failure in flow order is raised; later ones are logged.
    `on_done(manifest, seconds)` is called as each stage ends, from the thread that ran it.
    """
    selected = select(first, last)
    groups = waves(selected) if recipe.run.parallel_stages else [(s,) for s in selected]
    done: dict[str, Manifest] = {}
    for wave in groups:
        if len(wave) == 1:
            done[wave[0]] = _timed(recipe, wave[0], force, on_done)
            continue
        log.info("== stages %s side by side ==", " and ".join(wave))
        with ThreadPoolExecutor(len(wave), thread_name_prefix="stage") as pool:
            futures = {stage: pool.submit(_timed, recipe, stage, force, on_done)
                       for stage in wave}
        failed = [(stage, f.exception()) for stage, f in futures.items() if f.exception()]
        for stage, err in failed[1:]:
            log.error("stage %s failed too", stage, exc_info=err)
        if failed:
            raise failed[0][1]
        done |= {stage: f.result() for stage, f in futures.items()}
    return [done[stage] for stage in selected]


def _timed(recipe: Recipe, stage: str, force: bool,
           on_done: Callable[[Manifest, float], None] | None) -> Manifest:
    log.info("== stage %s ==", stage)
    t0 = time.monotonic()
    manifest = run_stage(recipe, stage, force=force)
    if on_done:
        on_done(manifest, time.monotonic() - t0)
    return manifest
