"""report: one Markdown page and its plots, built from the run's stage manifests only.

Run: mortgagellm report configs/cpu-demo.yaml [--output DIR]

The CLI first runs the recipe up to and including `evaluate` (stages already up to date are
skipped by their manifests); `build` then writes <output_dir>/report/report.md with the paper's
table (task × metric rows, one column per variant, the difference to the instruct baseline),
training curves, the residual λ sweep and a "What this run shows" section whose verdicts are
computed from the confidence intervals and a stated minimum effect; beside it `results.json`
holds every cell (value, interval, n, seed) and every verdict for tools. Every number comes from a
manifest; none is typed in.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mortgagellm.cluster import storage
from mortgagellm.config import Recipe
from mortgagellm.evaluation import html_report, routed_report, router_report, scoring
from mortgagellm.manifest import (Manifest, require_manifest, seed_recipe, stage_dir,
                                  stage_uri, variant_recipe)
from mortgagellm.stages import select

VARIANTS = (*scoring.VARIANTS, scoring.ROUTED)
BASELINE = "instruct"
TASK_METRICS: dict[str, tuple[str, ...]] = scoring.TASK_METRICS
JUDGE_METRICS = scoring.JUDGE_METRICS  # any task may have them, after its own metrics
# The one place a metric's direction is decided; every other metric is higher-is-better.
LOWER_IS_BETTER = frozenset({"perplexity", "unparseable", "judge_unparseable", "p50_ms",
                             "p99_ms", "flip_rate", "confident_mistakes", "ece"})
TASK_GROUPS = {"classification": ("decision", "doc_kind", "intent", "fewshot_decision",
                                  "fewshot_doc_kind", "fewshot_intent"), "summary": ("summary",),
               "qa": ("qa", "fewshot_qa"), "instruction": ("instruction",), "domain": ("domain",),
               "routing": ("routing", "routing_tier1", "routing_hand"),
               "fairness": ("fairness",)}
TRAINING_STAGES = ("pretrain", "sft", "dpo")
# (claim, variant, compared with, task, metric): the paper's effects, judged on their CIs.
EFFECTS = (
    ("(a) DAPT lowers domain perplexity", "dapt", "instruct", "domain", "perplexity"),
    ("(a) the merged model keeps a domain perplexity below instruct's", "merged", "instruct",
     "domain", "perplexity"),
    ("(b) the residual restores instruction fidelity lost by DAPT", "merged", "dapt",
     "instruction", "fidelity"),
    ("(a) the merged model answers more closed-book regulation questions than instruct",
     "merged", "instruct", "qa", "knowledge"),
    ("(c) the SFT expert beats instruct on decision", "structured", "instruct", "decision",
     "accuracy"),
    ("(c) the SFT expert beats instruct on doc_kind", "structured", "instruct", "doc_kind",
     "accuracy"),
    ("(c) the SFT expert beats instruct on intent", "structured", "instruct", "intent",
     "accuracy"),
    ("(c) the SFT expert beats instruct on summary", "structured", "instruct", "summary",
     "rouge_l"),
    ("(d) the DPO expert beats instruct on QA", "conversational", "instruct", "qa", "token_f1"),
    ("(d) the DPO expert's figures are right more often than instruct's", "conversational",
     "instruct", "qa", "numeric"),
    ("(d) ... and with its sources checked against the request (serve ground: true)",
     "conversational", "instruct", "qa", "numeric_grounded"),
)
ROUTING_CHANCE = 0.5  # two experts: a coin flip routes half the requests right
SHOWN, NOISE, REVERSED, MISSING = "shown", "not shown (within noise)", "reversed", "not measured"
SMALL = "not shown (below the minimum effect)"
# "Shown" needs separated intervals AND a difference a user would care about: separated intervals
# alone call 0.004 vs 0.000 a win. Rates and scores in [0, 1] need 0.05 absolute; unbounded
# metrics (perplexity, latency) 10 % of the reference value; the 1-5 judge 0.25.
MIN_EFFECT_ABSOLUTE = 0.05
MIN_EFFECT_BY_METRIC = {"judge": 0.25}
MIN_EFFECT_RELATIVE = {"perplexity": 0.10, "p50_ms": 0.10, "p99_ms": 0.10}
DASH = "–"


@dataclass(frozen=True)
class Row:
    """One table row: a task's metric; cells[variant] is the manifest's {value, n, ci95} or None."""

    task: str
    metric: str
    cells: dict[str, dict[str, Any] | None]
    n: str


@dataclass(frozen=True)
class Effect:
    """One of the paper's claims and what this run's numbers say about it."""

    claim: str
    verdict: str
    detail: str


# ---- the table -------------------------------------------------------------------------------

def variants(metrics: dict[str, Any]) -> list[str]:
    """The evaluated variants: the paper's order, then any others sorted."""
    found = metrics["variants"]
    return [v for v in VARIANTS if v in found] + sorted(set(found) - set(VARIANTS))


def _known_then_sorted(known: tuple[str, ...], found: set[str]) -> list[str]:
    return [k for k in known if k in found] + sorted(found - set(known))

def table_rows(metrics: dict[str, Any]) -> list[Row]:
    """A row per (task, metric) any variant has; known tasks and metrics first, in the paper's
    order, unknown ones sorted after them (never dropped)."""
    names = variants(metrics)
    tasks: dict[str, set[str]] = {}
    for v in names:
        for task, measured in metrics["variants"][v]["tasks"].items():
            tasks.setdefault(task, set()).update(measured)
    rows = []
    for task in _known_then_sorted(tuple(TASK_METRICS), set(tasks)):
        known = TASK_METRICS.get(task, ()) + JUDGE_METRICS
        for metric in _known_then_sorted(known, tasks[task]):
            cells = {v: metrics["variants"][v]["tasks"].get(task, {}).get(metric) for v in names}
            ns = sorted({c["n"] for c in cells.values() if c})
            n = (f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}–{ns[-1]}" if ns
                 else str(metrics.get("sample_sizes", {}).get(task, DASH)))
            rows.append(Row(task, metric, cells, n))
    return rows


def fmt(x: float, signed: bool = False) -> str:
    """Two decimals, as in the paper's tables; a signed zero prints as +0.00."""
    return f"{round(x, 2) + 0.0:{'+' if signed else ''}.2f}"


def cell_text(cell: dict[str, Any], show_n: bool = False) -> str:
    """'value [lo, hi]', with '(n=k)' when the row's cells count different items (a flip rate
    over the pairs that parse); 'n/a (n=0)' for a number nothing could measure."""
    if math.isnan(cell["value"]):
        return f"n/a (n={cell['n']})"
    lo, hi = cell["ci95"]
    return f"{fmt(cell['value'])} [{fmt(lo)}, {fmt(hi)}]" + (f" (n={cell['n']})" if show_n else "")


def _missing(metrics: dict[str, Any], variant: str, task: str, metric: str) -> str:
    if task not in metrics["variants"][variant]["tasks"]:
        return f"{variant} was not evaluated on {task}."
    return f"{variant} was evaluated on {task} but has no {metric} for it."


def results_table(metrics: dict[str, Any], rows: list[Row]) -> list[str]:
    """The Markdown table and its footnotes for missing cells."""
    names = variants(metrics)
    others = [v for v in names if v != BASELINE] if BASELINE in names else []
    head = ["task", "metric", "better", "n"]
    for v in names:
        head += [v] + ([f"Δ {v}"] if v in others else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes: dict[str, int] = {}
    for row in rows:
        out = [row.task, row.metric, "↓" if row.metric in LOWER_IS_BETTER else "↑", row.n]
        base = row.cells.get(BASELINE)
        for v in names:
            cell = row.cells[v]
            if cell is None:
                note = notes.setdefault(_missing(metrics, v, row.task, row.metric), len(notes) + 1)
                out.append(f"{DASH}[^{note}]")
            else:
                out.append(cell_text(cell, show_n="–" in row.n))
            if v in others:
                out.append(fmt(cell["value"] - base["value"], True) if _measured(cell, base)
                           else DASH)
        lines.append("| " + " | ".join(out) + " |")
    lines += [""] + [f"[^{i}]: {text}" for text, i in notes.items()]
    return lines + [""] + zero_baselines(rows)


def _measured(*cells: dict[str, Any] | None) -> bool:
    return all(c is not None and not math.isnan(c["value"]) for c in cells)


def zero_baselines(rows: list[Row]) -> list[str]:
    """A note for each higher-is-better row where instruct scores exactly 0: beating it there
    says only that a variant scores at all."""
    zero = [f"{r.task} {r.metric}" for r in rows if r.metric not in LOWER_IS_BETTER
            and _measured(r.cells.get(BASELINE)) and r.cells[BASELINE]["value"] == 0.0]
    if not zero:
        return []
    return [f"**The {BASELINE} baseline scores 0** on {', '.join(zero)}: a variant beating it "
            "there shows only that the variant scores at all.", ""]


# ---- the verdicts ----------------------------------------------------------------------------

def min_effect(metric: str, reference: float) -> float:
    """The smallest difference on `metric` that counts as an effect, against `reference`."""
    if metric in MIN_EFFECT_RELATIVE:
        return MIN_EFFECT_RELATIVE[metric] * abs(reference)
    return MIN_EFFECT_BY_METRIC.get(metric, MIN_EFFECT_ABSOLUTE)


def verdict(better: dict[str, Any], than: dict[str, Any], metric: str) -> str:
    """SHOWN when `better`'s CI lies above `than`'s (below, for a lower-is-better metric) and the
    difference is at least the minimum effect; REVERSED for the same the other way; SMALL when
    the CIs separate by less than the minimum effect; MISSING when either was not measured."""
    if not _measured(better, than):
        return MISSING
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    gain = sign * (better["value"] - than["value"])
    lo, hi = sorted(sign * x for x in better["ci95"])
    than_lo, than_hi = sorted(sign * x for x in than["ci95"])
    if lo <= than_hi and hi >= than_lo:
        return NOISE
    if abs(gain) < min_effect(metric, than["value"]):
        return SMALL
    return SHOWN if lo > than_hi else REVERSED


def _cell(metrics: dict[str, Any], variant: str, task: str, metric: str) -> dict | None:
    found = metrics["variants"].get(variant)
    return found["tasks"].get(task, {}).get(metric) if found else None


def effects(metrics: dict[str, Any]) -> list[Effect]:
    """Each of the paper's effects judged on this run's 95% CIs, with the numbers."""
    found = []
    for claim, variant, other, task, metric in EFFECTS:
        a, b = _cell(metrics, variant, task, metric), _cell(metrics, other, task, metric)
        if a is None or b is None:
            lacking = ", ".join(v for v, c in ((variant, a), (other, b)) if c is None)
            found.append(Effect(claim, MISSING, f"no {task} {metric} for {lacking}"))
            continue
        lower = metric in LOWER_IS_BETTER
        detail = (f"{task} {metric}: {variant} {cell_text(a)} vs {other} {cell_text(b)} "
                  f"(Δ {fmt(a['value'] - b['value'], True)}; "
                  f"{'lower' if lower else 'higher'} is better)")
        found.append(Effect(claim, verdict(a, b, metric), detail))
    routing = _cell(metrics, "routed", "routing", "accuracy")
    claim = "(e) the router sends requests to the right expert better than chance"
    if routing is None:
        found.append(Effect(claim, MISSING, "no routing accuracy for routed"))
    else:
        chance = {"value": ROUTING_CHANCE, "n": 0, "ci95": [ROUTING_CHANCE] * 2}
        found.append(Effect(claim, verdict(routing, chance, "accuracy"),
                            f"routing accuracy {cell_text(routing)} vs chance "
                            f"{fmt(ROUTING_CHANCE)} with two experts"))
    return found


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
            values = {seed: (c["value"] if (c := _cell(m, variant, row.task, row.metric))
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
            ("figures right, grounded", ("qa_numeric_grounded",)),
            ("no made-up figure", ("qa_supported",)), ("closed-book knowledge", ("qa_knowledge",)),
            ("n (with a figure)", ("n",)))}
"""Per expert stage: the held-out numbers its variants table shows, as (column, path in the
stage manifest's heldout.<model>)."""
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
    found |= {name: require_manifest(variant_recipe(recipe, stage, name), stage)
              for name in getattr(recipe, stage).compare}
    return {name: {"settings": {column: _at(m.config[stage], path)
                                for column, path in VARIANT_SETTINGS[stage]},
                   "heldout": m.metrics["heldout"]} for name, m in found.items()}


def _variant_cell(value: Any) -> str:
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
        cells += [_variant_cell(_at(measured, path)) for _, path in VARIANT_COLUMNS[stage]]
        return "| " + " | ".join([name, *cells]) + " |"

    for name, v in variants_.items():
        lines.append(line(name, v["settings"], v["heldout"]["expert"]))
    own = variants_[THIS_RECIPE]["heldout"]
    if "instruct" in own:
        lines.append(line(f"{BASELINE} (reference)", {}, own["instruct"]))
    return lines + [""]


# ---- the page --------------------------------------------------------------------------------

def header(manifests: dict[str, Manifest], name: str, recipe_file: str, date: str) -> list[str]:
    """Run, recipe, date and provenance: stage fingerprints and durations, model versions."""
    evaluation = manifests["evaluate"].metrics
    judge = evaluation.get("judge")
    lines = [f"# MortgageLLM run report: {name}", "", f"- Recipe: `{recipe_file}`",
             f"- Report written: {date}",
             f"- Judge: {judge['model']} at {judge['base_url']}" if judge else "- Judge: none",
             "", "## Provenance", "", "| stage | fingerprint | started | duration (s) |",
             "|---|---|---|---|"]
    lines += [f"| {s} | `{m.fingerprint[:12]}` | {m.started_at} | {m.duration_s:.1f} |"
              for s, m in manifests.items()]
    lines += ["", "| variant | model | version |", "|---|---|---|"]
    lines += [f"| {v} | `{evaluation['variants'][v]['model']}` | "
              f"`{evaluation['variants'][v]['version'][:12]}` |" for v in variants(evaluation)]
    return lines + [""]


def training(manifests: dict[str, Manifest], plots: dict[str, str]) -> list[str]:
    """Final loss and steps per training stage, the λ sweep and the λ that was written."""
    lines = ["## Training", "", "| stage | steps | first loss | final loss | duration (s) |",
             "|---|---|---|---|---|"]
    for stage in TRAINING_STAGES:
        history, m = manifests[stage].metrics["history"], manifests[stage]
        lines.append(f"| {stage} | {history[-1]['step']} | {history[0]['loss']:.4f} | "
                     f"{history[-1]['loss']:.4f} | {m.duration_s:.1f} |")
    lines += ["", f"![Loss curves]({plots['losses']})", "", "### Residual λ sweep", ""]
    res = manifests["residual"].metrics
    lines += ["| λ | fidelity | fidelity / instruct | domain perplexity | written |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['scale']:g} | {r['fidelity']:.3f} | {r['fidelity_ratio']:.3f} | "
              f"{r['domain_perplexity']:.3f} | {'**yes**' if r['scale'] == res['scale'] else ''} |"
              for r in res["sweep"]]
    refs = ", ".join(f"{k} {v:.3f}" for k, v in res["domain_perplexity"].items())
    lines += ["", f"Written: λ = {res['scale']:g} ({res['selection_rule']}). Reference fidelity: "
              f"instruct {res['fidelity']['instruct']:.3f}, DAPT {res['fidelity']['dapt']:.3f}; "
              f"domain perplexity: {refs}.", "", f"![Residual λ sweep]({plots['sweep']})", ""]
    return lines


def fewshot_prompts(metrics: dict[str, Any]) -> list[str]:
    """What the fewshot_<task> rows asked: each task's solved examples, verbatim, before the
    same question every variant answers zero-shot in the <task> row."""
    prompts = metrics.get("fewshot_prompts") or {}
    return ["", "fewshot_<task> rows: the <task> questions asked after solved training examples "
            "of the task (evaluate.fewshot), each document cut to evaluate.fewshot_chars, as one "
            "prompts an instruct model. The prefix, before the question:", ""] + [
        line for task, prefix in prompts.items() for line in (
            f"<details><summary>{task}</summary>", "", "```text", prefix.rstrip(), "```", "",
            "</details>")] if prompts else []


def render_markdown(manifests: dict[str, Manifest], name: str, recipe_file: str, date: str,
                    plots: dict[str, str]) -> str:
    """The whole report; `plots` maps 'losses', 'sweep' and 'tasks:<group>' to relative paths."""
    metrics = manifests["evaluate"].metrics
    lines = header(manifests, name, recipe_file, date)
    lines += ["## Results", "", "Each cell: value [95% CI]; Δ: difference to the instruct "
              "baseline; n: evaluated examples.", ""]
    lines += results_table(metrics, table_rows(metrics))
    lines += fewshot_prompts(metrics)
    lines += [""] + [f"![{key[6:]}]({path})" for key, path in plots.items()
                     if key.startswith("tasks:")] + [""]
    lines += routed_report.section(metrics, LOWER_IS_BETTER) + router_report.section(metrics)
    lines += training(manifests, plots)
    lines += ["## What this run shows", "", "Shown: the 95% confidence intervals separate in "
              "the claimed direction and the difference is at least the minimum effect "
              f"({MIN_EFFECT_ABSOLUTE:g} absolute on rates and scores, "
              f"{MIN_EFFECT_RELATIVE['perplexity']:.0%} of the reference on perplexity and "
              f"latency, {MIN_EFFECT_BY_METRIC['judge']:g} on the 1-5 judge); reversed: the same "
              "the other way; below the minimum effect: the intervals separate by less.", ""]
    lines += [f"- **{e.verdict}**: {e.claim}. {e.detail}." for e in effects(metrics)]
    return "\n".join(lines) + "\n"


# ---- the plots -------------------------------------------------------------------------------

def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a cluster node
    import matplotlib.pyplot as plt

    return plt


def plot_losses(histories: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """One subplot per training stage: loss against step."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(histories), figsize=(4 * len(histories), 3), squeeze=False)
    for ax, (stage, history) in zip(axes[0], histories.items()):
        ax.plot([r["step"] for r in history], [r["loss"] for r in history], marker=".")
        ax.set(title=stage, xlabel="step", ylabel="loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_task_group(rows: list[Row], names: list[str], title: str, path: Path) -> Path:
    """A subplot per metric, bars per variant grouped by task, error bars from ci95."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    metrics = list(dict.fromkeys(r.metric for r in rows))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.4), squeeze=False,
                             layout="constrained")
    width = 0.8 / len(names)
    for ax, metric in zip(axes[0], metrics):
        mine = [r for r in rows if r.metric == metric]
        for i, v in enumerate(names):  # a variant keeps its colour and slot even where missing
            got = [(j - 0.4 + (i + 0.5) * width, r.cells[v]) for j, r in enumerate(mine)
                   if r.cells[v]]
            err = [[c["value"] - c["ci95"][0] for _, c in got],
                   [c["ci95"][1] - c["value"] for _, c in got]]
            ax.bar([x for x, _ in got], [c["value"] for _, c in got], width, yerr=err,
                   capsize=3, color=f"C{i}")
        ax.set_xticks(range(len(mine)), [r.task for r in mine])
        ax.set_xlim(-0.5, len(mine) - 0.5)
        ax.set_title(f"{metric} ({'lower' if metric in LOWER_IS_BETTER else 'higher'} is better)")
    fig.legend([Patch(color=f"C{i}") for i in range(len(names))], names, ncols=len(names),
               loc="outside lower center", fontsize="small")
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_sweep(residual: dict[str, Any], path: Path) -> Path:
    """Fidelity and domain perplexity against λ, the written λ marked."""
    plt = _pyplot()
    table = sorted(residual["sweep"], key=lambda r: r["scale"])
    scales = [r["scale"] for r in table]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(scales, [r["fidelity"] for r in table], "o-", color="tab:blue")
    ax.set(xlabel="λ", ylabel="fidelity")
    ax.axhline(residual["fidelity"]["instruct"], color="tab:blue", ls=":",
               label="instruct fidelity")
    right = ax.twinx()
    right.plot(scales, [r["domain_perplexity"] for r in table], "s-", color="tab:red")
    right.set_ylabel("domain perplexity", color="tab:red")
    ax.axvline(residual["scale"], color="black", ls="--",
               label=f"written λ = {residual['scale']:g}")
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def task_groups(rows: list[Row]) -> dict[str, list[Row]]:
    """Rows by plot: the paper's task groups, then each unknown task on its own."""
    group_of = {task: group for group, tasks in TASK_GROUPS.items() for task in tasks}
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(group_of.get(row.task, row.task), []).append(row)
    return groups


def write_plots(manifests: dict[str, Manifest], out: Path) -> dict[str, str]:
    """Every plot into out/; returns their paths relative to out (as report.md links them)."""
    metrics = manifests["evaluate"].metrics
    plot_losses({s: manifests[s].metrics["history"] for s in TRAINING_STAGES}, out / "losses.png")
    plot_sweep(manifests["residual"].metrics, out / "sweep.png")
    plots = {"losses": "losses.png", "sweep": "sweep.png"}
    for group, rows in task_groups(table_rows(metrics)).items():
        plot_task_group(rows, variants(metrics), group, out / f"tasks-{group}.png")
        plots[f"tasks:{group}"] = f"tasks-{group}.png"
    return plots


def results(metrics: dict[str, Any], seed: int) -> dict[str, Any]:
    """Every table cell and verdict as data: what report.md prints, for tools and diffs."""
    cells = [{"task": row.task, "metric": row.metric, "variant": v, "seed": seed,
              **({"value": None, "ci95": None, "n": c["n"]} if math.isnan(c["value"]) else c)}
             for row in table_rows(metrics) for v, c in row.cells.items() if c is not None]
    return {"seed": seed, "lower_is_better": sorted(LOWER_IS_BETTER),
            "min_effect": {"absolute": MIN_EFFECT_ABSOLUTE, **MIN_EFFECT_BY_METRIC,
                           "relative": MIN_EFFECT_RELATIVE},
            "cells": cells, "router": router_report.data(metrics),
            "routed_vs_parts": routed_report.compare(metrics, LOWER_IS_BETTER),
            "effects": [{"claim": e.claim, "verdict": e.verdict, "detail": e.detail}
                        for e in effects(metrics)]}


def build(recipe: Recipe, recipe_file: str | Path, output: str | Path | None = None) -> Path:
    """Write report.md, results.json and the plots from the manifests of every stage up to
    evaluate (also to <output_dir>/report when that is a URI); returns report.md's path."""
    manifests = {s: require_manifest(recipe, s) for s in select(last="evaluate")}
    out = Path(output) if output else stage_dir(recipe, "report")
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(manifests, out)
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    data = results(manifests["evaluate"].metrics, recipe.run.seed)
    data |= {"run": recipe.run.name, "recipe": str(recipe_file), "written": date}
    seeds = (across_seeds(seed_runs(recipe), recipe.residual.min_fidelity_ratio)
             if recipe.run.repeat_seeds else None)
    if seeds:
        data["across_seeds"] = seeds
    compared = {stage: stage_variants(recipe, stage) for stage in ("sft", "dpo")
                if getattr(recipe, stage).compare}
    if compared:
        data["variants"] = compared
    (out / "results.json").write_text(json.dumps(data, indent=1) + "\n")
    path = out / "report.md"
    text = render_markdown(manifests, recipe.run.name, str(recipe_file), date, plots)
    if seeds:  # after the first seed's verdicts
        text += "\n" + "\n".join(seeds_section(seeds)) + "\n"
    for stage, found in compared.items():
        text += "\n" + "\n".join(variants_section(stage, found)) + "\n"
    path.write_text(text)
    (out / "report.html").write_text(
        html_report.render(text, out, f"MortgageLLM run report: {recipe.run.name}"))
    if not output and storage.is_remote(stage_uri(recipe, "report")):
        storage.upload(out, stage_uri(recipe, "report"))
    return path
