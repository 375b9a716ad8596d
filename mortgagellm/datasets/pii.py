"""PII redaction with surrogates that stay consistent within a document.

Seven kinds are found: e-mails, SSNs (123-45-6789, and 123 45 6789 when it is a valid SSN: area
not 000, 666 or 9xx, group not 00, serial not 0000, so a row of spaced figures is left alone),
phone numbers, street addresses, card numbers (16 digits, plain or in groups of four split by
spaces or dashes, passing the Luhn check: every real card number does, 9 in 10 other 16-digit
references do not, and those are kept), loan/account numbers (any stand-alone run of 8-12
digits) and person names. Names are recognised three ways, because no
list of names is ever complete: a known first name followed by a capitalised word; a capitalised
pair after a cue ("Dear", "Borrower name:", "From:", ...); the line after a sign-off
("Regards,"). Every part of a found name is then replaced wherever it stands alone in the same
document ("Employer (Mateo)" once "Mateo Smith" is known).

Surrogates: each value is replaced by a fake of the same shape chosen by a keyed hash of
(document key, kind, value), where the document key hashes the salt and the whole original
text. So the same SSN becomes the same fake SSN throughout a document (and in an exact copy of
it, which keeps exact dedupe working), but the same person gets unrelated fakes in unrelated
documents, and nobody can map a fake back without the original text.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator

KINDS = ("email", "ssn", "phone", "address", "card", "loan_number", "name")

_UP, _LOW = "A-ZÀ-ÖØ-Þ", "a-zß-öø-ÿ"
_WORD = rf"[{_UP}][{_UP}{_LOW}’'\-]*[{_LOW}]"  # "Renée", "O’Brien", "McAllister", "Ngozi"
_NUM_WORD = rf"(?:\d+(?:st|nd|rd|th)|{_WORD})"
_STREET_TYPES = (
    "Street|St|Avenue|Ave|Drive|Dr|Lane|Ln|Court|Ct|Road|Rd|Way|Place|Pl|Terrace|Ter|"
    "Boulevard|Blvd|Circle|Cir|Parkway|Pkwy|Highway|Hwy|Trail|Trl|Square|Sq|Row|Loop|Alley"
)

SHAPES = {
    "ssn": re.compile(r"\d{3}-\d{2}-\d{4}|(?!000|666|9)\d{3} (?!00)\d{2} (?!0000)\d{4}"),
    "phone": re.compile(r"(?:\+1[ .-]?)?(?:\(\d{3}\) ?|\d{3}[-.])\d{3}[-.]\d{4}"),
    "card": re.compile(r"\d{16}|\d{4}([- ])\d{4}\1\d{4}\1\d{4}"),
    "loan_number": re.compile(r"\d{8,12}"),
}
"""Shapes a number-like token must match in full; a 9-digit run after "SSN" is an SSN."""

# Every pattern starts with a character class, never \b or a look-behind: Python's re scans
# for such a prefix quickly, and a leading \b made the same scan five times slower.
_NUMBER = re.compile(r"[(+\d][\d()+\-. ]{6,18}\d")
_EMAIL_LEFT = re.compile(r"[A-Za-z0-9._%+-]{1,64}$")
_EMAIL_RIGHT = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_ADDRESS = re.compile(
    rf"\d{{1,6}} (?:{_NUM_WORD} ){{1,3}}(?:{_STREET_TYPES})\b\.?"
    rf"(?: (?:Apt|Unit|Suite|Ste|#)\.? ?[A-Za-z0-9-]+)?"
    rf"(?:, {_WORD}(?: {_WORD}){{0,2}},? [A-Z]{{2}} \d{{5}}(?:-\d{{4}})?)?")
_CAPS = re.compile(_WORD)
_CUE = re.compile(
    r"(?:Dear|Hello|Hi|Mr\.|Mrs\.|Ms\.|Dr\.|[Nn]ame is|[Nn]ame|Borrower|Co-borrower|Applicant|"
    r"Appraiser|Underwriter|Loan officer|Customer|Signed|From|To|Attn\.?)[ \t]*[:—|.\-]*[ \t]*$")
_SIGN_OFF = re.compile(r"(?:Regards|Best regards|Kind regards|Sincerely|Thanks|Thank you|Best|"
                       r"Respectfully|Cheers),?[ \t]*\n[ \t]*$")
_AFTER_NAME = re.compile(r"[ \t]*(?:$|[,<:(|\n])")

FIRST_NAMES = frozenset("""
Aaron Abigail Adam Adrian Ahmed Aisha Alan Albert Alejandro Alex Alexander Alexis Ali Alice Alicia
Amanda Amara Amber Amir Amy Ana Andre André Andrea Andrew Angela Anita Ann Anna Anne Anthony
Antonio Arjun Arthur Ashley Barbara Benjamin Beth Betty Beverly Bill Billy Bobby Brandon Brenda
Brian Bruce Bryan Carl Carlos Carmen Carol Caroline Catherine Charles Charlotte Chen Cheryl Chloe
Chloé Christina Christine Christopher Cindy Claire Clara Craig Crystal Cynthia Daniel Danielle
David Deborah Debra Denise Dennis Diana Diane Diego Dmitri Donald Donna Doris Dorothy Douglas
Dylan Edward Elena Elijah Elizabeth Ellen Emily Emma Eric Erica Erin Ethan Eugene Evelyn Farah
Fatima Fernando Frances Francisco François Frank Gabriel Gary George Gerald Gloria Grace Gregory
Hannah Harold Harry Heather Helen Henry Hiroshi Hui Ian Inés Isabel Isabella Jack Jacob
Jacqueline James Jamal Jane Janet Janice Jason Javier Jean Jeffrey Jennifer Jeremy Jerry Jesse
Jessica Joan Joe John Jonathan Jorge Jose José Joseph Joshua Joyce Juan Judith Judy Julia Julie
Justin Karen Katherine Kathleen Kathryn Keith Kelly Kenji Kenneth Kevin Kimberly Kwame Kyle Larry
Laura Lauren Leila Leo Liam Linda Lisa Logan Lori Louis Lucas Lucy Luis Madison Manuel Marco
Margaret Maria María Marie Marilyn Mark Martha Martin Mary Mateo Matthew Mei Megan Melissa Michael
Michelle Miguel Mohammed Monica Nancy Natalie Nathan Ngozi Nicholas Nicole Noah Olivia Omar
Oscar Pamela Patricia Patrick Paul Paula Pedro Peter Philip Priya Rachel Rafael Rahul Ralph
Raymond Rebecca Renée Richard Rita Robert Roberto Roger Ronald Rose Russell Ruth Ryan Samantha
Samuel Sandra Sara Sarah Scott Sean Sergio Sharon Shirley Sofia Sophia Stephanie Stephen Steven
Susan Tanya Teresa Terry Thomas Timothy Tina Tyler Valerie Victor Victoria Vincent Virginia
Walter Wayne Wei William Willie Xavier Yuki Yusuf Zachary Zoe Zoë
""".split())
"""Common first names; a name not listed is still caught by a cue or a sign-off."""

_NOT_NAMES = frozenset("""
Street Avenue Drive Lane Court Road Way Place Terrace Loan Loans Mortgage Bank Period Credit
Union Federal Savings Home Homes Lending Finance Financial Servicing Department Team Borrower
Borrowers Customer Customers Sir Madam Homeowner Applicant Applicants Information Rights Act
Regulation Section Appendix Bureau Disclosure Estimate Closing Summary Notice Statement Escrow
Payment Rate Lock Insurance Property Program Company Group Services Office Center Manager
Underwriter Appraiser Officer Specialist Support Representative Rep Subject Re Fwd Question
Help Please Thanks Thank You Hello Dear Sincerely Regards Best The This That And For With
""".split())
"""Capitalised words that end a name candidate ("Grace Period", "Dear Borrower")."""

FAKE_FIRST = (
    "Avery", "Blake", "Casey", "Dana", "Elliot", "Finley", "Harper", "Jordan", "Kendall", "Marlowe",
    "Morgan", "Parker", "Quinn", "Reese", "Riley", "Rowan", "Sawyer", "Skyler", "Tatum", "Emerson",
)
FAKE_LAST = (
    "Ashford", "Bellamy", "Calloway", "Dunmore", "Ellery", "Fairbanks", "Galloway", "Holloway",
    "Ingram", "Jessup", "Kingsley", "Lockwood", "Merriweather", "Northcott", "Pembrook",
    "Quill", "Radcliffe", "Stanhope", "Thornbury", "Whitlock",
)
_FAKE_STREETS = ("Alder", "Birch", "Chestnut", "Dogwood", "Hawthorn", "Juniper", "Linden",
                 "Magnolia", "Poplar", "Sycamore")
_FAKE_PLACES = (("Fairview", "KS"), ("Greenville", "SC"), ("Franklin", "TN"),
                ("Clinton", "IA"), ("Georgetown", "KY"), ("Salem", "MA"))


def document_key(text: str, salt: str) -> bytes:
    """The key every surrogate of one document derives from: a hash of salt and original text."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), key=salt.encode()[:64],
                           digest_size=16).digest()


def _draw(key: bytes, kind: str, value: str, attempt: int = 0) -> int:
    blob = f"{kind}\0{value}\0{attempt}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(blob, key=key, digest_size=8).digest(), "big")


def _digits_like(value: str, digits: str) -> str:
    """`value` with its last len(digits) digits replaced in place, separators kept."""
    out, todo = list(value), list(digits)
    for i in range(len(out) - 1, -1, -1):
        if out[i].isdigit() and todo:
            out[i] = todo.pop()
    return "".join(out)


def surrogate(kind: str, value: str, key: bytes, first: bool = True) -> str:
    """A fake of the same shape for one value; never the value itself. Numbers are keyed by
    their digits, so "(415) 555-2671" and "415.555.2671" get the same fake digits."""
    canonical = "".join(c for c in value if c.isdigit())[-16:] if kind in (
        "ssn", "phone", "card", "loan_number") else value.lower()
    for attempt in range(8):
        h = _draw(key, kind, canonical, attempt)
        if kind == "ssn":
            digits = f"{900 + h % 100}{h // 100 % 90 + 10}{h // 10**4 % 9000 + 1000}"
            fake = _digits_like(value, digits)
        elif kind == "phone":
            fake = _digits_like(value, f"{200 + h % 800}55501{h // 1000 % 100:02d}")
        elif kind == "card":  # a fake that still passes Luhn, so it reads as a card number
            body = f"4{h % 10**14:014d}"
            fake = _digits_like(value, body + next(d for d in "0123456789"
                                                   if luhn_ok(body + d)))
        elif kind == "loan_number":
            n = sum(c.isdigit() for c in value)
            fake = _digits_like(value, str(h % 9 + 1) + f"{h // 9:020d}"[-(n - 1):])
        elif kind == "email":
            first_name, last_name = FAKE_FIRST[h % 20], FAKE_LAST[h // 20 % 20]
            fake = f"{first_name.lower()}.{last_name.lower()}{h // 400 % 100}@example.net"
        elif kind == "address":
            fake = _fake_address(value, h)
        else:  # one word of a name
            fake = (FAKE_FIRST if first else FAKE_LAST)[h % 20]
        if fake != value:
            return fake
    raise AssertionError(f"no surrogate differs from {kind} value")  # 8 misses: p < 1e-10


def _fake_address(value: str, h: int) -> str:
    street = f"{h % 9000 + 100} {_FAKE_STREETS[h // 9000 % 10]} Street"
    if "," not in value:
        return street
    city, state = _FAKE_PLACES[h // 90000 % 6]
    return f"{street}, {city}, {state} {h // 540000 % 90000 + 10000}"


def _runs(text: str) -> list[list[re.Match]]:
    """Capitalised words in runs: neighbours separated by one space (or a middle initial)."""
    runs: list[list[re.Match]] = []
    for m in _CAPS.finditer(text):
        gap = text[runs[-1][-1].end():m.start()] if runs else ""
        if gap == " " or len(gap) == 4 and gap[1].isupper() and gap[2] == "." and gap[::3] == "  ":
            runs[-1].append(m)
        else:
            runs.append([m])
    return runs


def find_names(text: str, runs: list[list[re.Match]] | None = None) -> set[str]:
    """Full names (two or three capitalised words) that the three rules find in `text`."""
    found = set()
    for run in _runs(text) if runs is None else runs:
        words = [m.group() for m in run]
        for a, b in zip(words, words[1:]):
            if a in FIRST_NAMES and b not in _NOT_NAMES:
                found.add(f"{a} {b}")
        if not 2 <= len(words) <= 3 or any(w in _NOT_NAMES for w in words):
            continue
        before = text[max(0, run[0].start() - 40):run[0].start()]
        if (_CUE.search(before) or _SIGN_OFF.search(before)) and \
                _AFTER_NAME.match(text, run[-1].end()):
            found.add(" ".join(words))
    return found


def luhn_ok(value: str) -> bool:
    """The Luhn check every card number passes (its last digit is the check digit)."""
    digits = [int(c) for c in reversed(value) if c.isdigit()]
    return sum(d if i % 2 == 0 else (2 * d - 9 if d > 4 else 2 * d)
               for i, d in enumerate(digits)) % 10 == 0


def _shape(token: str) -> str | None:
    """The kind whose shape `token` matches in full (a card only if it passes Luhn)."""
    return next((k for k, p in SHAPES.items() if p.fullmatch(token)
                 and (k != "card" or luhn_ok(token))), None)


def _numbers(text: str) -> list[tuple[int, int, str]]:
    """Spans of SSNs, phones and loan numbers among the number-like tokens of `text`."""
    found = []
    for m in _NUMBER.finditer(text):
        start, token = m.start(), m.group()
        if start and text[start - 1] in "0123456789,$.-":
            continue  # part of an amount, a decimal or a longer number
        kind = _shape(token)
        if kind == "loan_number" and len(token) == 9 and text[max(0, start - 5):start] in (
                "SSN: ", " SSN "):
            kind = "ssn"
        if kind:
            found.append((start, m.end(), kind))
            continue
        for kind, p in SHAPES.items():  # a token that joins several values ("Ext 4 (217) ...")
            found += [(start + s.start(), start + s.end(), kind) for s in p.finditer(token)
                      if (kind != "card" or luhn_ok(s.group()))
                      and not token[s.end():s.end() + 1].isdigit()
                      and not token[s.start() - 1:s.start()].isdigit()]
    return found


def _emails(text: str) -> list[tuple[int, int, str]]:
    found, at = [], text.find("@")
    while at != -1:
        left = _EMAIL_LEFT.search(text, max(0, at - 64), at)
        right = _EMAIL_RIGHT.match(text, at + 1)
        if left and right:
            found.append((left.start(), right.end(), "email"))
        at = text.find("@", at + 1)
    return found


def spans(text: str) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, kind) of every PII value; earlier, then longer, wins.

    Name words get kind "first_name" or "last_name" (the position they hold in a found name).
    """
    found = _emails(text) + _numbers(text)
    found += [(m.start(), m.end(), "address") for m in _ADDRESS.finditer(text)]
    runs = _runs(text)
    names = [name.split(" ") for name in find_names(text, runs)]
    role = {w: "last_name" for name in names for w in name[1:]}
    role |= {name[0]: "first_name" for name in names}
    found += [(m.start(), m.end(), role[m.group()]) for run in runs for m in run
              if m.group() in role]
    found.sort(key=lambda s: (s[0], -(s[1] - s[0])))
    kept, end = [], 0
    for start, stop, kind in found:
        if start >= end:
            kept.append((start, stop, kind))
            end = stop
    return kept


def redact_text(text: str, salt: str) -> tuple[str, dict[str, int], str]:
    """(redacted text, number of values replaced per kind, text with each value masked by its
    kind as "<kind>", which near-dedupe compares)."""
    key = document_key(text, salt)
    out, masked, counts, last = [], [], dict.fromkeys(KINDS, 0), 0
    for start, stop, kind in spans(text):
        value = text[start:stop]
        if kind.endswith("_name"):
            fake, kind = surrogate("name", value, key, first=kind == "first_name"), "name"
        else:
            fake = surrogate(kind, value, key)
        out += [text[last:start], fake]
        masked += [text[last:start], f"<{kind}>"]
        counts[kind] += 1
        last = stop
    return "".join(out + [text[last:]]), counts, "".join(masked + [text[last:]])


def redact(batch: dict, salt: str) -> dict:
    """Batch transform: replace PII in `text` (and in `snippet`, the part of a rejected record
    the quarantine keeps); adds `masked_text` and pii_<kind> counts per document."""
    texts, masks, counts = [], [], {f"pii_{kind}": [] for kind in KINDS}
    for text in batch["text"]:
        clean, found, masked = redact_text(text, salt) if text else (text, dict.fromkeys(KINDS, 0),
                                                                     text)
        texts.append(clean)
        masks.append(masked)
        for kind in KINDS:
            counts[f"pii_{kind}"].append(found[kind])
    snippets = [redact_text(s, salt)[0] if s else s for s in batch["snippet"]]
    return {**batch, "text": texts, "masked_text": masks, "snippet": snippets, **counts}


def leaked(text: str, values: Iterator[str]) -> list[str]:
    """The values that still occur in `text` (for tests and audits)."""
    return [v for v in values if v and v in text]
