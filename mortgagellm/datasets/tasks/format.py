"""The fixed answer format of every task: how a reference answer is laid out, how any model's
output is parsed back, and how it is scored — one copy, shared by set building, training
rewards (issue 6) and evaluation (issue 8).

Tasks and their answers:
- ``decision`` / ``doc_kind`` / ``intent`` / ``route``: exactly one label of ``LABELS[task]``.
- ``summary``: one ``field: value`` line per key field of the document (snake_case keys, the
  generator's order), then one ``summary: <sentence>`` line.
- ``qa``: free conversational text, optionally opening with a ``Source …: “…”`` line that quotes
  the document (``tasks.grounding``; the answer is read after it). A numeric answer is the first
  figure of the truth's kind in the text (first dollar amount for money, first percentage for
  a rate or ratio, first plain number otherwise), a decision answer the first decision word,
  any other answer a whole-word, case-insensitive occurrence of the reference.
"""

from __future__ import annotations

import re

from mortgagellm.datasets.mortgage import DOC_KINDS, INTENTS

DECISIONS = ("approve", "refer", "deny")
ROUTES = ("structured", "conversational")
LABELS: dict[str, tuple[str, ...]] = {
    "decision": DECISIONS, "doc_kind": DOC_KINDS, "intent": INTENTS, "route": ROUTES,
}
"""Label set of each classification task; a classification answer is exactly one of these."""

SFT_TASKS = ("decision", "doc_kind", "intent", "summary")
TASKS = SFT_TASKS + ("qa", "route")
NUMERIC_MODES = ("money", "percent", "plain")

# A figure: optional sign, optional $, digits with or without thousands commas, decimals, and
# a % or "percent". The look-behind keeps the tail of a range ("660-679") or a phone number
# from reading as a negative number.
_NUMBER = re.compile(
    r"(?<![\w.$-])(?P<sign>-)?(?P<dollar>\$)?(?P<sign2>-)?"
    r"(?P<digits>\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?P<frac>\.\d+)?"
    r"(?P<pct>\s?%|\s+percent\b)?"
)
_DECISION_WORD = re.compile(
    r"\b(approve|approved|approval|refer|referred|referral|deny|denied|denial)\b", re.I)
_FIELD_LINE = re.compile(r"([a-z][a-z_]*)\s*:\s*(.*\S)")
_CITATION = re.compile(
    r"§+\s*\d[\w.()-]*"
    r"|\b\d+\s+(?:CFR|C\.F\.R\.|U\.S\.C\.)\s+(?:§\s*)?\d[\w.()-]*"
    r"|\b(?:Section|Sec\.)\s+\d+[\w.()]*"
    r"|\b(?:[A-Z][\w-]*\s+){1,6}Act\s+of\s+\d{4}"
)


SOURCE = re.compile(r"\s*(?P<head>Source(?: for (?P<topic>[^:“\"\n]*))?:\s*)[“\"]"
                    r"(?P<quote>[^”\"\n]*)[”\"]\s*(?:\n|$)")
"""A grounded answer's first line: ``Source for <what is asked>: “<quote>”`` (or ``Source:``)."""


def split_source(text: str) -> tuple[str | None, str]:
    """(quote, the answer after it) of a grounded answer that opens with a ``Source …: “…”``
    line (``tasks.grounding``), or (None, text) without one."""
    m = SOURCE.match(text)
    return (m["quote"], text[m.end():]) if m else (None, text)


def figures(text: str) -> list[tuple[str, float, int, re.Match]]:
    """Every figure in ``text`` as (kind, value, decimals printed, match), in order."""
    out = []
    for m in _NUMBER.finditer(text):
        value = float(m["digits"].replace(",", "") + (m["frac"] or ""))
        if m["sign"] or m["sign2"]:
            value = -value
        kind = "money" if m["dollar"] else "percent" if m["pct"] else "plain"
        out.append((kind, value, len(m["frac"]) - 1 if m["frac"] else 0, m))
    return out


def normalise(text: str) -> str:
    """Case-folded, curly quotes straightened, whitespace collapsed: how free text is compared."""
    return " ".join(text.replace("’", "'").casefold().split())


def contains(text: str, phrase: str) -> bool:
    """Whether normalised ``phrase`` occurs in normalised ``text`` as whole words."""
    pattern = r"(?<!\w)" + re.escape(normalise(phrase)) + r"(?!\w)"
    return re.search(pattern, normalise(text)) is not None


def rounds_to(value: float, figure: float, decimals: int) -> bool:
    """Whether ``value`` agrees with ``figure`` as printed to ``decimals`` places (half a unit
    of the last printed digit either way), so an unrounded 36.84 % matches a printed 36.8 %."""
    return abs(value - figure) <= 0.5 * 10.0 ** -decimals + 1e-9


def format_summary(fields: dict[str, str], sentence: str) -> str:
    """The summary layout: ``key: value`` per field in the given order, then ``summary: ...``."""
    lines = [f"{key}: {value}" for key, value in fields.items()]
    if any("\n" in line for line in lines) or "\n" in sentence:
        raise ValueError(f"summary fields must be single lines: {fields}")
    return "\n".join(lines + [f"summary: {sentence}"])


def qa_truth(topic: str, question: str, answer: str, value: float | None,
             unit: str | None, **extra) -> dict:
    """The ground truth of a QA answer, with the scoring ``mode`` fixed once:
    'decision' for the decision topic, 'text' for dates and answers without a figure, else the
    kind of the answer's first figure, whose value and printed decimals are kept."""
    found = figures(answer) if unit != "date" else []
    mode = "decision" if topic == "decision" else found[0][0] if found else "text"
    figure, decimals = (found[0][1], found[0][2]) if found and mode != "decision" else (None, None)
    return {"topic": topic, "question": question, "answer": answer, "value": value, "unit": unit,
            "mode": mode, "figure": figure, "decimals": decimals, **extra}


def _parse_label(task: str, text: str) -> str | None:
    label = text.strip().strip("`'\"*").strip().rstrip(".!").strip().casefold()
    label = re.sub(r"[\s-]+", "_", label)
    return label if label in LABELS[task] else None


def _parse_summary(text: str) -> dict | None:
    fields: dict[str, str] = {}
    sentence = None
    for line in text.splitlines():
        m = _FIELD_LINE.fullmatch(line.strip())
        if m is None:
            continue
        key, value = m.groups()
        if key == "summary":
            sentence = sentence or value
        else:
            fields.setdefault(key, value)
    return {"fields": fields, "summary": sentence} if fields else None


def _parse_qa(text: str) -> dict | None:
    quote, text = split_source(text)
    if not text.strip():
        return None
    first: dict = dict.fromkeys(NUMERIC_MODES)
    for kind, value, _, _ in figures(text):
        if first[kind] is None:
            first[kind] = value
    word = _DECISION_WORD.search(text)
    decision = None
    if word:
        stem = word[1].lower()[:3]
        decision = {"app": "approve", "ref": "refer", "den": "deny"}[stem]
    return {**first, "decision": decision, "text": text.strip(), "source": quote}


def parse_answer(task: str, text: str):
    """A model's output for ``task`` -> its value, or None when it cannot be read.

    Labels: the label (case, surrounding quotes, a final period and spaces-for-underscores
    tolerated), None if it is not one of ``LABELS[task]``. summary: {"fields": {key: value},
    "summary": sentence or None}, None without a single ``key: value`` line. qa: {"money",
    "percent", "plain": first figure of each kind or None, "decision": first decision word
    or None, "text"}, None for blank output.
    """
    if task in LABELS:
        return _parse_label(task, text)
    if task == "summary":
        return _parse_summary(text)
    if task == "qa":
        return _parse_qa(text)
    raise ValueError(f"unknown task {task!r}; one of {', '.join(TASKS)}")


def _only_figure(text: str) -> tuple[float, int] | None:
    """(value, decimals) when the whole text is one figure ("$439,000", "5.500%", "360")."""
    found = figures(text)
    if len(found) == 1 and found[0][3].group(0).strip() == text.strip():
        return found[0][1], found[0][2]
    return None


def _same_value(got: str | None, want: str) -> bool:
    """A summary field matches: as a number when both are one figure, else as normalised text."""
    if got is None:
        return False
    a, b = _only_figure(got), _only_figure(want)
    if a and b:
        return rounds_to(a[0], *b)
    return normalise(got).rstrip(".") == normalise(want).rstrip(".")


def score(task: str, parsed, truth: dict) -> float:
    """Score a parsed answer against a record's truth; unparseable (None) scores 0.

    Labels: 1.0 if equal to truth["label"]. summary: the fraction of truth["summary_fields"]
    whose parsed value matches (figures compared as printed, text ignoring case and space).
    qa: 1.0 if the first figure of the truth's kind rounds to truth["figure"] (numeric modes),
    the first decision word is truth["answer"] (decision), or truth["answer"] occurs in the
    text (text); else 0.0.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; one of {', '.join(TASKS)}")
    if parsed is None:
        return 0.0
    if task in LABELS:
        return float(parsed == truth["label"])
    if task == "summary":
        fields = truth["summary_fields"]
        return sum(_same_value(parsed["fields"].get(k), v) for k, v in fields.items()) / len(fields)
    mode = truth["mode"]
    if mode in NUMERIC_MODES:
        got = parsed[mode]
        return float(got is not None and rounds_to(got, truth["figure"], truth["decimals"]))
    if mode == "decision":
        return float(parsed["decision"] == truth["answer"])
    return float(contains(parsed["text"], truth["answer"]))


def invented_citations(answer: str, document: str) -> list[str]:
    """Legal citations in ``answer`` (a §, CFR or U.S.C. cite, 'Section 12', '... Act of 1999')
    that the document does not contain: the grounded answers of these sets cite nothing the
    document does not, so any hit is invented."""
    cites = (c.rstrip(".") for c in _CITATION.findall(answer))
    return [c for c in cites if c not in document]
