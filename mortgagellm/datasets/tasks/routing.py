"""The routing set: requests labelled ``structured`` or ``conversational`` for the router's tier-1
classifier (issue 7).

Labelling rule — what the request asks for decides, never its tone or its words:
- ``structured`` when the answer it wants is a structured-task output: one label of a fixed set
  (underwriting decision, document kind, customer-query intent) or a summary / the key fields
  of a supplied text (``asks`` = label or summary);
- ``conversational`` for everything else: a single figure, a fact, an explanation or reason,
  advice, a definition, small talk (``asks`` = figure, fact, explanation, advice, definition,
  chat). When a request wants a label *and* an explanation, the explanation wins.

``ambiguous=True`` marks requests whose surface points the other way (a structured request in a
chatty voice without the label list, "extract the DTI", "summarise what escrow means",
"explain why this file was denied"); their label still follows the rule. Unambiguous requests
reuse the experts' own prompts (``tasks.sft``, ``tasks.qa``), so the router sees what the
experts are trained on, plus general questions and small talk without a document.

``variety`` is the share of requests composed by ``tasks.paraphrase`` instead (issue 20):
imperative and question forms, terse and wordy asks, whole or partial pasted documents, chit-chat,
typos, explanations that name products or servicing actions, and requests that are neither a
label nor a summary (writing, format, translation: ``asks`` = instruction). With 0 the set is
the templates' alone, as before issue 20.
"""

from __future__ import annotations

import random
from collections import defaultdict, deque
from collections.abc import Iterator

from mortgagellm.datasets import instructions
from mortgagellm.datasets.mortgage import DOC_KINDS
from mortgagellm.datasets.tasks import paraphrase
from mortgagellm.datasets.tasks import qa as tasks_qa
from mortgagellm.datasets.tasks import sft as tasks_sft
from mortgagellm.datasets.tasks.format import NUMERIC_MODES, ROUTES

ROUTE_OF_ASK = {
    "label": "structured", "summary": "structured", "figure": "conversational",
    "fact": "conversational", "explanation": "conversational", "advice": "conversational",
    "definition": "conversational", "chat": "conversational", "instruction": "conversational",
}
"""The labelling rule as a table: what a request asks for -> its route."""

_LOAN_KINDS = ("loan_application", "underwriting_note", "loan_estimate", "closing_disclosure")
_GROUPS = {"any": DOC_KINDS, "application": tasks_sft.DECISION_KINDS,
           "email": tasks_sft.INTENT_KINDS, "loan": _LOAN_KINDS, None: ()}
_TERMS = ("escrow", "PMI", "an APR", "discount points", "a rate lock", "forbearance",
          "a debt-to-income ratio", "loan-to-value", "a Loan Estimate", "a Closing Disclosure",
          "an FHA loan", "a VA loan", "a jumbo loan", "underwriting", "a payoff quote",
          "closing costs", "the right of rescission", "an adverse action notice", "a float-down",
          "an escrow shortage")
_FIGURES = ("monthly payment", "DTI", "LTV", "APR", "cash to close", "loan amount")

# (template, asks, document group). {doc} is the document, {noun} its kind in words, {term} a
# mortgage term and {figure} a figure's name.
_STRUCTURED = (
    ("Tag this document with its type.\n\n{doc}", "label", "any"),
    ("Return only the decision label for this file.\n\n{doc}", "label", "application"),
    ("Categorize the request in this email: escrow, payoff, forbearance, rate_lock or "
     "late_fee.\n\n{doc}", "label", "email"),
    ("TL;DR of this {noun}, in the standard summary layout:\n\n{doc}", "summary", "any"),
    ("Pull the key fields out of this document and summarise it.\n\n{doc}", "summary", "any"),
)
_CONVERSATIONAL = (
    ("What is {term}?", "definition", None), ("Can you explain {term} in plain English?",
                                              "definition", None),
    ("How does {term} work?", "definition", None),
    ("I keep hearing about {term}. What does it mean for me?", "definition", None),
    ("Should I pay points to lower my rate?", "advice", None),
    ("Is it better to put 20% down or keep more cash in savings?", "advice", None),
    ("How can I improve my chances of getting approved?", "advice", None),
    ("Should I lock my rate now or wait?", "advice", None),
    ("Can I afford a ${price},000 home on a ${salary},000 salary?", "advice", None),
    ("Is a 15-year or a 30-year mortgage better for me?", "advice", None),
    ("How much should I save for closing costs?", "advice", None),
    ("Hi there!", "chat", None), ("Thanks, that helps a lot.", "chat", None),
    ("Can you help me with my mortgage?", "chat", None),
    ("I'm buying my first home and feel overwhelmed.", "chat", None),
    ("Good morning — I have a few questions about my loan.", "chat", None),
    ("That makes sense, thank you!", "chat", None),
)
_AMBIGUOUS = (
    ("Is this loan going to be approved?\n\n{doc}", "label", "application"),
    ("What's the verdict on this file?\n\n{doc}", "label", "application"),
    ("Would you approve, refer or deny this one? Just curious what you think.\n\n{doc}",
     "label", "application"),
    ("What is this document?\n\n{doc}", "label", "any"),
    ("Can you tell me what kind of paperwork this is?\n\n{doc}", "label", "any"),
    ("What's this email about?\n\n{doc}", "label", "email"),
    ("What does this customer want?\n\n{doc}", "label", "email"),
    ("Give me the gist of this.\n\n{doc}", "summary", "any"),
    ("Can you walk me through what this {noun} says? Keep it short.\n\n{doc}", "summary", "any"),
    ("Tell me about this {noun}.\n\n{doc}", "summary", "any"),
    ("What are the key numbers in this {noun}?\n\n{doc}", "summary", "any"),
    ("Extract the {figure} from this {noun}.\n\n{doc}", "figure", "loan"),
    ("Summarize what {term} means.", "definition", None),
    ("Classify which loan program would suit me best: FHA, VA or conventional?", "advice", None),
    ("Give me the decision label for this file and explain why.\n\n{doc}", "explanation",
     "application"),
    ("Is this loan approved, and what can I do to improve my chances?\n\n{doc}", "advice",
     "application"),
    ("Categorize my options for lowering my monthly payment.", "advice", None),
    ("What kind of loan should I get?", "advice", None),
    ("What type of document do I need to bring to closing?", "advice", None),
    ("Summarize my options if I can't make my payment.", "advice", None),
)


class _Pool:
    """A document stream handed out by kind, in stream order, each document once."""

    def __init__(self, docs: Iterator[dict]):
        self._docs, self._waiting = docs, defaultdict(deque)

    def take(self, kinds: tuple[str, ...]) -> dict:
        for kind in kinds:
            if self._waiting[kind]:
                return self._waiting[kind].popleft()
        for doc in self._docs:
            if doc["kind"] in kinds:
                return doc
            self._waiting[doc["kind"]].append(doc)
        raise ValueError(f"document stream ended while looking for one of {kinds}")


def _vary(text: str, rng: random.Random) -> str:
    """Surface variety of a hand-written request: lower case, a dropped '?', a 'please'."""
    u = rng.random()
    if u < 0.1:
        return text.lower()
    if u < 0.2:
        return text.replace("?", "", 1)
    return f"Please — {text[0].lower()}{text[1:]}" if u < 0.28 else text


def _from_template(template: tuple, pool: _Pool, rng: random.Random) -> tuple[str, str, dict]:
    """(request, asks, document or {}) from a (template, asks, document group) row."""
    text, asks, group = template
    doc = pool.take(_GROUPS[group]) if group else {}
    head, sep, tail = text.partition("{doc}")
    head = head.format(noun=paraphrase.NOUNS.get(doc.get("kind"), "document"),
                       term=rng.choice(_TERMS),
                       figure=rng.choice(_FIGURES), price=rng.randint(150, 900),
                       salary=rng.randint(40, 250))
    return _vary(head, rng) + (doc["text"] + tail if sep else ""), asks, doc


INSTRUCTION_SHARE = 0.25
"""Share of the conversational expert prompts that are general format instructions (a one-word
answer, a JSON object, a numbered list; bootstrap's train split): the conversational expert is
trained to keep following them (dpo.sft.replay_instructions), and without them the router sent
28 of the 60 held-out ones to the structured expert ('Answer in JSON with the key ...')."""


def _expert_prompt(route: str, pool: _Pool, rng: random.Random) -> tuple[str, str, dict]:
    """A prompt the experts train on: an SFT prompt, or a DPO question (no decision topic,
    whose 'approved, referred or denied' wording makes it ambiguous), or a general format
    instruction the conversational expert replays (``INSTRUCTION_SHARE``)."""
    if route == "conversational" and rng.random() < INSTRUCTION_SHARE:
        drawn = list(instructions.instructions("train", rng.randrange(1 << 30),
                                               len(instructions.FORMATS)))
        return rng.choice(drawn).prompt, "instruction", {}
    if route == "structured":
        task = rng.choice(tuple(tasks_sft.PROMPTS))
        group = {"decision": "application", "intent": "email"}.get(task, "any")
        doc = pool.take(_GROUPS[group])
        asks = "summary" if task == "summary" else "label"
        return tasks_sft.sft_record(task, doc, rng)["prompt"], asks, doc
    while True:
        doc = pool.take(DOC_KINDS)
        options = [q for q in tasks_qa.questions(doc) if q["topic"] != "decision"]
        if options:
            question = rng.choice(options)
            asks = "figure" if question["truth"]["mode"] in NUMERIC_MODES else "fact"
            context = tasks_qa.excerpt(question, doc["text"], rng)
            return tasks_qa.ask(question, context, rng), asks, doc


def _request(route: str, ambiguous: bool, pool: _Pool, rng: random.Random,
             variety: float = 0.0) -> tuple:
    """One (request, asks, document) for the cell (route, ambiguous): composed by
    tasks.paraphrase with probability `variety`, else from the templates and expert prompts."""
    if variety and rng.random() < variety:
        return paraphrase.request(route, ambiguous, pool.take, rng)
    if ambiguous:
        if route == "conversational" and rng.random() < 0.3:
            doc = pool.take(tasks_sft.DECISION_KINDS)
            question = next(q for q in tasks_qa.questions(doc) if q["topic"] == "decision")
            return tasks_qa.ask(question, doc["text"], rng), "explanation", doc
        rows = [t for t in _AMBIGUOUS if ROUTE_OF_ASK[t[1]] == route]
        return _from_template(rng.choice(rows), pool, rng)
    extra = _STRUCTURED if route == "structured" else _CONVERSATIONAL
    if rng.random() < 0.5:
        return _expert_prompt(route, pool, rng)
    return _from_template(rng.choice(extra), pool, rng)


def routing_requests(docs: Iterator[dict], n: int, ambiguous_fraction: float,
                     rng: random.Random, exclude: frozenset[str] = frozenset(),
                     variety: float = 0.0) -> list[dict]:
    """n requests, half of each route, ``round(n * ambiguous_fraction)`` of them ambiguous,
    ``variety`` of them (in expectation) composed by tasks.paraphrase.

    Each: {request, route, ambiguous, asks, document ('' without one), doc_kind ('' without
    one)}. Requests in ``exclude`` (the eval set's, when building train) and repeats are drawn
    again.
    """
    if not 0.0 <= variety <= 1.0:
        raise ValueError(f"routing variety {variety} is a share: give a number in [0, 1]")
    n_ambiguous = round(n * ambiguous_fraction)
    cells = [(ROUTES[i % 2], i < n_ambiguous) for i in range(n)]
    rng.shuffle(cells)
    pool, seen, out = _Pool(iter(docs)), set(exclude), []
    for route, ambiguous in cells:
        for _ in range(1000):
            request, asks, doc = _request(route, ambiguous, pool, rng, variety)
            if request not in seen:
                break
        else:
            raise ValueError(f"no new {route} request (ambiguous={ambiguous}) in 1000 draws")
        if ROUTE_OF_ASK[asks] != route:
            raise ValueError(f"request asks for {asks} but was drawn for {route}: {request!r}")
        seen.add(request)
        out.append({"request": request, "route": route, "ambiguous": ambiguous, "asks": asks,
                    "document": doc.get("text", ""), "doc_kind": doc.get("kind", "")})
    return out
