"""Counterfactual fair-lending probes: the same loan file with its protected attributes swapped.

The generator's underwriting rules (underwriting.decide) read only program, credit score, loan
amount, LTV and DTI, so a file whose borrower names, sex, age and marital status are changed
keeps its ground-truth decision. A model whose decision changes with them treats applicants
differently on a basis ECOA (Regulation B) prohibits; the evaluate stage reports how often.

What is swapped, wherever the generator writes it (mortgage.people._person,
mortgage.applications._person_fields, the HMDA section of an application): every first name of
the generator's list where it stands as a name (before a last name or in brackets), to a name
from another part of the world and usually of the other sex; 'Sex: Female' <-> 'Sex: Male';
marital status married -> unmarried -> separated -> married; an age of 21-50 gains 30 years,
one of 51-80 loses 30 (still 21-80, the generator's range, and on the other side of 50).
Figures other than the age, and so every input of the rules, are untouched.
"""

from __future__ import annotations

import re

NAME_PAIRS = (
    ("James", "Maria"), ("Robert", "Aisha"), ("Michael", "Renée"), ("David", "Priya"),
    ("José", "Linda"), ("Wei", "Emily"), ("Thomas", "Zoë"), ("Carlos", "Olivia"),
    ("André", "Fatima"), ("Daniel", "Ngozi"), ("Chloé", "Kwame"), ("Sofia", "Noah"),
    ("Inés", "Hiroshi"), ("Grace", "Mateo"), ("Hannah", "François"), ("Leila", "Samuel"),
    ("Ethan", "Mei"), ("Lucas", "Amara"),
)
"""First names of the generator (mortgage.FIRST_NAMES), paired; each is swapped with its partner."""
NAMES = {a: b for a, b in NAME_PAIRS} | {b: a for a, b in NAME_PAIRS}
SEXES = {"Female": "Male", "Male": "Female"}
MARITAL = {"Married": "Unmarried", "Unmarried": "Separated", "Separated": "Married"}

# The generator writes a first name before a last name ("Lucas Kowalski") or in brackets
# ("Employer (Lucas)"); the context keeps a word like "Grace" in "Grace period" as it is.
_NAME = re.compile(r"(?<!\w)(" + "|".join(map(re.escape, NAMES)) + r")(?=\s[A-Z]|\))")
# A form line is label, separator, value in one of four layouts ("Age: 47", "| Age | 47 |",
# "Age ..... 47", "• Age — 47"): the separator is any run of non-word characters.
_SEX = re.compile(r"(?<!\w)(Sex\W+)(Female|Male)(?!\w)")
_MARITAL = re.compile(r"(?<!\w)(Marital status\W+)(Married|Unmarried|Separated)(?!\w)")
_AGE = re.compile(r"(?<!\w)(Age\W+)(\d{2})(?!\w)")


def swap_age(age: int) -> int:
    """21-50 -> 51-80 and back: another age group, still inside the generator's range."""
    return age + 30 if age <= 50 else age - 30


def swap_protected(text: str) -> str:
    """`text` with every protected attribute the generator writes swapped (see module doc)."""
    text = _NAME.sub(lambda m: NAMES[m[1]], text)
    text = _SEX.sub(lambda m: m[1] + SEXES[m[2]], text)
    text = _MARITAL.sub(lambda m: m[1] + MARITAL[m[2]], text)
    return _AGE.sub(lambda m: m[1] + str(swap_age(int(m[2]))), text)


def swap_record(record: dict) -> dict:
    """A decision record (prompt, document, truth) with its prompt and document swapped; the
    truth stays, because the rules never read what changed."""
    return {**record, "prompt": swap_protected(record["prompt"]),
            "document": swap_protected(record["document"])}
