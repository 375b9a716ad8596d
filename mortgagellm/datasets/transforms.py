"""The corpus stage's per-batch transforms: validate, normalise, quality flags, tokenize, mix, pack.

Each is a plain `f(batch: dict, ...) -> dict` over columns (lists or numpy arrays), the shape Ray
Data's map_batches passes; none imports Ray, so each is tested on hand-made batches. A rejected
document keeps its row with `reject` set (and its text dropped), so every input is accounted for
until the stage writes it to the shards, the quarantine or the duplicate list.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Any

import numpy as np

# --- validate --------------------------------------------------------------------------------

SNIPPET_CHARS = 300
"""How much of a rejected record the quarantine keeps (after PII redaction)."""


def validate(batch: dict, max_chars: int) -> dict:
    """Reject empty and oversized texts; rows a reader already rejected keep their reason."""
    reasons, texts, snippets = list(batch["reject"]), list(batch["text"]), list(batch["snippet"])
    for i, text in enumerate(texts):
        if reasons[i]:
            texts[i] = ""
            continue
        if not text.strip():
            reasons[i] = "empty_text"
        elif len(text) > max_chars:
            reasons[i] = "oversized"
        if reasons[i]:
            snippets[i], texts[i] = text[:SNIPPET_CHARS], ""
    return {**batch, "reject": reasons, "text": texts, "snippet": snippets}


# --- normalise -------------------------------------------------------------------------------

def repair_mojibake(text: str) -> str:
    """Repair text decoded with the wrong codec ("â€™" -> "’", "Ã©" -> "é") with ftfy.fix_text,
    which also folds ligatures and full-width forms and drops terminal escapes; ftfy changes a
    span only when its encode/decode chain yields well-formed UTF-8 and scores as less broken."""
    import ftfy

    return ftfy.fix_text(text, _ftfy_config())


@functools.cache
def _ftfy_config() -> Any:
    """ftfy's defaults less two that repair nothing: curly quotes are correct typography, and
    entities are decoded by strip_html after the markup is parsed (ftfy's "auto" guess would
    decode a page's &lt; first, turning escaped text into tags). One config object: keyword
    arguments are rebuilt into one per line, a quarter of fix_text's time on the corpus."""
    import ftfy

    return ftfy.TextFixerConfig(unescape_html=False, uncurl_quotes=False)


# Whether a text holds markup at all: a tag-like run or an entity. Prose with a bare "<" or "&"
# ("LTV < 80% & DTI > 43%") is not parsed, since an HTML parser would read "<80%..." as text but
# "<b and" as a tag and drop words.
_HTML_HINT = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>|&(?:[a-z]{2,8}|#\d{2,5});")
_HTML_BLOCKS = "p, div, li, tr, h1, h2, h3, h4, h5, h6, table, ul, ol, blockquote"


def strip_html(text: str) -> str:
    """Markup to text by an HTML5 parser (selectolax's lexbor): scripts, styles and comments
    dropped, <br> as a newline, a block's end as a blank line, table cells apart by a space,
    entities decoded. Text with no tag or entity is returned unchanged.

    A parser, unlike tag regexes, keeps a ">" inside a quoted attribute within its tag and
    reads unclosed or truncated tags as browsers do."""
    if not _HTML_HINT.search(text):
        return text
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(text)
    tree.strip_tags(["script", "style"])
    for node in tree.css("br"):
        node.replace_with("\n")
    for node in tree.css("td, th"):
        node.insert_after(" ")
    for node in tree.css(_HTML_BLOCKS):
        node.insert_after("\n\n")
    return tree.root.text(deep=True)


_WS = r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]"
# A run of blanks that is not one lone space (rewriting every single space cost 2x the time).
_SPACES = re.compile(rf"(?: {_WS}|[^\S \n\r\v\f\x1c-\x1f\x85\u2028\u2029]){_WS}*")
_INVISIBLE = re.compile(r"[\u200b-\u200d\u2060\ufeff\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_BLANK_LINES = re.compile(r"\n{3,}")
_LINE_EDGES = re.compile(r" \n ?|\n ")


def normalise_whitespace(text: str) -> str:
    """NFC; no control or zero-width characters; runs of spaces as one; at most one blank line;
    no spaces at line ends or around the text."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    text = _SPACES.sub(" ", _INVISIBLE.sub("", text))
    text = _LINE_EDGES.sub("\n", text)
    return _BLANK_LINES.sub("\n\n", text).strip()


def normalise(batch: dict) -> dict:
    """Batch transform: repair mojibake, strip HTML, normalise whitespace; flags what changed."""
    texts, repaired, stripped = [], [], []
    for text in batch["text"]:
        fixed = text if text.isascii() else repair_mojibake(text)
        plain = strip_html(fixed) if "<" in fixed or "&" in fixed else fixed
        texts.append(normalise_whitespace(plain))
        repaired.append(fixed != text)
        stripped.append(plain != fixed)
    return {**batch, "text": texts, "mojibake_repaired": np.array(repaired),
            "html_stripped": np.array(stripped)}


# --- quality ---------------------------------------------------------------------------------


_SYMBOL = re.compile(r"[^\w\s]|_")


def quality_reason(text: str, min_words: int, max_symbol_fraction: float,
                   max_repeated_line_fraction: float) -> str:
    """Why a cleaned text is not worth training on, or "" when it passes.

    too_short: fewer than min_words words. symbols: more than max_symbol_fraction of the
    non-space characters are neither letters nor digits (tables of markup, ASCII art).
    repetitive: more than max_repeated_line_fraction of the non-blank lines repeat an earlier
    line (boilerplate, scraped navigation). garbled: U+FFFD, the mark of undecodable bytes.
    """
    if len(text.split()) < min_words:
        return "too_short"
    visible = len(text) - text.count(" ") - text.count("\n")
    if visible and len(_SYMBOL.findall(text)) / visible > max_symbol_fraction:
        return "symbols"
    lines = [line for line in text.split("\n") if line]
    if lines and 1 - len(set(lines)) / len(lines) > max_repeated_line_fraction:
        return "repetitive"
    if "\ufffd" in text:
        return "garbled"
    return ""


def quality(batch: dict, min_words: int, max_symbol_fraction: float,
            max_repeated_line_fraction: float) -> dict:
    """Batch transform: a `quality` column, "" or the reason the text fails (see above); a
    failing text's start goes to `snippet` for the quarantine."""
    reasons, snippets = [], list(batch["snippet"])
    for i, (text, rejected) in enumerate(zip(batch["text"], batch["reject"], strict=True)):
        reason = "" if rejected else quality_reason(
            text, min_words, max_symbol_fraction, max_repeated_line_fraction)
        if reason:
            snippets[i] = text[:SNIPPET_CHARS]
        reasons.append(reason)
    return {**batch, "quality": reasons, "snippet": snippets}


# --- select, tokenize, mix, pack ------------------------------------------------------------


def select(batch: dict, drop: np.ndarray) -> dict:
    """Batch transform: the rows whose `order` is not in the sorted array `drop`."""
    order = np.asarray(batch["order"])
    at = np.minimum(np.searchsorted(drop, order), max(0, len(drop) - 1))
    keep = np.flatnonzero(drop[at] != order) if len(drop) else np.arange(len(order))
    return {k: [v[i] for i in keep] if isinstance(v, list) else np.asarray(v)[keep]
            for k, v in batch.items()}


def tokenize(batch: dict, tokenizer: Any, bos_id: int, eos_id: int) -> dict:
    """Batch transform: `input_ids` = BOS + tokens + EOS of each `text`, and `n_tokens`.

    `tokenizer` is a fast (Rust) tokenizers.Tokenizer, called once for the whole batch.
    """
    encoded = tokenizer.encode_batch(list(batch["text"]), add_special_tokens=False)
    ids = [np.array([bos_id, *e.ids, eos_id], dtype=np.int32) for e in encoded]
    return {**batch, "input_ids": ids, "n_tokens": np.array([len(i) for i in ids], np.int64)}


def repeats(order: np.ndarray, weight: float, salt: int) -> np.ndarray:
    """How often each document is used for a mixture weight: floor(weight), plus one more for a
    fraction weight - floor(weight) of documents chosen by a hash of their order key."""
    whole, part = divmod(weight, 1.0)
    u = np.asarray(order, np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(salt)
    u >>= np.uint64(11)
    return (whole + (u.astype(np.float64) / float(1 << 53) < part)).astype(np.int64)


def mix(batch: dict, weights: dict[str, float], salt: int) -> dict:
    """Batch transform: each row repeated per its source's mixture weight (0 drops it; a source
    without a weight keeps 1)."""
    counts = np.ones(len(batch["order"]), dtype=np.int64)
    sources = np.asarray(batch["source"])
    for source, weight in weights.items():
        mask = sources == source
        counts[mask] = repeats(np.asarray(batch["order"])[mask], weight, salt)
    index = np.repeat(np.arange(len(counts)), counts)
    return {k: [v[i] for i in index] if isinstance(v, list) else np.asarray(v)[index]
            for k, v in batch.items()}


def pack(batch: dict, seq_len: int, pad_id: int) -> dict:
    """Batch transform: documents' `input_ids` concatenated and cut into rows of seq_len.

    A document longer than the space left in a row continues in the next one. `segment_ids`
    numbers the (parts of) documents within each row from 1; the last row is padded with
    pad_id and segment 0. Output columns: input_ids, segment_ids (see PACKED_SCHEMA).
    """
    docs = [np.asarray(d, dtype=np.int32) for d in batch["input_ids"] if len(d)]
    if not docs:
        return {"input_ids": [], "segment_ids": []}
    flat = np.concatenate(docs)
    doc_of = np.repeat(np.arange(len(docs), dtype=np.int64), [len(d) for d in docs])
    n_rows = -(-len(flat) // seq_len)
    pad = n_rows * seq_len - len(flat)
    ids = np.concatenate([flat, np.full(pad, pad_id, np.int32)]).reshape(n_rows, seq_len)
    doc = np.concatenate([doc_of, np.full(pad, -1)]).reshape(n_rows, seq_len)
    segments = (doc - doc[:, :1] + 1).astype(np.int32)
    segments[doc < 0] = 0
    return {"input_ids": list(ids), "segment_ids": list(segments)}
