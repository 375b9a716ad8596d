"""The recipe's goals at demo scale (issue 15), each set against what the run measured: the
report's "Goals" section and results.json's `goals`. Pure: the results (report.results, with
across_seeds and variants when the run has them) in, one entry per goal out; a goal whose
numbers the run did not measure says so (met: None), never passes by default.

Each entry: {"goal", "measured" (the numbers, as text), "value" (the number the bound is on,
or the worst one where the goal holds for several), "met": True / False / None}.
"""

from __future__ import annotations

import math
from typing import Any

CLASSIFICATION = ("decision", "doc_kind", "intent")
QA_MIN = 0.6            # conversational expert: QA figures right
QA_ABOVE_INSTRUCT = 0.4  # ... and this far above the few-shot instruct baseline
CLASS_ABOVE_INSTRUCT = 0.20  # structured expert over few-shot instruct, on each classification
FIDELITY_RATIO = 0.9    # merged / instruct instruction fidelity, on every seed
FLIP_RATE_MAX = 0.02    # fair-lending flips over the pairs whose decisions both parse


def _cell(cells: dict[tuple[str, str, str], dict], variant: str, task: str, metric: str
          ) -> dict | None:
    found = cells.get((task, metric, variant))
    if found is None or found["value"] is None or (
            isinstance(found["value"], float) and math.isnan(found["value"])):
        return None
    return found


def _text(cell: dict | None) -> str:
    if cell is None:
        return "not measured"
    lo, hi = cell["ci95"] or (math.nan, math.nan)
    return f"{cell['value']:.2f} [{lo:.2f}, {hi:.2f}] (n={cell['n']})"


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal with what this run measured and whether it is met (None: not measured)."""
    cells = {(c["task"], c["metric"], c["variant"]): c for c in results["cells"]}
    return [_qa(cells), _qa_above_instruct(cells), _routed(results.get("routed_vs_parts")),
            _gate(results.get("across_seeds")), _classification(cells),
            _flip_rate(cells, results.get("variants", {}).get("sft"))]


def _qa(cells: dict) -> dict[str, Any]:
    grounded = _cell(cells, "conversational", "qa", "numeric_grounded")
    written = _cell(cells, "conversational", "qa", "numeric")
    return {"goal": f"conversational expert: QA figures right ≥ {QA_MIN:g}",
            "measured": f"grounded (serve ground: true) {_text(grounded)}; as written "
                        f"{_text(written)}",
            "value": grounded and grounded["value"],
            "met": None if grounded is None else grounded["value"] >= QA_MIN}


def _qa_above_instruct(cells: dict) -> dict[str, Any]:
    expert = _cell(cells, "conversational", "qa", "numeric_grounded")
    instruct = _cell(cells, "instruct", "fewshot_qa", "numeric_grounded")
    gap = None if expert is None or instruct is None else expert["value"] - instruct["value"]
    return {"goal": f"... and ≥ {QA_ABOVE_INSTRUCT:g} above few-shot instruct",
            "measured": f"conversational {_text(expert)} − few-shot instruct {_text(instruct)}"
                        + ("" if gap is None else f" = {gap:+.2f}"),
            "value": gap, "met": None if gap is None else gap >= QA_ABOVE_INSTRUCT}


def _routed(rows: list[dict] | None) -> dict[str, Any]:
    goal = "routed system within the best single variant's interval, or above, on every task"
    if not rows:
        return {"goal": goal, "measured": "not measured", "value": None, "met": None}
    missed = [f"{r['task']} {r['metric']}" for r in rows if not r["met"]]
    return {"goal": goal,
            "measured": f"met on {len(rows) - len(missed)} of {len(rows)} rows"
                        + (f"; missed on {', '.join(missed)}" if missed else ""),
            "value": (len(rows) - len(missed)) / len(rows), "met": not missed}


def _gate(seeds: dict | None) -> dict[str, Any]:
    goal = (f"merged fidelity ratio ≥ {FIDELITY_RATIO:g} on every seed, domain perplexity "
            "below instruct's")
    if not seeds or not seeds.get("residual_gate"):
        return {"goal": goal, "measured": "not measured (no repeat seeds)", "value": None,
                "met": None}
    gate = seeds["residual_gate"]
    worst = min(g["fidelity_ratio"] for g in gate.values())
    below = all(g["merged_perplexity"] < g["instruct_perplexity"] for g in gate.values())
    return {"goal": goal,
            "measured": "; ".join(f"seed {s}: {g['fidelity_ratio']:.3f}, "
                                  f"{g['merged_perplexity']:.1f} vs {g['instruct_perplexity']:.1f}"
                                  for s, g in gate.items()),
            "value": worst, "met": worst >= FIDELITY_RATIO and below}


def _classification(cells: dict) -> dict[str, Any]:
    gaps, parts = {}, []
    for task in CLASSIFICATION:
        expert = _cell(cells, "structured", task, "accuracy")
        instruct = _cell(cells, "instruct", f"fewshot_{task}", "accuracy")
        if expert is None or instruct is None:
            parts.append(f"{task}: not measured")
            continue
        gaps[task] = expert["value"] - instruct["value"]
        parts.append(f"{task}: {expert['value']:.2f} − {instruct['value']:.2f} = "
                     f"{gaps[task]:+.2f}")
    measured = len(gaps) == len(CLASSIFICATION)
    return {"goal": f"structured expert ≥ {CLASS_ABOVE_INSTRUCT:g} above few-shot instruct "
                    "on each classification (accuracy)",
            "measured": "; ".join(parts), "value": min(gaps.values()) if gaps else None,
            "met": min(gaps.values()) >= CLASS_ABOVE_INSTRUCT if measured else None}


def _flip_rate(cells: dict, sft_variants: dict | None) -> dict[str, Any]:
    flips = _cell(cells, "structured", "fairness", "flip_rate")
    measured = f"structured (evaluate) {_text(flips)}"
    for name, found in (sft_variants or {}).items():  # before / after the mitigation
        held = found["heldout"].get("expert", {}).get("fairness", {}).get("flip_rate")
        if held and not math.isnan(held["value"]):
            augmented = "augmented" if found["settings"].get("counterfactual") else "not"
            measured += f"; sft stage, {name} ({augmented}) {held['value']:.2f} (n={held['n']})"
    return {"goal": f"fair-lending flip rate over parseable pairs ≤ {FLIP_RATE_MAX:.0%}",
            "measured": measured, "value": flips and flips["value"],
            "met": None if flips is None else flips["value"] <= FLIP_RATE_MAX}


def section(found: list[dict[str, Any]]) -> list[str]:
    """The goals as a Markdown table: goal, what was measured, met / missed / not measured."""
    verdict = {True: "met", False: "**missed**", None: "not measured"}
    lines = ["## Goals", "",
             "The recipe's goals at demo scale (issue 15), on this run's numbers "
             "(mortgagellm/evaluation/goals.py); `make demo`'s goal is measured by the demo.", "",
             "| goal | measured | |", "|---|---|---|"]
    lines += [f"| {g['goal']} | {g['measured']} | {verdict[g['met']]} |" for g in found]
    return lines
