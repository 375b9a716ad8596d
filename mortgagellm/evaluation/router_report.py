"""The router's section of the run report (issue 20): tier 1 alone on the generated and the
hand-written routing sets (accuracy, confident mistakes, ECE, confusion), its fitted threshold
and the goals, from the evaluate manifest's routed variant. Pure: metrics in, lines out."""

from __future__ import annotations

import math
from typing import Any

from mortgagellm.datasets.tasks.format import ROUTES
from mortgagellm.evaluation.scoring import (
    ACCURACY,
    CONFIDENT,
    CONFIDENT_MISTAKES,
    ECE,
    ROUTED,
)
from mortgagellm.evaluation.sets import ROUTING_HAND, ROUTING_TIER1

SETS = {ROUTING_TIER1: "generated (eval_routing)", ROUTING_HAND: "hand-written"}
GOALS = ((ROUTING_TIER1, ACCURACY, ">=", 0.98), (ROUTING_HAND, ACCURACY, ">=", 0.95),
         (ROUTING_HAND, CONFIDENT_MISTAKES, "<=", 0.01))
"""Issue 20's goals for tier 1: (task, metric, direction, bound)."""


def _cell(m: dict[str, Any] | None) -> str:
    if m is None or math.isnan(m["value"]):
        return "–"
    lo, hi = m["ci95"]
    return f"{m['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def goals(tasks: dict[str, dict]) -> list[dict[str, Any]]:
    """Each goal with the measured value and whether the value meets it (None: not measured)."""
    out = []
    for task, metric, direction, bound in GOALS:
        m = tasks.get(task, {}).get(metric)
        value = None if m is None or math.isnan(m["value"]) else m["value"]
        met = None if value is None else (value >= bound if direction == ">=" else value <= bound)
        out.append({"task": task, "metric": metric, "goal": f"{direction} {bound:g}",
                    "value": value, "met": met})
    return out


def data(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """What results.json records of the router: the routed variant's router entry and the goals
    (None when there is no routed variant, or it was evaluated before issue 20)."""
    routed = metrics["variants"].get(ROUTED)
    if routed is None or "router" not in routed:
        return None
    return {**routed["router"], "goals": goals(routed["tasks"])}


def section(metrics: dict[str, Any]) -> list[str]:
    """The report's 'Router: tier 1 alone' section; nothing without router results."""
    found = data(metrics)
    if found is None:
        return []
    tasks = metrics["variants"][ROUTED]["tasks"]
    in_use = found["threshold_in_use"]
    lines = ["## Router: tier 1 alone", "",
             f"Tier 1 `{found['kind']}`; tier-2 threshold fitted on {found['threshold_fitted_on']}"
             f": {found['threshold']:.3f}; in use: "
             + (f"{in_use:.3f} (hybrid mode)." if in_use is not None else "none (not hybrid).")
             + " A decision below the threshold also goes to tier 2. Confident mistakes: wrong "
             f"at confidence ≥ {CONFIDENT:g}, as a share of all requests.", "",
             "| set | n | accuracy [95% CI] | confident mistakes [95% CI] | ECE [95% CI] | "
             "to tier 2 | of its mistakes to tier 2 |", "|---|---|---|---|---|---|---|"]
    for task, name in SETS.items():
        if task not in tasks:
            continue
        m = tasks[task]
        sent, caught = found["to_tier2"].get(task), found["mistakes_to_tier2"].get(task)
        lines.append(f"| {name} | {m[ACCURACY]['n']} | {_cell(m[ACCURACY])} | "
                     f"{_cell(m[CONFIDENT_MISTAKES])} | {_cell(m[ECE])} | "
                     f"{'–' if sent is None else f'{sent:.3f}'} | "
                     f"{'–' if caught is None else f'{caught:.3f}'} |")
    heads = [f"{a} → {b}" for a in ROUTES for b in ROUTES]
    lines += ["", "Confusion (labelled route → tier 1's route):", "",
              "| set | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for task, table in found["confusion"].items():
        lines.append(f"| {SETS[task]} | "
                     + " | ".join(str(table[a][b]) for a in ROUTES for b in ROUTES) + " |")
    lines += ["", "Goals (issue 20), on the measured value:", ""]
    for g in found["goals"]:
        verdict = ("not measured" if g["met"] is None else "met" if g["met"] else "not met")
        value = "" if g["value"] is None else f" ({g['value']:.3f})"
        lines.append(f"- {SETS[g['task']]} {g['metric'].replace('_', ' ')} {g['goal']}: "
                     f"**{verdict}**{value}")
    return lines + [""]
