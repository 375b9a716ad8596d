"""Grounded answers: an answer opens with the document's own words for the figure it gives, and
the figure it states can be checked against (and resolved to) the request's context.

A grounded reference answer is ``Source for <what is asked>: “<quote>”`` on its first line, then
the answer. The quote is the few words before one value (a figure or a date) on one line of the
context, and the value: ``Source for the monthly principal and interest: “Monthly principal &
interest: $2,702.68”``. Saying what it looks for first, the model names the line right after the
topic it was asked about (PITI vs P&I were confused without). Lines are read as text: table pipes
and dot leaders become ``: `` (``line_text``), so the quote reads the same in a Markdown table, a
dotted form or prose.

``resolve`` is the serving-side guard: it finds the context quote a model's source line means
(the same words, by overlap) and puts that quote's value, verbatim, in place of the value the
model wrote, in the quote and in the answer. A small model that names the right line but cannot
copy its figure then states the document's figure; a model whose source matches no line is left
as it wrote and reported ungrounded. Scores are reported both ways.
"""

from __future__ import annotations

import functools
import itertools
import re

from mortgagellm.datasets.tasks.format import SOURCE, figures, normalise, rounds_to, split_source

_DATE = re.compile(r"\b(?:January|February|March|April|May|June|July|August|September|October"
                   r"|November|December) \d{1,2}, \d{4}\b")
_WORDS = 6
"""Words of a line kept before the value in a quote."""
MIN_OVERLAP = 0.5
"""Least word overlap (Jaccard, values left out) for a source to name a context quote."""


def line_text(line: str) -> str:
    """A context line as a quote reads it: table pipes and leaders as ': ', bullets dropped."""
    line = re.sub(r"\s*\|\s*", " | ", line).strip(" |•*#\t")
    line = re.sub(r"\s+\|\s+", ": ", line)
    return re.sub(r"\s*(?:—|\.{3,})\s*", ": ", line)


def values(text: str) -> list[tuple[int, int]]:
    """(start, end) of every value in ``text``: dates, and figures outside them."""
    dates = [m.span() for m in _DATE.finditer(text)]
    spans = list(dates)
    for _, _, _, m in figures(text):
        start, end = m.span()
        while start < end and text[start].isspace():
            start += 1
        if not any(a <= start < b for a, b in dates):
            spans.append((start, m.end()))
    return sorted(spans)


def _quote(line: str, start: int, end: int) -> str:
    head = re.split(r"(?<=[a-z0-9)])[.;]\s+", line[:start])[-1]
    return " ".join(head.split()[-_WORDS:] + [line[start:end].strip()])


def _cells(line: str) -> list[str]:
    """A table line's cells (pipes, else commas outside figures), [] for a Markdown rule."""
    line = line.strip()
    if "|" in line:
        cells = [c.strip() for c in line.strip("|").split("|")]
    else:
        cells = [c.strip() for c in re.split(r",(?!\d{3}\b)", line)]
    return [] if all(re.fullmatch(r"[-: ]*", c) for c in cells) else cells


def _grid(lines: list[str], start: int) -> list[list[str]]:
    """The grid that starts at ``start``: a header of 3 or more short cells, then rows with as
    many cells, each stating values (a rate sheet's FICO rows by LTV columns, in pipes or
    commas; a Markdown rule skipped), header first; [] when none starts there."""
    header = _cells(lines[start])
    if len(header) < 3 or max(map(len, header)) > 24:
        return []
    grid, end = [header], start + 1
    while end < len(lines) and (len(cells := _cells(lines[end])) == len(header) or not cells):
        if cells and not all(values(c) for c in cells[1:]):
            break
        grid += [cells] if cells else []
        end += 1
    return grid if len(grid) >= 2 else []


def _quoted(context: str) -> list[tuple[str, str]]:
    """(quote, value) of every value the context states, in reading order. A line's quote is
    the words before the value (``_quote``); a grid cell's names its row and column,
    ``700-719, 90.01-95: 6.000%``; a cell of a ``label: a x / b y`` line, the label and its
    own part, ``FICO 700-719: LTV 90.01-95 6.000%``: the words before either are other cells."""
    lines, out, i = context.splitlines(), [], 0
    while i < len(lines):
        if grid := _grid(lines, i):
            for label, *cells in grid[1:]:
                out += [(f"{label}, {column}: {cell}", cell)
                        for column, cell in zip(grid[0][1:], cells)]
            i += len(grid) + sum(not _cells(line) for line in lines[i:i + len(grid) + 1])
            continue
        line = line_text(lines[i])
        label, _, rest = line.partition(": ")
        for part in rest.split(" / ") if " / " in rest else [line]:
            head = f"{label}: " if part is not line else ""
            out += [(head + _quote(part, a, b), part[a:b].strip()) for a, b in values(part)]
        i += 1
    return out


def quotes(context: str) -> list[str]:
    """Every quote the context offers: one per value on each line (per cell of a grid), in
    reading order."""
    return [quote for quote, _ in _quoted(context)]


def quote_for(context: str, value: str, asked: str = "") -> str | None:
    """The quote that states ``value`` (a figure or date as printed): of several, the one
    sharing most words with ``asked`` (the question: a rate sheet states 6.000% in many
    cells), else the first; None when no line states it or its quote has no words to name it."""
    stating = [quote for quote, v in _quoted(context) if v == value]
    if not stating:
        return None
    want = _labels(asked)
    quote = max(stating, key=lambda q: len(_labels(q) & want)) if want else stating[0]
    return quote if _words(quote) else None


def _labels(text: str) -> set[str]:
    """Words and labels as written, numbers and ranges included (``700-719``, ``≤90``)."""
    return {w.rstrip(".") for w in re.findall(r"[^\s,:;?!“”\"()|]+", normalise(text))}


def grounded(answer: str, quote: str, asked: str | None = None) -> str:
    """The reference layout: the source line (naming what is asked, when given: the model
    first says what it looks for, then which line states it), then the answer."""
    return f"Source{f' for {asked}' if asked else ''}: “{quote}”\n{answer}"


def with_source(text: str, quote: str, answer: str) -> str:
    """``text``'s source line with ``quote`` in it, then ``answer``."""
    m = SOURCE.match(text)
    return f"{m['head']}“{quote}”\n{answer}"


def _words(quote: str) -> set[str]:
    """The quote's words without its value (other numbers, like '60-day', are words)."""
    spans = values(quote)
    head = quote[:spans[-1][0]] if spans else quote
    return set(normalise(head).replace(":", " ").split())


def value_of(quote: str) -> str | None:
    """The quote's value: its last figure or date, as printed."""
    spans = values(quote)
    return quote[spans[-1][0]:spans[-1][1]].strip() if spans else None


def verbatim(quote: str, context: str) -> bool:
    """Whether the quote is one the context offers (read as ``line_text`` reads lines)."""
    return normalise(quote) in {normalise(q) for q in quotes(context)}


def resolve(text: str, context: str) -> tuple[str, dict]:
    """``text`` with its source quote and that quote's value replaced by the context's, when the
    source names a context quote; and what happened: {source, verbatim, resolved, changed}."""
    quote, answer = split_source(text)
    if quote is None:
        return text, {"source": False, "verbatim": False, "resolved": False, "changed": False}
    if verbatim(quote, context):
        return text, {"source": True, "verbatim": True, "resolved": True, "changed": False}
    words, best, score = _words(quote), None, 0.0
    for candidate in quotes(context):
        other = _words(candidate)
        overlap = len(words & other) / max(1, len(words | other))
        if overlap > score:
            best, score = candidate, overlap
    true = best and value_of(best)
    if best is None or score < MIN_OVERLAP or true is None:
        return text, {"source": True, "verbatim": False, "resolved": False, "changed": False}
    fixed = with_source(text, best, restate(answer, true))
    return fixed, {"source": True, "verbatim": False, "resolved": True, "changed": fixed != text}


def kind_of(value: str) -> str:
    """A value's kind: 'date', or its figure's 'money', 'percent' or 'plain'."""
    found = figures(value) if not _DATE.fullmatch(value) else []
    return found[0][0] if found else "date"


def restate(answer: str, true: str) -> str:
    """The answer with its first value of ``true``'s kind (money, percent, plain figure or
    date) written as ``true``: the model may miscopy its own quote's figure as well."""
    kind = kind_of(true)
    for a, b in values(answer):
        if kind_of(answer[a:b].strip()) == kind:
            return answer[:a] + true + answer[b:]
    return answer


def _derived(kind: str, value: float, decimals: int, given: dict[str, list[float]]) -> bool:
    """Whether ``value`` (printed to ``decimals`` places) is arithmetic on the context's figures
    that the reference explanations do: a sum or difference of two of its kind, a twelfth or
    twelve times one (monthly from annual), or, for a percentage, one money figure as a share
    of another or of the sum of two (LTV, DTI)."""
    same = given.get(kind, [])
    near = functools.partial(rounds_to, figure=value, decimals=decimals)
    if any(near(a / 12) or near(a * 12) for a in same):
        return True
    if any(near(a + b) or near(abs(a - b)) for a, b in itertools.combinations(same, 2)):
        return True
    money = [m for m in given.get("money", []) if m]
    if kind != "percent" or not money:
        return False
    shares = money + [a + b for a, b in itertools.combinations(money, 2)]
    return any(near(100 * s / c) for s in shares for c in money)


def support(answer: str, context: str) -> dict:
    """Which values of an answer (after its source line) the context supports: ``stated`` there
    (a date as printed; a figure of the same kind and value), ``derived`` from its figures
    (``_derived``), else ``unsupported``, listed as printed. ``resolve`` checks the one figure
    the source names; a small model's explanation invents others, and this finds them.
    {figures, stated, derived, unsupported: [...]}."""
    _, body = split_source(answer)
    dates = {context[a:b] for a, b in values(context) if _DATE.fullmatch(context[a:b])}
    given: dict[str, list[float]] = {}
    for kind, value, _, _ in figures(context):
        given.setdefault(kind, []).append(abs(round(value, 2)))  # a credit as its amount
    counts, unsupported = {"stated": 0, "derived": 0}, []
    for a, b in values(body):
        text = body[a:b].strip()
        if _DATE.fullmatch(text):
            verdict = "stated" if text in dates else None
        else:
            kind, value, decimals, _ = figures(text)[0]
            verdict = ("stated" if abs(round(value, 2)) in given.get(kind, []) else
                       "derived" if _derived(kind, value, decimals, given) else None)
        if verdict:
            counts[verdict] += 1
        else:
            unsupported.append(text)
    return {"figures": counts["stated"] + counts["derived"] + len(unsupported), **counts,
            "unsupported": unsupported}
