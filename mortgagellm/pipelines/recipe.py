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
from mortgagellm.manifest import MANIFEST, Manifest, seed_recipe, stage_uri, variant_recipe
from mortgagellm.stages import NEEDS, SHARED_ACROSS_SEEDS, STAGES, select, waves

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


def run_seeds(recipe: Recipe, last: str = "evaluate",
              on_done: Callable[[Manifest, float], None] | None = None
              ) -> dict[int, list[Manifest]]:
    """Run the recipe at each of run.repeat_seeds, from pretrain to `last`, each in
    <output_dir>/seeds/<seed> (manifest.seed_recipe), after the run itself has its bootstrap
    and corpus: their manifests are copied into each seed's run, so every seed trains on the
    same pretrained pair and data (the outputs they name stay where they are). A seed whose
    stages are up to date is skipped by their manifests, as any run is."""
    if not recipe.run.repeat_seeds:
        return {}
    shared = {stage: storage.read_bytes(f"{stage_uri(recipe, stage)}/{MANIFEST}")
              for stage in SHARED_ACROSS_SEEDS}
    first = STAGES[STAGES.index(SHARED_ACROSS_SEEDS[-1]) + 1]
    out = {}
    for seed in recipe.run.repeat_seeds:
        seeded = seed_recipe(recipe, seed)
        _share(shared, seeded)
        log.info("== seed %d of run.repeat_seeds: %s to %s in %s ==", seed, first, last,
                 seeded.run.output_dir)
        out[seed] = run_recipe(seeded, first=first, last=last, on_done=on_done)
    return out


def run_variants(recipe: Recipe, stage: str,
                 on_done: Callable[[Manifest, float], None] | None = None
                 ) -> dict[str, Manifest]:
    """Train and measure each of <stage>.compare (manifest.variant_recipe) in
    <output_dir>/variants/<stage>-<name>, from the run's own upstream outputs: the manifests of
    the stages it NEEDS are copied there. Up-to-date variants are skipped by their manifests."""
    compare = getattr(recipe, stage).compare
    if not compare:
        return {}
    shared = {need: storage.read_bytes(f"{stage_uri(recipe, need)}/{MANIFEST}")
              for need in NEEDS[stage]}
    out = {}
    for name in compare:
        variant = variant_recipe(recipe, stage, name)
        _share(shared, variant)
        log.info("== %s variant %s in %s ==", stage, name, variant.run.output_dir)
        t0 = time.monotonic()
        out[name] = run_stage(variant, stage)
        if on_done:
            on_done(out[name], time.monotonic() - t0)
    return out


def _share(manifests: dict[str, bytes], recipe: Recipe) -> None:
    """Write these stages' manifests (the run's) into `recipe`'s run, naming the same outputs."""
    for stage, text in manifests.items():
        storage.write_bytes(f"{stage_uri(recipe, stage)}/{MANIFEST}", text)
