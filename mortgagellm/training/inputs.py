"""The artifacts the sft, dpo and evaluate stages start from, read from earlier stages'
manifests: the merged and instruct models, and the task sets (the corpus stage's, or built here).
"""

from __future__ import annotations

from pathlib import Path

from mortgagellm.config import Recipe
from mortgagellm.manifest import require_manifest, stage_dir


def start_models(recipe: Recipe) -> dict[str, dict[str, str]]:
    """The merged model both experts start from (residual's 'model') and the instruct model
    they are compared against (bootstrap's 'instruct'), as manifest entries with hashes."""
    return {"start": require_manifest(recipe, "residual").outputs["model"],
            "instruct": require_manifest(recipe, "bootstrap").outputs["instruct"]}


def task_source(recipe: Recipe, source: str) -> tuple[dict, dict]:
    """(config entries, input entries) that identify the task sets for the fingerprint:
    'corpus' -> the corpus manifest's 'tasks' output; 'build' -> the corpus.tasks sizes."""
    if source == "build":
        return {"tasks": recipe.corpus.tasks.model_dump(mode="json")}, {}
    corpus = require_manifest(recipe, "corpus")
    if "tasks" not in corpus.outputs:
        raise FileNotFoundError(f"the corpus manifest in {stage_dir(recipe, 'corpus')} has no "
                                "'tasks' output; set task_source: build for this stage")
    return {}, {"tasks": corpus.outputs["tasks"]}


def task_dir(recipe: Recipe, source: str, out: Path) -> Path:
    """Directory of <set>.parquet files: the corpus stage's, or built here into <out>/tasks."""
    if source == "corpus":
        return Path(require_manifest(recipe, "corpus").output_path("tasks"))
    from mortgagellm.datasets.tasks import write_task_sets

    write_task_sets(out / "tasks", recipe.corpus.tasks, recipe.run.seed)
    return out / "tasks"
