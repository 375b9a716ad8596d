"""Planted noise: exact and near duplicates, mojibake, scraped HTML, empty and oversized texts,
each replacing a record at the rate ``NOISE_RATES`` gives."""

import copy
import random
from itertools import accumulate

NOISE_RATES = {
    "exact_duplicate": 0.010, "near_duplicate": 0.010, "mojibake": 0.005, "html": 0.005,
    "empty": 0.002, "oversized": 0.002,
}
"""Probability that a record is replaced by each kind of planted noise (3.4 % in total)."""

OVERSIZED_CHARS = 200_000
"""An "oversized" record repeats its text until it is longer than this."""


# Bytes 0x80-0x9F shown as Windows-1252 shows them; the five it leaves undefined stay C1
# controls, which is what real mojibake (and ftfy's "sloppy-windows-1252") looks like.
_CP1252 = {b: bytes([b]).decode("cp1252") for b in range(0x80, 0xA0)
           if b not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)}
_SYNONYMS = {"please": "kindly", "about": "regarding", "must": "shall", "your": "the",
             "will": "shall", "can": "may", "also": "additionally", "the": "this", "is": "remains"}


def mojibake(text: str) -> str:
    """UTF-8 bytes misread as Windows-1252: ’ -> â€™, é -> Ã©."""
    return text.encode("utf-8").decode("latin-1").translate(_CP1252)


def htmlify(rng: random.Random, text: str) -> str:
    """Text as scraped from a web page: escaped entities, <p>/<br> markup, stray script/style."""
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    body = "".join(f"<p>{p.replace(chr(10), '<br>')}</p>" for p in escaped.split("\n\n"))
    junk = rng.choice(('<script type="text/javascript">var _trk = window._trk || [];</script>',
                       "<style>p{margin:0}</style>", "<!-- tracking pixel -->"))
    return f'<div class="message">{junk}{body}&nbsp;</div>'


def _near_duplicate(rng: random.Random, text: str) -> str:
    """Swap up to three lowercase filler words and add a blank line; PII and numbers survive."""
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if w in _SYNONYMS]
    for i in rng.sample(candidates, min(3, len(candidates))):
        words[i] = _SYNONYMS[words[i]]
    lines = " ".join(words).split("\n")
    k = rng.randrange(len(lines))
    return "\n".join(lines[:k] + [""] + lines[k:]) + "\n"


def _noisy(rng: random.Random, record: dict, label: str, recent: list[dict]) -> dict:
    """Replace ``record`` by its noisy variant ``label``; duplicates copy a recent clean record."""
    source = rng.choice(recent) if label.endswith("duplicate") else record
    noisy = {**copy.deepcopy(source), "doc_id": record["doc_id"]}
    truth, text = noisy["ground_truth"], source["text"]
    if label.endswith("duplicate"):
        truth["duplicate_of"] = source["doc_id"]
        noisy["text"] = _near_duplicate(rng, text) if label == "near_duplicate" else text
    elif label == "mojibake":
        noisy["text"] = mojibake(text)
        truth["pii"] = [{**p, "value": mojibake(p["value"])} for p in truth["pii"]]
    elif label == "html":
        noisy["text"] = htmlify(rng, text)
    elif label == "empty":
        noisy["text"] = rng.choice(("", " ", "\n", "\t\n  "))
        truth["facts"], truth["pii"] = [], []
    else:
        noisy["text"] = "\n\n".join([text] * (OVERSIZED_CHARS // (len(text) + 2) + 1))
    truth["noise"] = label
    return noisy


_NOISE_CUM = list(accumulate(NOISE_RATES.values()))


def _draw_noise(rng: random.Random) -> str | None:
    u = rng.random()
    return next((lab for lab, cum in zip(NOISE_RATES, _NOISE_CUM, strict=True) if u < cum), None)


def _applies(label: str | None, record: dict, recent: list[dict]) -> bool:
    """Whether the drawn noise can hit this record: duplicates need an earlier clean record,
    and mojibake needs a non-ASCII character to garble (ASCII reads the same in cp1252)."""
    if label is None or (label.endswith("duplicate") and not recent):
        return False
    return label != "mojibake" or not record["text"].isascii()
