"""evaluation/goals.py: each goal against hand-made results, met, missed or not measured."""

import math

import pytest

from mortgagellm.evaluation import goals


def cell(task, metric, variant, value, n=100, ci=None):
    return {"task": task, "metric": metric, "variant": variant, "seed": 0, "value": value,
            "n": n, "ci95": ci or [value - 0.05, value + 0.05]}


def results(qa=0.65, fewshot_qa=0.2, flips=0.01):
    cells = [cell("qa", "numeric_grounded", "conversational", qa),
             cell("qa", "numeric", "conversational", 0.1),
             cell("fewshot_qa", "numeric_grounded", "instruct", fewshot_qa),
             cell("fairness", "flip_rate", "structured", flips, n=50),
             cell("fairness", "flip_rate", "instruct", math.nan, n=0)]
    for task, expert, instruct in (("decision", 0.7, 0.3), ("doc_kind", 0.9, 0.75),
                                   ("intent", 0.8, 0.5)):
        cells += [cell(task, "accuracy", "structured", expert),
                  cell(f"fewshot_{task}", "accuracy", "instruct", instruct)]
    return {"cells": cells,
            "routed_vs_parts": [{"task": "qa", "metric": "token_f1", "met": True},
                                {"task": "instruction", "metric": "fidelity", "met": False}],
            "across_seeds": {"residual_gate": {
                "0": {"fidelity_ratio": 0.95, "merged_perplexity": 10.0,
                      "instruct_perplexity": 20.0},
                "1": {"fidelity_ratio": 0.91, "merged_perplexity": 12.0,
                      "instruct_perplexity": 20.0}}},
            "variants": {"sft": {
                "this recipe": {"settings": {"counterfactual": True}, "heldout": {"expert": {
                    "fairness": {"flip_rate": {"value": 0.05, "n": 60}}}}},
                "no-counterfactual": {"settings": {"counterfactual": False}, "heldout": {
                    "expert": {"fairness": {"flip_rate": {"value": 0.1, "n": 58}}}}}}}}


def by_goal(found):
    return {g["goal"].split(":")[0].split(" ≥")[0]: g for g in found}


def test_each_goal_is_judged_on_its_own_number():
    found = goals.goals(results())
    assert [g["met"] for g in found] == [True, True, False, True, False, True]
    qa, above, routed, gate, classes, flips = found
    assert qa["value"] == 0.65 and "as written 0.10 [0.05, 0.15] (n=100)" in qa["measured"]
    assert above["value"] == pytest.approx(0.45)  # 0.65 - 0.20, by hand
    assert routed["measured"] == "met on 1 of 2 rows; missed on instruction fidelity"
    assert gate["value"] == 0.91 and "seed 1: 0.910, 12.0 vs 20.0" in gate["measured"]
    assert classes["value"] == pytest.approx(0.15)  # doc_kind 0.90 - 0.75 is the worst
    assert "doc_kind: 0.90 − 0.75 = +0.15" in classes["measured"]
    assert flips["value"] == 0.01
    assert "sft stage, this recipe (augmented) 0.05 (n=60); sft stage, no-counterfactual " \
        "(not) 0.10 (n=58)" in flips["measured"]


def test_a_bound_just_missed_is_missed_and_a_gate_with_perplexity_above_instruct_fails():
    data = results(qa=0.59, fewshot_qa=0.2, flips=0.03)
    data["across_seeds"]["residual_gate"]["1"]["merged_perplexity"] = 25.0
    qa, above, _, gate, _, flips = goals.goals(data)
    assert (qa["met"], above["met"], gate["met"], flips["met"]) == (False, False, False, False)
    assert above["value"] == pytest.approx(0.39)


def test_what_the_run_did_not_measure_is_said_never_passed():
    data = {"cells": [cell("fairness", "flip_rate", "structured", math.nan, n=0)]}
    found = goals.goals(data)
    assert [g["met"] for g in found] == [None] * 6
    assert found[3]["measured"] == "not measured (no repeat seeds)"
    assert found[5]["measured"] == "structured (evaluate) not measured"
    text = "\n".join(goals.section(found))
    assert text.count("| not measured |") == 6 and "**missed**" not in text
