"""The recipe's stages in flow order, chained through their manifests.

Run: mortgagellm run configs/cpu-demo.yaml [--from STAGE] [--to STAGE]

Each stage is a module in this package with `run(recipe, force) -> Manifest`; none imports
another: they meet only in the manifests they write (mortgagellm/manifest.py). The stage list is
mortgagellm/stages.py, so serve and cluster read it without importing this package.
"""

from __future__ import annotations

import importlib
import logging

from mortgagellm.cluster import storage
from mortgagellm.config import Recipe
from mortgagellm.manifest import Manifest
from mortgagellm.stages import STAGES, select

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
               force: bool = False) -> list[Manifest]:
    """Run the selected stages in order; each reads what the previous one wrote."""
    manifests = []
    for stage in select(first, last):
        log.info("== stage %s ==", stage)
        manifests.append(run_stage(recipe, stage, force=force))
    return manifests
