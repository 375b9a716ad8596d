"""Grounded questions about one document and their reference answers, for the conversational
expert's preference pairs (``tasks.dpo``), the held-out QA set and the router's conversational
requests.

Questions come from the document's computed facts (payment, PITI, DTI, LTV, APR, cash to close,
escrow, servicing figures, rate-sheet cells, appraisal values), from the underwriting decision
and its reasons, and from the rules a regulatory explainer states — asked the way a customer or
a loan officer would. The reference (chosen) answer states the figure first (the ``qa`` format
of ``tasks.format``), shows where it comes from, and cites no regulation the document does not
name.
"""

from __future__ import annotations

import random
import re

from mortgagellm.datasets.finance import dollars, money, round_half_up
from mortgagellm.datasets.mortgage import QUESTIONS
from mortgagellm.datasets.tasks.format import NUMERIC_MODES, figures, qa_truth
from mortgagellm.datasets.tasks.grounding import grounded, quote_for, support
from mortgagellm.datasets.tasks.sft import DECISION_KINDS
from mortgagellm.datasets.underwriting import PROGRAM_RULES

_FACT_TOPICS = {
    QUESTIONS["payment"]: "payment", QUESTIONS["housing"]: "housing", QUESTIONS["dti"]: "dti",
    QUESTIONS["ltv"]: "ltv", QUESTIONS["income"]: "income", QUESTIONS["apr"]: "apr",
    QUESTIONS["cash"]: "cash", QUESTIONS["closing_costs"]: "closing_costs",
    QUESTIONS["appraised"]: "appraised",
    "What is the adjusted sale price of comparable 1?": "comparable",
    "By how much does the appraised value differ from the contract price?": "appraisal_gap",
    "What is the new monthly escrow deposit?": "escrow_deposit",
    "What is the new total monthly payment?": "new_payment",
    "What is the daily interest (per diem)?": "per_diem",
    "What is the total payoff amount?": "payoff",
    "What total amount is deferred by the forbearance plan?": "forbearance",
    "When does the rate lock expire?": "lock_expiry",
    "How much does a 15-day lock extension cost?": "lock_extension",
    "How much is the late fee?": "late_fee",
    "By how much did the monthly payment increase?": "payment_increase",
}
_PREFIX_TOPICS = (("What is the 30-day rate for FICO", "sheet_rate"),
                  ("How many points does a", "lock_points"))

PHRASINGS: dict[str, tuple[str, ...]] = {
    "payment": ("What will my monthly principal and interest payment be?",
                "What's the monthly P&I on this loan?",
                "How much principal and interest is due each month?"),
    "housing": ("What's my total monthly payment including taxes and insurance?",
                "What is the full PITI payment on this file?",
                "How much will I pay each month for the house, all in?"),
    "dti": ("What's my debt-to-income ratio?", "What back-end DTI does this file carry?",
            "How much of the monthly income goes to debts, as a DTI?"),
    "ltv": ("What's the loan-to-value on this loan?", "What LTV does this purchase have?",
            "How big is the loan compared to the home's value (LTV)?"),
    "income": ("What monthly income is on this application?",
               "What's the total qualifying monthly income?"),
    "apr": ("What is the APR on this loan?", "What annual percentage rate does this show?",
            "My rate and my APR differ. What is the APR?"),
    "cash": ("How much cash do I need to bring to closing?",
             "What's the cash to close on this file?", "How much money do I need at closing?"),
    "closing_costs": ("What are my total closing costs?",
                      "What do the closing costs add up to?"),
    "escrow": ("How much is going into escrow each month?",
               "What's the monthly escrow amount on this disclosure?"),
    "appraised": ("What did the house appraise for?", "What is the appraised value?"),
    "appraisal_gap": ("How far apart are the appraisal and the contract price?", "{question}"),
    "escrow_deposit": ("What will my new escrow deposit be each month?", "{question}"),
    "new_payment": ("What's my new monthly payment?", "{question}"),
    "per_diem": ("How much interest accrues per day?", "{question}"),
    "payoff": ("How much do I need to pay off my loan?", "{question}"),
    "forbearance": ("How much will be deferred under my forbearance plan?", "{question}"),
    "lock_expiry": ("When does my rate lock run out?", "{question}"),
    "lock_extension": ("What would it cost to extend my lock by 15 days?", "{question}"),
    "late_fee": ("How much was I charged as a late fee?", "{question}"),
    "payment_increase": ("How much did my payment go up?", "{question}"),
    "decision": ("Why would this file be approved, referred or denied under the program rules?",
                 "Explain the underwriting outcome for this file and the reasons behind it.",
                 "Walk me through why this loan gets the decision it does."),
}
"""How a customer or loan officer asks each topic; ``{question}`` is the fact's own wording,
which is also the only phrasing of topics not listed."""

CHOSEN: dict[str, str] = {
    "payment": "The monthly principal and interest payment is {answer}, for a {loan_amount} "
               "loan at {rate} over {term} months.",
    "housing": "The total monthly housing payment (PITI) is {answer}: {payment} in principal "
               "and interest plus {escrow} for property taxes and homeowner’s insurance.",
    "dti": "The debt-to-income ratio is {answer}: {debts} in monthly debts plus the {housing} "
           "housing payment, divided by {income} of monthly income.",
    "ltv": "The loan-to-value ratio is {answer}: the {loan_amount} loan divided by the lower of "
           "the {price} purchase price and the {appraised} appraised value.",
    "income": "The total monthly income on the application is {answer}.",
    "apr": "The APR is {answer}. It is above the {rate} note rate because {finance_charges} of "
           "prepaid finance charges (points, origination and prepaid interest) count in it.",
    "cash": "The cash needed to close is {answer}: the {down} down payment plus {closing_costs} "
            "in closing costs and {prepaids} in prepaids and escrow, less the {deposit} deposit "
            "and {seller_credits} in seller credits.",
    "closing_costs": "Total closing costs are {answer}, before prepaids and the initial escrow "
                     "deposit.",
    "escrow": "The estimated escrow is {answer} a month for property taxes and homeowner’s "
              "insurance, which brings the {payment} principal and interest to {housing}.",
    "appraised": "The appraised value is {answer}, against a contract price of {price}.",
    "comparable": "Comparable 1 has an adjusted sale price of {answer}.",
    "appraisal_gap": "The appraised value differs from the contract price by {answer}: "
                     "{appraised} against {price}.",
    "escrow_deposit": "The new monthly escrow deposit is {answer}.",
    "new_payment": "The new total monthly payment is {answer}, including principal, interest "
                   "and escrow.",
    "per_diem": "Interest accrues at {answer} per day.",
    "payoff": "The total amount to pay off the loan is {answer}, good through the date in the "
              "quote.",
    "forbearance": "The plan defers {answer} in total, which can be repaid through a repayment "
                   "plan, a deferral or a modification rather than all at once.",
    "lock_expiry": "The rate lock expires on {answer}.",
    "lock_extension": "A 15-day extension of the lock costs {answer} (0.125 points).",
    "late_fee": "The late fee is {answer}.",
    "payment_increase": "The monthly payment went up by {answer}, from {old_payment} to "
                        "{new_payment}.",
    "sheet_rate": "The 30-day rate is {answer} for that FICO and LTV bucket.",
    "lock_points": "That lock costs {answer}.",
}
"""Reference answer per topic; {answer} is the fact's printed answer, the rest ``_context``."""

_DECISION_CHOSEN = {
    "approve": "This file would be approved under the {program} rules: the credit score of "
               "{score}, LTV of {ltv} and DTI of {dti} are all within the program limits (score "
               "of at least {min_score}, LTV up to {max_ltv}, DTI up to {soft}).",
    "refer": "This file would be referred to an underwriter under the {program} rules: the DTI "
             "of {dti} is above the {soft} limit for approval without review but within the "
             "{hard} maximum, so the underwriter looks for compensating factors such as "
             "reserves or residual income.",
    "deny": "This file would be denied under the {program} rules: {clauses}.",
}
_DENY_CLAUSES = {
    "CREDIT_SCORE_BELOW_MIN": "the credit score of {score} is below the {min_score} minimum",
    "LTV_ABOVE_MAX": "the LTV of {ltv} exceeds the {max_ltv} maximum",
    "DTI_ABOVE_MAX": "the DTI of {dti} exceeds the {hard} maximum",
    "DTI_NEEDS_COMPENSATING_FACTORS": "the DTI of {dti} would also need compensating factors",
    "LOAN_ABOVE_LIMIT": "the {loan_amount} loan exceeds the {max_loan} program limit",
    "LOAN_BELOW_MIN": "the {loan_amount} loan is below the {min_loan} program minimum",
}
_VOICES = ("{q}", "Hi! {q}", "Quick question about my loan: {q}",
           "I'm the loan officer on this file. {q}", "{q} Thanks!",
           "A borrower asked me this — {q}")
_LAYOUTS = ("{q}\n\n{doc}", "{doc}\n\n{q}", "Document:\n{doc}\n\nQuestion: {q}")


def _context(doc: dict) -> dict[str, str]:
    """Printed values a chosen answer may quote: the document's facts by topic and its inputs."""
    truth, ctx = doc["ground_truth"], {}
    n = truth["numbers"] or {}
    for key, slot in (("loan_amount", "loan_amount"), ("price", "price"),
                      ("appraised_value", "appraised")):
        if key in n:
            ctx[slot] = dollars(n[key])
    for key, slot in (("monthly_debts", "debts"), ("monthly_income", "income"),
                      ("finance_charges", "finance_charges"), ("closing_costs", "closing_costs"),
                      ("prepaids", "prepaids"), ("deposit", "deposit"),
                      ("seller_credits", "seller_credits"), ("old_payment", "old_payment"),
                      ("new_payment", "new_payment")):
        if key in n:
            ctx[slot] = money(n[key])
    if "rate_pct" in n and "credit_score" in n:
        ctx |= {"rate": f"{n['rate_pct']:.3f}%", "term": str(int(n["term_months"])),
                "score": str(int(n["credit_score"])), "down": money(n["price"] - n["loan_amount"])}
    values = {}
    for fact in truth["facts"]:
        topic = _FACT_TOPICS.get(fact["question"])
        if topic:
            ctx[topic], values[topic] = fact["answer"], fact["value"]
    if "payment" in values and "housing" in values:
        ctx["escrow"] = money(round_half_up(values["housing"] - values["payment"], 2))
    return ctx


def explained(topic: str, answer: str, ctx: dict[str, str], text: str) -> str:
    """The topic's reference answer (``CHOSEN``) when the document supports every figure it
    explains the answer with (``grounding.support``: printed there, or a sum, difference or
    share of what is); else the answer alone, so no reference teaches a figure the request
    does not carry (an underwriting note prints no monthly debts, an estimate no term)."""
    chosen = CHOSEN[topic].format(answer=answer, **ctx)
    if not support(chosen, text)["unsupported"]:
        return chosen
    short = _SHORT.get(topic) or f"{ASKED[topic][0].upper()}{ASKED[topic][1:]} is {{answer}}."
    return short.format(answer=answer)


_SHORT = {"payment_increase": "The monthly payment went up by {answer}."}
"""The answer alone, where ``ASKED`` does not read as its subject."""


def _topic(doc: dict, question: str) -> str | None:
    if doc["kind"] == "regulatory_explanation":
        return "regulation"
    if question in _FACT_TOPICS:
        return _FACT_TOPICS[question]
    return next((topic for prefix, topic in _PREFIX_TOPICS if question.startswith(prefix)), None)


def _grounding_sentence(text: str, answer: str) -> str | None:
    """The document's own sentence stating ``answer`` (question lines of a Q&A skipped)."""
    for line in text.splitlines():
        line = line.strip().lstrip("•").strip()
        if line.startswith("Q:"):
            continue
        line = line.removeprefix("A:").removeprefix("Note:").strip()
        for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])", line):
            if answer.casefold() in sentence.casefold():
                return sentence
    return None


def _decision_question(doc: dict, ctx: dict) -> dict:
    """Decision and reasons, explained with the file's own ratios against the program limits."""
    truth = doc["ground_truth"]
    program, label = truth["summary_fields"]["program"], truth["decision"]
    rules = PROGRAM_RULES[program]
    slots = {**ctx, "program": program, "min_score": str(rules.min_credit_score),
             "max_ltv": f"{rules.max_ltv_pct:g}%", "soft": f"{rules.soft_dti_pct:g}%",
             "hard": f"{rules.hard_dti_pct:g}%",
             "max_loan": dollars(rules.max_loan or 0), "min_loan": dollars(rules.min_loan or 0)}
    clauses = "; ".join(_DENY_CLAUSES[c].format(**slots) for c in truth["reasons"])
    return {"topic": "decision", "slots": slots, "phrasings": PHRASINGS["decision"],
            "chosen": _DECISION_CHOSEN[label].format(clauses=clauses, **slots),
            "truth": qa_truth("decision", "What is the underwriting decision, and why?", label,
                              None, None, reasons=truth["reasons"])}


def questions(doc: dict) -> list[dict]:
    """Every question this document grounds: {topic, truth, phrasings, chosen, slots}."""
    ctx, out = _context(doc), []
    if doc["kind"] in DECISION_KINDS:
        out.append(_decision_question(doc, ctx))
    facts = list(doc["ground_truth"]["facts"])
    if doc["kind"] in ("loan_estimate", "closing_disclosure"):
        escrow = figures(ctx["escrow"])[0][1]
        facts.append({"question": "What is the estimated monthly escrow payment?",
                      "answer": ctx["escrow"], "value": escrow, "unit": "USD", "topic": "escrow"})
    for fact in facts:
        topic = fact.get("topic") or _topic(doc, fact["question"])
        if topic is None:
            continue
        if topic == "regulation":
            chosen = _grounding_sentence(doc["text"], fact["answer"])
            if chosen is None:
                raise ValueError(f"{doc['doc_id']}: no sentence states {fact['answer']!r}")
        else:
            chosen = explained(topic, fact["answer"], ctx, doc["text"])
        truth = qa_truth(topic, fact["question"], fact["answer"], fact["value"], fact["unit"])
        out.append({"topic": topic, "slots": ctx, "chosen": chosen, "truth": truth,
                    "phrasings": PHRASINGS.get(topic, ("{question}",))})
    return out


ASKED = {
    "payment": "the monthly principal and interest", "housing": "the total monthly payment (PITI)",
    "dti": "the debt-to-income ratio", "ltv": "the loan-to-value ratio",
    "income": "the monthly income", "apr": "the APR", "cash": "the cash to close",
    "closing_costs": "the total closing costs", "escrow": "the monthly escrow",
    "appraised": "the appraised value", "comparable": "comparable 1's adjusted price",
    "appraisal_gap": "the appraisal gap", "escrow_deposit": "the new escrow deposit",
    "new_payment": "the new monthly payment", "per_diem": "the daily interest",
    "payoff": "the payoff amount", "forbearance": "the deferred amount",
    "lock_expiry": "the lock's expiry date", "lock_extension": "the lock extension's cost",
    "late_fee": "the late fee", "lock_points": "the lock's points",
    "sheet_rate": "the 30-day rate for that FICO and LTV",
}
"""What a grounded answer's source line says it looks for, per topic: written from the question
before the quote, so the line it then names is read with what was asked right before it."""


def value_text(truth: dict) -> str | None:
    """The value an answer states, as printed: the date, or the answer's first figure."""
    if truth["unit"] == "date":
        return truth["answer"]
    found = figures(truth["answer"]) if truth["mode"] in NUMERIC_MODES else []
    return found[0][3].group(0).strip() if found else None


KNOWLEDGE_SHARE = 0.5
"""Share of held-out regulation questions asked without their passage: what the model knows,
not what it reads (the DAPT effect on knowledge), scored apart as QA 'knowledge'. Training
questions always carry their passage, so no closed-book prompt is ever trained on."""


def context_for(question: dict, text: str, rng: random.Random, knowledge_share: float) -> str:
    """The context a request carries: none for a knowledge question, else ``excerpt``."""
    if question["topic"] == "regulation" and rng.random() < knowledge_share:
        return ""
    return excerpt(question, text, rng)


def excerpt(question: dict, text: str, rng: random.Random) -> str:
    """The context a request carries: the document's section (blank-line block) that states
    the answer, the first section stating each other figure the reference answer explains it
    with (the loan amount, rate and term behind a payment), and one other section, in document
    order, as a borrower pastes the relevant part of a Loan Estimate; the whole document for a
    decision, or when no section states the answer. So an explanation's figures can be checked
    against the request (``grounding.support``) and are not taught as made up."""
    truth = question["truth"]
    blocks = [b for b in re.split(r"\n\s*\n", text) if b.strip()]
    needle = value_text(truth) or truth["answer"]
    hits = [i for i, b in enumerate(blocks) if needle.casefold() in b.casefold()]
    if truth["mode"] == "decision" or not hits or len(blocks) < 3:
        return text
    printed = [{(kind, abs(round(value, 2))) for kind, value, _, _ in figures(b)} for b in blocks]
    keep = {hits[0]}
    for kind, value, _, _ in figures(question["chosen"]):
        stating = [i for i, p in enumerate(printed) if (kind, abs(round(value, 2))) in p]
        if stating and keep.isdisjoint(stating):
            keep.add(stating[0])
    others = [i for i in range(len(blocks)) if i not in keep]
    keep |= {rng.choice(others)} if others else set()
    return "\n\n".join(blocks[i] for i in sorted(keep))


def grounded_answer(question: dict, context: str) -> str:
    """The reference answer, opened by the context's quote of its value when it has one
    (``tasks.grounding``); answers without a value in the context (a decision, a computed
    difference, a rule) are as written."""
    value = value_text(question["truth"])
    quote = (quote_for(context, value, question["truth"]["question"])
             if value and question["topic"] != "regulation" else None)
    return grounded(question["chosen"], quote, ASKED.get(question["topic"])) if quote \
        else question["chosen"]


def ask(question: dict, context: str, rng: random.Random) -> str:
    """The prompt: one phrasing in one voice, before or after the context (alone without)."""
    phrasing = rng.choice(question["phrasings"]).format(question=question["truth"]["question"])
    voice = rng.choice(_VOICES).replace("{q}", phrasing)
    layout = rng.choice(_LAYOUTS)
    return layout.replace("{q}", voice).replace("{doc}", context) if context else voice
