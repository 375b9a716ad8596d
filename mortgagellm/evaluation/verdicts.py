"""The report's table and verdicts: rows of (task, metric) cells per variant, and each of the
paper's effects judged on the 95 % intervals and a stated minimum effect. Pure functions over
the evaluate manifest's metrics; pipelines/report.py assembles the page from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mortgagellm.evaluation import scoring

VARIANTS = (*scoring.VARIANTS, scoring.ROUTED)
BASELINE = "instruct"
TASK_METRICS: dict[str, tuple[str, ...]] = scoring.TASK_METRICS
JUDGE_METRICS = scoring.JUDGE_METRICS  # any task may have them, after its own metrics
# The one place a metric's direction is decided; every other metric is higher-is-better.
LOWER_IS_BETTER = frozenset({"perplexity", "unparseable", "judge_unparseable", "p50_ms",
                             "p99_ms", "flip_rate", "confident_mistakes", "ece"})
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


def cell_of(metrics: dict[str, Any], variant: str, task: str, metric: str) -> dict | None:
    found = metrics["variants"].get(variant)
    return found["tasks"].get(task, {}).get(metric) if found else None


def effects(metrics: dict[str, Any]) -> list[Effect]:
    """Each of the paper's effects judged on this run's 95% CIs, with the numbers."""
    found = []
    for claim, variant, other, task, metric in EFFECTS:
        a, b = cell_of(metrics, variant, task, metric), cell_of(metrics, other, task, metric)
        if a is None or b is None:
            lacking = ", ".join(v for v, c in ((variant, a), (other, b)) if c is None)
            found.append(Effect(claim, MISSING, f"no {task} {metric} for {lacking}"))
            continue
        lower = metric in LOWER_IS_BETTER
        detail = (f"{task} {metric}: {variant} {cell_text(a)} vs {other} {cell_text(b)} "
                  f"(Δ {fmt(a['value'] - b['value'], True)}; "
                  f"{'lower' if lower else 'higher'} is better)")
        found.append(Effect(claim, verdict(a, b, metric), detail))
    routing = cell_of(metrics, "routed", "routing", "accuracy")
    claim = "(e) the router sends requests to the right expert better than chance"
    if routing is None:
        found.append(Effect(claim, MISSING, "no routing accuracy for routed"))
    else:
        chance = {"value": ROUTING_CHANCE, "n": 0, "ci95": [ROUTING_CHANCE] * 2}
        found.append(Effect(claim, verdict(routing, chance, "accuracy"),
                            f"routing accuracy {cell_text(routing)} vs chance "
                            f"{fmt(ROUTING_CHANCE)} with two experts"))
    return found
