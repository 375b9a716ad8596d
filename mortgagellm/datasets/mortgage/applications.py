"""Loan files: a purchase application drawn so that its ratios span approve, refer and deny, and
the two documents built on it, the application summary and the underwriter's note."""

import random

from mortgagellm.datasets import finance, underwriting
from mortgagellm.datasets.finance import dollars, money, round_half_up
from mortgagellm.datasets.mortgage.layout import (
    _PROGRAM_LABEL,
    QUESTIONS,
    _day,
    _fact,
    _fmt_date,
    _form,
    _pct,
    _pii,
    _rate,
    _sections,
    _truth,
)
from mortgagellm.datasets.mortgage.people import (
    _EMPLOYERS,
    _LENDERS,
    _address,
    _loan_number,
    _person,
)
from mortgagellm.datasets.underwriting import PROGRAM_RULES, PROGRAMS, REASONS

_DEBT_KINDS = ("Auto loan", "Student loan", "Credit card", "Personal loan", "Child support")
_PRICE_K = {"conventional": (150, 950), "FHA": (120, 560), "VA": (160, 750), "jumbo": (950, 3300)}
_DOWN_PCT = {
    "conventional": (3, 5, 5, 10, 15, 20, 20, 25), "FHA": (3.5, 3.5, 3.5, 5, 10),
    "VA": (0, 0, 0, 5, 10), "jumbo": (10, 20, 20, 25, 30, 35),
}
_SCORE_SHAPE = {  # triangular (low, high, mode) of each borrower's credit score
    "conventional": (560, 835, 750), "FHA": (540, 800, 670), "VA": (560, 835, 720),
    "jumbo": (660, 835, 775),
}


def application(rng: random.Random) -> dict:
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
        "borrower": app["borrower"]["name"], "loan_amount": dollars(app["loan_amount"]),
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
        _fact(QUESTIONS["payment"], money(uw["payment"]), uw["payment"], "USD"),
        _fact(QUESTIONS["housing"], money(uw["housing_payment"]), uw["housing_payment"], "USD"),
        _fact(QUESTIONS["dti"], _pct(uw["dti_pct"]), uw["dti_pct"], "%"),
        _fact(QUESTIONS["ltv"], _pct(uw["ltv_pct"]), uw["ltv_pct"], "%"),
    ]


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
                   (f"Gross monthly income ({p['first']})", money(monthly))]
    income.append(("Total monthly income", money(app["monthly_income"])))
    debts = [(f"{kind} (monthly)", money(amount)) for kind, amount in app["debts"]]
    debts.append(("Total monthly debts excluding housing", money(app["monthly_debts"])))
    prop = [("Purchase price", dollars(app["price"])),
            ("Appraised value", dollars(app["appraised_value"])),
            ("Annual property taxes", money(app["annual_taxes"])),
            ("Annual homeowner’s insurance", money(app["annual_insurance"])),
            ("Occupancy", rng.choice(("Primary residence", "Owner-occupied")))]
    if rng.random() < 0.7:
        prop.insert(0, ("Subject property", app["property_address"]))
        pii.append(_pii("address", app["property_address"]))
    amount_label = rng.choice(("Loan amount", "Requested loan amount", "Base loan amount"))
    loan = [("Loan program", _PROGRAM_LABEL[app["program"]]), ("Purpose", "Purchase"),
            (amount_label, dollars(app["loan_amount"])), ("Interest rate", _rate(app["rate_pct"])),
            ("Term", f"{app['term_months']} months"),
            ("Proposed monthly P&I", money(uw["payment"])),
            ("Proposed housing payment (PITI)", money(uw["housing_payment"])),
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
    app = application(rng)
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
    facts.append(_fact(QUESTIONS["income"], money(income), income, "USD"))
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
    app = application(rng)
    uw, style, who, loan_no = underwriting.underwrite(app), rng.randrange(4), _person(rng), \
        _loan_number(rng)
    people = [p for p in (app["borrower"], app["co_borrower"], who) if p]
    pii = [_pii("name", p["name"]) for p in people] + [_pii("loan_number", loan_no)]
    names, program = " and ".join(p["name"] for p in people[:-1]), _PROGRAM_LABEL[app["program"]]
    opening = rng.choice((f"Reviewed the {program} purchase file for {names}.",
                          f"File for {names} reviewed against {program} guidelines.",
                          f"{names} — {program} purchase, {dollars(app['loan_amount'])} "
                          "requested."))
    ratios = (f"Qualifying score {app['credit_score']}; P&I of {money(uw['payment'])} and PITI "
              f"of {money(uw['housing_payment'])} put the back-end DTI at {_pct(uw['dti_pct'])} "
              f"on {money(app['monthly_income'])} monthly income; LTV is {_pct(uw['ltv_pct'])} on "
              f"the lower of price ({dollars(app['price'])}) and appraised value "
              f"({dollars(app['appraised_value'])}).")
    parts = [rng.choice((f"Underwriting Decision — Loan {loan_no}", f"UW NOTES — file {loan_no}",
                         f"Credit memo — loan {loan_no}"))]
    if style != 1:
        parts.append(_form([("Program", program), ("Loan amount", dollars(app["loan_amount"])),
                            ("Rate", _rate(app["rate_pct"])),
                            ("Term", f"{app['term_months']} months"),
                            ("Monthly debts", money(app["monthly_debts"]))], style))
    parts += [f"{opening} {ratios}", _decision_sentence(rng, uw, app["program"])]
    if uw["decision"] != "deny":
        conditions = rng.sample(_CONDITIONS, rng.randint(1, 4))
        parts.append("Conditions:\n" + "\n".join(f"- {c}" for c in conditions))
    parts.append(f"— {who['name']}, Underwriter, {_fmt_date(_day(rng), rng.randrange(3))}")
    fields, summary, numbers = _application_truth(app, uw)
    facts = _application_facts(app, uw) + [_fact(QUESTIONS["decision"], uw["decision"], None, None)]
    return "\n\n".join(parts), _truth("underwriting_note", fields, summary, facts, pii,
                                      uw["decision"], uw["reasons"], numbers=numbers)
