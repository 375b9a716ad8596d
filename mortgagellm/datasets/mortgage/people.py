"""Who appears in the synthetic documents: fictional borrowers with their addresses, phones and
loan numbers, and the lenders and employers they deal with.

All people, SSNs (area 900-999, never issued), phones (555-01xx), e-mails (example.com /
example.org), loan numbers and lenders are fictional.
"""

import random
import unicodedata

FIRST_NAMES = (
    "James", "Maria", "Robert", "Aisha", "Michael", "Renée", "David", "José", "Linda", "Wei",
    "Priya", "Thomas", "Zoë", "Carlos", "Emily", "André", "Fatima", "Daniel", "Chloé", "Kwame",
    "Sofia", "Noah", "Inés", "Olivia", "Hiroshi", "Grace", "Mateo", "Hannah", "François",
    "Leila", "Samuel", "Ngozi", "Ethan", "Mei", "Lucas", "Amara",
)
"""First names borrowers are drawn from; ``fairness.NAME_PAIRS`` pairs every one of them."""
_LAST = (
    "Smith", "Johnson", "García", "Williams", "Nguyen", "Brown", "Patel", "Jones", "Müller",
    "Kim", "Martínez", "Okafor", "Davis", "O’Brien", "Chen", "Wilson", "Rodríguez", "Anderson",
    "Kowalski", "Thomas", "Hernández", "Moore", "Ali", "Jackson", "Schäfer", "Lee", "Peña",
    "Walker", "Cohen", "Singh",
)
_STREETS = (
    "Oak", "Maple", "Cedar", "Elm", "Pine", "Willow", "Lakeview", "Highland", "Ridge", "Sunset",
    "Park", "Washington", "Lincoln", "Main", "Church", "Mill", "River", "Spring", "Hillcrest",
)
_SUFFIXES = ("Street", "Avenue", "Drive", "Lane", "Court", "Road", "Way", "Place", "Terrace")
_CITIES = (  # (city, state, ZIP prefix, area code)
    ("Springfield", "IL", "627", "217"), ("Austin", "TX", "787", "512"),
    ("Columbus", "OH", "432", "614"), ("Raleigh", "NC", "276", "919"),
    ("Tucson", "AZ", "857", "520"), ("Boise", "ID", "837", "208"),
    ("Tampa", "FL", "336", "813"), ("Madison", "WI", "537", "608"),
    ("Sacramento", "CA", "958", "916"), ("Denver", "CO", "802", "303"),
    ("Albany", "NY", "122", "518"), ("Richmond", "VA", "232", "804"),
    ("Portland", "OR", "972", "503"), ("Omaha", "NE", "681", "402"),
)
_LENDERS = (
    "Harborview Home Loans", "Prairie Hearth Mortgage", "Bluestone Lending",
    "Cedar Point Savings Bank", "Granite Key Mortgage", "Riverbend Federal Credit Union",
    "Lantern Bay Mortgage", "Northfield Home Finance",
)
_EMPLOYERS = (
    "Lakeside Regional Hospital", "Tri-County School District", "Northwind Logistics",
    "Bright Harbor Software", "Valley Fresh Grocers", "Ironwood Manufacturing",
    "Summit County Government", "Blue Heron Dental Group", "Redline Freight", "self-employed",
)

def _phone(rng: random.Random, area: str) -> str:
    n = f"01{rng.randint(0, 99):02d}"
    return rng.choice((f"({area}) 555-{n}", f"{area}-555-{n}", f"{area}.555.{n}"))


def _address(rng: random.Random, city: tuple | None = None) -> str:
    """A street address; pass ``city`` to keep comparable sales in the subject's town."""
    name, state, zip3, _ = city or rng.choice(_CITIES)
    unit = f" Apt {rng.randint(1, 30)}{rng.choice('ABCD')}" if rng.random() < 0.15 else ""
    street = f"{rng.randint(10, 9899)} {rng.choice(_STREETS)} {rng.choice(_SUFFIXES)}{unit}"
    return f"{street}, {name}, {state} {zip3}{rng.randint(1, 99):02d}"


def _person(rng: random.Random, last: str | None = None) -> dict:
    """A fictional person: PII and the protected attributes ECOA names."""
    first, last = rng.choice(FIRST_NAMES), last or rng.choice(_LAST)
    handle = unicodedata.normalize("NFKD", f"{first}.{last}".lower()).encode("ascii", "ignore")
    domain = rng.choice(("example.com", "example.org"))
    return {
        "name": f"{first} {last}", "first": first, "last": last,
        "ssn": f"{rng.randint(900, 999)}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}",
        "phone": _phone(rng, rng.choice(_CITIES)[3]),
        "email": f"{handle.decode()}{rng.randint(1, 99)}@{domain}",
        "address": _address(rng),
        "sex": rng.choice(("female", "male")),
        "age": rng.randint(21, 80),
        "marital_status": rng.choice(("married", "unmarried", "separated")),
    }


def _loan_number(rng: random.Random) -> str:
    return f"{rng.choice(('10', '20', '31', '47'))}{rng.randint(10_000_000, 99_999_999)}"
