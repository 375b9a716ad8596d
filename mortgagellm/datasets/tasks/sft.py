"""SFT records for the structured expert: classify a document (underwriting decision, document
kind, customer-query intent) or summarise it into the fixed field layout of ``tasks.format``.

A record is {task, prompt, answer, document, doc_id, doc_kind, truth}: the prompt is one of
several phrasings of the instruction around the document, the answer is in the task's fixed
format, and the truth is what ``tasks.format.score`` needs ({"label"} or {"summary_fields",
"reference_summary"}).
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from mortgagellm.datasets.mortgage import DOC_KINDS
from mortgagellm.datasets.tasks.format import LABELS, SFT_TASKS, format_summary

DECISION_KINDS = ("loan_application", "underwriting_note")
"""Documents that state every input of the underwriting rules (score, loan, LTV, DTI, program);
Loan Estimates also carry a decision but not the credit score, so they cannot be classified."""

INTENT_KINDS = ("customer_email", "servicing_email")

_KINDS = ", ".join(DOC_KINDS)
_INTENTS = ", ".join(LABELS["intent"])
PROMPTS: dict[str, tuple[str, ...]] = {
    "decision": (
        "Apply the program's underwriting rules to the file below. Answer with exactly one "
        "word: approve, refer or deny.\n\n{doc}",
        "{doc}\n\nUnderwriting decision for this file (approve / refer / deny)?",
        "Classify the underwriting decision of this loan file as approve, refer or deny.\n\n{doc}",
        "Read the loan file and give the decision the program rules reach — approve, refer or "
        "deny. Reply with the label only.\n\n{doc}",
        "{doc}\n\nDecision (one of: approve, refer, deny):",
    ),
    "doc_kind": (
        f"What kind of document is this? Answer with one label from: {_KINDS}.\n\n{{doc}}",
        f"{{doc}}\n\nDocument type ({_KINDS}):",
        f"Classify the document below into one of these types: {_KINDS}. Reply with the label "
        "only.\n\n{doc}",
        f"Label this mortgage document's kind. Options: {_KINDS}.\n\n{{doc}}",
    ),
    "intent": (
        f"Which customer-query intent does this message belong to? One of: {_INTENTS}.\n\n{{doc}}",
        f"{{doc}}\n\nIntent ({_INTENTS}):",
        f"Classify the intent of the e-mail below as one of {_INTENTS}. Reply with the label "
        "only.\n\n{doc}",
        f"Route this servicing message by intent. Labels: {_INTENTS}.\n\n{{doc}}",
    ),
    "summary": (
        "Summarise this document. Give one 'field: value' line per key field, then a "
        "'summary:' line.\n\n{doc}",
        "{doc}\n\nWrite the structured summary of this document: the key fields, then a "
        "one-sentence summary.",
        "Extract the key fields of the document below and summarise it in the standard "
        "layout.\n\n{doc}",
        "Structured summary (key fields + summary line) of:\n\n{doc}",
    ),
}
"""Instruction phrasings per task; ``{doc}`` is replaced by the document text."""


def label_of(task: str, doc: dict) -> str | None:
    """The label a document carries for ``task`` (for summary: its kind, used to balance the
    set), or None when the document does not serve the task."""
    truth = doc["ground_truth"]
    if task == "decision":
        return truth["decision"] if doc["kind"] in DECISION_KINDS else None
    if task == "doc_kind":
        return doc["kind"]
    if task == "intent":
        return truth["intent"] if doc["kind"] in INTENT_KINDS else None
    if task == "summary":
        return doc["kind"]
    raise ValueError(f"unknown SFT task {task!r}; one of {', '.join(SFT_TASKS)}")


def sft_record(task: str, doc: dict, rng: random.Random) -> dict:
    """One record of ``task`` on ``doc``, with a phrasing drawn from ``rng``."""
    truth = doc["ground_truth"]
    prompt = rng.choice(PROMPTS[task]).replace("{doc}", doc["text"])
    if task == "summary":
        answer = format_summary(truth["summary_fields"], truth["reference_summary"])
        gold = {"summary_fields": truth["summary_fields"],
                "reference_summary": truth["reference_summary"]}
    else:
        answer = label_of(task, doc)
        gold = {"label": answer}
        if task == "decision":
            gold["reasons"] = truth["reasons"]
    return {"task": task, "prompt": prompt, "answer": answer, "document": doc["text"],
            "doc_id": doc["doc_id"], "doc_kind": doc["kind"], "truth": gold}


def quotas(task: str, n: int) -> dict[str, int]:
    """n records spread evenly over the task's labels (summary: over document kinds); the
    first ``n % labels`` labels get one more."""
    labels = DOC_KINDS if task == "summary" else LABELS[task]
    base, extra = divmod(n, len(labels))
    return {label: base + (i < extra) for i, label in enumerate(labels)}


def sft_records(docs: Iterable[dict], tasks: tuple[str, ...], per_task: int,
                rng: random.Random) -> list[dict]:
    """``per_task`` records of each task, balanced over labels, from the documents in order.

    A document serves every task whose quota for its label is still open, once per task (a
    repeated text, such as a short regulatory explainer, is skipped). Fails with the unfilled
    quotas if the stream ends first.
    """
    open_ = {task: quotas(task, per_task) for task in tasks}
    seen: set[tuple[str, str]] = set()
    records = []
    for doc in docs:
        for task in tasks:
            label = label_of(task, doc)
            if label is None or open_[task][label] == 0 or (task, doc["text"]) in seen:
                continue
            open_[task][label] -= 1
            seen.add((task, doc["text"]))
            records.append(sft_record(task, doc, rng))
        if not any(n for q in open_.values() for n in q.values()):
            return records
    unfilled = {t: {lab: n for lab, n in q.items() if n} for t, q in open_.items()}
    raise ValueError(f"document stream ended before the SFT quotas were filled: {unfilled}; "
                     "raise max_doc_chars or lower the set sizes")
