"""The hand-written code that well-kept libraries replaced (main at 1f6bbc5), frozen as an oracle.

Tests check the libraries against it where the outputs must agree, and
benchmarks/cleaning_changes.py counts the generated corpus's documents whose cleaned text
changed. Nothing in mortgagellm/ imports it.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

# --- mojibake: cp1252 inversion (now ftfy.fix_text) -----------------------------------------

_BYTE_OF = {(bytes([b]).decode("cp1252", "ignore") or chr(b)): b for b in range(0x80, 0x100)}
_LEAD2 = "".join(c for c, b in _BYTE_OF.items() if 0xC2 <= b <= 0xDF)
_LEAD3 = "".join(c for c, b in _BYTE_OF.items() if 0xE0 <= b <= 0xEF)
_LEAD4 = "".join(c for c, b in _BYTE_OF.items() if 0xF0 <= b <= 0xF4)
_CONT = "".join(c for c, b in _BYTE_OF.items() if 0x80 <= b <= 0xBF)
_MOJIBAKE = re.compile(
    f"(?:[{re.escape(_LEAD2)}][{re.escape(_CONT)}]|[{re.escape(_LEAD3)}][{re.escape(_CONT)}]{{2}}"
    f"|[{re.escape(_LEAD4)}][{re.escape(_CONT)}]{{3}})+")
_LEAD = re.compile("[\u00c2-\u00f4]")


def _unmangle(match: re.Match) -> str:
    try:
        return bytes(_BYTE_OF[c] for c in match.group()).decode("utf-8")
    except UnicodeDecodeError:
        return match.group()


def repair_mojibake(text: str) -> str:
    """Undo UTF-8-read-as-cp1252 run by run; the rest is kept."""
    if not _LEAD.search(text):
        return text
    return _MOJIBAKE.sub(_unmangle, text)


# --- HTML to text: regexes (now selectolax) --------------------------------------------------

_HTML_HINT = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>|&(?:[a-z]{2,8}|#\d{2,5});")
_HTML_DROP = re.compile(r"<(script|style)\b.*?</\1\s*>|<!--.*?-->", re.S | re.I)
_HTML_BREAK = re.compile(r"<br\s*/?>", re.I)
_HTML_BLOCK = re.compile(r"</(?:p|div|li|tr|h[1-6]|table|ul|ol|blockquote)\s*>", re.I)
_HTML_TAG = re.compile(r"</?[A-Za-z][^<>]*>")


def strip_html(text: str) -> str:
    """Markup to text with regexes."""
    if not _HTML_HINT.search(text):
        return text
    text = _HTML_DROP.sub("", text)
    text = _HTML_BREAK.sub("\n", text)
    text = _HTML_BLOCK.sub("\n\n", text)
    return html.unescape(_HTML_TAG.sub("", text))


def normalise_text(text: str) -> str:
    """The old normalise() on one text: mojibake, HTML, then the (unchanged) whitespace rules."""
    from mortgagellm.datasets.transforms import normalise_whitespace

    fixed = text if text.isascii() else repair_mojibake(text)
    plain = strip_html(fixed) if "<" in fixed or "&" in fixed else fixed
    return normalise_whitespace(plain)


# --- evaluation metrics (now rouge-score and scikit-learn) ------------------------------------

_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F-measure by a hand-written LCS."""
    c, r = _ROUGE_TOKEN.findall(candidate.lower()), _ROUGE_TOKEN.findall(reference.lower())
    if not c or not r:
        return 0.0
    previous = [0] * (len(r) + 1)
    for token in c:
        row = [0]
        for j, other in enumerate(r):
            row.append(previous[j] + 1 if token == other else max(previous[j + 1], row[j]))
        previous = row
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(c), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def macro_f1(gold: Sequence[str], predicted: Sequence[str | None]) -> float:
    """Unweighted mean of per-class 2TP / (2TP + FP + FN) over gold and predicted classes."""
    classes = set(gold) | {p for p in predicted if p is not None}
    scores = []
    for c in sorted(classes):
        tp = sum(g == c and p == c for g, p in zip(gold, predicted))
        fp = sum(g != c and p == c for g, p in zip(gold, predicted))
        fn = sum(g == c and p != c for g, p in zip(gold, predicted))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)
