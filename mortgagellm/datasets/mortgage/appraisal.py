"""Appraisal summaries: a subject property, comparable sales in its town and the value they
reconcile to."""

import random

from mortgagellm.datasets.finance import dollars, round_half_up
from mortgagellm.datasets.mortgage.layout import QUESTIONS, _fact, _form, _pii, _truth
from mortgagellm.datasets.mortgage.people import _CITIES, _LENDERS, _address, _person


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
        ("Condition", rng.choice(("C2", "C3", "C3", "C4"))), ("Contract price", dollars(price))]
    rows = [f"Comparable {n}: {c['address']} — sold {dollars(c['sale'])}, {c['gla']:,} sq ft, "
            f"{c['miles']} mi; GLA adj. {dollars(c['gla_adj'])}, other adj. "
            f"{dollars(c['other_adj'])}; adjusted {dollars(c['adjusted'])}"
            for n, c in enumerate(comps, 1)]
    relation = "equal to" if gap == 0 else ("above" if gap > 0 else "below")
    verdict = rng.choice((f"Indicated value by the sales comparison approach: {dollars(value)}.",
                          f"Reconciled market value as of the effective date: {dollars(value)}."))
    parts = [rng.choice(("Appraisal Summary — Uniform Residential Appraisal Report",
                         f"Appraisal Review — {subject}")),
             _form(subject_fields, style), "Sales Comparison Approach\n" + "\n".join(rows),
             f"{verdict} The appraised value is {dollars(abs(gap))} {relation} the contract "
             "price."]
    if rng.random() < 0.5:
        parts.append(f"Appraiser: {appraiser['name']}, Certified Residential Appraiser, "
                     f"{appraiser['email']}")
        pii.append(_pii("email", appraiser["email"]))
    else:
        parts.append(f"Signed: {appraiser['name']}")
    fields = {"address": subject, "appraised_value": dollars(value),
              "contract_price": dollars(price), "comparables": str(len(comps))}
    summary = (f"The appraisal of {subject} reconciles {fields['comparables']} comparable sales "
               f"to {fields['appraised_value']} against a contract price of "
               f"{fields['contract_price']}.")
    facts = [_fact(QUESTIONS["appraised"], dollars(value), value, "USD"),
             _fact("What is the adjusted sale price of comparable 1?",
                   dollars(comps[0]["adjusted"]), comps[0]["adjusted"], "USD"),
             _fact("By how much does the appraised value differ from the contract price?",
                   dollars(abs(gap)), gap, "USD")]
    numbers = {"price": price, "appraised_value": value, "gla": float(gla),
               "comp_adjusted": [c["adjusted"] for c in comps]}
    return "\n\n".join(parts), _truth("appraisal_summary", fields, summary, facts, pii,
                                      numbers=numbers)
