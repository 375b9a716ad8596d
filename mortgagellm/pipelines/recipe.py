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
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from mortgagellm.cluster import storage
from mortgagellm.config import Recipe
from mortgagellm.manifest import MANIFEST, Manifest, seed_recipe, stage_uri, variant_recipe
from mortgagellm.stages import NEEDS, SHARED_ACROSS_SEEDS, STAGES, select, waves

MEASURE_STAGES = ("sft", "dpo")
"""The stages whose <stage>.compare variants `mortgagellm report` trains beside the run."""

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


def _share(manifests: dict[str, bytes], recipe: Recipe) -> None:
    """Write these stages' manifests (the run's) into `recipe`'s run, naming the same outputs."""
    for stage, text in manifests.items():
        storage.write_bytes(f"{stage_uri(recipe, stage)}/{MANIFEST}", text)


@dataclass(frozen=True)
class Job:
    """One stage of one run in `mortgagellm report`'s plan: the run itself, one of
    run.repeat_seeds or one of <stage>.compare."""

    name: str                 # "sft", "seed 1 sft", "dpo variant sft-dpo": its log prefix
    recipe: Recipe            # the run it belongs to (manifest.seed_recipe / variant_recipe)
    stage: str
    after: tuple[str, ...]    # names of the jobs it reads
    share: tuple[str, ...]    # stages of the run whose manifests are copied into its run first

    @property
    def cores(self) -> int | None:
        """Cores the stage keeps busy on this node (None: all of them): its Train workers'
        threads or its evaluation actors' and its own measurement threads."""
        recipe, stage = self.recipe, self.stage
        if stage in ("pretrain", "sft", "dpo"):
            section = getattr(recipe, stage)
            scaling = section.scaling
            if scaling.threads_per_worker is None:  # Ray's default: cpus_per_worker each
                return None
            workers = scaling.num_nodes * scaling.workers_per_node * scaling.threads_per_worker
            return max(workers, getattr(section, "threads", None) or 0)
        if stage == "residual":
            return recipe.residual.threads
        if stage == "evaluate" and recipe.evaluate.threads:
            return recipe.evaluate.concurrency * recipe.evaluate.threads
        return None  # bootstrap, corpus and an evaluate with all threads: the whole node


def plan(recipe: Recipe, last: str = "evaluate") -> list[Job]:
    """Everything `mortgagellm report` trains and measures, as jobs in priority order: the run's
    stages up to `last`; then each of run.repeat_seeds from pretrain on, in
    <output_dir>/seeds/<seed> (manifest.seed_recipe), on the run's bootstrap and corpus (their
    manifests are copied there, naming the same outputs, so every seed trains on the same
    pretrained pair and data); then each of sft.compare and dpo.compare, in
    <output_dir>/variants/<stage>-<name> (manifest.variant_recipe), on the run's own upstream
    outputs (the manifests of the stages it NEEDS are copied there). The evaluate stages go
    last: on a laptop they keep every core busy and the training stages one each, so the
    one-core jobs pair up first."""
    stages = select(None, last)
    jobs = [Job(stage, recipe, stage, NEEDS[stage], ()) for stage in stages]
    first = STAGES.index(SHARED_ACROSS_SEEDS[-1]) + 1
    for seed in recipe.run.repeat_seeds:
        seeded = seed_recipe(recipe, seed)
        for stage in stages[first:]:
            after = tuple(need if need in SHARED_ACROSS_SEEDS else f"seed {seed} {need}"
                          for need in NEEDS[stage])
            jobs.append(Job(f"seed {seed} {stage}", seeded, stage, after, SHARED_ACROSS_SEEDS))
    for stage in MEASURE_STAGES:
        if stage not in stages:
            continue
        for name in getattr(recipe, stage).compare:
            jobs.append(Job(f"{stage} variant {name}", variant_recipe(recipe, stage, name),
                            stage, NEEDS[stage], NEEDS[stage]))
    return sorted(jobs, key=lambda job: job.stage == "evaluate")  # stable: otherwise as listed


def run_plan(recipe: Recipe, jobs: list[Job], cores: int | None = None,
             on_done: Callable[[Job, Manifest, float], None] | None = None
             ) -> dict[str, Manifest]:
    """Run `jobs` (`plan`) as their inputs are ready, as many at once as fit `cores` (default:
    this node's), each a Ray task in a process of its own (cluster.runtime.OwnProcesses); with
    run.parallel_stages false, one at a time. Jobs are started in priority order, and a ready
    job that does not fit holds back the ones after it, so a job that needs every core is not
    starved by one-core jobs. A job read but not in `jobs` is taken as done (its manifest is
    read as it is); up-to-date stages are skipped by their manifests, as in any run.

    When a job fails, the jobs that read it are not started, the others still finish (their
    manifests stand), then the first failure in plan order is raised. Returns each job's
    manifest by job name; `on_done(job, manifest, seconds)` is called as each ends.
    """
    from mortgagellm.cluster.runtime import OwnProcesses, ensure_ray

    cores = cores or len(os.sched_getaffinity(0))
    ensure_ray(recipe.ray, recipe.run.local_dir)
    tasks, pending = OwnProcesses(), list(jobs)
    planned = {job.name for job in jobs}  # a job it reads that is not planned is taken as done
    done: dict[str, Manifest] = {}
    failed: dict[str, BaseException] = {}
    running: dict[str, tuple[Job, int, float]] = {}
    shared: set[str] = set()
    while pending or running:
        for job in list(pending):
            if any(name in failed for name in job.after):
                pending.remove(job)
                failed[job.name] = RuntimeError(f"{job.name}: not run, a job it reads failed")
                continue
            if not all(name in done or name not in planned for name in job.after):
                continue
            need = cores if not recipe.run.parallel_stages else min(job.cores or cores, cores)
            if running and sum(used for _, used, _ in running.values()) + need > cores:
                break
            if job.share and job.recipe.run.output_dir not in shared:
                _share({stage: storage.read_bytes(f"{stage_uri(recipe, stage)}/{MANIFEST}")
                        for stage in job.share}, job.recipe)
                shared.add(job.recipe.run.output_dir)
            log.info("== %s (%d of %d cores) ==", job.name, need, cores)
            tasks.start(job.name, run_stage, (job.recipe, job.stage))
            running[job.name] = (job, need, time.monotonic())
            pending.remove(job)
        if not running:
            break
        name, manifest, error = tasks.next_done()
        job, _, t0 = running.pop(name)
        if error is not None:
            log.error("%s failed after %.0f s: %s", name, time.monotonic() - t0, error)
            failed[name] = error
            continue
        done[name] = manifest
        if on_done:
            on_done(job, manifest, time.monotonic() - t0)
    if failed:
        order = [job.name for job in jobs]
        raise failed[min(failed, key=order.index)]
    return done
