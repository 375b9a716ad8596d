"""Routing requests in many voices: the paraphrase side of the routing generator (issue 20).

A classifier fitted on a few fixed templates learns the templates. Here a request is composed
of parts drawn independently (asks in phrases.py, pasted texts other than the generator's
documents in pastes.py): what it asks (one of the four structured tasks, or a conversational
kind), how the ask is worded (imperative or question, terse or wordy, with or without a format
instruction), what is pasted (a whole document, a few of its lines, a one-line quote, a loan
file's numbers written out, a customer's message, a piece of paperwork, a text that is no
mortgage document, or nothing), where the ask sits around it, chit-chat before or after it,
casual spelling and seeded typos. The labelling rule is tasks/routing.py's: the ask decides,
never the words.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from mortgagellm.datasets.mortgage import DOC_KINDS
from mortgagellm.datasets.tasks import pastes, phrases
from mortgagellm.datasets.tasks.sft import DECISION_KINDS, INTENT_KINDS

Take = Callable[[tuple[str, ...]], dict]
"""Hands out the next unused document of one of the given kinds (routing._Pool.take)."""

TASK_ASKS = {"decision": phrases.DECISION_ASKS, "doc_kind": phrases.DOC_KIND_ASKS,
             "intent": phrases.INTENT_ASKS, "summary": phrases.SUMMARY_ASKS}
TASK_DOCS = {"decision": DECISION_KINDS, "doc_kind": DOC_KINDS, "intent": INTENT_KINDS,
             "summary": DOC_KINDS}
LOAN_KINDS = ("loan_application", "underwriting_note", "loan_estimate", "closing_disclosure")
DOC_GROUPS = {"any": DOC_KINDS, "application": DECISION_KINDS, "email": INTENT_KINDS,
              "loan": LOAN_KINDS}
NOUNS = {"loan_application": "application", "underwriting_note": "underwriting note",
         "rate_sheet": "rate sheet", "loan_estimate": "Loan Estimate",
         "closing_disclosure": "Closing Disclosure", "appraisal_summary": "appraisal",
         "servicing_email": "letter", "customer_email": "email",
         "regulatory_explanation": "explainer"}
"""A document kind in a writer's words."""

_LONG_LAYOUTS = ("{ask}\n\n{doc}", "{doc}\n\n{ask}", "{ask}\n{doc}", "{doc}\n{ask}",
                 '{ask}\n"""\n{doc}\n"""', "{ask}\n```\n{doc}\n```",
                 "Here's the {noun}:\n\n{doc}\n\n{ask}", "{ask}\n---\n{doc}")
_SHORT_LAYOUTS = ('{ask} "{doc}"', "{ask} {doc}", "{ask} - '{doc}'", '"{doc}"\n{ask}',
                  "{doc} -- {ask}", "{ask}\n{doc}", 'From the {noun}: "{doc}"\n{ask}')
_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_NEIGHBOURS = {c: row[max(0, i - 1)] + row[i + 1:i + 2]
               for row in _ROWS for i, c in enumerate(row)}
_SHORTHAND = ((r"\bplease\b", "pls"), (r"\byou\b", "u"), (r"\bthanks\b", "thx"),
              (r"\bare\b", "r"), (r"\bwith\b", "w/"), (r"\bbecause\b", "bc"))


def typos(text: str, rng: random.Random, rate: float) -> str:
    """Seeded character noise on letters: each is, with probability `rate`, dropped, doubled,
    swapped with the next one or hit on a neighbouring key."""
    chars, out, i = list(text), [], 0
    while i < len(chars):
        c = chars[i]
        if not c.isalpha() or rng.random() >= rate:
            out.append(c)
        elif (op := rng.randrange(4)) == 1:
            out.append(c + c)
        elif op == 2 and i + 1 < len(chars):
            out += [chars[i + 1], c]
            i += 1
        elif op == 3 and c.lower() in _NEIGHBOURS:
            out.append(rng.choice(_NEIGHBOURS[c.lower()]))
        i += 1  # op 0 (or a swap / key with nothing to use) drops the letter
    return "".join(out)


def casual(text: str, rng: random.Random) -> str:
    """How people type in a hurry: lower case, no closing punctuation, chat shorthand."""
    u = rng.random()
    if u < 0.4:
        return text.lower()
    if u < 0.7:
        return text.rstrip(".?!")
    pattern, short = rng.choice(_SHORTHAND)
    return re.sub(pattern, short, text, flags=re.I)


def voice(text: str, rng: random.Random) -> str:
    """The ask as someone types it: casual with probability 0.3, typos with 0.25."""
    if rng.random() < 0.3:
        text = casual(text, rng)
    return typos(text, rng, rng.uniform(0.02, 0.06)) if rng.random() < 0.25 else text


def excerpt(text: str, rng: random.Random, most: int = 8) -> str:
    """3 to `most` consecutive non-empty lines of a document (all of a shorter one)."""
    lines = [line for line in text.splitlines() if line.strip()]
    size = min(len(lines), rng.randint(3, most))
    start = rng.randrange(len(lines) - size + 1)
    return "\n".join(lines[start:start + size])


def one_line(text: str, limit: int = 280) -> str:
    """A document's lines joined into one, cut at a word boundary within `limit` characters."""
    joined = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return joined if len(joined) <= limit else joined[:limit].rsplit(" ", 1)[0] + " ..."


def file_facts(doc: dict, rng: random.Random) -> str:
    """A loan file's numbers written out by hand in one of several styles (score, DTI, LTV,
    program, amount, income), from the document's ground truth."""
    n, fields = doc["ground_truth"]["numbers"], doc["ground_truth"]["summary_fields"]
    payment = n["loan_amount"] * (r := n["rate_pct"] / 1200) / (1 - (1 + r) ** -n["term_months"])
    housing = payment + (n["annual_taxes"] + n["annual_insurance"]) / 12
    v = {"score": int(n["credit_score"]), "program": fields["program"],
         "dti": round(100 * (housing + n["monthly_debts"]) / n["monthly_income"], 1),
         "ltv": round(100 * n["loan_amount"] / min(n["price"], n["appraised_value"]), 1),
         "loan": f"{n['loan_amount']:,.0f}", "income": f"{n['monthly_income']:,.0f}"}
    styles = ("FICO {score}, DTI {dti}%, LTV {ltv}%, {program}, ${loan} loan",
              "score {score} / dti {dti} / ltv {ltv} / {program}",
              "Borrower has a {score} credit score, {dti}% DTI and {ltv}% LTV on a {program} "
              "loan of ${loan}.",
              "- Credit score: {score}\n- DTI: {dti}%\n- LTV: {ltv}%\n- Program: {program}\n"
              "- Loan amount: ${loan}",
              "{program} | {score} | DTI {dti} | LTV {ltv} | income ${income}/mo")
    return rng.choice(styles).format(**v)


def hand_file(rng: random.Random) -> str:
    """A loan file as a loan officer types it from memory: three to seven drawn attributes, in
    drawn order and style (made up: the route does not depend on the decision)."""
    facts = [("FICO", f"{rng.randint(560, 820)}"), ("DTI", f"{rng.randint(15, 60)}%"),
             ("LTV", f"{rng.choice((50, 65, 75, 80, 85, 90, 95, 96.5, 97, 100))}%"),
             ("program", rng.choice(("conventional", "FHA", "VA", "USDA", "jumbo"))),
             ("reserves", f"{rng.randint(0, 12)} months"),
             ("job", f"{rng.randint(0, 15)} yrs same employer"),
             ("income", f"${rng.randint(3, 30)},{rng.randint(0, 9)}00/mo"),
             ("lates", f"{rng.choice((0, 0, 1, 2))} mortgage lates in 12 mo"),
             ("purpose", rng.choice(("purchase", "rate/term refi", "cash-out refi"))),
             ("occupancy", rng.choice(("primary", "second home", "investment"))),
             ("BK", f"chapter 7 discharged {rng.randint(1, 8)} yrs ago")]
    picked = rng.sample(facts, rng.randint(3, 7))
    style = rng.randrange(4)
    if style == 0:
        return ", ".join(f"{k} {v}" for k, v in picked)
    if style == 1:
        return " / ".join(v if k in ("program", "purpose") else f"{k} {v}" for k, v in picked)
    if style == 2:
        return "\n".join(f"- {k}: {v}" for k, v in picked)
    return "Borrower: " + "; ".join(f"{k} {v}" for k, v in picked) + "."


def pasted(doc: dict, rng: random.Random) -> tuple[str, bool]:
    """(what of the document is pasted, whether it is one short line): the whole text, some of
    its lines, or a one-line quote."""
    u = rng.random()
    if u < 0.45:
        return doc["text"], False
    if u < 0.75:
        return excerpt(doc["text"], rng), False
    return one_line(excerpt(doc["text"], rng, 5)), True


def fill(template: str, rng: random.Random, noun: str = "document", task: str = "") -> str:
    """A template's slots drawn from the banks (a second slot of a bank draws another entry)."""
    def two(bank: tuple[str, ...]) -> list[str]:
        return rng.sample(bank, 2)

    (product, product2), (doc_name, doc_name2) = two(phrases.PRODUCTS), two(phrases.DOC_NAMES)
    (regulation, regulation2), (action, action2) = two(phrases.REGULATIONS), two(phrases.ACTIONS)
    term, term2 = two(phrases.TERMS)
    money, money2 = (f"${rng.randint(1, 900) * 10 ** rng.randint(1, 3):,}" for _ in "ab")
    pct, pct2 = (f"{rng.randint(20, 80) / 8:.3f}%".replace("0%", "%") for _ in "ab")
    labels = rng.choice(phrases.LABEL_LISTS[task]) if task in phrases.LABEL_LISTS else ""
    return template.format(
        noun=noun, labels=labels, product=product, product2=product2, doc_name=doc_name,
        doc_name2=doc_name2, regulation=regulation, regulation2=regulation2, action=action,
        action2=action2, term=term, term2=term2, figure=rng.choice(phrases.FIGURES),
        topic=rng.choice(phrases.TOPICS), message=rng.choice(pastes.CUSTOMER_MESSAGES),
        money=money, money2=money2, pct=pct, pct2=pct2, score=rng.randint(560, 820))


def compose(ask: str, body: str, short: bool, noun: str, rng: random.Random) -> str:
    """The ask around the pasted body (or alone), with chit-chat before or after it."""
    ask = voice(ask, rng)
    if rng.random() < 0.2:
        ask = f"{voice(rng.choice(phrases.GREETINGS), rng)} {ask}"
    if body:
        layouts = _SHORT_LAYOUTS if short else _LONG_LAYOUTS
        text = rng.choice(layouts).format(ask=ask, doc=body, noun=noun)
    else:
        text = ask
    if rng.random() < 0.15:
        text += ("\n" if body else " ") + rng.choice(phrases.SIGN_OFFS)
    return text


def structured(ambiguous: bool, take: Take, rng: random.Random) -> tuple[str, str, dict]:
    """(request, asks, document or {}) of a structured task; ambiguous: an ask that names
    neither the task nor its labels. The document is the generator's one the request pastes
    (whole, in part, or its loan file's numbers); {} when it pastes a text of pastes.py."""
    task = rng.choice(tuple(TASK_ASKS))
    ask = rng.choice([a for a, explicit in TASK_ASKS[task] if explicit != ambiguous])
    u, doc, noun = rng.random(), {}, "document"
    if task == "decision" and u < 0.3:
        doc = take(TASK_DOCS[task])
        body, short = file_facts(doc, rng), True
    elif task == "decision" and u < 0.6:
        body, short, noun = hand_file(rng), True, "file"
    elif task in ("intent", "summary") and u < (0.4 if task == "intent" else 0.1):
        body, short, noun = rng.choice(pastes.CUSTOMER_MESSAGES), True, "message"
    elif task in ("doc_kind", "summary") and u < 0.35:
        body, short = rng.choice(pastes.SNIPPETS), True
    else:
        doc = take(TASK_DOCS[task])
        body, short = pasted(doc, rng)
    noun = NOUNS[doc["kind"]] if doc else noun
    ask = fill(ask, rng, noun, task)
    if rng.random() < 0.2:
        ask += rng.choice(phrases.FORMAT_TAILS["summary" if task == "summary" else "label"])
    return compose(ask, body, short, noun, rng), "summary" if task == "summary" else "label", doc


def conversational(ambiguous: bool, take: Take, rng: random.Random) -> tuple[str, str, dict]:
    """(request, asks, document or {}) of a conversational kind; ambiguous: its surface names
    labels, document types or a summary, or it pastes a text and asks something else of it."""
    template, asks, _, group = rng.choice([t for t in phrases.CONVERSATIONAL
                                           if t[2] == ambiguous])
    doc, body, short = {}, "", False
    if group == "other":
        body, short = rng.choice(pastes.OTHER_TEXTS), True
    elif group == "file":
        doc = take(DECISION_KINDS)
        body, short = file_facts(doc, rng), True
    elif group is not None and rng.random() < 0.25:
        body, short = rng.choice(pastes.SNIPPETS), True
    elif group is not None:
        doc = take(DOC_GROUPS[group])
        body, short = pasted(doc, rng)
    noun = NOUNS[doc["kind"]] if doc else "text" if group in (None, "other") else "document"
    return compose(fill(template, rng, noun), body, short, noun, rng), asks, doc


def request(route: str, ambiguous: bool, take: Take, rng: random.Random
            ) -> tuple[str, str, dict]:
    """One composed (request, asks, document or {}) of `route`."""
    if route == "structured":
        return structured(ambiguous, take, rng)
    return conversational(ambiguous, take, rng)
