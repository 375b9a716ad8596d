"""Deterministic synthetic mortgage corpus: every document comes with the truth it was made from.

``generate(seed, shard, num_docs)`` yields records {doc_id, source, kind, text, ground_truth}.
The same arguments give byte-identical records on any machine: every choice comes from a
``random.Random`` seeded by sha256(f"{seed}:{shard}"), and nothing reads the clock, uuid4,
locale or Python's salted ``hash()``. Numbers in the text are computed by ``finance`` and
decisions by ``underwriting``, so the ground truth is exact rather than annotated.

All people, SSNs (area 900-999, never issued), phones (555-01xx), e-mails (example.com /
example.org), loan numbers and lenders are fictional.
"""

import copy
import hashlib
import json
import random
import unicodedata
from collections.abc import Iterable, Iterator
from datetime import date, timedelta
from itertools import accumulate

import pyarrow as pa

from mortgagellm.datasets import finance, underwriting
from mortgagellm.datasets.finance import round_half_up
from mortgagellm.datasets.underwriting import PROGRAMS, REASONS

DOC_KINDS = (
    "loan_application",
    "underwriting_note",
    "rate_sheet",
    "loan_estimate",
    "closing_disclosure",
    "appraisal_summary",
    "servicing_email",
    "customer_email",
    "regulatory_explanation",
)
_KIND_CUM_WEIGHTS = list(accumulate((15, 12, 6, 8, 8, 8, 15, 18, 10)))

INTENTS = ("escrow", "payoff", "forbearance", "rate_lock", "late_fee")
"""Customer-query intents carried by servicing and customer e-mails."""

NOISE_RATES = {
    "exact_duplicate": 0.010,
    "near_duplicate": 0.010,
    "mojibake": 0.005,
    "html": 0.005,
    "empty": 0.002,
    "oversized": 0.002,
}
"""Probability that a record is replaced by each kind of planted noise (3.4 % in total)."""

OVERSIZED_BYTES = 200_000
"""An "oversized" record's text is repeated until it is longer than this many characters."""

QUESTIONS = {
    "payment": "What is the monthly principal and interest payment?",
    "housing": "What is the total monthly housing payment (PITI)?",
    "dti": "What is the debt-to-income ratio?",
    "ltv": "What is the loan-to-value ratio?",
    "income": "What is the total monthly income?",
    "decision": "What is the underwriting decision?",
    "apr": "What is the annual percentage rate (APR)?",
    "cash": "How much cash is needed to close?",
    "closing_costs": "What are the total closing costs?",
    "appraised": "What is the appraised value?",
}
"""Fixed wording of the computed-fact questions, so evaluations can group answers by question."""

RECORD_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        # large_string: oversized documents would overflow int32 offsets in big batches.
        pa.field("text", pa.large_string(), nullable=False),
        pa.field("ground_truth_json", pa.large_string(), nullable=False),
    ],
    metadata={"ground_truth_json": "json.dumps(ground_truth, sort_keys=True)"},
)
"""Arrow form of a record; ground_truth travels as one sorted-key JSON string."""

_FIRST = (
    "James", "Maria", "Robert", "Aisha", "Michael", "Renée", "David", "José", "Linda", "Wei",
    "Priya", "Thomas", "Zoë", "Carlos", "Emily", "André", "Fatima", "Daniel", "Chloé", "Kwame",
    "Sofia", "Noah", "Inés", "Olivia", "Hiroshi", "Grace", "Mateo", "Hannah", "François",
    "Leila", "Samuel", "Ngozi", "Ethan", "Mei", "Lucas", "Amara",
)
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
_CITIES = (
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
_DEBT_KINDS = ("Auto loan", "Student loan", "Credit card", "Personal loan", "Child support")
_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)
_PROGRAM_LABEL = {"conventional": "Conventional", "FHA": "FHA", "VA": "VA", "jumbo": "Jumbo"}
_PRICE_K = {"conventional": (150, 950), "FHA": (120, 560), "VA": (160, 750), "jumbo": (950, 3300)}
_DOWN_PCT = {
    "conventional": (3, 5, 5, 10, 15, 20, 20, 25),
    "FHA": (3.5, 3.5, 3.5, 5, 10),
    "VA": (0, 0, 0, 5, 10),
    "jumbo": (10, 20, 20, 25, 30),
}
_EPOCH = date(2023, 1, 2)


def _rng(seed: int, stream: str) -> random.Random:
    """A private generator for one stream; sha256 rather than hash() so it is unsalted."""
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _money(x: float) -> str:
    return f"${x:,.2f}"


def _dollars(x: float) -> str:
    return f"${x:,.0f}"


def _pct(x: float) -> str:
    return f"{x:.1f}%"


def _rate(x: float) -> str:
    return f"{x:.3f}%"


def _fmt_date(d: date, style: int) -> str:
    """Three US date styles; spelled out by hand because strftime follows the locale."""
    if style == 0:
        return f"{_MONTHS[d.month - 1]} {d.day}, {d.year}"
    return f"{d.month:02d}/{d.day:02d}/{d.year}" if style == 1 else d.isoformat()


def _fact(question: str, answer: str, value: float | None, unit: str | None) -> dict:
    return {"question": question, "answer": answer, "value": value, "unit": unit}


def _truth(kind: str, fields: dict, summary: str, facts: list, pii: list, **extra) -> dict:
    """Assemble a ground-truth dict; ``extra`` sets decision, reasons, intent or numbers."""
    unique_pii = list({(p["type"], p["value"]): p for p in pii}.values())
    return {
        "kind": kind,
        "decision": extra.get("decision"),
        "reasons": extra.get("reasons", []),
        "intent": extra.get("intent"),
        "summary_fields": fields,
        "reference_summary": summary,
        "facts": facts,
        "pii": unique_pii,
        "noise": None,
        "duplicate_of": None,
        "numbers": extra.get("numbers"),
    }


# --- people and applications -------------------------------------------------------------


def _phone(rng: random.Random, area: str) -> str:
    n = f"01{rng.randint(0, 99):02d}"
    return rng.choice((f"({area}) 555-{n}", f"{area}-555-{n}", f"{area}.555.{n}"))


def _address(rng: random.Random) -> str:
    city, state, zip3, _ = rng.choice(_CITIES)
    unit = f" Apt {rng.randint(1, 30)}{rng.choice('ABCD')}" if rng.random() < 0.15 else ""
    street = f"{rng.randint(10, 9899)} {rng.choice(_STREETS)} {rng.choice(_SUFFIXES)}{unit}"
    return f"{street}, {city}, {state} {zip3}{rng.randint(1, 99):02d}"


def _person(rng: random.Random, last: str | None = None) -> dict:
    """A fictional person: PII, a credit score, and the protected attributes ECOA names."""
    first, last = rng.choice(_FIRST), last or rng.choice(_LAST)
    handle = unicodedata.normalize("NFKD", f"{first}.{last}").encode("ascii", "ignore")
    return {
        "name": f"{first} {last}",
        "first": first,
        "ssn": f"{rng.randint(900, 999)}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}",
        "phone": _phone(rng, rng.choice(_CITIES)[3]),
        "email": f"{handle.decode().lower()}{rng.randint(1, 99)}@"
        + rng.choice(("example.com", "example.org")),
        "address": _address(rng),
        "credit_score": int(rng.triangular(540, 835, 745)),
        "sex": rng.choice(("female", "male")),
        "age": rng.randint(21, 80),
        "marital_status": rng.choice(("married", "unmarried", "separated")),
    }


def _loan_number(rng: random.Random) -> str:
    return f"{rng.choice(('10', '20', '31', '47'))}{rng.randint(10_000_000, 99_999_999)}"


def _application(rng: random.Random) -> dict:
    """A purchase application whose ratios land across approve, refer and deny.

    The target DTI is drawn first and income is solved from it, so DTI spreads evenly over
    16-62 % instead of clustering; appraisals fall below price about a quarter of the time.
    """
    borrower = _person(rng)
    co = _person(rng, rng.choice((borrower["name"].split(" ", 1)[1], None))) if rng.random() < 0.35 else None
    program = rng.choices(PROGRAMS, weights=(50, 20, 15, 15))[0]
    price = 1000.0 * rng.randint(*_PRICE_K[program])
    loan = 100.0 * int(price * (100 - rng.choice(_DOWN_PCT[program])) / 10_000)
    rate = rng.randrange(44, 61) * 0.125 + (0.25 if program == "jumbo" else 0.0)
    app = {
        "borrower": borrower,
        "co_borrower": co,
        "program": program,
        "price": price,
        "appraised_value": 1000.0 * round(price * rng.uniform(0.97, 1.10) / 1000),
        "loan_amount": loan,
        "rate_pct": rate,
        "term_months": rng.choice((360, 360, 360, 360, 240, 180)),
        "annual_taxes": 10.0 * round(price * rng.uniform(0.005, 0.021) / 10),
        "annual_insurance": 10.0 * rng.randint(70, 420),
        "debts": [(rng.choice(_DEBT_KINDS), float(rng.randint(25, 900))) for _ in range(rng.randint(0, 3))],
        "credit_score": min(p["credit_score"] for p in (borrower, co) if p),
    }
    app["monthly_debts"] = sum(amount for _, amount in app["debts"])
    housing = underwriting.underwrite({**app, "monthly_income": 1.0})["housing_payment"]
    annual = 1200 * (app["monthly_debts"] + housing) / rng.uniform(16, 62)
    shares = (rng.uniform(0.35, 0.75),) if co else (1.0,)
    first = 500.0 * max(1, round(annual * shares[0] / 500))
    annuals = [first] + ([500.0 * max(1, round((annual - first) / 500))] if co else [])
    app["incomes"] = [round_half_up(a / 12, 2) for a in annuals]
    app["monthly_income"] = round_half_up(sum(app["incomes"]), 2)
    return app


_NUMBER_KEYS = (
    "loan_amount", "rate_pct", "term_months", "price", "appraised_value", "monthly_income",
    "monthly_debts", "annual_taxes", "annual_insurance", "credit_score",
)


def _application_truth(app: dict, uw: dict) -> dict:
    """Summary fields, reference summary and numbers shared by every application-backed doc."""
    fields = {
        "borrower": app["borrower"]["name"],
        "loan_amount": _dollars(app["loan_amount"]),
        "program": app["program"],
        "rate": _rate(app["rate_pct"]),
        "term_months": str(app["term_months"]),
        "decision": uw["decision"],
    }
    summary = (
        f"{fields['borrower']} applied for a {fields['program']} loan of {fields['loan_amount']} "
        f"at {fields['rate']} over {fields['term_months']} months; the program rules give the "
        f"decision {fields['decision']}"
    )
    if uw["reasons"]:
        fields["reasons"] = "; ".join(REASONS[c] for c in uw["reasons"])
        summary += f" because the {fields['reasons']}"
    return {"fields": fields, "summary": summary + ".", "numbers": {k: float(app[k]) for k in _NUMBER_KEYS}}


# --- rendering helpers -------------------------------------------------------------------


def _form(fields: list[tuple[str, str]], style: int) -> str:
    """Label/value pairs in one of the four layouts loan files use."""
    if style == 0:
        return "\n".join(f"{k}: {v}" for k, v in fields)
    if style == 1:
        return "\n".join(["| Item | Value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in fields])
    if style == 2:
        return "\n".join(f"{k + ' ':.<38} {v}" for k, v in fields)
    return "\n".join(f"• {k} — {v}" for k, v in fields)


def _heading(title: str, style: int) -> str:
    if style == 0:
        return title.upper()
    if style == 1:
        return f"## {title}"
    return f"{title}\n{'-' * len(title)}" if style == 2 else f"[{title}]"


def _person_fields(rng: random.Random, p: dict, role: str, pii: list) -> list[tuple[str, str]]:
    """Identity lines of one borrower; every value shown is recorded as PII."""
    fields = [(f"{role} name", p["name"]), (rng.choice(("SSN", "Social Security Number")), p["ssn"])]
    pii += [{"type": "name", "value": p["name"]}, {"type": "ssn", "value": p["ssn"]}]
    for key, labels in (("phone", ("Phone", "Cell phone")), ("email", ("Email", "E-mail")),
                        ("address", ("Current address", "Present address"))):
        if rng.random() < 0.8:
            fields.append((rng.choice(labels), p[key]))
            pii.append({"type": key, "value": p[key]})
    if rng.random() < 0.5:
        fields.append(("Marital status", p["marital_status"].capitalize()))
    if rng.random() < 0.4:
        fields.append(("Age", str(p["age"])))
    return fields


def _application_sections(rng: random.Random, app: dict, uw: dict, pii: list) -> list:
    """(title, fields) sections of an application: income, debts, property, loan."""
    people = [p for p in (app["borrower"], app["co_borrower"]) if p]
    income = []
    for p, monthly in zip(people, app["incomes"]):
        income += [(f"Employer ({p['first']})", rng.choice(_EMPLOYERS)),
                   (f"Gross monthly income ({p['first']})", _money(monthly))]
    income.append(("Total monthly income", _money(app["monthly_income"])))
    debts = [(f"{kind} (monthly)", _money(amount)) for kind, amount in app["debts"]]
    debts.append(("Total monthly debts excluding housing", _money(app["monthly_debts"])))
    prop = [("Purchase price", _dollars(app["price"])),
            ("Appraised value", _dollars(app["appraised_value"])),
            ("Annual property taxes", _money(app["annual_taxes"])),
            ("Annual homeowner’s insurance", _money(app["annual_insurance"])),
            ("Occupancy", rng.choice(("Primary residence", "Owner-occupied")))]
    if rng.random() < 0.7:
        prop.insert(0, ("Subject property", app["property_address"]))
        pii.append({"type": "address", "value": app["property_address"]})
    loan = [("Loan program", _PROGRAM_LABEL[app["program"]]), ("Purpose", "Purchase"),
            (rng.choice(("Loan amount", "Requested loan amount", "Base loan amount")), _dollars(app["loan_amount"])),
            ("Interest rate", _rate(app["rate_pct"])), ("Term", f"{app['term_months']} months"),
            ("Proposed monthly P&I", _money(uw["payment"])),
            ("Proposed housing payment (PITI)", _money(uw["housing_payment"])),
            ("Loan-to-value", _pct(uw["ltv_pct"])), ("Debt-to-income", _pct(uw["dti_pct"])),
            ("Representative credit score", str(app["credit_score"]))]
    sections = [("Employment and Income", income), ("Monthly Liabilities", debts),
                ("Property", prop), ("Loan Terms", loan)]
    for _, fields in sections:
        if rng.random() < 0.3:
            rng.shuffle(fields)
    rng.shuffle(sections)
    return sections


def _application_facts(app: dict, uw: dict) -> list[dict]:
    return [
        _fact(QUESTIONS["payment"], _money(uw["payment"]), uw["payment"], "USD"),
        _fact(QUESTIONS["housing"], _money(uw["housing_payment"]), uw["housing_payment"], "USD"),
        _fact(QUESTIONS["dti"], _pct(uw["dti_pct"]), uw["dti_pct"], "%"),
        _fact(QUESTIONS["ltv"], _pct(uw["ltv_pct"]), uw["ltv_pct"], "%"),
    ]


def _with_property(rng: random.Random, app: dict) -> dict:
    app["property_address"] = _address(rng)
    return app


# --- document kinds ----------------------------------------------------------------------


def _loan_application(rng: random.Random) -> tuple[str, dict]:
    """A URLA-style application summary; its truth is the decision the rules would reach."""
    app = _with_property(rng, _application(rng))
    uw, pii, style = underwriting.underwrite(app), [], rng.randrange(4)
    loan_no, lender = _loan_number(rng), rng.choice(_LENDERS)
    title = rng.choice(("Uniform Residential Loan Application — Summary", f"{lender} — Mortgage Application",
                        "Application for Residential Mortgage Credit — Purchase"))
    parts = [title, f"{rng.choice(('Loan number', 'Application ID', 'Loan #'))}: {loan_no}"]
    pii.append({"type": "loan_number", "value": loan_no})
    sections = [("Borrower Information", _person_fields(rng, app["borrower"], "Borrower", pii))]
    if app["co_borrower"]:
        sections.append(("Co-Borrower Information", _person_fields(rng, app["co_borrower"], "Co-borrower", pii)))
    sections += _application_sections(rng, app, uw, pii)
    if rng.random() < 0.3:
        sections.append(("Demographic Information (HMDA, voluntary)",
                         [("Sex", app["borrower"]["sex"].capitalize()), ("Provided by", "Applicant")]))
    parts += [f"{_heading(t, style)}\n{_form(f, style)}" for t, f in sections]
    if rng.random() < 0.5:
        officer = _person(rng)
        parts.append(f"Loan officer: {officer['name']}, {officer['phone']}")
        pii += [{"type": "name", "value": officer["name"]}, {"type": "phone", "value": officer["phone"]}]
    base = _application_truth(app, uw)
    facts = _application_facts(app, uw) + [
        _fact(QUESTIONS["income"], _money(app["monthly_income"]), app["monthly_income"], "USD")]
    return "\n\n".join(parts), _truth("loan_application", base["fields"], base["summary"], facts, pii,
                                      decision=uw["decision"], reasons=uw["reasons"], numbers=base["numbers"])


_CONDITIONS = (
    "Verbal verification of employment within 10 business days of closing",
    "Two most recent months of bank statements for all asset accounts",
    "Signed IRS Form 4506-C",
    "Evidence of homeowner’s insurance with the lender as mortgagee",
    "Letter of explanation for recent credit inquiries",
    "Gift letter and donor’s proof of funds",
    "Final inspection if the appraisal was made subject to repairs",
)


def _decision_sentence(rng: random.Random, uw: dict, rules) -> str:
    """The underwriter's verdict; always contains the literal decision word."""
    why = "; ".join(REASONS[c] for c in uw["reasons"])
    codes = f" [{', '.join(uw['reasons'])}]" if uw["reasons"] and rng.random() < 0.5 else ""
    options = {
        "approve": ("Decision: APPROVE. The file meets every program guideline.",
                    "All ratios are inside program limits — decision: approve, subject to conditions.",
                    "Final decision: approve."),
        "refer": (f"Decision: REFER — {why}. DTI sits between the {rules.soft_dti_pct:.0f}% and "
                  f"{rules.hard_dti_pct:.0f}% limits.",
                  f"Refer to a senior underwriter: {why}. Look for reserves or residual income "
                  "as compensating factors."),
        "deny": (f"Decision: DENY. Reasons: {why}.",
                 f"Recommendation is to deny — {why}. Adverse action notice to be sent within 30 days."),
    }
    return rng.choice(options[uw["decision"]]) + codes


def _underwriting_note(rng: random.Random) -> tuple[str, dict]:
    """An underwriter's memo stating the ratios, the decision and the reasons for it."""
    app = _application(rng)
    uw, pii, style = underwriting.underwrite(app), [], rng.randrange(4)
    rules, who, loan_no = underwriting.PROGRAM_RULES[app["program"]], _person(rng), _loan_number(rng)
    names = " and ".join(p["name"] for p in (app["borrower"], app["co_borrower"]) if p)
    pii += [{"type": "name", "value": p["name"]} for p in (app["borrower"], app["co_borrower"], who) if p]
    pii.append({"type": "loan_number", "value": loan_no})
    program = _PROGRAM_LABEL[app["program"]]
    opening = rng.choice((f"Reviewed the {program} purchase file for {names}.",
                          f"File for {names} reviewed against {program} guidelines.",
                          f"{names} — {program} purchase, {_dollars(app['loan_amount'])} requested."))
    ratios = (f"Qualifying score {app['credit_score']}; P&I of {_money(uw['payment'])} and PITI of "
              f"{_money(uw['housing_payment'])} put the back-end DTI at {_pct(uw['dti_pct'])} on "
              f"{_money(app['monthly_income'])} monthly income; LTV is {_pct(uw['ltv_pct'])} on the lower "
              f"of price ({_dollars(app['price'])}) and appraised value ({_dollars(app['appraised_value'])}).")
    parts = [rng.choice((f"Underwriting Decision — Loan {loan_no}", f"UW NOTES — file {loan_no}",
                         f"Credit memo — loan {loan_no}"))]
    if style != 1:
        parts.append(_form([("Program", program), ("Loan amount", _dollars(app["loan_amount"])),
                            ("Rate / term", f"{_rate(app['rate_pct'])} / {app['term_months']} months"),
                            ("Monthly debts", _money(app["monthly_debts"]))], style))
    parts += [f"{opening} {ratios}", _decision_sentence(rng, uw, rules)]
    if uw["decision"] != "deny":
        conditions = rng.sample(_CONDITIONS, rng.randint(1, 4))
        parts.append("Conditions:\n" + "\n".join(f"- {c}" for c in conditions))
    parts.append(f"— {who['name']}, Underwriter, {_fmt_date(_day(rng), rng.randrange(3))}")
    base = _application_truth(app, uw)
    facts = _application_facts(app, uw) + [_fact(QUESTIONS["decision"], uw["decision"], None, None)]
    return "\n\n".join(parts), _truth("underwriting_note", base["fields"], base["summary"], facts, pii,
                                      decision=uw["decision"], reasons=uw["reasons"], numbers=base["numbers"])


def _day(rng: random.Random) -> date:
    return _EPOCH + timedelta(days=rng.randrange(900))


_FICO_BUCKETS = ("580-619", "620-639", "640-659", "660-679", "680-699", "700-719", "720-739",
                 "740-759", "760+")
_LTV_BUCKETS = {
    "conventional": ("≤60", "60.01-70", "70.01-75", "75.01-80", "80.01-85", "85.01-90", "90.01-95", "95.01-97"),
    "FHA": ("≤90", "90.01-95", "95.01-96.5"),
    "VA": ("≤90", "90.01-95", "95.01-100"),
    "jumbo": ("≤60", "60.01-70", "70.01-75", "75.01-80"),
}


def _rate_sheet(rng: random.Random) -> tuple[str, dict]:
    """A wholesale rate sheet: 30-day rates by FICO x LTV bucket, and lock-period pricing."""
    program, lender, style = rng.choice(PROGRAMS), rng.choice(_LENDERS), rng.randrange(3)
    ficos = [b for b in _FICO_BUCKETS if int(b[:3]) >= underwriting.PROGRAM_RULES[program].min_credit_score]
    ltvs = _LTV_BUCKETS[program]
    base = rng.randrange(42, 56) * 0.125 + (0.25 if program == "jumbo" else 0.0)
    # Adjustments only ever step one way, so better credit / lower LTV never prices worse.
    fico_adj = list(accumulate(rng.choice((0.0, 0.125, 0.25)) for _ in ficos))[::-1]
    ltv_adj = list(accumulate(rng.choice((0.0, 0.125)) for _ in ltvs))
    grid = [[base + f + v for v in ltv_adj] for f in fico_adj]
    lock_points = {15: rng.choice((0.0, 0.125, 0.25))}
    for days in (30, 45, 60):
        lock_points[days] = lock_points[days - 15] + rng.choice((0.125, 0.25))
    day = _fmt_date(_day(rng), rng.randrange(3))
    head = [f"{lender} — {_PROGRAM_LABEL[program]} 30-Year Fixed Rate Sheet",
            f"Effective {day}, 9:00 AM ET. 30-day lock rates by FICO and LTV (%)."]
    if style == 0:
        rows = ["| FICO | " + " | ".join(ltvs) + " |", "|---" * (len(ltvs) + 1) + "|"]
        rows += [f"| {f} | " + " | ".join(_rate(r) for r in row) + " |" for f, row in zip(ficos, grid)]
    elif style == 1:
        rows = [f"FICO {f}: " + " / ".join(f"LTV {v} {_rate(r)}" for v, r in zip(ltvs, row)) for f, row in zip(ficos, grid)]
    else:
        rows = ["fico," + ",".join(ltvs)] + [f + "," + ",".join(_rate(r) for r in row) for f, row in zip(ficos, grid)]
    locks = [f"{d}-day lock: {p:.3f} points" for d, p in lock_points.items()]
    notes = rng.sample((f"Loan amounts up to {_dollars(underwriting.CONFORMING_LIMIT)} unless jumbo.",
                        "Owner-occupied single-family; add 0.375 for investment property.",
                        "Lock extensions cost 0.125 points per 15 days.",
                        "Pricing subject to change without notice. Not an offer to lend."), rng.randint(1, 4))
    text = "\n".join(head) + "\n\n" + "\n".join(rows) + "\n\nLock periods:\n" + "\n".join(locks) + "\n\n" + " ".join(notes)
    i, j, k = rng.randrange(len(ficos)), rng.randrange(len(ltvs)), rng.choice((15, 30, 45, 60))
    facts = [_fact(f"What is the 30-day rate for FICO {ficos[i]} at LTV {ltvs[j]}?", _rate(grid[i][j]), grid[i][j], "%"),
             _fact(f"How many points does a {k}-day lock cost?", f"{lock_points[k]:.3f} points", lock_points[k], "points")]
    lo, hi = min(map(min, grid)), max(map(max, grid))
    fields = {"lender": lender, "program": program, "effective_date": day, "rate_range": f"{_rate(lo)}-{_rate(hi)}"}
    summary = (f"{lender} {program} rate sheet effective {day}: 30-day rates from {fields['rate_range']} "
               "by FICO and LTV, with 15- to 60-day locks.")
    return text, _truth("rate_sheet", fields, summary, facts, [], numbers={"base_rate_pct": base})


def _approved_or_any(rng: random.Random, need_approval: bool) -> tuple[dict, dict]:
    """Draw applications until one fits: a Closing Disclosure exists only for approved loans."""
    while True:
        app = _with_property(rng, _application(rng))
        uw = underwriting.underwrite(app)
        if uw["decision"] == "approve" or not need_approval:
            return app, uw


def _closing_costs(rng: random.Random, app: dict) -> dict:
    """Itemised costs of a Loan Estimate / Closing Disclosure and the totals derived from them.

    Prepaid finance charges (the ones that lower the amount financed, hence raise the APR) are
    points, origination, underwriting and prepaid interest; appraisal, credit report and
    title charges on a purchase are not finance charges under Regulation Z.
    """
    loan, rate = app["loan_amount"], app["rate_pct"]
    per_diem, days = finance.per_diem_interest(loan, rate), rng.randint(1, 30)
    loan_costs = {
        "Discount points": finance.points_cost(loan, rng.choice((0.0, 0.0, 0.25, 0.5, 1.0, 1.5))),
        "Origination fee": float(rng.choice((0, 995, 1195, 1495))),
        "Underwriting fee": float(rng.choice((0, 650, 895))),
        "Appraisal fee": float(rng.randint(45, 75) * 10),
        "Credit report fee": float(rng.randint(35, 85)),
        "Title – lender’s title policy": round_half_up(loan * rng.uniform(0.003, 0.005), 2),
        "Title – settlement fee": float(rng.randint(45, 90) * 10),
        "Recording fees": float(rng.randint(75, 250)),
    }
    prepaid_interest = round_half_up(per_diem * days, 2)
    prepaids = {
        f"Prepaid interest ({_money(per_diem)} per day for {days} days)": prepaid_interest,
        "Homeowner’s insurance premium (12 mo.)": app["annual_insurance"],
        "Initial escrow payment at closing": round_half_up(
            app["annual_insurance"] / 6 + app["annual_taxes"] / 4, 2),
    }
    charges = ("Discount points", "Origination fee", "Underwriting fee")
    closing_costs = round_half_up(sum(loan_costs.values()), 2)
    return {
        "loan_costs": loan_costs,
        "prepaid_items": prepaids,
        "closing_costs": closing_costs,
        "prepaids": round_half_up(sum(prepaids.values()), 2),
        "finance_charges": round_half_up(sum(loan_costs[c] for c in charges) + prepaid_interest, 2),
        "deposit": 100.0 * round(app["price"] * rng.choice((0.01, 0.02, 0.03)) / 100),
        "seller_credits": min(closing_costs, float(rng.choice((0, 0, 0, 2000, 3000, 5000)))),
    }


def _disclosure(rng: random.Random, kind: str) -> tuple[str, dict]:
    """A Loan Estimate or Closing Disclosure, as the form or as a cover letter quoting it."""
    app, uw = _approved_or_any(rng, kind == "closing_disclosure")
    costs, style, lender, loan_no = _closing_costs(rng, app), rng.randrange(5), rng.choice(_LENDERS), _loan_number(rng)
    apr = finance.loan_apr(app["loan_amount"], app["rate_pct"], app["term_months"], costs["finance_charges"])
    cash = finance.cash_to_close(app["price"], app["loan_amount"], costs["closing_costs"], costs["prepaids"],
                                 costs["deposit"], costs["seller_credits"])
    b, form = app["borrower"], "Loan Estimate" if kind == "loan_estimate" else "Closing Disclosure"
    pii = [{"type": t, "value": v} for t, v in (("name", b["name"]), ("address", app["property_address"]),
                                                 ("loan_number", loan_no))]
    terms = [("Loan amount", _dollars(app["loan_amount"])), ("Interest rate", _rate(app["rate_pct"])),
             ("Monthly principal & interest", _money(uw["payment"])),
             ("Estimated escrow", _money(uw["housing_payment"] - uw["payment"])),
             ("Estimated total monthly payment", _money(uw["housing_payment"])),
             ("Total closing costs", _money(costs["closing_costs"])), ("Cash to close", _money(cash)),
             ("Annual Percentage Rate (APR)", _rate(apr))]
    if style == 4:
        greeting = rng.choice((f"Dear {b['name']},", f"Hello {b['name']},"))
        intro = (f"Your {form} for {app['property_address']} (loan {loan_no}) is attached. "
                 f"Here are the figures you asked about — a {_PROGRAM_LABEL[app['program']]} loan over "
                 f"{app['term_months']} months:")
        parts = [greeting, intro, _form(terms, 3), f"Thank you for choosing {lender}."]
    else:
        day = _fmt_date(_day(rng), rng.randrange(3))
        head = [(("Date issued" if kind == "loan_estimate" else "Closing date"), day), ("Applicant", b["name"]),
                ("Property", app["property_address"]), ("Sale price", _dollars(app["price"])),
                ("Loan term", f"{app['term_months']} months"), ("Purpose", "Purchase"), ("Product", "Fixed Rate"),
                ("Loan type", _PROGRAM_LABEL[app["program"]]), ("Loan ID #", loan_no)]
        sections = [(f"{form} — {lender}", head), ("Loan Terms and Payments", terms[:5]),
                    ("Loan Costs", [(k, _money(v)) for k, v in costs["loan_costs"].items() if v]),
                    ("Prepaids and Initial Escrow", [(k, _money(v)) for k, v in costs["prepaid_items"].items()]),
                    ("Calculating Cash to Close",
                     [("Total closing costs", _money(costs["closing_costs"])),
                      ("Prepaids and escrow", _money(costs["prepaids"])),
                      ("Down payment", _money(app["price"] - app["loan_amount"])),
                      ("Deposit", "-" + _money(costs["deposit"])),
                      ("Seller credits", "-" + _money(costs["seller_credits"])), ("Cash to close", _money(cash))]),
                    ("Comparisons", terms[7:])]
        parts = [f"{_heading(t, style)}\n{_form(f, style)}" for t, f in sections]
    fields = {"borrower": b["name"], "loan_amount": _dollars(app["loan_amount"]), "program": app["program"],
              "rate": _rate(app["rate_pct"]), "apr": _rate(apr), "payment": _money(uw["payment"]),
              "cash_to_close": _money(cash)}
    summary = (f"{form} for {fields['borrower']}: {fields['program']} loan of {fields['loan_amount']} at "
               f"{fields['rate']} ({fields['apr']} APR), {fields['payment']} monthly principal and interest, "
               f"{fields['cash_to_close']} cash to close.")
    facts = [_fact(QUESTIONS["payment"], _money(uw["payment"]), uw["payment"], "USD"),
             _fact(QUESTIONS["housing"], _money(uw["housing_payment"]), uw["housing_payment"], "USD"),
             _fact(QUESTIONS["apr"], _rate(apr), apr, "%"), _fact(QUESTIONS["cash"], _money(cash), cash, "USD"),
             _fact(QUESTIONS["closing_costs"], _money(costs["closing_costs"]), costs["closing_costs"], "USD")]
    numbers = {**_application_truth(app, uw)["numbers"],
               **{k: costs[k] for k in ("finance_charges", "closing_costs", "prepaids", "deposit", "seller_credits")}}
    return "\n\n".join(parts), _truth(kind, fields, summary, facts, pii, decision=uw["decision"],
                                      reasons=uw["reasons"], numbers=numbers)


def _loan_estimate(rng: random.Random) -> tuple[str, dict]:
    """Loan Estimate: issued for any application, before the underwriting decision."""
    return _disclosure(rng, "loan_estimate")


def _closing_disclosure(rng: random.Random) -> tuple[str, dict]:
    """Closing Disclosure: final terms of an approved loan."""
    return _disclosure(rng, "closing_disclosure")


def _comparables(rng: random.Random, gla: int, target: float) -> list[dict]:
    """3-5 comparable sales whose adjusted prices scatter +-3 % around ``target``."""
    per_sqft = rng.choice((40, 50, 60, 75, 90))
    comps = []
    for _ in range(rng.randint(3, 5)):
        comp_gla = gla + 100 * rng.randint(-4, 4)
        gla_adj, other_adj = per_sqft * (gla - comp_gla), 500 * rng.randint(-16, 16)
        sale = 500.0 * round((target * rng.uniform(0.97, 1.03) - gla_adj - other_adj) / 500)
        comps.append({"address": _address(rng), "sale": sale, "gla": comp_gla, "gla_adj": gla_adj,
                      "other_adj": other_adj, "adjusted": sale + gla_adj + other_adj,
                      "miles": rng.randint(1, 15) / 10})
    return comps


def _appraisal_summary(rng: random.Random) -> tuple[str, dict]:
    """A URAR-style summary: subject, comparable sales and the reconciled value."""
    subject, borrower, appraiser = _address(rng), _person(rng), _person(rng)
    gla, price, style = 100 * rng.randint(9, 42), 1000.0 * rng.randint(140, 1800), rng.randrange(4)
    comps = _comparables(rng, gla, price * rng.uniform(0.94, 1.08))
    # Reconciliation here is the plain mean of adjusted prices, rounded to $1,000 as appraisers do.
    value = round_half_up(sum(c["adjusted"] for c in comps) / len(comps), -3)
    pii = [{"type": "address", "value": a} for a in [subject] + [c["address"] for c in comps]]
    pii += [{"type": "name", "value": borrower["name"]}, {"type": "name", "value": appraiser["name"]}]
    facts_block = [("Property address", subject), ("Borrower", borrower["name"]), ("Lender/Client", rng.choice(_LENDERS)),
                   ("Gross living area", f"{gla:,} sq ft"), ("Bedrooms / baths", f"{rng.randint(2, 5)} / {rng.choice((1, 1.5, 2, 2.5, 3))}"),
                   ("Year built", str(rng.randint(1950, 2023))), ("Condition", rng.choice(("C2", "C3", "C3", "C4"))),
                   ("Contract price", _dollars(price))]
    rows = [f"Comparable {n}: {c['address']} — sold {_dollars(c['sale'])}, {c['gla']:,} sq ft, {c['miles']} mi; "
            f"GLA adj. {_dollars(c['gla_adj'])}, other adj. {_dollars(c['other_adj'])}; adjusted {_dollars(c['adjusted'])}"
            for n, c in enumerate(comps, 1)]
    gap = value - price
    relation = "equal to" if gap == 0 else ("above" if gap > 0 else "below")
    verdict = rng.choice((f"Indicated value by the sales comparison approach: {_dollars(value)}.",
                          f"Reconciled market value as of the effective date is {_dollars(value)}.")) + \
        f" The appraised value is {_dollars(abs(gap))} {relation} the contract price."
    parts = [rng.choice(("Appraisal Summary — Uniform Residential Appraisal Report", f"Appraisal Review — {subject}")),
             _form(facts_block, style), "Sales Comparison Approach\n" + "\n".join(rows), verdict]
    if rng.random() < 0.5:
        parts.append(f"Appraiser: {appraiser['name']}, Certified Residential Appraiser, {appraiser['email']}")
        pii.append({"type": "email", "value": appraiser["email"]})
    else:
        parts.append(f"Signed: {appraiser['name']}")
    fields = {"address": subject, "appraised_value": _dollars(value), "contract_price": _dollars(price),
              "comparables": str(len(comps))}
    summary = (f"The appraisal of {subject} reconciles {fields['comparables']} comparable sales to "
               f"{fields['appraised_value']} against a contract price of {fields['contract_price']}.")
    facts = [_fact(QUESTIONS["appraised"], _dollars(value), value, "USD"),
             _fact("What is the adjusted sale price of comparable 1?", _dollars(comps[0]["adjusted"]), comps[0]["adjusted"], "USD"),
             _fact("By how much does the appraised value differ from the contract price?", _dollars(abs(gap)), gap, "USD")]
    numbers = {"price": price, "appraised_value": value, "gla": float(gla), "comp_adjusted": [c["adjusted"] for c in comps]}
    return "\n\n".join(parts), _truth("appraisal_summary", fields, summary, facts, pii, numbers=numbers)


# --- e-mails -------------------------------------------------------------------------------

_TOPIC = {"escrow": "escrow", "payoff": "a payoff quote", "forbearance": "forbearance",
          "rate_lock": "a rate lock", "late_fee": "a late fee"}


def _serviced_loan(rng: random.Random) -> dict:
    """A loan already on the servicer's books, some payments into its term."""
    amount, term = 1000.0 * rng.randint(90, 900), rng.choice((360, 360, 180))
    rate, taxes, insurance = rng.randrange(20, 61) * 0.125, 10.0 * rng.randint(80, 1200), 10.0 * rng.randint(70, 400)
    return {"amount": amount, "rate_pct": rate, "term_months": term, "made": rng.randint(6, term - 12),
            "annual_taxes": taxes, "annual_insurance": insurance,
            "payment": finance.monthly_payment(amount, rate, term), "escrow": finance.escrow_monthly(taxes, insurance)}


def _escrow_body(rng: random.Random, loan: dict, day: str) -> tuple[list, list, dict]:
    taxes = 10.0 * round(loan["annual_taxes"] * rng.uniform(1.0, 1.15) / 10)
    insurance = 10.0 * round(loan["annual_insurance"] * rng.uniform(1.0, 1.25) / 10)
    shortage = 10.0 * rng.randint(5, 120)
    escrow = finance.escrow_monthly(taxes, insurance)
    spread = round_half_up(shortage / 12, 2)
    total = round_half_up(loan["payment"] + escrow + spread, 2)
    body = [f"Your annual escrow analysis is complete. We expect to pay {_money(taxes)} in property taxes and "
            f"{_money(insurance)} for homeowner’s insurance this year, so your monthly escrow deposit becomes {_money(escrow)}.",
            f"The analysis found a shortage of {_money(shortage)}, which we have spread over 12 months ({_money(spread)} a month).",
            f"Starting {day}, your total monthly payment will be {_money(total)}, including {_money(loan['payment'])} principal and interest.",
            rng.choice(("Federal rules (RESPA) limit the cushion we may hold to one-sixth of the year’s escrow disbursements.",
                        "You may also pay the shortage in one lump sum; your payment would then exclude the shortage amount."))]
    facts = [_fact("What is the new monthly escrow deposit?", _money(escrow), escrow, "USD"),
             _fact("What is the new total monthly payment?", _money(total), total, "USD")]
    return body, facts, {"payment": loan["payment"], "annual_taxes": taxes, "annual_insurance": insurance, "shortage": shortage}


def _payoff_body(rng: random.Random, loan: dict, day: str) -> tuple[list, list, dict]:
    balance = finance.remaining_balance(loan["amount"], loan["rate_pct"], loan["term_months"], loan["made"])
    days, fee = rng.randint(5, 30), float(rng.choice((30, 45, 60, 75)))
    per_diem = finance.per_diem_interest(balance, loan["rate_pct"])
    total = round_half_up(balance + round_half_up(per_diem * days, 2) + fee, 2)
    body = [f"As requested, here is your payoff quote good through {day}.",
            f"Unpaid principal balance: {_money(balance)}. Interest accrues at {_money(per_diem)} per day; "
            f"{days} days of interest are included. Release/recording fee: {_money(fee)}.",
            f"Total amount to pay off the loan: {_money(total)}.",
            rng.choice(("Funds received after the good-through date must include additional daily interest.",
                        "Please wire funds or send certified funds; personal checks are not accepted for payoffs."))]
    facts = [_fact("What is the daily interest (per diem)?", _money(per_diem), per_diem, "USD"),
             _fact("What is the total payoff amount?", _money(total), total, "USD")]
    numbers = {k: float(loan[k]) for k in ("amount", "rate_pct", "term_months", "made")}
    return body, facts, {**numbers, "days": float(days), "fee": fee}


def _forbearance_body(rng: random.Random, loan: dict, day: str) -> tuple[list, list, dict]:
    months, piti = rng.choice((3, 6)), round_half_up(loan["payment"] + loan["escrow"], 2)
    deferred = round_half_up(piti * months, 2)
    body = [f"We have approved a {months}-month forbearance plan beginning {day}.",
            f"Your regular payment of {_money(piti)} is suspended during the plan; no late fees will be charged.",
            f"At the end of the plan the {_money(deferred)} in missed payments can be handled through a repayment "
            "plan, a deferral to the end of the loan, or a loan modification — it does not have to be repaid at once.",
            "Please contact us 30 days before the plan ends so we can review your options."]
    facts = [_fact("What total amount is deferred by the forbearance plan?", _money(deferred), deferred, "USD")]
    return body, facts, {"housing_payment": piti, "months": float(months)}


def _rate_lock_body(rng: random.Random, loan: dict, day: str) -> tuple[list, list, dict]:
    lock_days, locked = rng.choice((15, 30, 45, 60)), _day(rng)
    expires = _fmt_date(locked + timedelta(days=lock_days), 0)
    extension = finance.points_cost(loan["amount"], 0.125)
    body = [f"Your interest rate is locked at {_rate(loan['rate_pct'])} for {lock_days} days, from "
            f"{_fmt_date(locked, 0)}; the lock expires on {expires}.",
            f"If closing moves past that date, a 15-day extension costs 0.125 points, {_money(extension)} on your "
            f"{_dollars(loan['amount'])} loan.",
            rng.choice(("Changes to the loan amount or program may change the locked price.",
                        "Your Loan Estimate will be updated within 3 business days to reflect the lock."))]
    facts = [_fact("When does the rate lock expire?", expires, None, "date"),
             _fact("How much does a 15-day lock extension cost?", _money(extension), extension, "USD")]
    return body, facts, {"amount": loan["amount"], "lock_days": float(lock_days)}


def _late_fee_body(rng: random.Random, loan: dict, day: str) -> tuple[list, list, dict]:
    pct = rng.choice((4.0, 5.0))
    fee = round_half_up(loan["payment"] * pct / 100, 2)
    body = [f"We did not receive your payment due {day} within the 15-day grace period.",
            f"As your note allows, a late charge of {pct:.0f}% of the principal and interest payment "
            f"({_money(loan['payment'])}) has been assessed: {_money(fee)}.",
            rng.choice(("If you believe this is an error, reply with the date and confirmation number of your payment.",
                        "Setting up automatic payments can help you avoid future late charges."))]
    facts = [_fact("How much is the late fee?", _money(fee), fee, "USD")]
    return body, facts, {"payment": loan["payment"], "late_pct": pct}


_SERVICING_BODIES = {"escrow": _escrow_body, "payoff": _payoff_body, "forbearance": _forbearance_body,
                     "rate_lock": _rate_lock_body, "late_fee": _late_fee_body}


def _servicing_email(rng: random.Random) -> tuple[str, dict]:
    """A servicer's e-mail to a borrower answering one intent, with the figures it computed."""
    intent, b, rep, loan_no = rng.choice(INTENTS), _person(rng), _person(rng), _loan_number(rng)
    loan, servicer = _serviced_loan(rng), rng.choice(_LENDERS)
    body, facts, numbers = _SERVICING_BODIES[intent](rng, loan, _fmt_date(_day(rng), rng.randrange(3)))
    pii = [{"type": "name", "value": b["name"]}, {"type": "loan_number", "value": loan_no},
           {"type": "name", "value": rep["name"]}]
    subject = rng.choice((f"Your loan {loan_no}: {_TOPIC[intent]}", f"Re: {_TOPIC[intent]} — loan {loan_no}"))
    parts = []
    if rng.random() < 0.6:
        parts.append(f"From: {rep['email']}\nTo: {b['email']}\nSubject: {subject}")
        pii += [{"type": "email", "value": rep["email"]}, {"type": "email", "value": b["email"]}]
    else:
        parts.append(f"Subject: {subject}")
    parts.append(rng.choice((f"Dear {b['name']},", f"Hello {b['name']},", f"{b['name']}:")))
    parts += body if rng.random() < 0.5 else [" ".join(body)]
    parts.append(f"{rng.choice(('Sincerely', 'Regards', 'Thank you'))},\n{rep['name']}\n{servicer} — Loan Servicing\n{rep['phone']}")
    pii.append({"type": "phone", "value": rep["phone"]})
    fields = {"customer": b["name"], "intent": intent, "loan_number": loan_no, "key_figure": facts[-1]["answer"]}
    summary = (f"The servicer wrote to {b['name']} about {_TOPIC[intent]} (intent {intent}) on loan {loan_no}; "
               f"key figure: {fields['key_figure']}.")
    return "\n\n".join(parts), _truth("servicing_email", fields, summary, facts, pii, intent=intent, numbers=numbers)


_ASKS = {
    "escrow": ("My monthly payment went up from {old} to {new} and I don’t understand why. Is this the escrow?",
               "I got an escrow statement saying I have a shortage and my payment is now {new} (it was {old}). "
               "Can I pay the shortage in one lump sum instead?",
               "why did my payment change?? it was {old} last month and now its {new}. nothing else changed"),
    "payoff": ("I’m selling my house and need a payoff quote good through {day}.",
               "Could you send me the payoff amount for my loan? We’re refinancing with another lender and closing {day}.",
               "What is the total amount needed to pay off my mortgage by {day}?"),
    "forbearance": ("I lost my job last month and can’t make my mortgage payment. What are my options for forbearance?",
                    "I had a medical emergency and need to pause my payments for a few months. Is that possible?",
                    "My hours were cut and I’ll be short on next month’s payment. Is there a hardship program?"),
    "rate_lock": ("My rate lock expires on {day} and closing got pushed back. How much does it cost to extend the lock?",
                  "Can I lock my rate today? I was quoted {rate}.",
                  "Rates dropped since I locked at {rate} — is there a float-down option before {day}?"),
    "late_fee": ("I was charged a late fee but I paid on {day}. Can you waive it?",
                 "Why is there a late charge on my statement? My payment was sent on time on {day}.",
                 "I was a few days late because of a bank error on {day} — can the late fee be removed?"),
}


def _customer_email(rng: random.Random) -> tuple[str, dict]:
    """A borrower's own e-mail to the servicer; informal, one intent, sometimes a quoted thread."""
    intent, b, loan_no, loan = rng.choice(INTENTS), _person(rng), _loan_number(rng), _serviced_loan(rng)
    old = round_half_up(loan["payment"] + loan["escrow"], 2)
    new = round_half_up(old + rng.randint(1500, 30000) / 100, 2)
    template = rng.choice(_ASKS[intent])
    ask = template.format(old=_money(old), new=_money(new), rate=_rate(loan["rate_pct"]),
                          day=_fmt_date(_day(rng), rng.randrange(3)))
    ref = rng.choice((f"My loan number is {loan_no}.", f"Loan #{loan_no}", f"(loan {loan_no})"))
    pii = [{"type": "name", "value": b["name"]}, {"type": "loan_number", "value": loan_no},
           {"type": "email", "value": b["email"]}]
    lines = [f"From: {b['name']} <{b['email']}>", f"Subject: {rng.choice(('Question', 'Help please', 'My mortgage', _TOPIC[intent]))}",
             rng.choice(("Hi,", "Hello,", "To whom it may concern,", "")), ask, ref]
    if rng.random() < 0.5:
        lines.append(f"You can reach me at {b['phone']}.")
        pii.append({"type": "phone", "value": b["phone"]})
    if rng.random() < 0.3:
        lines.append(f"The property is {b['address']}.")
        pii.append({"type": "address", "value": b["address"]})
    lines.append(f"{rng.choice(('Thanks', 'Thank you', 'Best'))},\n{b['name']}")
    if rng.random() < 0.2:
        lines.append("> On a previous message, Loan Servicing wrote:\n> Thank you for contacting us. "
                     "A representative will respond within 2 business days.")
    facts = [_fact("What is the loan number?", loan_no, None, None)]
    numbers = None
    if "{old}" in template:
        increase = round_half_up(new - old, 2)
        facts.append(_fact("By how much did the monthly payment increase?", _money(increase), increase, "USD"))
        numbers = {"old_payment": old, "new_payment": new}
    fields = {"customer": b["name"], "intent": intent, "loan_number": loan_no}
    summary = f"{b['name']} wrote to the servicer about {_TOPIC[intent]} (intent {intent}) on loan {loan_no}."
    text = "\n".join(line for line in lines if line)
    return text, _truth("customer_email", fields, summary, facts, pii, intent=intent, numbers=numbers)
