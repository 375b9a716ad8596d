"""evaluate stage: every model the recipe made, measured on the same held-out sets, each number
with a 95 % interval and its n.

Run: mortgagellm evaluate configs/cpu-demo.yaml
     mortgagellm evaluate configs/cpu-demo.yaml --model runs/cpu-demo/sft/model   (one model,
     a directory or a registry version; its results go into its registry entry)

Variants, each evaluated when its stage has written it: instruct (bootstrap), dapt (pretrain),
merged (residual), structured (sft), conversational (dpo), and routed: every request routed by
the serving router (tier 1, plus the structured expert's few-shot tier in the recipe's fewshot
or hybrid mode) and answered by the expert it chose. Greedy decoding makes the routed answer the
chosen expert's own answer to the same prompt, so no answer is generated twice; models with the
same content hash are also generated for once.

The parts are mortgagellm/evaluation/: the sets (sets.py), generation through Ray Data
(generate.py), scoring with a 95 % interval (scoring.py, the task/metric table the report reads)
and the routed system (routed.py, the serving Router's routing.decide). This module is the stage:
which models, the fingerprint, the manifest, and the one-model and registry entry points.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from mortgagellm import manifest
from mortgagellm.config import Recipe
from mortgagellm.evaluation import fewshot
from mortgagellm.evaluation.generate import generate, generate_models
from mortgagellm.evaluation.routed import routed_variant, router_config
from mortgagellm.evaluation.scoring import (
    EXPERTS,
    ROUTED,
    VARIANTS,
    Scorer,
    make_scorer,
    sample_sizes,
    score_variant,
)
from mortgagellm.evaluation.sets import EvalSets, eval_sets, read_routing_set
from mortgagellm.manifest import require_manifest, stage_dir
from mortgagellm.modeling import set_threads
from mortgagellm.training.inputs import task_dir, task_source

log = logging.getLogger(__name__)


def variant_models(recipe: Recipe) -> dict[str, dict[str, str]]:
    """{variant: model entry (uri, sha256) from its stage's manifest} of every model written so
    far; the bootstrap stage's is required, a later stage not run yet only leaves a variant out."""
    require_manifest(recipe, "bootstrap")
    found = {}
    for variant, (stage, output) in VARIANTS.items():
        written = manifest.stage_manifest(recipe, stage)
        if written is None:
            log.warning("evaluate: no %s output in %s, so no %s variant; run `mortgagellm %s "
                        "CONFIG` to add it", stage, manifest.stage_uri(recipe, stage), variant,
                        stage)
            continue
        found[variant] = written.outputs[output]
    return found


def prepare(recipe: Recipe, out: Path, model_dir: str) -> tuple[EvalSets, Scorer, dict]:
    """Threads, Ray (started as the recipe says if this process has none), the sets with their
    few-shot prefixes fitted to `model_dir`'s tokenizer (every variant shares it), the scorer,
    and what the prompts fit: {"fewshot_fit", "prompts_without_room"} (evaluation/fewshot.py)."""
    from transformers import AutoTokenizer

    from mortgagellm.cluster.runtime import ensure_ray

    cfg = recipe.evaluate
    set_threads(cfg.threads)
    ensure_ray(recipe.ray, recipe.run.local_dir)
    tasks = task_dir(recipe, cfg.task_source, out)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    sets, fitted = fewshot.fit_prefixes(eval_sets(recipe, tasks), cfg, tokenizer)
    room = fewshot.without_room(sets, cfg, tokenizer)
    for name, counts in room.items():
        log.warning("evaluate: %d of %d %s prompts cannot fit in %d tokens with their answer "
                    "budget, even with their document cut; they are answered with nothing",
                    counts["without_room"], counts["prompts"], name, cfg.max_seq_len)
    return sets, make_scorer(recipe), {"fewshot_fit": fitted, "prompts_without_room": room}


def run(recipe: Recipe, force: bool = False) -> manifest.Manifest:
    """Evaluate every variant written so far; skip when models, sets and config are unchanged."""
    cfg, out = recipe.evaluate, stage_dir(recipe, "evaluate")
    models = variant_models(recipe)
    source_config, inputs = task_source(recipe, cfg.task_source)
    inputs |= models
    config = {"seed": recipe.run.seed, "evaluate": cfg.model_dump(mode="json"), **source_config}
    if all(e in models for e in EXPERTS):
        config["router"] = router_config(recipe)
        inputs["tier1"] = require_manifest(recipe, "corpus").outputs["tier1"]
        if cfg.routing_test_set:  # checked now; its content, not only its path, is an input
            read_routing_set(cfg.routing_test_set)
            inputs["routing_test_set"] = manifest.artifact(cfg.routing_test_set)
    pending = manifest.begin("evaluate", out, config, inputs,
                             uri=manifest.stage_uri(recipe, "evaluate"))
    if done := manifest.skip_if_current(pending, force):
        return done
    sets, scorer, fit = prepare(recipe, out, str(models["instruct"]["uri"]))
    generated = generate_models(recipe, {name: manifest.portable(recipe, entry)
                                         for name, entry in models.items()}, sets)
    set_threads(cfg.score_threads)  # the actors are done: scoring has the cores
    variants = {name: {"model": entry["uri"], "version": entry["sha256"],
                       "tasks": score_variant(sets, generated[name], scorer)}
                for name, entry in models.items()}
    if "router" in config:
        variants[ROUTED] = routed_variant(recipe, sets, generated, models, scorer)
    metrics = {"variants": variants, "sample_sizes": sample_sizes(sets),
               "fewshot_prompts": sets.fewshot, **fit,
               "judge": scorer.judge.describe() if scorer.judge else None}
    predictions = write_predictions(out / "predictions.jsonl", generated)
    return manifest.finish(pending, {"predictions": manifest.artifact(predictions)}, metrics)


def write_predictions(path: Path, generated: dict[str, dict]) -> Path:
    """Every answer of every generated variant, one JSON line each, for people to audit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for variant, result in generated.items():
            for name, items in result["answers"].items():
                for i, (text, stopped) in enumerate(items):
                    f.write(json.dumps({"variant": variant, "set": name, "index": i,
                                        "text": text, "stopped": stopped},
                                       ensure_ascii=False) + "\n")
    return path


def evaluate_model(recipe: Recipe, model_dir: str | Path, name: str,
                   version: str | None = None) -> dict[str, Any]:
    """One model on the stage's sets: {"model", "version" (its content hash unless given),
    "tasks", "sample_sizes", "judge"}; nothing is written but the built sets."""
    sets, scorer, fit = prepare(recipe, stage_dir(recipe, "evaluate"), str(model_dir))
    log.info("evaluate: %s (%s)", name, model_dir)
    generated = generate(recipe, str(model_dir), sets)
    set_threads(recipe.evaluate.score_threads)
    tasks = score_variant(sets, generated, scorer)
    return {"model": str(model_dir), "version": version or manifest.sha256_path(model_dir),
            "tasks": tasks, "sample_sizes": sample_sizes(sets), **fit,
            "judge": scorer.judge.describe() if scorer.judge else None}


def evaluate_registered(recipe: Recipe, ref: str) -> dict[str, Any]:
    """`mortgagellm evaluate CONFIG --model REF`: a model directory (registered first when new)
    or a registry version (8+ hex characters), evaluated; the results go into its registry
    entry's metrics under 'evaluate'."""
    from mortgagellm import registry

    path = registry.registry_path(recipe)
    if Path(ref).is_dir():
        version = registry.register(path, ref, source="evaluate --model")
    else:
        version = registry.resolve(path, ref)
    model_dir = registry.read(path)["versions"][version]["path"]
    result = evaluate_model(recipe, model_dir, version[:12], version)
    registry.set_metrics(path, version, {"evaluate": result})
    return result


def table(tasks: dict[str, dict[str, dict]]) -> str:
    """The results as aligned text: task, metric, value, 95 % interval, n."""
    lines = [f"{'task':<12} {'metric':<18} {'value':>10}  {'95% CI':<22} {'n':>5}"]
    for task, metrics in tasks.items():
        for name, m in metrics.items():
            lo, hi = m["ci95"]
            lines.append(f"{task:<12} {name:<18} {m['value']:>10.4f}  "
                         f"{f'[{lo:.4f}, {hi:.4f}]':<22} {m['n']:>5}")
    return "\n".join(lines)
