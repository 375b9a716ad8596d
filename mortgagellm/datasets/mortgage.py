"""Deterministic synthetic mortgage corpus: every document comes with the truth it was made from.

``generate(seed, shard, num_docs)`` yields records {doc_id, source, kind, text, ground_truth}.
The same arguments give byte-identical records on any machine: every choice comes from a
``random.Random`` seeded by sha256(f"{seed}:{shard}"), and nothing reads the clock, uuid4,
the locale or Python's salted ``hash()``. Numbers in the text are computed by ``finance`` and
decisions by ``underwriting``, so the ground truth is exact rather than annotated.

Ground truth: kind; decision and reasons (documents built on an application: loan_application,
underwriting_note, loan_estimate, closing_disclosure; else None / []); intent (e-mails);
summary_fields and reference_summary (which contains every summary field); facts
[{question, answer, value, unit}] whose answer string appears in the text; pii [{type, value}]
of every personal value in the text; noise; duplicate_of (doc_id a duplicate copies); numbers
(the inputs the facts are computed from, or None).

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
from mortgagellm.datasets.underwriting import PROGRAM_RULES, PROGRAMS, REASONS

DOC_KINDS = (
    "loan_application", "underwriting_note", "rate_sheet", "loan_estimate", "closing_disclosure",
    "appraisal_summary", "servicing_email", "customer_email", "regulatory_explanation",
)
_KIND_CUM_WEIGHTS = list(accumulate((15, 12, 6, 8, 8, 8, 15, 18, 10)))

INTENTS = ("escrow", "payoff", "forbearance", "rate_lock", "late_fee")
"""Customer-query intents carried by servicing and customer e-mails."""

NOISE_RATES = {
    "exact_duplicate": 0.010, "near_duplicate": 0.010, "mojibake": 0.005, "html": 0.005,
    "empty": 0.002, "oversized": 0.002,
}
"""Probability that a record is replaced by each kind of planted noise (3.4 % in total)."""

OVERSIZED_CHARS = 200_000
"""An "oversized" record repeats its text until it is longer than this."""

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
        # large_string: a batch holding oversized documents can pass the 2 GiB int32 offsets.
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
_DEBT_KINDS = ("Auto loan", "Student loan", "Credit card", "Personal loan", "Child support")
_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)
_PROGRAM_LABEL = {"conventional": "Conventional", "FHA": "FHA", "VA": "VA", "jumbo": "Jumbo"}
_PRICE_K = {"conventional": (150, 950), "FHA": (120, 560), "VA": (160, 750), "jumbo": (950, 3300)}
_DOWN_PCT = {
    "conventional": (3, 5, 5, 10, 15, 20, 20, 25), "FHA": (3.5, 3.5, 3.5, 5, 10),
    "VA": (0, 0, 0, 5, 10), "jumbo": (10, 20, 20, 25, 30, 35),
}
_SCORE_SHAPE = {  # triangular (low, high, mode) of each borrower's credit score
    "conventional": (560, 835, 750), "FHA": (540, 800, 670), "VA": (560, 835, 720),
    "jumbo": (660, 835, 775),
}
_EPOCH = date(2023, 1, 2)


def _rng(seed: int, stream: str) -> random.Random:
    """A private generator for one stream; sha256 rather than hash(), which is salted per run."""
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _money(x: float) -> str:
    return f"${x:,.2f}"


def _dollars(x: float) -> str:
    return f"-${-x:,.0f}" if x < 0 else f"${x:,.0f}"


def _pct(x: float) -> str:
    return f"{x:.1f}%"


def _rate(x: float) -> str:
    return f"{x:.3f}%"


def _day(rng: random.Random) -> date:
    return _EPOCH + timedelta(days=rng.randrange(900))


def _fmt_date(d: date, style: int) -> str:
    """Three US date styles, spelled out by hand because strftime follows the locale."""
    if style == 0:
        return f"{_MONTHS[d.month - 1]} {d.day}, {d.year}"
    return f"{d.month:02d}/{d.day:02d}/{d.year}" if style == 1 else d.isoformat()


def _fact(question: str, answer: str, value: float | None, unit: str | None) -> dict:
    return {"question": question, "answer": answer, "value": value, "unit": unit}


def _pii(kind: str, value: str) -> dict:
    return {"type": kind, "value": value}


def _truth(kind: str, fields: dict, summary: str, facts: list, pii: list, decision=None,
           reasons=(), intent=None, numbers=None) -> dict:
    """Assemble a clean document's ground truth (see the module docstring for each key)."""
    return {
        "kind": kind, "decision": decision, "reasons": list(reasons), "intent": intent,
        "summary_fields": fields, "reference_summary": summary, "facts": facts,
        "pii": list({(p["type"], p["value"]): p for p in pii}.values()),
        "noise": None, "duplicate_of": None, "numbers": numbers,
    }


# --- people and applications -------------------------------------------------------------


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
    first, last = rng.choice(_FIRST), last or rng.choice(_LAST)
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


def _application(rng: random.Random) -> dict:
    """A purchase application whose ratios land across approve, refer and deny.

    The target DTI is drawn first (15 % to 6 points past the program's hard limit) and income
    is solved from it, so every DTI band is populated; appraisals come in below price about a
    quarter of the time, which pushes low-down-payment files over the LTV limit.
    """
    borrower = _person(rng)
    co = None
    if rng.random() < 0.35:
        co = _person(rng, borrower["last"] if rng.random() < 0.6 else None)
    program = rng.choices(PROGRAMS, weights=(50, 20, 15, 15))[0]
    price = 1000.0 * rng.randint(*_PRICE_K[program])
    app = {
        "borrower": borrower, "co_borrower": co, "program": program, "price": price,
        "appraised_value": 1000.0 * round(price * rng.uniform(0.97, 1.10) / 1000),
        "loan_amount": 100.0 * int(price * (100 - rng.choice(_DOWN_PCT[program])) / 10_000),
        "rate_pct": rng.randrange(44, 61) * 0.125 + (0.25 if program == "jumbo" else 0.0),
        "term_months": rng.choice((360, 360, 360, 360, 240, 180)),
        "annual_taxes": 10.0 * round(price * rng.uniform(0.005, 0.021) / 10),
        "annual_insurance": 10.0 * rng.randint(70, 420),
        "debts": [(rng.choice(_DEBT_KINDS), float(rng.randint(25, 900)))
                  for _ in range(rng.randint(0, 3))],
    }
    # Lowest score of all borrowers qualifies; jumbo shoppers skew to stronger credit.
    low, high, mode = _SCORE_SHAPE[program]
    app["credit_score"] = min(int(rng.triangular(low, high, mode)) for p in (borrower, co) if p)
    app["monthly_debts"] = sum(amount for _, amount in app["debts"])
    housing = finance.monthly_payment(app["loan_amount"], app["rate_pct"], app["term_months"]) \
        + finance.escrow_monthly(app["annual_taxes"], app["annual_insurance"])
    target_dti = rng.uniform(15, PROGRAM_RULES[program].hard_dti_pct + 6)
    annual = 1200 * (app["monthly_debts"] + housing) / target_dti
    first = 500.0 * max(1, round(annual * (rng.uniform(0.35, 0.75) if co else 1.0) / 500))
    annuals = [first] + ([500.0 * max(1, round((annual - first) / 500))] if co else [])
    app["incomes"] = [round_half_up(a / 12, 2) for a in annuals]
    app["monthly_income"] = round_half_up(sum(app["incomes"]), 2)
    app["property_address"] = _address(rng)
    return app


_NUMBER_KEYS = (
    "loan_amount", "rate_pct", "term_months", "price", "appraised_value", "monthly_income",
    "monthly_debts", "annual_taxes", "annual_insurance", "credit_score",
)


def _application_truth(app: dict, uw: dict) -> tuple[dict, str, dict]:
    """(summary_fields, reference_summary, numbers) of an application-backed document."""
    fields = {
        "borrower": app["borrower"]["name"], "loan_amount": _dollars(app["loan_amount"]),
        "program": app["program"], "rate": _rate(app["rate_pct"]),
        "term_months": str(app["term_months"]), "decision": uw["decision"],
    }
    summary = (f"{fields['borrower']} applied for a {fields['program']} loan of "
               f"{fields['loan_amount']} at {fields['rate']} over {fields['term_months']} months; "
               f"the program rules give the decision {fields['decision']}")
    if uw["reasons"]:
        fields["reasons"] = "; ".join(REASONS[c] for c in uw["reasons"])
        summary += f" because the {fields['reasons']}"
    return fields, summary + ".", {k: float(app[k]) for k in _NUMBER_KEYS}


def _application_facts(app: dict, uw: dict) -> list[dict]:
    return [
        _fact(QUESTIONS["payment"], _money(uw["payment"]), uw["payment"], "USD"),
        _fact(QUESTIONS["housing"], _money(uw["housing_payment"]), uw["housing_payment"], "USD"),
        _fact(QUESTIONS["dti"], _pct(uw["dti_pct"]), uw["dti_pct"], "%"),
        _fact(QUESTIONS["ltv"], _pct(uw["ltv_pct"]), uw["ltv_pct"], "%"),
    ]


# --- layout helpers ------------------------------------------------------------------------


def _form(fields: list[tuple[str, str]], style: int) -> str:
    """Label/value pairs in one of the four layouts loan files use."""
    if style == 0:
        return "\n".join(f"{k}: {v}" for k, v in fields)
    if style == 1:
        rows = [f"| {k} | {v} |" for k, v in fields]
        return "\n".join(["| Item | Value |", "|---|---|"] + rows)
    if style == 2:
        return "\n".join(f"{k + ' ':.<38} {v}" for k, v in fields)
    return "\n".join(f"• {k} — {v}" for k, v in fields)


def _heading(title: str, style: int) -> str:
    if style == 0:
        return title.upper()
    if style == 1:
        return f"## {title}"
    return f"{title}\n{'-' * len(title)}" if style == 2 else f"[{title}]"


def _sections(sections: list[tuple[str, list]], style: int) -> list[str]:
    return [f"{_heading(title, style)}\n{_form(fields, style)}" for title, fields in sections]


# --- applications and underwriting notes ---------------------------------------------------


def _person_fields(rng: random.Random, p: dict, role: str, pii: list) -> list[tuple[str, str]]:
    """Identity lines of one borrower; every value shown is recorded as PII."""
    ssn_label = rng.choice(("SSN", "Social Security Number"))
    fields = [(f"{role} name", p["name"]), (ssn_label, p["ssn"])]
    pii += [_pii("name", p["name"]), _pii("ssn", p["ssn"])]
    for key, labels in (("phone", ("Phone", "Cell phone")), ("email", ("Email", "E-mail")),
                        ("address", ("Current address", "Present address"))):
        if rng.random() < 0.8:
            fields.append((rng.choice(labels), p[key]))
            pii.append(_pii(key, p[key]))
    if rng.random() < 0.5:
        fields.append(("Marital status", p["marital_status"].capitalize()))
    if rng.random() < 0.4:
        fields.append(("Age", str(p["age"])))
    return fields


def _application_sections(rng: random.Random, app: dict, uw: dict, pii: list) -> list:
    """(title, fields) sections of an application after the borrowers, in shuffled order."""
    people = [p for p in (app["borrower"], app["co_borrower"]) if p]
    income = []
    for p, monthly in zip(people, app["incomes"], strict=True):
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
        pii.append(_pii("address", app["property_address"]))
    amount_label = rng.choice(("Loan amount", "Requested loan amount", "Base loan amount"))
    loan = [("Loan program", _PROGRAM_LABEL[app["program"]]), ("Purpose", "Purchase"),
            (amount_label, _dollars(app["loan_amount"])), ("Interest rate", _rate(app["rate_pct"])),
            ("Term", f"{app['term_months']} months"),
            ("Proposed monthly P&I", _money(uw["payment"])),
            ("Proposed housing payment (PITI)", _money(uw["housing_payment"])),
            ("Loan-to-value", _pct(uw["ltv_pct"])), ("Debt-to-income", _pct(uw["dti_pct"])),
            ("Representative credit score", str(app["credit_score"]))]
    for fields in (prop, loan):
        if rng.random() < 0.3:
            rng.shuffle(fields)
    sections = [("Employment and Income", income), ("Monthly Liabilities", debts),
                ("Property", prop), ("Loan Terms", loan)]
    rng.shuffle(sections)
    return sections


def _loan_application(rng: random.Random) -> tuple[str, dict]:
    """A URLA-style application summary; its truth is the decision the rules would reach."""
    app = _application(rng)
    uw, pii, style, loan_no = underwriting.underwrite(app), [], rng.randrange(4), _loan_number(rng)
    title = rng.choice(("Uniform Residential Loan Application — Summary",
                        f"{rng.choice(_LENDERS)} — Mortgage Application",
                        "Application for Residential Mortgage Credit — Purchase"))
    parts = [title, f"{rng.choice(('Loan number', 'Application ID', 'Loan #'))}: {loan_no}"]
    pii.append(_pii("loan_number", loan_no))
    sections = [("Borrower Information", _person_fields(rng, app["borrower"], "Borrower", pii))]
    if app["co_borrower"]:
        co_fields = _person_fields(rng, app["co_borrower"], "Co-borrower", pii)
        sections.append(("Co-Borrower Information", co_fields))
    sections += _application_sections(rng, app, uw, pii)
    if rng.random() < 0.3:
        sex = app["borrower"]["sex"].capitalize()
        sections.append(("Demographic Information (HMDA, voluntary)",
                         [("Sex", sex), ("Provided by", "Applicant")]))
    parts += _sections(sections, style)
    if rng.random() < 0.5:
        officer = _person(rng)
        parts.append(f"Loan officer: {officer['name']}, {officer['phone']}")
        pii += [_pii("name", officer["name"]), _pii("phone", officer["phone"])]
    fields, summary, numbers = _application_truth(app, uw)
    income = app["monthly_income"]
    facts = _application_facts(app, uw)
    facts.append(_fact(QUESTIONS["income"], _money(income), income, "USD"))
    return "\n\n".join(parts), _truth("loan_application", fields, summary, facts, pii,
                                      uw["decision"], uw["reasons"], numbers=numbers)


_CONDITIONS = (
    "Verbal verification of employment within 10 business days of closing",
    "Two most recent months of bank statements for all asset accounts",
    "Signed IRS Form 4506-C",
    "Evidence of homeowner’s insurance with the lender as mortgagee",
    "Letter of explanation for recent credit inquiries",
    "Gift letter and donor’s proof of funds",
    "Final inspection if the appraisal was made subject to repairs",
)


def _decision_sentence(rng: random.Random, uw: dict, program: str) -> str:
    """The underwriter's verdict; always contains the literal decision word."""
    rules, why = PROGRAM_RULES[program], "; ".join(REASONS[c] for c in uw["reasons"])
    codes = f" [{', '.join(uw['reasons'])}]" if uw["reasons"] and rng.random() < 0.5 else ""
    options = {
        "approve": ("Decision: APPROVE. The file meets every program guideline.",
                    "All ratios are inside program limits — decision: approve, subject to "
                    "conditions.", "Final decision: approve."),
        "refer": (f"Decision: REFER — {why}. DTI sits between the {rules.soft_dti_pct:.0f}% and "
                  f"{rules.hard_dti_pct:.0f}% limits.",
                  f"Refer to a senior underwriter: {why}. Look for reserves or residual income as "
                  "compensating factors."),
        "deny": (f"Decision: DENY. Reasons: {why}.",
                 f"Recommendation is to deny — {why}. Adverse action notice to be sent within "
                 "30 days."),
    }
    return rng.choice(options[uw["decision"]]) + codes


def _underwriting_note(rng: random.Random) -> tuple[str, dict]:
    """An underwriter's memo stating the ratios, the decision and the reasons for it."""
    app = _application(rng)
    uw, style, who, loan_no = underwriting.underwrite(app), rng.randrange(4), _person(rng), \
        _loan_number(rng)
    people = [p for p in (app["borrower"], app["co_borrower"], who) if p]
    pii = [_pii("name", p["name"]) for p in people] + [_pii("loan_number", loan_no)]
    names, program = " and ".join(p["name"] for p in people[:-1]), _PROGRAM_LABEL[app["program"]]
    opening = rng.choice((f"Reviewed the {program} purchase file for {names}.",
                          f"File for {names} reviewed against {program} guidelines.",
                          f"{names} — {program} purchase, {_dollars(app['loan_amount'])} "
                          "requested."))
    ratios = (f"Qualifying score {app['credit_score']}; P&I of {_money(uw['payment'])} and PITI "
              f"of {_money(uw['housing_payment'])} put the back-end DTI at {_pct(uw['dti_pct'])} "
              f"on {_money(app['monthly_income'])} monthly income; LTV is {_pct(uw['ltv_pct'])} on "
              f"the lower of price ({_dollars(app['price'])}) and appraised value "
              f"({_dollars(app['appraised_value'])}).")
    parts = [rng.choice((f"Underwriting Decision — Loan {loan_no}", f"UW NOTES — file {loan_no}",
                         f"Credit memo — loan {loan_no}"))]
    if style != 1:
        parts.append(_form([("Program", program), ("Loan amount", _dollars(app["loan_amount"])),
                            ("Rate", _rate(app["rate_pct"])),
                            ("Term", f"{app['term_months']} months"),
                            ("Monthly debts", _money(app["monthly_debts"]))], style))
    parts += [f"{opening} {ratios}", _decision_sentence(rng, uw, app["program"])]
    if uw["decision"] != "deny":
        conditions = rng.sample(_CONDITIONS, rng.randint(1, 4))
        parts.append("Conditions:\n" + "\n".join(f"- {c}" for c in conditions))
    parts.append(f"— {who['name']}, Underwriter, {_fmt_date(_day(rng), rng.randrange(3))}")
    fields, summary, numbers = _application_truth(app, uw)
    facts = _application_facts(app, uw) + [_fact(QUESTIONS["decision"], uw["decision"], None, None)]
    return "\n\n".join(parts), _truth("underwriting_note", fields, summary, facts, pii,
                                      uw["decision"], uw["reasons"], numbers=numbers)


# --- rate sheets ---------------------------------------------------------------------------

_FICO_BUCKETS = ("580-619", "620-639", "640-659", "660-679", "680-699", "700-719", "720-739",
                 "740-759", "760+")
_LTV_BUCKETS = {
    "conventional": ("≤60", "60.01-70", "70.01-75", "75.01-80", "80.01-85", "85.01-90",
                     "90.01-95", "95.01-97"),
    "FHA": ("≤90", "90.01-95", "95.01-96.5"),
    "VA": ("≤90", "90.01-95", "95.01-100"),
    "jumbo": ("≤60", "60.01-70", "70.01-75", "75.01-80"),
}
_SHEET_NOTES = (
    "Owner-occupied single-family; add 0.375 for investment property.",
    "Lock extensions cost 0.125 points per 15 days.",
    "Pricing subject to change without notice. Not an offer to lend.",
    "Rates assume a 30-year fixed term and full documentation.",
)


def _rate_grid(rng: random.Random, program: str) -> tuple[list, tuple, list]:
    """(FICO buckets, LTV buckets, rate grid) from a base rate plus one-way adjustments.

    Adjustments only step one way, so better credit or lower LTV never prices worse.
    """
    min_score = PROGRAM_RULES[program].min_credit_score
    ficos = [b for b in _FICO_BUCKETS if int(b[:3]) >= min_score]
    ltvs = _LTV_BUCKETS[program]
    base = rng.randrange(42, 56) * 0.125 + (0.25 if program == "jumbo" else 0.0)
    fico_adj = list(accumulate(rng.choice((0.0, 0.125, 0.25)) for _ in ficos))[::-1]
    ltv_adj = list(accumulate(rng.choice((0.0, 0.125)) for _ in ltvs))
    return ficos, ltvs, [[base + f + v for v in ltv_adj] for f in fico_adj]


def _rate_sheet(rng: random.Random) -> tuple[str, dict]:
    """A wholesale rate sheet: 30-day rates by FICO x LTV bucket, and lock-period pricing."""
    program, lender, style = rng.choice(PROGRAMS), rng.choice(_LENDERS), rng.randrange(3)
    ficos, ltvs, grid = _rate_grid(rng, program)
    locks = {15: rng.choice((0.0, 0.125, 0.25))}
    for days in (30, 45, 60):
        locks[days] = locks[days - 15] + rng.choice((0.125, 0.25))
    day = _fmt_date(_day(rng), rng.randrange(3))
    rows = list(zip(ficos, grid, strict=True))
    if style == 0:
        table = ["| FICO | " + " | ".join(ltvs) + " |", "|---" * (len(ltvs) + 1) + "|"]
        table += [f"| {f} | " + " | ".join(map(_rate, row)) + " |" for f, row in rows]
    elif style == 1:
        table = [f"FICO {f}: " + " / ".join(f"LTV {v} {_rate(r)}"
                                            for v, r in zip(ltvs, row, strict=True))
                 for f, row in rows]
    else:
        table = ["fico," + ",".join(ltvs)]
        table += [f + "," + ",".join(map(_rate, row)) for f, row in rows]
    text = "\n\n".join([
        f"{lender} — {_PROGRAM_LABEL[program]} 30-Year Fixed Rate Sheet\n"
        f"Effective {day}, 9:00 AM ET. 30-day lock rates by FICO and LTV (%).",
        "\n".join(table),
        "Lock periods:\n" + "\n".join(f"{d}-day lock: {p:.3f} points" for d, p in locks.items()),
        " ".join(rng.sample(_SHEET_NOTES, rng.randint(1, len(_SHEET_NOTES)))),
    ])
    i, j, k = rng.randrange(len(ficos)), rng.randrange(len(ltvs)), rng.choice(tuple(locks))
    facts = [_fact(f"What is the 30-day rate for FICO {ficos[i]} at LTV {ltvs[j]}?",
                   _rate(grid[i][j]), grid[i][j], "%"),
             _fact(f"How many points does a {k}-day lock cost?", f"{locks[k]:.3f} points",
                   locks[k], "points")]
    rate_range = f"{_rate(min(map(min, grid)))}-{_rate(max(map(max, grid)))}"
    fields = {"lender": lender, "program": program, "effective_date": day, "rate_range": rate_range}
    summary = (f"{lender} {program} rate sheet effective {day}: 30-day rates {rate_range} by FICO "
               "and LTV, with 15- to 60-day locks.")
    return text, _truth("rate_sheet", fields, summary, facts, [], numbers={"grid": grid})


# --- loan estimates and closing disclosures ------------------------------------------------


def _closing_costs(rng: random.Random, app: dict) -> dict:
    """Itemised costs of a Loan Estimate / Closing Disclosure and the totals derived from them.

    Prepaid finance charges (they lower the amount financed, hence raise the APR) are points,
    origination, underwriting and prepaid interest; appraisal, credit report and title charges
    on a purchase are not finance charges under Regulation Z.
    """
    loan, rate = app["loan_amount"], app["rate_pct"]
    per_diem, days = finance.per_diem_interest(loan, rate), rng.randint(1, 30)
    loan_costs = {
        "Discount points": finance.points_cost(loan, rng.choice((0, 0, 0.25, 0.5, 1.0, 1.5))),
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
        # Two months of insurance and three of taxes seed the escrow account.
        "Initial escrow payment at closing": round_half_up(
            app["annual_insurance"] / 6 + app["annual_taxes"] / 4, 2),
    }
    charges = loan_costs["Discount points"] + loan_costs["Origination fee"] \
        + loan_costs["Underwriting fee"] + prepaid_interest
    closing_costs = round_half_up(sum(loan_costs.values()), 2)
    return {
        "loan_costs": loan_costs, "prepaid_items": prepaids, "closing_costs": closing_costs,
        "prepaids": round_half_up(sum(prepaids.values()), 2),
        "finance_charges": round_half_up(charges, 2),
        "deposit": 100.0 * round(app["price"] * rng.choice((0.01, 0.02, 0.03)) / 100),
        "seller_credits": min(closing_costs, float(rng.choice((0, 0, 0, 2000, 3000, 5000)))),
    }


def _approved_or_any(rng: random.Random, need_approval: bool) -> tuple[dict, dict]:
    """Draw applications until one fits: a Closing Disclosure exists only for approved loans."""
    while True:
        app = _application(rng)
        uw = underwriting.underwrite(app)
        if uw["decision"] == "approve" or not need_approval:
            return app, uw


def _disclosure_sections(rng: random.Random, form: str, app: dict, c: dict, loan_no: str) -> list:
    """(title, fields) sections in the order of the Loan Estimate / Closing Disclosure forms."""
    date_label = "Date issued" if form == "Loan Estimate" else "Closing date"
    head = [(date_label, _fmt_date(_day(rng), rng.randrange(3))),
            ("Applicant", app["borrower"]["name"]), ("Property", app["property_address"]),
            ("Sale price", _dollars(app["price"])), ("Loan term", f"{app['term_months']} months"),
            ("Purpose", "Purchase"), ("Product", "Fixed Rate"),
            ("Loan type", _PROGRAM_LABEL[app["program"]]), ("Loan ID #", loan_no)]
    cash = [("Total closing costs", _money(c["closing_costs"])),
            ("Prepaids and escrow", _money(c["prepaids"])),
            ("Down payment", _money(app["price"] - app["loan_amount"])),
            ("Deposit", "-" + _money(c["deposit"])),
            ("Seller credits", "-" + _money(c["seller_credits"])),
            ("Cash to close", _money(c["cash"]))]
    return [
        (f"{form} — {rng.choice(_LENDERS)}", head),
        ("Loan Terms and Payments", c["terms"][:5]),
        ("Loan Costs", [(k, _money(v)) for k, v in c["loan_costs"].items() if v]),
        ("Prepaids and Initial Escrow", [(k, _money(v)) for k, v in c["prepaid_items"].items()]),
        ("Calculating Cash to Close", [row for row in cash if row[1] != "-$0.00"]),
        ("Comparisons", c["terms"][7:]),
    ]


def _disclosure(rng: random.Random, kind: str) -> tuple[str, dict]:
    """A Loan Estimate or Closing Disclosure, as the form or as a cover letter quoting it."""
    app, uw = _approved_or_any(rng, kind == "closing_disclosure")
    c, style, loan_no = _closing_costs(rng, app), rng.randrange(5), _loan_number(rng)
    c["apr"] = finance.loan_apr(
        app["loan_amount"], app["rate_pct"], app["term_months"], c["finance_charges"])
    c["cash"] = finance.cash_to_close(app["price"], app["loan_amount"], c["closing_costs"],
                                      c["prepaids"], c["deposit"], c["seller_credits"])
    c["terms"] = [("Loan amount", _dollars(app["loan_amount"])),
                  ("Interest rate", _rate(app["rate_pct"])),
                  ("Monthly principal & interest", _money(uw["payment"])),
                  ("Estimated escrow", _money(uw["housing_payment"] - uw["payment"])),
                  ("Estimated total monthly payment", _money(uw["housing_payment"])),
                  ("Total closing costs", _money(c["closing_costs"])),
                  ("Cash to close", _money(c["cash"])),
                  ("Annual Percentage Rate (APR)", _rate(c["apr"]))]
    b, form = app["borrower"], "Loan Estimate" if kind == "loan_estimate" else "Closing Disclosure"
    if style == 4:
        parts = [rng.choice((f"Dear {b['name']},", f"Hello {b['name']},")),
                 f"Your {form} for {app['property_address']} (loan {loan_no}) is attached. Here "
                 f"are the figures you asked about — a {_PROGRAM_LABEL[app['program']]} loan over "
                 f"{app['term_months']} months:", _form(c["terms"], 3),
                 f"Thank you for choosing {rng.choice(_LENDERS)}."]
    else:
        parts = _sections(_disclosure_sections(rng, form, app, c, loan_no), style)
    pii = [_pii("name", b["name"]), _pii("loan_number", loan_no),
           _pii("address", app["property_address"])]
    fields = {"borrower": b["name"], "loan_amount": _dollars(app["loan_amount"]),
              "program": app["program"], "rate": _rate(app["rate_pct"]), "apr": _rate(c["apr"]),
              "payment": _money(uw["payment"]), "cash_to_close": _money(c["cash"])}
    summary = (f"{form} for {fields['borrower']}: {fields['program']} loan of "
               f"{fields['loan_amount']} at {fields['rate']} ({fields['apr']} APR), "
               f"{fields['payment']} monthly principal and interest, {fields['cash_to_close']} "
               "cash to close.")
    facts = _application_facts(app, uw)[:2] + [
        _fact(QUESTIONS["apr"], _rate(c["apr"]), c["apr"], "%"),
        _fact(QUESTIONS["cash"], _money(c["cash"]), c["cash"], "USD"),
        _fact(QUESTIONS["closing_costs"], _money(c["closing_costs"]), c["closing_costs"], "USD")]
    cost_keys = ("finance_charges", "closing_costs", "prepaids", "deposit", "seller_credits")
    numbers = {**_application_truth(app, uw)[2], **{k: c[k] for k in cost_keys}}
    return "\n\n".join(parts), _truth(kind, fields, summary, facts, pii, uw["decision"],
                                      uw["reasons"], numbers=numbers)


def _loan_estimate(rng: random.Random) -> tuple[str, dict]:
    """Loan Estimate: issued for any application, before the underwriting decision."""
    return _disclosure(rng, "loan_estimate")


def _closing_disclosure(rng: random.Random) -> tuple[str, dict]:
    """Closing Disclosure: final terms of an approved loan."""
    return _disclosure(rng, "closing_disclosure")


# --- appraisals ----------------------------------------------------------------------------


def _comparables(rng: random.Random, city: tuple, gla: int, target: float) -> list[dict]:
    """3-5 comparable sales in the subject's town, adjusted to within +-3 % of ``target``."""
    per_sqft = rng.choice((40, 50, 60, 75, 90))
    comps = []
    for _ in range(rng.randint(3, 5)):
        comp_gla = gla + 100 * rng.randint(-4, 4)
        gla_adj, other_adj = per_sqft * (gla - comp_gla), 500 * rng.randint(-16, 16)
        sale = 500.0 * round((target * rng.uniform(0.97, 1.03) - gla_adj - other_adj) / 500)
        comps.append({"address": _address(rng, city), "sale": sale, "gla": comp_gla,
                      "gla_adj": gla_adj, "other_adj": other_adj,
                      "adjusted": sale + gla_adj + other_adj, "miles": rng.randint(1, 15) / 10})
    return comps


def _appraisal_summary(rng: random.Random) -> tuple[str, dict]:
    """A URAR-style summary: subject, comparable sales and the reconciled value."""
    city, borrower, appraiser = rng.choice(_CITIES), _person(rng), _person(rng)
    subject, style = _address(rng, city), rng.randrange(4)
    gla, price = 100 * rng.randint(9, 42), 1000.0 * rng.randint(140, 1800)
    comps = _comparables(rng, city, gla, price * rng.uniform(0.94, 1.08))
    # Reconciled here as the plain mean of adjusted prices, rounded to $1,000 as appraisers do.
    value = round_half_up(sum(c["adjusted"] for c in comps) / len(comps), -3)
    gap = value - price
    pii = [_pii("address", a) for a in [subject] + [c["address"] for c in comps]]
    pii += [_pii("name", borrower["name"]), _pii("name", appraiser["name"])]
    subject_fields = [
        ("Property address", subject), ("Borrower", borrower["name"]),
        ("Lender/Client", rng.choice(_LENDERS)), ("Gross living area", f"{gla:,} sq ft"),
        ("Bedrooms / baths", f"{rng.randint(2, 5)} / {rng.choice((1, 1.5, 2, 2.5, 3))}"),
        ("Year built", str(rng.randint(1950, 2023))),
        ("Condition", rng.choice(("C2", "C3", "C3", "C4"))), ("Contract price", _dollars(price))]
    rows = [f"Comparable {n}: {c['address']} — sold {_dollars(c['sale'])}, {c['gla']:,} sq ft, "
            f"{c['miles']} mi; GLA adj. {_dollars(c['gla_adj'])}, other adj. "
            f"{_dollars(c['other_adj'])}; adjusted {_dollars(c['adjusted'])}"
            for n, c in enumerate(comps, 1)]
    relation = "equal to" if gap == 0 else ("above" if gap > 0 else "below")
    verdict = rng.choice((f"Indicated value by the sales comparison approach: {_dollars(value)}.",
                          f"Reconciled market value as of the effective date: {_dollars(value)}."))
    parts = [rng.choice(("Appraisal Summary — Uniform Residential Appraisal Report",
                         f"Appraisal Review — {subject}")),
             _form(subject_fields, style), "Sales Comparison Approach\n" + "\n".join(rows),
             f"{verdict} The appraised value is {_dollars(abs(gap))} {relation} the contract "
             "price."]
    if rng.random() < 0.5:
        parts.append(f"Appraiser: {appraiser['name']}, Certified Residential Appraiser, "
                     f"{appraiser['email']}")
        pii.append(_pii("email", appraiser["email"]))
    else:
        parts.append(f"Signed: {appraiser['name']}")
    fields = {"address": subject, "appraised_value": _dollars(value),
              "contract_price": _dollars(price), "comparables": str(len(comps))}
    summary = (f"The appraisal of {subject} reconciles {fields['comparables']} comparable sales "
               f"to {fields['appraised_value']} against a contract price of "
               f"{fields['contract_price']}.")
    facts = [_fact(QUESTIONS["appraised"], _dollars(value), value, "USD"),
             _fact("What is the adjusted sale price of comparable 1?",
                   _dollars(comps[0]["adjusted"]), comps[0]["adjusted"], "USD"),
             _fact("By how much does the appraised value differ from the contract price?",
                   _dollars(abs(gap)), gap, "USD")]
    numbers = {"price": price, "appraised_value": value, "gla": float(gla),
               "comp_adjusted": [c["adjusted"] for c in comps]}
    return "\n\n".join(parts), _truth("appraisal_summary", fields, summary, facts, pii,
                                      numbers=numbers)


# --- e-mails -------------------------------------------------------------------------------

_TOPIC = {"escrow": "escrow", "payoff": "a payoff quote", "forbearance": "forbearance",
          "rate_lock": "a rate lock", "late_fee": "a late fee"}


def _serviced_loan(rng: random.Random) -> dict:
    """A loan already on the servicer's books, some payments into its term."""
    amount, term, rate = 1000.0 * rng.randint(90, 900), rng.choice((360, 360, 180)), \
        rng.randrange(20, 61) * 0.125
    taxes, insurance = 10.0 * rng.randint(80, 1200), 10.0 * rng.randint(70, 400)
    return {"amount": amount, "rate_pct": rate, "term_months": term,
            "made": rng.randint(6, term - 12), "annual_taxes": taxes, "annual_insurance": insurance,
            "payment": finance.monthly_payment(amount, rate, term),
            "escrow": finance.escrow_monthly(taxes, insurance)}


def _escrow_body(rng: random.Random, loan: dict, day: str) -> tuple[list, list, dict]:
    """Escrow analysis result: new deposit, shortage spread over 12 months, new payment."""
    taxes = 10.0 * round(loan["annual_taxes"] * rng.uniform(1.0, 1.15) / 10)
    insurance = 10.0 * round(loan["annual_insurance"] * rng.uniform(1.0, 1.25) / 10)
    shortage = 10.0 * rng.randint(5, 120)
    escrow, spread = finance.escrow_monthly(taxes, insurance), round_half_up(shortage / 12, 2)
    total = round_half_up(loan["payment"] + escrow + spread, 2)
    body = [f"Your annual escrow analysis is complete. We expect to pay {_money(taxes)} in "
            f"property taxes and {_money(insurance)} for homeowner’s insurance this year, so "
            f"your monthly escrow deposit becomes {_money(escrow)}.",
            f"The analysis found a shortage of {_money(shortage)}, which we have spread over 12 "
            f"months ({_money(spread)} a month).",
            f"Starting {day}, your total monthly payment will be {_money(total)}, including "
            f"{_money(loan['payment'])} principal and interest.",
            rng.choice(("Federal rules (RESPA) limit the cushion we may hold to one-sixth of the "
                        "year’s escrow disbursements.",
                        "You may also pay the shortage in one lump sum instead."))]
    facts = [_fact("What is the new monthly escrow deposit?", _money(escrow), escrow, "USD"),
             _fact("What is the new total monthly payment?", _money(total), total, "USD")]
    return body, facts, {"payment": loan["payment"], "annual_taxes": taxes,
                         "annual_insurance": insurance, "shortage": shortage}


def _payoff_body(rng: random.Random, loan: dict, day: str) -> tuple[list, list, dict]:
    """Payoff quote: amortised balance plus per-diem interest plus a release fee."""
    balance = finance.remaining_balance(
        loan["amount"], loan["rate_pct"], loan["term_months"], loan["made"])
    days, fee = rng.randint(5, 30), float(rng.choice((30, 45, 60, 75)))
    per_diem = finance.per_diem_interest(balance, loan["rate_pct"])
    total = round_half_up(balance + round_half_up(per_diem * days, 2) + fee, 2)
    body = [f"As requested, here is your payoff quote good through {day}.",
            f"Unpaid principal balance: {_money(balance)}. Interest accrues at {_money(per_diem)} "
            f"per day; {days} days of interest are included. Release fee: {_money(fee)}.",
            f"Total amount to pay off the loan: {_money(total)}.",
            rng.choice(("Funds received after the good-through date need additional interest.",
                        "Please wire funds or send certified funds; personal checks are not "
                        "accepted for payoffs."))]
    facts = [_fact("What is the daily interest (per diem)?", _money(per_diem), per_diem, "USD"),
             _fact("What is the total payoff amount?", _money(total), total, "USD")]
    numbers = {k: float(loan[k]) for k in ("amount", "rate_pct", "term_months", "made")}
    return body, facts, {**numbers, "days": float(days), "fee": fee}


def _forbearance_body(rng: random.Random, loan: dict, day: str) -> tuple[list, list, dict]:
    """Forbearance approval: the suspended PITI times the months of the plan."""
    months, piti = rng.choice((3, 6)), round_half_up(loan["payment"] + loan["escrow"], 2)
    deferred = round_half_up(piti * months, 2)
    body = [f"We have approved a {months}-month forbearance plan beginning {day}.",
            f"Your regular payment of {_money(piti)} is suspended during the plan; no late fees "
            "will be charged.",
            f"At the end of the plan the {_money(deferred)} in missed payments can be handled "
            "through a repayment plan, a deferral to the end of the loan, or a loan modification "
            "— it does not have to be repaid at once.",
            "Please contact us 30 days before the plan ends so we can review your options."]
    facts = [_fact("What total amount is deferred by the forbearance plan?", _money(deferred),
                   deferred, "USD")]
    return body, facts, {"housing_payment": piti, "months": float(months)}


def _rate_lock_body(rng: random.Random, loan: dict, day: str) -> tuple[list, list, dict]:
    """Rate lock confirmation: expiry date and the cost of a 15-day extension."""
    lock_days, locked = rng.choice((15, 30, 45, 60)), _day(rng)
    expires = _fmt_date(locked + timedelta(days=lock_days), 0)
    extension = finance.points_cost(loan["amount"], 0.125)
    body = [f"Your interest rate is locked at {_rate(loan['rate_pct'])} for {lock_days} days, from "
            f"{_fmt_date(locked, 0)}; the lock expires on {expires}.",
            f"If closing moves past that date, a 15-day extension costs 0.125 points, "
            f"{_money(extension)} on your {_dollars(loan['amount'])} loan.",
            rng.choice(("Changes to the loan amount or program may change the locked price.",
                        f"Your disclosures dated {day} will be updated to reflect the lock."))]
    facts = [_fact("When does the rate lock expire?", expires, None, "date"),
             _fact("How much does a 15-day lock extension cost?", _money(extension), extension,
                   "USD")]
    return body, facts, {"amount": loan["amount"], "lock_days": float(lock_days)}


def _late_fee_body(rng: random.Random, loan: dict, day: str) -> tuple[list, list, dict]:
    """Late charge notice: a percentage of the principal-and-interest payment."""
    pct = rng.choice((4.0, 5.0))
    fee = round_half_up(loan["payment"] * pct / 100, 2)
    body = [f"We did not receive your payment due {day} within the 15-day grace period.",
            f"As your note allows, a late charge of {pct:.0f}% of the principal and interest "
            f"payment ({_money(loan['payment'])}) has been assessed: {_money(fee)}.",
            rng.choice(("If you believe this is an error, reply with the date and confirmation "
                        "number of your payment.",
                        "Setting up automatic payments can help you avoid future late charges."))]
    return body, [_fact("How much is the late fee?", _money(fee), fee, "USD")], \
        {"payment": loan["payment"], "late_pct": pct}


_SERVICING_BODIES = {"escrow": _escrow_body, "payoff": _payoff_body,
                     "forbearance": _forbearance_body, "rate_lock": _rate_lock_body,
                     "late_fee": _late_fee_body}


def _servicing_email(rng: random.Random) -> tuple[str, dict]:
    """A servicer's e-mail to a borrower answering one intent, with the figures it computed."""
    intent, b, rep, loan_no = rng.choice(INTENTS), _person(rng), _person(rng), _loan_number(rng)
    loan, servicer = _serviced_loan(rng), rng.choice(_LENDERS)
    day = _fmt_date(_day(rng), rng.randrange(3))
    body, facts, numbers = _SERVICING_BODIES[intent](rng, loan, day)
    pii = [_pii("name", b["name"]), _pii("loan_number", loan_no), _pii("name", rep["name"]),
           _pii("phone", rep["phone"])]
    subject = rng.choice((f"Your loan {loan_no}: {_TOPIC[intent]}",
                          f"Re: {_TOPIC[intent]} — loan {loan_no}"))
    if rng.random() < 0.6:
        parts = [f"From: {rep['email']}\nTo: {b['email']}\nSubject: {subject}"]
        pii += [_pii("email", rep["email"]), _pii("email", b["email"])]
    else:
        parts = [f"Subject: {subject}"]
    parts.append(rng.choice((f"Dear {b['name']},", f"Hello {b['name']},", f"{b['name']}:")))
    parts += body if rng.random() < 0.5 else [" ".join(body)]
    parts.append(f"{rng.choice(('Sincerely', 'Regards', 'Thank you'))},\n{rep['name']}\n"
                 f"{servicer} — Loan Servicing\n{rep['phone']}")
    key = facts[-1]["answer"]
    fields = {"customer": b["name"], "intent": intent, "loan_number": loan_no, "key_figure": key}
    summary = (f"The servicer wrote to {b['name']} about {_TOPIC[intent]} (intent {intent}) on "
               f"loan {loan_no}; key figure: {key}.")
    return "\n\n".join(parts), _truth("servicing_email", fields, summary, facts, pii,
                                      intent=intent, numbers=numbers)


_ASKS = {
    "escrow": (
        "My monthly payment went up from {old} to {new} and I don’t understand why. Is this the "
        "escrow?",
        "I got an escrow statement saying I have a shortage and my payment is now {new} (it was "
        "{old}). Can I pay the shortage in one lump sum instead?",
        "why did my payment change?? it was {old} last month and now its {new}. nothing else "
        "changed"),
    "payoff": (
        "I’m selling my house and need a payoff quote good through {day}.",
        "Could you send me the payoff amount? We’re refinancing with another lender on {day}.",
        "What is the total amount needed to pay off my mortgage by {day}?"),
    "forbearance": (
        "I lost my job last month and can’t make my mortgage payment. What are my options for "
        "forbearance?",
        "I had a medical emergency and need to pause my payments for a few months. Is that "
        "possible?",
        "My hours were cut and I’ll be short on next month’s payment. Is there a hardship "
        "program?"),
    "rate_lock": (
        "My rate lock expires on {day} and closing got pushed back. How much does it cost to "
        "extend the lock?",
        "Can I lock my rate today? I was quoted {rate}.",
        "Rates dropped since I locked at {rate} — is there a float-down option before {day}?"),
    "late_fee": (
        "I was charged a late fee but I paid on {day}. Can you waive it?",
        "Why is there a late charge on my statement? My payment was sent on time on {day}.",
        "I was a few days late because of a bank error on {day} — can the late fee be removed?"),
}


def _customer_email(rng: random.Random) -> tuple[str, dict]:
    """A borrower's own e-mail to the servicer; informal, one intent, sometimes a quoted thread."""
    intent, b, loan_no, loan = rng.choice(INTENTS), _person(rng), _loan_number(rng), \
        _serviced_loan(rng)
    old = round_half_up(loan["payment"] + loan["escrow"], 2)
    new = round_half_up(old + rng.randint(1500, 30000) / 100, 2)
    template = rng.choice(_ASKS[intent])
    ask = template.format(old=_money(old), new=_money(new), rate=_rate(loan["rate_pct"]),
                          day=_fmt_date(_day(rng), rng.randrange(3)))
    pii = [_pii("name", b["name"]), _pii("loan_number", loan_no), _pii("email", b["email"])]
    lines = [f"From: {b['name']} <{b['email']}>",
             f"Subject: {rng.choice(('Question', 'Help please', 'My mortgage', _TOPIC[intent]))}",
             rng.choice(("Hi,", "Hello,", "To whom it may concern,", "")), ask,
             rng.choice((f"My loan number is {loan_no}.", f"Loan #{loan_no}", f"(loan {loan_no})"))]
    if rng.random() < 0.5:
        lines.append(f"You can reach me at {b['phone']}.")
        pii.append(_pii("phone", b["phone"]))
    if rng.random() < 0.3:
        lines.append(f"The property is {b['address']}.")
        pii.append(_pii("address", b["address"]))
    lines.append(f"{rng.choice(('Thanks', 'Thank you', 'Best'))},\n{b['name']}")
    if rng.random() < 0.2:
        lines.append("> On a previous message, Loan Servicing wrote:\n> Thank you for contacting "
                     "us. A representative will respond within 2 business days.")
    facts, numbers = [_fact("What is the loan number?", loan_no, None, None)], None
    if "{old}" in template:
        increase = round_half_up(new - old, 2)
        facts.append(_fact("By how much did the monthly payment increase?", _money(increase),
                           increase, "USD"))
        numbers = {"old_payment": old, "new_payment": new}
    fields = {"customer": b["name"], "intent": intent, "loan_number": loan_no}
    summary = (f"{b['name']} wrote to the servicer about {_TOPIC[intent]} (intent {intent}) on "
               f"loan {loan_no}.")
    return "\n".join(line for line in lines if line), _truth(
        "customer_email", fields, summary, facts, pii, intent=intent, numbers=numbers)


# --- regulatory explanations ---------------------------------------------------------------
# topic -> (titles, summary, facts, context). A fact is (question, answer, value, unit,
# sentence) and its sentence always appears; context sentences are optional. Statements
# follow Regulation X (RESPA), B (ECOA), Z (TILA/TRID), the SAFE Act and the Homeowners
# Protection Act; no section numbers are cited, so none can be wrong.

_REGULATIONS = {
    "RESPA escrow limits": (
        ("How much can a servicer keep in escrow?", "Escrow accounts under RESPA (Regulation X)"),
        "RESPA caps the escrow cushion at one-sixth of annual disbursements, requires an analysis "
        "every 12 months, and requires surpluses of $50 or more to be refunded within 30 days.",
        (("How large an escrow cushion may a servicer require?", "one-sixth", 1 / 6,
          "of annual disbursements",
          "A servicer may require a cushion of no more than one-sixth of the estimated total "
          "annual escrow disbursements, roughly two months of escrow payments."),
         ("How often must the escrow account be analysed?", "12 months", 12.0, "months",
          "The servicer must analyse the account at least once every 12 months and send an "
          "annual escrow statement."),
         ("Above what amount must an escrow surplus be refunded?", "$50", 50.0, "USD",
          "A surplus of $50 or more must be refunded within 30 days of the analysis if the "
          "borrower is current; a smaller surplus may be credited toward next year’s payments.")),
        ("If a shortage is at least one month’s escrow payment, the servicer may spread its "
         "repayment over at least 12 months.",
         "Escrow pays property taxes and homeowner’s insurance on the borrower’s behalf."),
    ),
    "ECOA adverse action": (
        ("What must an adverse action notice say?", "Adverse action under ECOA (Regulation B)"),
        "Under ECOA a creditor must notify an applicant of its action within 30 days of a "
        "completed application, and a denial must give specific reasons or offer them on request "
        "within 60 days.",
        (("Within how many days must a creditor notify an applicant of action on a completed "
          "application?", "30 days", 30.0, "days",
          "A creditor must notify an applicant of its decision within 30 days after receiving a "
          "completed application."),
         ("How long does an applicant have to request the reasons for adverse action?", "60 days",
          60.0, "days",
          "An adverse action notice must either state the specific principal reasons or tell the "
          "applicant that the reasons can be requested within 60 days."),
         ("Which characteristics may not be used in a credit decision under ECOA?",
          "race, color, religion, national origin, sex, marital status, age", None, None,
          "ECOA forbids discrimination on the basis of race, color, religion, national origin, "
          "sex, marital status, age (if the applicant can contract), receipt of public "
          "assistance, or the good-faith exercise of consumer credit rights.")),
        ("Saying only that the applicant missed the creditor’s internal standards or a "
         "qualifying credit score is not specific enough.",
         "The notice must name the federal agency that supervises the creditor."),
    ),
    "TRID disclosure timing": (
        ("When do I get my Loan Estimate and Closing Disclosure?",
         "TRID timing rules (Regulation Z)"),
        "Under TRID the Loan Estimate is due within 3 business days of application and at least "
        "7 business days before consummation, and the Closing Disclosure must be received 3 "
        "business days before it.",
        (("How soon after application must the Loan Estimate be delivered?", "3 business days",
          3.0, "business days",
          "The Loan Estimate must be delivered or placed in the mail within 3 business days after "
          "the lender receives an application."),
         ("How many business days before consummation must the Loan Estimate be delivered?",
          "7 business days", 7.0, "business days",
          "It must also be delivered or mailed at least 7 business days before consummation."),
         ("How many pieces of information make up an application under TRID?", "six", 6.0,
          "items",
          "An application exists once the lender has six pieces of information: name, income, "
          "Social Security number, property address, estimated property value and loan amount "
          "sought.")),
        ("The borrower must receive the Closing Disclosure at least 3 business days before "
         "consummation.",
         "A new 3-business-day wait starts if the APR becomes inaccurate, the loan product "
         "changes, or a prepayment penalty is added."),
    ),
    "SAFE Act licensing": (
        ("Who may act as a mortgage loan originator?",
         "Loan originator licensing under the SAFE Act"),
        "The SAFE Act requires loan originators to be state-licensed or federally registered in "
        "NMLS, with 20 hours of pre-licensing education, a 75 percent test score and 8 hours of "
        "yearly continuing education.",
        (("Where are mortgage loan originators licensed or registered?", "NMLS", None, None,
          "Anyone who takes residential mortgage applications and negotiates terms for pay must "
          "be licensed by a state or, at a federally regulated bank or credit union, registered "
          "in the Nationwide Multistate Licensing System and Registry (NMLS)."),
         ("How many hours of pre-licensing education does a state-licensed originator need?",
          "20 hours", 20.0, "hours",
          "State licensing requires at least 20 hours of pre-licensing education, including 3 "
          "hours of federal law, 3 hours of ethics and 2 hours on nontraditional lending."),
         ("What score must an applicant reach on the licensing test?", "75 percent", 75.0, "%",
          "Applicants must pass a written test with a score of at least 75 percent."),
         ("How many hours of continuing education must a licensed originator complete each "
          "year?", "8 hours", 8.0, "hours",
          "Licensed originators complete at least 8 hours of continuing education every year.")),
        ("Every originator has a unique NMLS identifier that consumers can look up.",),
    ),
    "PMI cancellation": (
        ("When can I stop paying PMI?",
         "Private mortgage insurance under the Homeowners Protection Act"),
        "The Homeowners Protection Act lets borrowers request PMI cancellation at 80 percent of "
        "original value and ends it automatically at 78 percent, or at the loan’s midpoint, if "
        "payments are current.",
        (("At what loan-to-value can a borrower request PMI cancellation?", "80 percent", 80.0,
          "% of original value",
          "A borrower may ask to cancel private mortgage insurance once the balance reaches, or "
          "is scheduled to reach, 80 percent of the home’s original value, with a good payment "
          "history."),
         ("At what loan-to-value does PMI end automatically?", "78 percent", 78.0,
          "% of original value",
          "PMI ends automatically when the balance is scheduled to reach 78 percent of original "
          "value, as long as the borrower is current."),
         ("When does final termination of PMI occur?", "midpoint", None, None,
          "Otherwise it ends at the midpoint of the amortization schedule — after 15 years on a "
          "30-year loan.")),
        ("The Act covers borrower-paid PMI on single-family primary residences for loans closed "
         "on or after July 29, 1999; FHA mortgage insurance follows FHA’s own rules.",),
    ),
    "Right of rescission": (
        ("Can I cancel my refinance after signing?", "The TILA right of rescission"),
        "TILA lets borrowers cancel a refinance or home-equity loan on their principal dwelling "
        "until midnight of the third business day, but not a loan to buy the home.",
        (("How long is the right of rescission?", "third business day", 3.0, "business days",
          "For a refinance or home-equity loan secured by the principal dwelling, the borrower "
          "may cancel until midnight of the third business day after closing, delivery of the "
          "rescission notice or delivery of the material disclosures, whichever is last."),
         ("Does the right of rescission apply to a loan to buy a home?", "does not apply", None,
          None, "The right does not apply to a loan used to buy or build the home itself."),
         ("How long can the right last if the disclosures were never given?", "3 years", 3.0,
          "years",
          "If the notice or material disclosures are never delivered, the right can last up to "
          "3 years.")),
        ("The lender may not disburse funds until the rescission period has ended.",
         "A refinance with the same lender is exempt except for any new money advanced."),
    ),
}


def _regulatory_explanation(rng: random.Random) -> tuple[str, dict]:
    """A short plain-language explainer of one rule, as prose, Q&A or bullets."""
    topic = rng.choice(tuple(_REGULATIONS))
    titles, summary, facts, context = _REGULATIONS[topic]
    style, context = rng.randrange(3), rng.sample(context, rng.randint(0, len(context)))
    intro = rng.choice(("Here is a short, plain-language explanation.",
                        "General information, not legal advice.", "Borrowers ask about this often.",
                        ""))
    sentences = [f[4] for f in facts] + context
    if style == 0:
        body = " ".join([intro] + sentences).strip()
    elif style == 1:
        qa = [f"Q: {f[0]}\nA: {f[4]}" for f in facts]
        body = "\n\n".join(qa + [f"Note: {c}" for c in context])
    else:
        body = "\n".join([intro] + [f"• {s}" for s in sentences]).strip()
    truth = _truth("regulatory_explanation", {"topic": topic, "key_rule": summary},
                   f"{topic}: {summary}", [_fact(*f[:4]) for f in facts], [])
    title = rng.choice(titles + (f"{topic}, in plain language",))
    return f"{title}\n\n{body}", truth


_RENDERERS = {
    "loan_application": _loan_application, "underwriting_note": _underwriting_note,
    "rate_sheet": _rate_sheet, "loan_estimate": _loan_estimate,
    "closing_disclosure": _closing_disclosure, "appraisal_summary": _appraisal_summary,
    "servicing_email": _servicing_email, "customer_email": _customer_email,
    "regulatory_explanation": _regulatory_explanation,
}


# --- planted noise -------------------------------------------------------------------------

# Bytes 0x80-0x9F shown as Windows-1252 shows them; the five it leaves undefined stay C1
# controls, which is what real mojibake (and ftfy's "sloppy-windows-1252") looks like.
_CP1252 = {b: bytes([b]).decode("cp1252") for b in range(0x80, 0xA0)
           if b not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)}
_SYNONYMS = {"please": "kindly", "about": "regarding", "must": "shall", "your": "the",
             "will": "shall", "can": "may", "also": "additionally", "the": "this", "is": "remains"}


def _mojibake(text: str) -> str:
    """UTF-8 bytes misread as Windows-1252: ’ -> â€™, é -> Ã©."""
    return text.encode("utf-8").decode("latin-1").translate(_CP1252)


def _htmlify(rng: random.Random, text: str) -> str:
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
        noisy["text"] = _mojibake(text)
        truth["pii"] = [{**p, "value": _mojibake(p["value"])} for p in truth["pii"]]
    elif label == "html":
        noisy["text"] = _htmlify(rng, text)
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


# --- public API ----------------------------------------------------------------------------


def generate(seed: int, shard: int, num_docs: int, noise: bool = True) -> Iterator[dict]:
    """Yield ``num_docs`` records of one shard; identical arguments give identical records.

    Content comes from the stream sha256(f"{seed}:{shard}") and noise from a separate stream,
    so record i is the same clean document with or without noise unless noise replaced it.
    Duplicates copy one of the last 256 clean records of the same shard (so the shard's first
    record is always clean); ASCII-only texts escape mojibake.
    """
    content, noise_rng = _rng(seed, str(shard)), _rng(seed, f"{shard}:noise")
    recent: list[dict] = []
    for i in range(num_docs):
        kind = content.choices(DOC_KINDS, cum_weights=_KIND_CUM_WEIGHTS)[0]
        text, truth = _RENDERERS[kind](content)
        record = {"doc_id": f"syn-{seed}-{shard}-{i}", "source": "synthetic", "kind": kind,
                  "text": text, "ground_truth": truth}
        label = _draw_noise(noise_rng) if noise else None
        if _applies(label, record, recent):
            yield _noisy(noise_rng, record, label, recent)
        else:
            recent = recent[-255:] + [record]
            yield record


def shard_sizes(num_docs: int, num_shards: int) -> list[int]:
    """Docs per shard: equal shares, the first ``num_docs % num_shards`` shards one larger."""
    base, extra = divmod(num_docs, num_shards)
    return [base + (s < extra) for s in range(num_shards)]


def generate_sharded(seed: int, num_docs: int, num_shards: int,
                     noise: bool = True) -> Iterator[dict]:
    """All shards in order: ``generate(seed, s, shard_sizes(num_docs, num_shards)[s])``.

    Shard s numbers its records from 0 (doc_id syn-{seed}-{s}-{i}), so a Ray task per shard
    produces exactly these records and a parallel corpus can be checked against a serial one.
    """
    for shard, size in enumerate(shard_sizes(num_docs, num_shards)):
        yield from generate(seed, shard, size, noise)


def to_arrow(records: Iterable[dict]) -> pa.Table:
    """Records -> ``RECORD_SCHEMA`` table, ground truth as sorted-key JSON."""
    columns: dict[str, list] = {name: [] for name in RECORD_SCHEMA.names}
    for r in records:
        for name in ("doc_id", "source", "kind", "text"):
            columns[name].append(r[name])
        columns["ground_truth_json"].append(
            json.dumps(r["ground_truth"], sort_keys=True, ensure_ascii=False))
    return pa.table(columns, schema=RECORD_SCHEMA)


def from_arrow(table: pa.Table) -> list[dict]:
    """``RECORD_SCHEMA`` table -> records; the inverse of ``to_arrow``."""
    return [{"doc_id": r["doc_id"], "source": r["source"], "kind": r["kind"], "text": r["text"],
             "ground_truth": json.loads(r["ground_truth_json"])}
            for r in table.select(RECORD_SCHEMA.names).to_pylist()]
