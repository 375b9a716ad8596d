"""The report's sections beyond one run: the key numbers across run.repeat_seeds (mean, sd and
range, each effect's verdict per seed, the residual gate per seed) and the experts' variants
(sft.compare, dpo.compare) side by side, each read from the manifests those runs wrote.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from mortgagellm.config import Recipe
from mortgagellm.evaluation.verdicts import (BASELINE, DASH, EFFECTS, cell_of, effects, fmt,
                                             table_rows)
from mortgagellm.manifest import Manifest, require_manifest, seed_recipe, variant_recipe
from mortgagellm.metrics import wilson

# ---- across seeds (run.repeat_seeds) ------------------------------------------------------------

def spread(values: dict[int, float | None]) -> dict[str, Any]:
    """{values, mean, sd, min, max, seeds} over the seeds that measured it (sd 0 for one)."""
    got = [v for v in values.values() if v is not None and not math.isnan(v)]
    if not got:
        return {"values": values, "mean": None, "sd": None, "min": None, "max": None, "seeds": 0}
    return {"values": values, "mean": statistics.fmean(got),
            "sd": statistics.stdev(got) if len(got) > 1 else 0.0, "min": min(got),
            "max": max(got), "seeds": len(got)}


def spread_text(s: dict[str, Any]) -> str:
    """'mean ± sd [min–max]' (two decimals), or a dash when no seed measured it."""
    if s["mean"] is None:
        return DASH
    return f"{fmt(s['mean'])} ± {fmt(s['sd'])} [{fmt(s['min'])}–{fmt(s['max'])}]"


def seed_runs(recipe: Recipe) -> dict[int, dict[str, Manifest]]:
    """{seed: {'residual': manifest, 'evaluate': manifest}} for run.seed and each of
    run.repeat_seeds (their runs under <output_dir>/seeds/<seed>)."""
    runs = {recipe.run.seed: recipe} | {s: seed_recipe(recipe, s) for s in recipe.run.repeat_seeds}
    return {seed: {stage: require_manifest(r, stage) for stage in ("residual", "evaluate")}
            for seed, r in runs.items()}


def across_seeds(runs: dict[int, dict[str, Manifest]], min_fidelity_ratio: float
                 ) -> dict[str, Any]:
    """Every cell of the first seed's table at every seed (mean, sd, min, max), each of the
    paper's effects with its verdict at every seed, and the residual gate at every seed."""
    evaluations = {seed: r["evaluate"].metrics for seed, r in runs.items()}
    first = next(iter(evaluations.values()))
    cells = []
    for row in table_rows(first):
        for variant in row.cells:
            values = {seed: (c["value"] if (c := cell_of(m, variant, row.task, row.metric))
                             else None) for seed, m in evaluations.items()}
            cells.append({"task": row.task, "metric": row.metric, "variant": variant,
                          **spread(values)})
    claims: dict[str, dict[str, Any]] = {}
    for seed, metrics in evaluations.items():
        for effect in effects(metrics):
            claims.setdefault(effect.claim, {})[seed] = effect.verdict
    key = {(c["variant"], c["task"], c["metric"]): c for c in cells}
    found = []
    for claim, variant, other, task, metric in EFFECTS:
        found.append({"claim": claim, "task": task, "metric": metric,
                      "variant": key.get((variant, task, metric)),
                      "than": key.get((other, task, metric)), "verdicts": claims[claim]})
    gate = {seed: {"scale": r["residual"].metrics["scale"],
                   "fidelity_ratio": r["residual"].metrics["fidelity_ratio"],
                   "merged_perplexity": r["residual"].metrics["domain_perplexity"]["merged"],
                   "instruct_perplexity": r["residual"].metrics["domain_perplexity"]["instruct"]}
            for seed, r in runs.items()}
    ok = all(g["fidelity_ratio"] >= min_fidelity_ratio and
             g["merged_perplexity"] < g["instruct_perplexity"] for g in gate.values())
    return {"seeds": list(runs), "cells": cells, "effects": found, "residual_gate": gate,
            "min_fidelity_ratio": min_fidelity_ratio, "gate_held_on_every_seed": ok}


def seeds_section(data: dict[str, Any]) -> list[str]:
    """The Markdown of across_seeds: the effects with both sides' spread and each seed's
    verdict, then the residual gate per seed."""
    seeds = data["seeds"]
    lines = ["## Across seeds", "",
             f"Seeds {', '.join(map(str, seeds))} (run.seed, then run.repeat_seeds): pretrain "
             "to evaluate trained and measured at each seed, from the same bootstrap models and "
             "corpus. Each cell: mean ± sd over the seeds [min–max]; results.json has every cell "
             "at every seed.", "",
             "| claim | variant | compared with | verdict per seed |", "|---|---|---|---|"]
    for e in data["effects"]:
        sides = [spread_text(e[k]) if e[k] else DASH for k in ("variant", "than")]
        verdicts = "; ".join(f"{seed}: {v}" for seed, v in e["verdicts"].items())
        lines.append(f"| {e['claim']} ({e['task']} {e['metric']}) | {sides[0]} | {sides[1]} | "
                     f"{verdicts} |")
    lines += ["", "| seed | λ written | fidelity ratio | domain perplexity merged / instruct |",
              "|---|---|---|---|"]
    lines += [f"| {seed} | {g['scale']:g} | {g['fidelity_ratio']:.3f} | "
              f"{g['merged_perplexity']:.2f} / {g['instruct_perplexity']:.2f} |"
              for seed, g in data["residual_gate"].items()]
    held = "held" if data["gate_held_on_every_seed"] else "**did not hold**"
    lines += ["", f"The residual gate (fidelity ratio ≥ {data['min_fidelity_ratio']:g} with a "
              f"domain perplexity below instruct's) {held} on every seed.", ""]
    return lines


# ---- the experts' variants (sft.compare, dpo.compare) --------------------------------------------

THIS_RECIPE = "this recipe"
VARIANT_SETTINGS = {"sft": (("counterfactual", ("counterfactual",)),),
                    "dpo": (("SFT epochs first", ("sft", "epochs")),
                            ("SFT format replay", ("sft", "replay_instructions")),
                            ("NLL weight", ("nll_weight",)),
                            ("on-policy pairs", ("onpolicy", "enabled")))}
"""Per expert stage: the settings its variants table shows, as (column, path in the stage's
config section)."""
VARIANT_COLUMNS = {
    "sft": (("decision", ("decision", "accuracy")), ("doc_kind", ("doc_kind", "accuracy")),
            ("intent", ("intent", "accuracy")), ("summary fields", ("summary", "field_accuracy")),
            ("fair-lending flip rate", ("fairness", "flip_rate")),
            ("unparseable pair", ("fairness", "unparseable"))),
    "dpo": (("reward margin", ("reward_margin",)), ("pref. accuracy", ("reward_accuracy",)),
            ("figures right, as written", ("qa_numeric_correct",)),
            ("figures right, grounded [95% CI]", ("qa_numeric_grounded",)),
            ("no made-up figure", ("qa_supported",)), ("closed-book knowledge", ("qa_knowledge",)),
            ("n", ("n",)), ("of them with a figure", ("n_numeric",)),
            ("instruction fidelity [95% CI]", ("fidelity",)))}
"""Per expert stage: the held-out numbers its variants table shows, as (column, path in the
stage manifest's heldout.<model>)."""
VARIANT_N = {("qa_numeric_grounded",): ("n_numeric",), ("fidelity",): ("n_instructions",)}
"""Rates the dpo stage stores as plain shares, with the path of their n: shown with a Wilson
95% interval, since a variant is chosen on them."""
PHASE = "sft"
"""The held-out model of a dpo run's SFT phase (dpo.sft.epochs > 0): shown as its own row."""
VARIANT_TITLES = {"sft": "Structured expert: SFT variants (sft.compare)",
                  "dpo": "Conversational expert: DPO variants (dpo.compare)"}


def _at(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def stage_variants(recipe: Recipe, stage: str) -> dict[str, dict[str, Any]]:
    """{name: {settings, heldout}} for this recipe's expert stage and each of its compare
    variants, from their manifests: the same held-out sets, measured by the stage."""
    found = {THIS_RECIPE: require_manifest(recipe, stage)}
    found |= {f"{THIS_RECIPE}, seed {seed}": require_manifest(seed_recipe(recipe, seed), stage)
              for seed in recipe.run.repeat_seeds}
    found |= {name: require_manifest(variant_recipe(recipe, stage, name), stage)
              for name in getattr(recipe, stage).compare}
    return {name: {"settings": {column: _at(m.config[stage], path)
                                for column, path in VARIANT_SETTINGS[stage]},
                   "heldout": m.metrics["heldout"]} for name, m in found.items()}


def _variant_cell(value: Any, n: Any = None) -> str:
    if isinstance(value, float) and isinstance(n, int) and n > 0:
        lo, hi = wilson(round(value * n), n)
        return f"{value:.2f} [{lo:.2f}, {hi:.2f}]"
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):  # a {value, n, ci95} cell
        return f"n/a (n={value['n']})" if math.isnan(value["value"]) else \
            f"{fmt(value['value'])} (n={value['n']})"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def variants_section(stage: str, variants_: dict[str, dict[str, Any]]) -> list[str]:
    """A stage's variants side by side: their settings and the expert's held-out numbers, with
    instruct's (from this recipe's run) as the reference row."""
    settings = [c for c, _ in VARIANT_SETTINGS[stage]]
    head = ["expert", *settings, *(c for c, _ in VARIANT_COLUMNS[stage])]
    lines = [f"## {VARIANT_TITLES[stage]}", "",
             f"Each trained from the same merged model and measured by the {stage} stage on the "
             "same held-out sets: point values, n where it differs by row.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def line(name: str, shown: dict[str, Any], measured: dict[str, Any]) -> str:
        cells = [_variant_cell(shown.get(c)) for c in settings]
        cells += [_variant_cell(_at(measured, path),
                                _at(measured, VARIANT_N[path]) if path in VARIANT_N else None)
                  for _, path in VARIANT_COLUMNS[stage]]
        return "| " + " | ".join([name, *cells]) + " |"

    for name, v in variants_.items():
        lines.append(line(name, v["settings"], v["heldout"]["expert"]))
        if PHASE in v["heldout"] and stage == "dpo":  # what DPO started from
            lines.append(line(f"{name}: its SFT phase, before DPO", v["settings"],
                              v["heldout"][PHASE]))
    own = variants_[THIS_RECIPE]["heldout"]
    if "instruct" in own:
        lines.append(line(f"{BASELINE} (reference)", {}, own["instruct"]))
    return lines + [""]
