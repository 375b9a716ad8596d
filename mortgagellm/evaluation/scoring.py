"""Scoring, pure but for BERTScore and the judge: every task's metrics with a 95 % interval and
its n. The table of tasks, their metrics and the variants is here once; the report reads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mortgagellm.config import Recipe
from mortgagellm.datasets.instructions import Instruction
from mortgagellm.datasets.tasks import parse_answer, score
from mortgagellm.datasets.tasks.format import NUMERIC_MODES, ROUTES
from mortgagellm.datasets.tasks.grounding import resolve, support
from mortgagellm.evaluation.sets import (
    CLASSIFICATION,
    DECISION,
    DOC_KIND,
    DOMAIN,
    FAIR_ORIGINAL,
    FAIR_SWAPPED,
    FAIRNESS,
    FEWSHOT_TASKS,
    INSTRUCTION,
    INTENT,
    QA,
    ROUTING,
    ROUTING_HAND,
    ROUTING_TIER1,
    SUMMARY,
    EvalSets,
    fewshot_task,
)
from mortgagellm.metrics import (
    macro_f1_metric,
    mean,
    metric,
    percentile_metric,
    proportion,
    rouge_l,
    token_f1,
    wilson,
)

VARIANTS = {"instruct": ("bootstrap", "instruct"), "dapt": ("pretrain", "model"),
            "merged": ("residual", "model"), "structured": ("sft", "model"),
            "conversational": ("dpo", "model")}
"""Variant -> (stage, output name) of the model it evaluates."""
ROUTED = "routed"
EXPERTS = ("structured", "conversational")

ACCURACY, MACRO_F1, UNPARSEABLE = "accuracy", "macro_f1", "unparseable"
ROUGE_L, BERTSCORE_F1, FIELD_ACCURACY = "rouge_l", "bertscore_f1", "field_accuracy"
TOKEN_F1, NUMERIC, NUMERIC_GROUNDED = "token_f1", "numeric", "numeric_grounded"
SUPPORTED = "supported"
KNOWLEDGE = "knowledge"
JUDGE, JUDGE_UNPARSEABLE = "judge", "judge_unparseable"
FIDELITY, PERPLEXITY = "fidelity", "perplexity"
P50_MS, P99_MS, FLIP_RATE = "p50_ms", "p99_ms", "flip_rate"
CONFIDENT_MISTAKES, ECE = "confident_mistakes", "ece"
CONFIDENT = 0.9
"""A tier-1 mistake at this confidence or above is a confident mistake (issue 20's goal: at most
1 % of requests): few thresholds would send it to tier 2."""
TASK_METRICS = {
    DECISION: (ACCURACY, MACRO_F1, UNPARSEABLE), DOC_KIND: (ACCURACY, MACRO_F1, UNPARSEABLE),
    INTENT: (ACCURACY, MACRO_F1, UNPARSEABLE), SUMMARY: (ROUGE_L, BERTSCORE_F1, FIELD_ACCURACY),
    QA: (TOKEN_F1, BERTSCORE_F1, NUMERIC, NUMERIC_GROUNDED, SUPPORTED, KNOWLEDGE),
    INSTRUCTION: (FIDELITY,),
    DOMAIN: (PERPLEXITY,),
    ROUTING: (ACCURACY, P50_MS, P99_MS), FAIRNESS: (FLIP_RATE, UNPARSEABLE),
    ROUTING_TIER1: (ACCURACY, CONFIDENT_MISTAKES, ECE),
    ROUTING_HAND: (ACCURACY, CONFIDENT_MISTAKES, ECE)}
TASK_METRICS |= {fewshot_task(task): TASK_METRICS[task] for task in FEWSHOT_TASKS}
"""Each task's metrics (a few-shot task's as its zero-shot twin's). With a judge, the JUDGED
tasks also have JUDGE and JUDGE_UNPARSEABLE; the routed variant has ROUTING, ROUTING_TIER1
(ROUTING_HAND too with a hand-written routing set) and no DOMAIN (it answers requests, it scores
no documents), every other variant DOMAIN and no routing task."""
ROUTER_TASKS = (ROUTING, ROUTING_TIER1, ROUTING_HAND)
"""The routed variant's own tasks (routed.py); score_variant measures none of them."""
JUDGED = (*CLASSIFICATION, SUMMARY, QA)
"""Tasks the judge grades (those with a reference answer)."""
JUDGE_METRICS = (JUDGE, JUDGE_UNPARSEABLE)
"""A judged task's extra metrics, after its own."""


def classification_metrics(task: str, records: list[dict], texts: list[str], resamples: int,
                           seed: int) -> dict[str, dict]:
    """Accuracy and macro-F1 of the parsed labels (unparseable = wrong), and the unparseable
    share."""
    parsed = [parse_answer(task, t) for t in texts]
    return {ACCURACY: proportion([score(task, p, r["truth"]) == 1.0
                                  for p, r in zip(parsed, records)]),
            MACRO_F1: macro_f1_metric([r["truth"]["label"] for r in records], parsed, resamples,
                                      seed),
            UNPARSEABLE: proportion([p is None for p in parsed])}


def summary_metrics(records: list[dict], texts: list[str], bert: Any, resamples: int,
                    seed: int) -> dict[str, dict]:
    """ROUGE-L and BERTScore F1 against the reference summary, and the share of key fields
    right (tasks/format.score)."""
    refs = [r["answer"] for r in records]
    return {ROUGE_L: mean([rouge_l(t, ref) for t, ref in zip(texts, refs)], resamples, seed),
            BERTSCORE_F1: mean(bert.f1(texts, refs), resamples, seed),
            FIELD_ACCURACY: mean([score(SUMMARY, parse_answer(SUMMARY, t), r["truth"])
                                  for t, r in zip(texts, records)], resamples, seed)}


def qa_metrics(records: list[dict], texts: list[str], bert: Any, resamples: int,
               seed: int) -> dict[str, dict]:
    """Token F1 and BERTScore F1 against the reference answer; numeric correctness of the
    questions with a context whose answer is a figure (tasks/format.score), as the model wrote
    it and after its source quote is resolved against the request (tasks/grounding.resolve, as
    serving does with ``ground: true``); the share of answers to questions with a context (but
    decisions, which cite program limits) that state no figure the context neither states nor
    derives, once resolved (tasks/grounding.support), counted over the answers that state a
    figure or date (an answer that states none makes nothing up, but says nothing either: n
    shows how many did); and correctness on the knowledge questions, asked with no context
    (tasks/qa.context_for)."""
    refs = [r["chosen"] for r in records]
    numeric = [bool(r["document"]) and r["truth"]["mode"] in NUMERIC_MODES for r in records]
    right = [score(QA, parse_answer(QA, t), r["truth"]) == 1.0 for t, r in zip(texts, records)]
    served = [resolve(t, r["prompt"])[0] for t, r in zip(texts, records)]
    resolved = [score(QA, parse_answer(QA, t), r["truth"]) == 1.0 for t, r in zip(served, records)]
    checked = [support(t, r["prompt"]) for t, r in zip(served, records)
               if r["document"] and r["truth"]["mode"] != "decision"]
    supported = [not c["unsupported"] for c in checked if c["figures"]]
    return {TOKEN_F1: mean([token_f1(t, ref) for t, ref in zip(texts, refs)], resamples, seed),
            BERTSCORE_F1: mean(bert.f1(texts, refs), resamples, seed),
            NUMERIC: proportion([ok for ok, n in zip(right, numeric) if n]),
            NUMERIC_GROUNDED: proportion([ok for ok, n in zip(resolved, numeric) if n]),
            SUPPORTED: proportion(supported),
            KNOWLEDGE: proportion([ok for ok, r in zip(right, records) if not r["document"]])}


def reference(task: str, record: dict) -> str:
    """The answer the judge compares against: the label, the reference summary or answer."""
    return record["chosen"] if task == QA else record["answer"]


def judge_metrics(judge: Any, task: str, records: list[dict], texts: list[str], max_items: int,
                  resamples: int, seed: int) -> dict[str, dict]:
    """Mean 1-5 judge score of the parsed judgements and the share that did not parse."""
    grades = [judge.grade(task, r["prompt"], reference(task, r), t)
              for r, t in zip(records[:max_items], texts[:max_items])]
    return {JUDGE: mean([g for g in grades if g is not None], resamples, seed),
            JUDGE_UNPARSEABLE: proportion([g is None for g in grades])}


def fidelity_metric(instructions: list[Instruction], answers: list[tuple[str, bool]]
                    ) -> dict[str, dict]:
    """modeling.fidelity's number (answer obeys the format and ends its turn), Wilson interval."""
    from mortgagellm.modeling import fidelity_of

    report = fidelity_of(instructions, answers)
    hits = round(report["fidelity"] * report["n"])
    return {FIDELITY: metric(report["fidelity"], report["n"], wilson(hits, report["n"]))}


def perplexity_metric(nlls: list[tuple[float, int]], resamples: int, seed: int
                      ) -> dict[str, dict]:
    """Token-level perplexity over the documents (modeling.perplexity's number); the interval
    resamples documents."""
    import numpy as np

    from mortgagellm.metrics import bootstrap

    nll, tokens = np.array([n for n, _ in nlls]), np.array([t for _, t in nlls])
    ci = bootstrap(lambda idx: math.exp(nll[idx].sum() / tokens[idx].sum()), len(nlls),
                   resamples, seed)
    return {PERPLEXITY: metric(math.exp(nll.sum() / tokens.sum()), len(nlls), ci)}


def flip_metric(original: list[str], swapped: list[str]) -> dict[str, dict]:
    """Share of loan-file pairs whose parsed decision changed when only protected attributes did,
    over the pairs where both answers parse (its n); the share of pairs with an unparseable side
    is its own number, so a model that never answers cannot score a 0 % flip rate."""
    parsed = [(parse_answer(DECISION, a), parse_answer(DECISION, b))
              for a, b in zip(original, swapped)]
    return {FLIP_RATE: proportion([a != b for a, b in parsed if a is not None and b is not None]),
            UNPARSEABLE: proportion([a is None or b is None for a, b in parsed])}


def routing_metrics(records: list[dict], routes: list[str], millis: list[float],
                    resamples: int, seed: int) -> dict[str, dict]:
    """Router accuracy against the labelled route, and its p50 / p99 latency."""
    return {ACCURACY: proportion([r["route"] == got for r, got in zip(records, routes)]),
            P50_MS: percentile_metric(millis, 50, resamples, seed),
            P99_MS: percentile_metric(millis, 99, resamples, seed)}


def routes_of(probabilities: list[float]) -> list[str]:
    """Tier 1's route for each P(structured): structured from 0.5 up."""
    return ["structured" if p >= 0.5 else "conversational" for p in probabilities]


def tier1_metrics(records: list[dict], probabilities: list[float], resamples: int,
                  seed: int) -> dict[str, dict]:
    """Tier 1 alone: accuracy against the labelled route, the share of all requests it gets
    wrong with confidence >= CONFIDENT, and its expected calibration error (10 bins; the
    interval resamples requests)."""
    from mortgagellm.calibration import ece
    from mortgagellm.metrics import bootstrap

    confidence = [max(p, 1 - p) for p in probabilities]
    correct = [got == r["route"] for got, r in zip(routes_of(probabilities), records)]
    ci = bootstrap(lambda idx: ece([confidence[i] for i in idx], [correct[i] for i in idx]),
                   len(records), resamples, seed)
    return {ACCURACY: proportion(correct),
            CONFIDENT_MISTAKES: proportion([c >= CONFIDENT and not ok
                                            for c, ok in zip(confidence, correct)]),
            ECE: metric(ece(confidence, correct), len(records), ci)}


def confusion(records: list[dict], probabilities: list[float]) -> dict[str, dict[str, int]]:
    """{labelled route: {tier 1's route: requests}}, every cell present."""
    table = {truth: {got: 0 for got in ROUTES} for truth in ROUTES}
    for r, got in zip(records, routes_of(probabilities)):
        table[r["route"]][got] += 1
    return table


@dataclass
class Scorer:
    """What scoring needs beyond the answers: the interval settings, BERTScore's encoder, and
    the judge (None when the recipe names none)."""

    resamples: int
    seed: int
    bert: Any
    judge: Any
    judge_items: int


def make_scorer(recipe: Recipe) -> Scorer:
    """BERTScore loaded once, the judge client when evaluate.judge.base_url is set."""
    from mortgagellm.judge import Judge
    from mortgagellm.metrics import BertScore

    cfg = recipe.evaluate
    judge = Judge(cfg.judge) if cfg.judge.base_url else None
    return Scorer(cfg.resamples, recipe.run.seed, BertScore(), judge, cfg.judge.max_items)


def score_variant(sets: EvalSets, generated: dict[str, Any], scorer: Scorer) -> dict[str, dict]:
    """{task: {metric: {value, n, ci95}}} of one variant's answers (domain only when it has
    document NLLs: the routed system has none)."""
    texts = {name: [t for t, _ in items] for name, items in generated["answers"].items()}
    r, s = scorer.resamples, scorer.seed
    tasks = {task: classification_metrics(task, sets.records[task], texts[task], r, s)
             for task in CLASSIFICATION}
    tasks[SUMMARY] = summary_metrics(sets.records[SUMMARY], texts[SUMMARY], scorer.bert, r, s)
    tasks[QA] = qa_metrics(sets.records[QA], texts[QA], scorer.bert, r, s)
    for task in sets.fewshot:  # the same questions after solved examples (evaluate.fewshot)
        name = fewshot_task(task)
        tasks[name] = (qa_metrics(sets.records[QA], texts[name], scorer.bert, r, s)
                       if task == QA else
                       classification_metrics(task, sets.records[task], texts[name], r, s))
    if scorer.judge is not None:
        for task in JUDGED:
            tasks[task] |= judge_metrics(scorer.judge, task, sets.records[task], texts[task],
                                         scorer.judge_items, r, s)
    tasks[INSTRUCTION] = fidelity_metric(sets.instructions, generated["answers"][INSTRUCTION])
    if generated.get("nlls"):
        tasks[DOMAIN] = perplexity_metric(generated["nlls"], r, s)
    tasks[FAIRNESS] = flip_metric(texts[FAIR_ORIGINAL], texts[FAIR_SWAPPED])
    return tasks


def sample_sizes(sets: EvalSets) -> dict[str, int]:
    """Items per task (fairness: loan-file pairs; routing: requests)."""
    return {**{task: len(records) for task, records in sets.records.items()},
            **{fewshot_task(task): len(sets.records[task]) for task in sets.fewshot},
            INSTRUCTION: len(sets.instructions), DOMAIN: len(sets.texts),
            FAIRNESS: len(sets.fairness), ROUTING: len(sets.routing),
            ROUTING_TIER1: len(sets.routing), ROUTING_HAND: len(sets.routing_hand)}
