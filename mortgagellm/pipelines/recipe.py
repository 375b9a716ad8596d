"""The recipe's stages in flow order, chained through their manifests.

Run: mortgagellm run configs/cpu-demo.yaml [--from STAGE] [--to STAGE]

Each stage is a module in this package with `run(recipe, force) -> Manifest`.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from mortgagellm.config import Recipe
from mortgagellm.manifest import Manifest

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("bootstrap", "corpus", "pretrain", "residual", "sft", "dpo",
                           "evaluate")


def stage_dir(recipe: Recipe, stage: str) -> Path:
    """Where a stage writes its output and manifest: <run.output_dir>/<stage>."""
    return Path(recipe.run.output_dir) / stage


def require_manifest(recipe: Recipe, stage: str) -> Manifest:
    """The manifest an earlier stage left, or an error saying which stage to run."""
    from mortgagellm import manifest

    found = manifest.read(str(stage_dir(recipe, stage)))
    if found is None:
        raise FileNotFoundError(
            f"no {stage} output in {stage_dir(recipe, stage)}; run `mortgagellm {stage}` first")
    return found


def select(first: str | None = None, last: str | None = None) -> tuple[str, ...]:
    """The stages from `first` to `last` inclusive, in flow order."""
    for name in (first, last):
        if name is not None and name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; stages are: {', '.join(STAGES)}")
    lo = STAGES.index(first) if first else 0
    hi = STAGES.index(last) if last else len(STAGES) - 1
    if lo > hi:
        raise ValueError(f"--from {first} comes after --to {last} in {' -> '.join(STAGES)}")
    return STAGES[lo:hi + 1]


def run_stage(recipe: Recipe, stage: str, force: bool = False) -> Manifest:
    """Run one stage (imported on demand so unrelated heavy imports never happen)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are: {', '.join(STAGES)}")
    module = importlib.import_module(f"mortgagellm.pipelines.{stage}")
    return module.run(recipe, force=force)


def run_recipe(recipe: Recipe, first: str | None = None, last: str | None = None,
               force: bool = False) -> list[Manifest]:
    """Run the selected stages in order; each reads what the previous one wrote."""
    manifests = []
    for stage in select(first, last):
        log.info("== stage %s ==", stage)
        manifests.append(run_stage(recipe, stage, force=force))
    return manifests
