"""DPO preference pairs for the conversational expert: a grounded question about one document
(``tasks.qa``), its reference answer as chosen, and a flawed answer as rejected.

Rejection kinds (``REJECTION_KINDS``):
- wrong_number: the chosen answer with its figure replaced by a perturbed or confusable one;
- wrong_source: a grounded answer that quotes another line of the context and states its
  figure (the line a careless reader picks: P&I for PITI, the 15-day lock for the 60-day);
- wrong_fact: a wrong decision, date or rule for questions without a figure;
- invented_citation: the chosen answer plus a claim pinned on a fictitious statute;
- steering, approval_promise, income_misstatement: the chosen answer plus non-compliant advice
  (steering for commission or by a protected attribute, guaranteeing approval, or advising the
  borrower to misstate income or debts);
- refusal: an unhelpful refusal to answer.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from datetime import date, timedelta

from mortgagellm.datasets.finance import round_half_up
from mortgagellm.datasets.tasks.format import (
    NUMERIC_MODES,
    figures,
    invented_citations,
    parse_answer,
    split_source,
    rounds_to,
    score,
)
from mortgagellm.datasets.tasks.grounding import kind_of, quotes, restate, value_of, with_source
from mortgagellm.datasets.tasks.qa import ask, context_for, grounded_answer, questions

REJECTION_KINDS = ("wrong_number", "wrong_source", "wrong_fact", "invented_citation",
                   "steering", "approval_promise", "income_misstatement", "refusal")
WRONG_ANSWER_KINDS = ("wrong_number", "wrong_source", "wrong_fact")
"""Rejections whose answer itself is wrong (score 0); the others may state the right figure."""

_CONFUSABLE = {"payment": "housing", "housing": "payment", "apr": "rate"}
"""A wrong number that a careless answer gives: P&I for PITI and back, the note rate for APR."""

_DECISION_WRONG = {
    "approve": "This file would be approved under the {program} rules: the credit score, LTV "
               "and DTI are all within the program limits.",
    "refer": "This file would be referred to an underwriter under the {program} rules: the DTI "
             "of {dti} needs compensating factors.",
    "deny": "This file would be denied under the {program} rules: the DTI of {dti} exceeds the "
            "program maximum.",
}
_WRONG_TEXT = {
    "one-sixth": "one-half", "six": "four", "NMLS": "HUD", "midpoint": "final payment",
    "does not apply": "also applies", "third business day": "tenth business day",
    "race, color, religion, national origin, sex, marital status, age": "race and color",
}
"""A wrong version of each regulatory fact stated in words rather than a figure."""

_ACTS = ("Home Loan Transparency", "Residential Mortgage Fairness",
         "Homebuyer Payment Protection", "Federal Escrow Integrity", "Consumer Mortgage Clarity")
_CITED_CLAIMS = (
    "Under Section {sec} of the {act} Act of {year}, this figure is fixed by federal law and "
    "cannot change before closing.",
    "The {act} Act of {year}, § {sec}, requires lenders to refund this amount if you ask "
    "within 90 days.",
    "Per Section {sec} of the {act} Act of {year}, lenders must cap this at the amount shown.",
)
_ADVICE = {
    "steering": (
        "Between us, don't bother shopping around — I'll steer you to our in-house loan even if "
        "another lender offers better terms, since it pays me a higher commission.",
        "Given your age, I'd push you toward a shorter loan regardless of what you qualify for.",
        "You should take the FHA option here; it isn't the best fit for you, but it earns our "
        "branch a bigger bonus."),
    "approval_promise": (
        "Don't worry about underwriting — I can guarantee you'll be approved, so go ahead and "
        "sign the purchase contract.",
        "Consider it done; I promise the loan will close no matter what the underwriter finds.",
        "There's no risk at all: approval is guaranteed, so you can give notice on your lease."),
    "income_misstatement": (
        "If the ratios look tight, just put a higher income on the application — underwriters "
        "rarely check.",
        "Tip: leave your car loan off the application and the DTI will look much better.",
        "You could list your side-gig income as salary even if you can't document it; lots of "
        "borrowers do."),
}
_REFUSALS = (
    "I'm sorry, but I can't help with questions about specific loan documents.",
    "I'm not able to answer that. Please consult a licensed professional.",
    "That's something you'll have to ask your lender; I can't provide that information.",
    "I can't discuss loan details. Is there anything else I can help you with?",
)
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")


def _format_like(m: re.Match, value: float) -> str:
    """``value`` printed the way the matched figure was: $, sign place, commas, decimals, %."""
    decimals = len(m["frac"]) - 1 if m["frac"] else 0
    body = f"{abs(value):,.{decimals}f}" if "," in m["digits"] or m["dollar"] \
        else f"{abs(value):.{decimals}f}"
    if m["dollar"]:
        text = (("$-" if m["sign2"] else "-$") if value < 0 else "$") + body
    else:
        text = ("-" if value < 0 else "") + body
    return text + (m["pct"] or "")


def _wrong_number(question: dict, rng: random.Random) -> str:
    """The chosen answer with its figure (the first of the truth's kind) swapped for a
    confusable figure of the same document or a perturbation of at least one printed unit."""
    truth, chosen = question["truth"], question["chosen"]
    figure, decimals = truth["figure"], truth["decimals"]
    alt = question["slots"].get(_CONFUSABLE.get(truth["topic"], ""))
    wrong = figures(alt)[0][1] if alt and rng.random() < 0.5 else figure
    if rounds_to(wrong, figure, decimals):
        step = 10.0 ** -decimals
        delta = max(abs(figure) * rng.choice((0.03, 0.06, 0.1, 0.2, 0.35)),
                    step * rng.randint(1, 9))
        sign = 1 if figure - delta <= 0 < figure else rng.choice((1, -1))
        wrong = round_half_up(figure + sign * delta, decimals)
    _, answer = split_source(chosen)
    m = next(m for kind, _, _, m in figures(answer) if kind == truth["mode"])
    printed = m.group(0).strip()
    return chosen.replace(printed, _format_like(m, wrong).strip())  # the quote's copy too


def _other_sources(question: dict) -> list[str]:
    """Quotes of the context's other lines whose value is of the answer's kind."""
    quote, _ = split_source(question["chosen"])
    if quote is None:
        return []
    right, kind = value_of(quote), kind_of(value_of(quote))
    return [q for q in quotes(question.get("context", ""))
            if value_of(q) != right and kind_of(value_of(q)) == kind]


def _wrong_source(question: dict, rng: random.Random) -> str:
    """The answer as if read from another line: that line's quote and its figure."""
    other = rng.choice(_other_sources(question))
    _, answer = split_source(question["chosen"])
    return with_source(question["chosen"], other, restate(answer, value_of(other)))


def _wrong_fact(question: dict, rng: random.Random) -> str:
    """A wrong decision, a shifted date or a wrong rule stated in place of the right one."""
    truth, chosen = question["truth"], question["chosen"]
    if truth["mode"] == "decision":
        label = rng.choice([d for d in _DECISION_WRONG if d != truth["answer"]])
        return _DECISION_WRONG[label].format(**question["slots"])
    if truth["unit"] == "date":
        month, day, year = re.fullmatch(r"(\w+) (\d+), (\d{4})", truth["answer"]).groups()
        d = date(int(year), _MONTHS.index(month) + 1, int(day)) \
            + timedelta(days=rng.choice((-7, 7, 14, 30)))
        wrong = f"{_MONTHS[d.month - 1]} {d.day}, {d.year}"
    else:
        wrong = _WRONG_TEXT[truth["answer"]]
    pattern = r"(?<!\w)" + re.escape(truth["answer"]) + r"(?!\w)"
    return re.sub(pattern, lambda _: wrong, chosen, flags=re.I)  # a quoted date too


def applicable_kinds(question: dict) -> list[str]:
    """Rejection kinds that exist for a question: wrong_number needs a figure, wrong_fact a
    decision, a date or a rule with a known wrong version."""
    truth = question["truth"]
    if truth["mode"] in NUMERIC_MODES:
        wrong = "wrong_number"
    elif truth["mode"] == "decision" or truth["unit"] == "date" or truth["answer"] in _WRONG_TEXT:
        wrong = "wrong_fact"
    else:
        wrong = None
    sourced = ["wrong_source"] if _other_sources(question) else []
    return [k for k in REJECTION_KINDS if k not in WRONG_ANSWER_KINDS or k == wrong
            or k in sourced]


def rejected_answer(kind: str, question: dict, rng: random.Random) -> str:
    """The rejected answer of ``kind`` for ``question``; ``kind`` must be applicable."""
    chosen = question["chosen"]
    if kind not in applicable_kinds(question):
        raise ValueError(f"{kind!r} does not apply to a {question['truth']['mode']} answer")
    if kind == "wrong_number":
        return _wrong_number(question, rng)
    if kind == "wrong_source":
        return _wrong_source(question, rng)
    if kind == "wrong_fact":
        return _wrong_fact(question, rng)
    if kind == "invented_citation":
        claim = rng.choice(_CITED_CLAIMS).format(
            act=rng.choice(_ACTS), year=rng.randint(1996, 2019),
            sec=f"{rng.randint(3, 19)}({rng.choice('abcdefg')})")
        return f"{chosen} {claim}"
    if kind in _ADVICE:
        return f"{chosen} {rng.choice(_ADVICE[kind])}"
    if kind == "refusal":
        return rng.choice(_REFUSALS)
    raise ValueError(f"unknown rejection kind {kind!r}; one of {', '.join(REJECTION_KINDS)}")


def _check(pair: dict) -> dict:
    """Fail early on a pair that would teach the wrong thing (a generator change can cause it)."""
    truth, doc = pair["truth"], pair["document"]
    problems = []
    if score("qa", parse_answer("qa", pair["chosen"]), truth) != 1.0:
        problems.append("chosen does not score")
    if invented_citations(pair["chosen"], doc):
        problems.append("chosen cites something the document does not")
    if pair["chosen"] == pair["rejected"]:
        problems.append("chosen equals rejected")
    wrong = pair["rejection_kind"] in WRONG_ANSWER_KINDS
    if wrong and score("qa", parse_answer("qa", pair["rejected"]), truth) != 0.0:
        problems.append("wrong answer scores")
    if problems:
        raise ValueError(f"{pair['doc_id']} {truth['topic']}: {', '.join(problems)}: {pair}")
    return pair


def dpo_pairs(docs: Iterable[dict], n: int, rng: random.Random,
              knowledge_share: float = 0.0) -> list[dict]:
    """n pairs, one question per document, from the documents in order.

    Each pair: {topic, prompt, chosen, rejected, rejection_kind, document (the context the
    prompt carries; "" for a knowledge question, a share ``knowledge_share`` of the regulation
    questions), doc_id, doc_kind, truth (``tasks.format.qa_truth``)}. Wrong answers are drawn
    three times as often as each other kind, since numeric correctness is what the expert is
    measured on.
    """
    pairs, seen = [], set()
    for doc in docs:
        options = questions(doc)
        if not options:
            continue
        question = rng.choice(options)
        key = (doc["text"], question["truth"]["question"])
        if key in seen:
            continue
        seen.add(key)
        context = context_for(question, doc["text"], rng, knowledge_share)
        question = question | {"chosen": grounded_answer(question, context), "context": context}
        kinds = applicable_kinds(question)
        weights = [3 if k in WRONG_ANSWER_KINDS else 1 for k in kinds]
        kind = rng.choices(kinds, weights)[0]
        pairs.append(_check({
            "topic": question["topic"], "prompt": ask(question, context, rng),
            "chosen": question["chosen"], "rejected": rejected_answer(kind, question, rng),
            "rejection_kind": kind, "document": context, "doc_id": doc["doc_id"],
            "doc_kind": doc["kind"], "truth": question["truth"]}))
        if len(pairs) == n:
            return pairs
    raise ValueError(f"document stream ended after {len(pairs)} of {n} DPO pairs")
