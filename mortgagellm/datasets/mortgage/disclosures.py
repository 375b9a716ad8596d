"""What a lender publishes and discloses on price and cost: wholesale rate sheets, Loan Estimates
and Closing Disclosures, every figure computed by ``finance``."""

import random
from itertools import accumulate

from mortgagellm.datasets import finance, underwriting
from mortgagellm.datasets.finance import dollars, money, round_half_up
from mortgagellm.datasets.mortgage.applications import (
    _application_facts,
    _application_truth,
    application,
)
from mortgagellm.datasets.mortgage.layout import (
    _PROGRAM_LABEL,
    QUESTIONS,
    _day,
    _fact,
    _fmt_date,
    _form,
    _pii,
    _rate,
    _sections,
    _truth,
)
from mortgagellm.datasets.mortgage.people import _LENDERS, _loan_number
from mortgagellm.datasets.underwriting import PROGRAM_RULES, PROGRAMS

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


def closing_costs(rng: random.Random, app: dict) -> dict:
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
        f"Prepaid interest ({money(per_diem)} per day for {days} days)": prepaid_interest,
        "Homeowner’s insurance premium (12 mo.)": app["annual_insurance"],
        # Two months of insurance and three of taxes seed the escrow account.
        "Initial escrow payment at closing": round_half_up(
            app["annual_insurance"] / 6 + app["annual_taxes"] / 4, 2),
    }
    charges = loan_costs["Discount points"] + loan_costs["Origination fee"] \
        + loan_costs["Underwriting fee"] + prepaid_interest
    costs_total = round_half_up(sum(loan_costs.values()), 2)
    return {
        "loan_costs": loan_costs, "prepaid_items": prepaids, "closing_costs": costs_total,
        "prepaids": round_half_up(sum(prepaids.values()), 2),
        "finance_charges": round_half_up(charges, 2),
        "deposit": 100.0 * round(app["price"] * rng.choice((0.01, 0.02, 0.03)) / 100),
        "seller_credits": min(costs_total, float(rng.choice((0, 0, 0, 2000, 3000, 5000)))),
    }


def _approved_or_any(rng: random.Random, need_approval: bool) -> tuple[dict, dict]:
    """Draw applications until one fits: a Closing Disclosure exists only for approved loans."""
    while True:
        app = application(rng)
        uw = underwriting.underwrite(app)
        if uw["decision"] == "approve" or not need_approval:
            return app, uw


def _disclosure_sections(rng: random.Random, form: str, app: dict, c: dict, loan_no: str) -> list:
    """(title, fields) sections in the order of the Loan Estimate / Closing Disclosure forms."""
    date_label = "Date issued" if form == "Loan Estimate" else "Closing date"
    head = [(date_label, _fmt_date(_day(rng), rng.randrange(3))),
            ("Applicant", app["borrower"]["name"]), ("Property", app["property_address"]),
            ("Sale price", dollars(app["price"])), ("Loan term", f"{app['term_months']} months"),
            ("Purpose", "Purchase"), ("Product", "Fixed Rate"),
            ("Loan type", _PROGRAM_LABEL[app["program"]]), ("Loan ID #", loan_no)]
    cash = [("Total closing costs", money(c["closing_costs"])),
            ("Prepaids and escrow", money(c["prepaids"])),
            ("Down payment", money(app["price"] - app["loan_amount"])),
            ("Deposit", "-" + money(c["deposit"])),
            ("Seller credits", "-" + money(c["seller_credits"])),
            ("Cash to close", money(c["cash"]))]
    return [
        (f"{form} — {rng.choice(_LENDERS)}", head),
        ("Loan Terms and Payments", c["terms"][:5]),
        ("Loan Costs", [(k, money(v)) for k, v in c["loan_costs"].items() if v]),
        ("Prepaids and Initial Escrow", [(k, money(v)) for k, v in c["prepaid_items"].items()]),
        ("Calculating Cash to Close", [row for row in cash if row[1] != "-$0.00"]),
        ("Comparisons", c["terms"][7:]),
    ]


def _disclosure(rng: random.Random, kind: str) -> tuple[str, dict]:
    """A Loan Estimate or Closing Disclosure, as the form or as a cover letter quoting it."""
    app, uw = _approved_or_any(rng, kind == "closing_disclosure")
    c, style, loan_no = closing_costs(rng, app), rng.randrange(5), _loan_number(rng)
    c["apr"] = finance.loan_apr(
        app["loan_amount"], app["rate_pct"], app["term_months"], c["finance_charges"])
    c["cash"] = finance.cash_to_close(app["price"], app["loan_amount"], c["closing_costs"],
                                      c["prepaids"], c["deposit"], c["seller_credits"])
    c["terms"] = [("Loan amount", dollars(app["loan_amount"])),
                  ("Interest rate", _rate(app["rate_pct"])),
                  ("Monthly principal & interest", money(uw["payment"])),
                  ("Estimated escrow", money(uw["housing_payment"] - uw["payment"])),
                  ("Estimated total monthly payment", money(uw["housing_payment"])),
                  ("Total closing costs", money(c["closing_costs"])),
                  ("Cash to close", money(c["cash"])),
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
    fields = {"borrower": b["name"], "loan_amount": dollars(app["loan_amount"]),
              "program": app["program"], "rate": _rate(app["rate_pct"]), "apr": _rate(c["apr"]),
              "payment": money(uw["payment"]), "cash_to_close": money(c["cash"])}
    summary = (f"{form} for {fields['borrower']}: {fields['program']} loan of "
               f"{fields['loan_amount']} at {fields['rate']} ({fields['apr']} APR), "
               f"{fields['payment']} monthly principal and interest, {fields['cash_to_close']} "
               "cash to close.")
    facts = _application_facts(app, uw)[:2] + [
        _fact(QUESTIONS["apr"], _rate(c["apr"]), c["apr"], "%"),
        _fact(QUESTIONS["cash"], money(c["cash"]), c["cash"], "USD"),
        _fact(QUESTIONS["closing_costs"], money(c["closing_costs"]), c["closing_costs"], "USD")]
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
