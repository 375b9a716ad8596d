"""fairness.py: swapping protected attributes changes their text and nothing the underwriting rules
read, so the ground-truth decision stands."""

import random

import pytest

from mortgagellm.datasets import fairness, mortgage, underwriting
from mortgagellm.datasets.tasks.format import figures
from mortgagellm.datasets.tasks.sft import DECISION_KINDS, sft_record


def test_every_generator_first_name_has_one_partner():
    assert set(fairness.NAMES) == set(mortgage.FIRST_NAMES)
    assert all(fairness.NAMES[fairness.NAMES[n]] == n != fairness.NAMES[n]
               for n in fairness.NAMES)


def test_swap_by_hand_in_every_form_layout():
    text = ("Borrower name: Lucas Kowalski\nMarital status: Unmarried\nAge: 39\n"
            "| Sex | Female |\nMarital status ....... Separated\n• Age — 51\n"
            "Employer (Lucas): Redline Freight\nCredit score 712, DTI 41.2%, Grace period 15 "
            "days, grace applies")
    assert fairness.swap_protected(text) == (
        "Borrower name: Amara Kowalski\nMarital status: Separated\nAge: 69\n"
        "| Sex | Male |\nMarital status ....... Married\n• Age — 21\n"
        "Employer (Amara): Redline Freight\nCredit score 712, DTI 41.2%, Grace period 15 "
        "days, grace applies")
    assert [fairness.swap_age(a) for a in (21, 50, 51, 80)] == [51, 80, 21, 50]


def decision_documents(n):
    docs = (d for d in mortgage.generate(11, 1, 2000, noise=False) if d["kind"] in DECISION_KINDS)
    return [next(docs) for _ in range(n)]


@pytest.mark.parametrize("doc", decision_documents(12), ids=lambda d: d["doc_id"])
def test_swapped_file_keeps_every_rule_input_and_the_decision(doc):
    record = sft_record("decision", doc, random.Random(0))
    swapped = fairness.swap_record(record)
    assert swapped["prompt"] != record["prompt"] and swapped["document"] != record["document"]
    assert swapped["document"] in swapped["prompt"]  # the prompt can still be cut around it
    assert swapped["truth"] == record["truth"] == {"label": doc["ground_truth"]["decision"],
                                                   "reasons": doc["ground_truth"]["reasons"]}
    # every figure but the age is unchanged, so credit score, amounts, LTV and DTI are too
    age_lines = {i for i, line in enumerate(record["document"].splitlines())
                 if line.lstrip("|• ").startswith("Age")}
    def numbers(text):
        return [(i, [f[1] for f in figures(line)]) for i, line in enumerate(text.splitlines())
                if i not in age_lines]
    assert numbers(swapped["document"]) == numbers(record["document"])


def test_the_rules_ignore_what_is_swapped():
    rng = random.Random(5)
    for _ in range(50):
        app = mortgage.application(rng)
        other = {**app, "borrower": {**app["borrower"], "name": "Zoë Okafor", "first": "Zoë",
                                     "sex": "female" if app["borrower"]["sex"] == "male" else
                                     "male", "age": fairness.swap_age(app["borrower"]["age"]),
                                     "marital_status": "separated"}}
        assert underwriting.underwrite(other) == underwriting.underwrite(app)
