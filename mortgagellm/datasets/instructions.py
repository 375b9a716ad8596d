"""General format-following instructions and their checkers: what makes *instruct* differ from
*base*, and what the fidelity of any model is measured on.

Three formats: one word, a JSON object with one named key, a numbered list of n items. Every
answer ends the turn (the model must stop). Train and eval are split by a stable hash of the
question (or list category and length), so eval instructions are never trained on.
`preference_pairs` sets each reference answer against a violation of its format: DPO pairs that
teach an expert to keep instruct's formats.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from mortgagellm.datasets import vocab

FORMATS = ("one_word", "json", "numbered_list")

ONE_WORD = (
    "Answer in one word. {q}",
    "{q} Reply with a single word.",
    "In one word: {q}",
    "{q} One word only.",
)
JSON_KEY = (
    'Answer in JSON with the key "{key}". {q}',
    '{q} Respond as a JSON object with one key, "{key}".',
    'Return JSON like {{"{key}": ...}}. {q}',
)
NUMBERED = (
    "List {n} {cat} as a numbered list.",
    "Give me a numbered list of {n} {cat}.",
    "Name {n} {cat}, one per line, numbered.",
)
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*\.?")


@dataclass(frozen=True)
class Instruction:
    """One instruction: the prompt, a reference answer, and what the format check needs."""

    format: str
    prompt: str
    answer: str
    spec: dict = field(default_factory=dict)


def _questions() -> list[tuple[str, str, tuple[str, ...]]]:
    """(question, one-word answer, natural JSON keys) for every fact in the word lists."""
    qs = [
        (f"What is the capital of {c}?", city, ("city", "capital", "answer"))
        for c, city in vocab.CAPITALS.items()
        if " " not in city
    ]
    qs += [
        (f"What color is a {f}?", color, ("color", "answer"))
        for f, color in vocab.FRUIT_COLORS.items()
    ]
    qs += [
        (f"What is the opposite of {w}?", o, ("opposite", "word", "answer"))
        for w, o in vocab.OPPOSITES.items()
    ]
    words = vocab.NUMBER_WORDS
    qs += [
        (f"What is {words[a]} plus {words[b]}?", words[a + b + 1], ("result", "sum", "answer"))
        for a in range(6)
        for b in range(6)
        if a + b + 1 < len(words)
    ]
    return qs


def split_of(key: str) -> str:
    """'eval' for about a quarter of keys, else 'train' — stable across runs and machines."""
    return "eval" if hashlib.sha256(key.encode()).digest()[0] % 4 == 0 else "train"


def instructions(split: str, seed: int, n: int) -> Iterator[Instruction]:
    """n instructions of the given split ('train' or 'eval'), formats in rotation, seeded."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    rng = random.Random(f"instructions:{split}:{seed}")
    questions = [q for q in _questions() if split_of(q[0]) == split]
    lists = [
        (cat, k)
        for cat, items in vocab.CATEGORIES.items()
        for k in range(2, min(6, len(items) + 1))
        if split_of(f"{cat}:{k}") == split
    ]
    for i in range(n):
        fmt = FORMATS[i % len(FORMATS)]
        if fmt == "numbered_list":
            cat, k = rng.choice(lists)
            items = rng.sample(vocab.CATEGORIES[cat], k)
            answer = "\n".join(f"{j + 1}. {item}" for j, item in enumerate(items))
            yield Instruction(fmt, rng.choice(NUMBERED).format(n=k, cat=cat), answer, {"n": k})
            continue
        q, word, keys = rng.choice(questions)
        if fmt == "one_word":
            yield Instruction(fmt, rng.choice(ONE_WORD).format(q=q), word)
        else:
            key = rng.choice(keys)
            prompt = rng.choice(JSON_KEY).format(q=q, key=key)
            yield Instruction(fmt, prompt, json.dumps({key: word}), {"key": key})


def violation(instruction: Instruction, rng: random.Random) -> str:
    """The reference answer's content in a form that breaks the asked format, as a model that
    lost the instruction writes it: the word inside a sentence; the JSON's value bare, under
    another key or in a sentence; the list on one line, bulleted, one item short or one long
    (the first repeated: small models miscount, overshooting more often than not)."""
    if instruction.format == "one_word":
        word = instruction.answer
        return rng.choice((f"The answer is {word}.", f"{word} is the answer.",
                           f"It is {word}, I think."))
    if instruction.format == "json":
        key = instruction.spec["key"]
        word = json.loads(instruction.answer)[key]
        other = rng.choice([k for k in ("value", "response", "output") if k != key])
        return rng.choice((word, json.dumps({other: word}), f"The {key} is {word}."))
    if instruction.format == "numbered_list":
        items = [line.split(". ", 1)[1] for line in instruction.answer.split("\n")]
        numbered = [f"{j + 1}. {item}" for j, item in enumerate([*items, items[0]])]
        return rng.choice((", ".join(items), "\n".join(f"- {item}" for item in items),
                           "\n".join(numbered[:-2]), "\n".join(numbered)))
    raise ValueError(f"unknown instruction format {instruction.format!r}")


def preference_pairs(split: str, seed: int, n: int) -> list[dict]:
    """n format preference pairs: an instruction, its reference answer (chosen) and a
    `violation` of it (rejected), as DPO pairs with no document."""
    rng = random.Random(f"violations:{split}:{seed}")
    return [{"prompt": i.prompt, "document": "", "chosen": i.answer,
             "rejected": violation(i, rng), "format": i.format}
            for i in instructions(split, seed, n)]


def follows(instruction: Instruction, output: str) -> bool:
    """Whether output obeys the instruction's format (not whether the content is right)."""
    text = output.strip()
    if instruction.format == "one_word":
        return bool(_WORD.fullmatch(text))
    if instruction.format == "json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            return False
        return (
            isinstance(obj, dict)
            and list(obj) == [instruction.spec["key"]]
            and bool(str(obj[instruction.spec["key"]]).strip())
        )
    if instruction.format == "numbered_list":
        lines = text.split("\n")
        return len(lines) == instruction.spec["n"] and all(
            re.fullmatch(rf"{j + 1}\. \S.*", line) for j, line in enumerate(lines)
        )
    raise ValueError(f"unknown instruction format {instruction.format!r}")


def correct(instruction: Instruction, output: str) -> bool:
    """Exact match with the reference answer, ignoring surrounding space and case."""
    return output.strip().lower() == instruction.answer.strip().lower()
