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

import calendar
import json
import math
import time
from pathlib import Path
from typing import Any

from mortgagellm.cluster import storage
from mortgagellm.config import Recipe
from mortgagellm.evaluation import goals, html_report, routed_report, router_report
from mortgagellm.evaluation.repeats import (across_seeds, seed_runs, seeds_section,
                                            stage_variants, variants_section)
from mortgagellm.evaluation.verdicts import (  # noqa: F401 - the report's vocabulary, re-exported
    BASELINE, DASH, EFFECTS, LOWER_IS_BETTER, MIN_EFFECT_ABSOLUTE, MIN_EFFECT_BY_METRIC,
    MIN_EFFECT_RELATIVE, MISSING, NOISE, REVERSED, SHOWN, SMALL, VARIANTS, Effect, Row,
    cell_text, effects, fmt, min_effect, results_table, table_rows, variants, verdict)
from mortgagellm.manifest import (Manifest, require_manifest, seed_recipe, stage_dir,
                                  stage_manifest, stage_uri, variant_recipe)
from mortgagellm.stages import select

TASK_GROUPS = {"classification": ("decision", "doc_kind", "intent", "fewshot_decision",
                                  "fewshot_doc_kind", "fewshot_intent"), "summary": ("summary",),
               "qa": ("qa", "fewshot_qa"), "instruction": ("instruction",), "domain": ("domain",),
               "routing": ("routing", "routing_tier1", "routing_hand"),
               "fairness": ("fairness",)}
TRAINING_STAGES = ("pretrain", "sft", "dpo")

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
    same question every variant answers zero-shot in the <task> row; how each prefix was
    fitted to the model's context, and any prompts that could not fit at all."""
    prompts, fit = metrics.get("fewshot_prompts") or {}, metrics.get("fewshot_fit") or {}
    lines = ["", "fewshot_<task> rows: the <task> questions asked after solved training "
             "examples of the task (evaluate.fewshot), as one prompts an instruct model. "
             "The prefix, before the question:", ""] if prompts or fit else []
    if fit:
        lines += ["Each prefix may take half of the prompt's room (max_seq_len less the "
                  "answer budget), so the question keeps the rest; its examples' documents are "
                  "cut to fit, and fewer examples are shown if even empty documents do not.", "",
                  "| task | examples shown (asked) | document characters kept | prefix tokens "
                  "(at most) |", "|---|---|---|---|"]
        lines += [f"| {task} | {f['examples']} ({f['asked_examples']}) | {f['doc_chars']} | "
                  f"{f['tokens']} ({f['max_tokens']}) |" for task, f in fit.items()]
        lines += [""] + [f"**fewshot_{task} was not asked**: not even one example with an empty "
                         "document fits its prefix's room." for task, f in fit.items()
                         if not f["examples"]]
    lines += [line for task, prefix in prompts.items() for line in (
        f"<details><summary>{task}</summary>", "", "```text", prefix.rstrip(), "```", "",
        "</details>")]
    room = metrics.get("prompts_without_room") or {}
    if room:
        lines += ["", "**Prompts that could not fit** the model's context with their answer "
                  "budget, even with their document cut; they were answered with nothing and "
                  "count as wrong: " + ", ".join(
                      f"{name} {c['without_room']} of {c['prompts']}" for name, c in room.items())
                  + "."]
    return lines


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


def schedule(recipe: Recipe) -> dict[str, Any]:
    """Every stage behind the report (the run's, each further seed's from pretrain on, each
    compare variant's) with its start and duration, and how much ran side by side: the
    durations' sum against the span from the first start to the last end. A stage skipped as up
    to date keeps the times of the run that made it."""
    runs = [("", recipe, select(last="evaluate"))]
    runs += [(f"seed {seed} ", seed_recipe(recipe, seed), select("pretrain", "evaluate"))
             for seed in recipe.run.repeat_seeds]
    runs += [(f"{stage} variant {name} ", variant_recipe(recipe, stage, name), (stage,))
             for stage in ("sft", "dpo") for name in getattr(recipe, stage).compare]
    jobs = []
    for prefix, run, stages in runs:
        for stage in stages:
            found = stage_manifest(run, stage)
            if found and found.started_at:
                start = calendar.timegm(time.strptime(found.started_at, "%Y-%m-%dT%H:%M:%SZ"))
                jobs.append({"job": prefix + stage, "started": found.started_at,
                             "start_s": start, "duration_s": round(found.duration_s, 1)})
    jobs.sort(key=lambda job: job["start_s"])
    if not jobs:
        return {"jobs": [], "sum_s": 0.0, "span_s": 0.0}
    span = max(j["start_s"] + j["duration_s"] for j in jobs) - jobs[0]["start_s"]
    for job in jobs:
        del job["start_s"]
    return {"jobs": jobs, "sum_s": round(sum(j["duration_s"] for j in jobs), 1),
            "span_s": round(span, 1)}


def schedule_section(found: dict[str, Any]) -> list[str]:
    """The schedule as Markdown: the totals, then one row per stage in order of start."""
    if not found["jobs"]:
        return []
    ratio = found["sum_s"] / found["span_s"] if found["span_s"] else float("nan")
    lines = ["## Schedule", "",
             f"{len(found['jobs'])} stages (the run's, its further seeds', its variants'): "
             f"their durations sum to {found['sum_s'] / 3600:.2f} h; from the first start to "
             f"the last end took {found['span_s'] / 3600:.2f} h, ×{ratio:.2f} of the sum ran "
             "side by side (pipelines/recipe.run_plan). A stage skipped as up to date keeps the "
             "times of the run that made it.", "",
             "| stage | started | duration (s) |", "|---|---|---|"]
    lines += [f"| {j['job']} | {j['started']} | {j['duration_s']:.1f} |" for j in found["jobs"]]
    return lines


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
    data["goals"] = goals.goals(data)
    data["schedule"] = schedule(recipe)
    (out / "results.json").write_text(json.dumps(data, indent=1) + "\n")
    path = out / "report.md"
    text = render_markdown(manifests, recipe.run.name, str(recipe_file), date, plots)
    if seeds:  # after the first seed's verdicts
        text += "\n" + "\n".join(seeds_section(seeds)) + "\n"
    for stage, found in compared.items():
        text += "\n" + "\n".join(variants_section(stage, found)) + "\n"
    text += "\n" + "\n".join(goals.section(data["goals"])) + "\n"
    if recipe.run.repeat_seeds or compared:
        text += "\n" + "\n".join(schedule_section(data["schedule"])) + "\n"
    path.write_text(text)
    (out / "report.html").write_text(
        html_report.render(text, out, f"MortgageLLM run report: {recipe.run.name}"))
    if not output and storage.is_remote(stage_uri(recipe, "report")):
        storage.upload(out, stage_uri(recipe, "report"))
    return path
