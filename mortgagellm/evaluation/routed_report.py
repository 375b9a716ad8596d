"""The routed system against its best part (issue 15): for every task and metric the routed
variant was measured on, the single variant that scores best there and whether the routed
system is within that variant's 95 % interval or better, the goal a router must meet to be
worth its hop. Pure: the evaluate manifest's metrics in, report lines and data out."""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

from mortgagellm.evaluation.scoring import ROUTED


def _value(cell: dict[str, Any] | None) -> float | None:
    return None if cell is None or math.isnan(cell["value"]) else cell["value"]


def compare(metrics: dict[str, Any], lower_is_better: Collection[str]) -> list[dict[str, Any]]:
    """One entry per (task, metric) of the routed variant that another variant has too:
    {task, metric, routed, best, best_cell, delta, met}. `met`: the routed value is at or
    beyond the best part's interval bound on the worse side (lower bound, or the upper one
    for a lower-is-better metric), i.e. within its interval or better."""
    found = metrics["variants"]
    if ROUTED not in found:
        return []
    rows = []
    for task, measured in found[ROUTED]["tasks"].items():
        for metric, cell in measured.items():
            parts = {v: m["tasks"].get(task, {}).get(metric) for v, m in found.items()
                     if v != ROUTED}
            parts = {v: c for v, c in parts.items() if _value(c) is not None}
            if _value(cell) is None or not parts:
                continue
            sign = -1.0 if metric in lower_is_better else 1.0
            best = max(parts, key=lambda v: sign * parts[v]["value"])
            bound = min(sign * x for x in parts[best]["ci95"])
            rows.append({"task": task, "metric": metric, "routed": cell, "best": best,
                         "best_cell": parts[best],
                         "delta": round(cell["value"] - parts[best]["value"], 4),
                         "met": sign * cell["value"] >= bound - 1e-12})
    return rows


def _cell(cell: dict[str, Any]) -> str:
    lo, hi = cell["ci95"]
    return f"{cell['value']:.2f} [{lo:.2f}, {hi:.2f}]"


def section(metrics: dict[str, Any], lower_is_better: Collection[str]) -> list[str]:
    """'Routed vs its best part': the table, and how many rows meet the goal; [] without a
    routed variant."""
    rows = compare(metrics, lower_is_better)
    if not rows:
        return []
    lines = ["## Routed vs its best part", "",
             "Goal: on every task the routed system is within the 95% interval of the best "
             "single variant there, or better.", "",
             "| task | metric | routed | best part | best [95% CI] | Δ | goal |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['metric']} | {_cell(r['routed'])} | {r['best']} | "
              f"{_cell(r['best_cell'])} | {r['delta']:+.2f} | {'met' if r['met'] else 'missed'} |"
              for r in rows]
    missed = [f"{r['task']} {r['metric']}" for r in rows if not r["met"]]
    lines += ["", f"Met on {len(rows) - len(missed)} of {len(rows)}"
              + (f"; missed on {', '.join(missed)}." if missed else "."), ""]
    return lines
