"""Underwriting rules: each threshold exactly at its limit and just past it."""

import inspect

import pytest

from mortgagellm.datasets import underwriting
from mortgagellm.datasets.underwriting import PROGRAM_RULES, decide

PROGRAMS = tuple(PROGRAM_RULES)


def _clean_file(program: str) -> dict:
    """Arguments to ``decide`` that pass every rule of ``program`` with room to spare."""
    rules = PROGRAM_RULES[program]
    return {
        "program": program,
        "credit_score": rules.min_credit_score + 60,
        "loan_amount": 1_200_000.0 if program == "jumbo" else 300_000.0,
        "ltv_pct": rules.max_ltv_pct - 10,
        "dti_pct": rules.soft_dti_pct - 5,
    }


def test_threshold_table_is_what_compliance_signed_off():
    assert underwriting.CONFORMING_LIMIT == 806_500
    assert PROGRAM_RULES["conventional"] == underwriting.ProgramRules(
        620, 97.0, 45.0, 50.0, None, 806_500)
    assert PROGRAM_RULES["FHA"].min_credit_score == 580
    assert PROGRAM_RULES["VA"].max_ltv_pct == 100.0 and PROGRAM_RULES["VA"].max_loan is None
    assert PROGRAM_RULES["jumbo"].min_loan == 806_501


@pytest.mark.parametrize("program", PROGRAMS)
def test_clean_file_is_approved_without_reasons(program):
    assert decide(**_clean_file(program)) == ("approve", [])


@pytest.mark.parametrize("program", PROGRAMS)
def test_credit_score_boundary(program):
    minimum = PROGRAM_RULES[program].min_credit_score
    assert decide(**{**_clean_file(program), "credit_score": minimum}) == ("approve", [])
    assert decide(**{**_clean_file(program), "credit_score": minimum - 1}) == (
        "deny", ["CREDIT_SCORE_BELOW_MIN"])


@pytest.mark.parametrize("program", PROGRAMS)
def test_ltv_boundary(program):
    limit = PROGRAM_RULES[program].max_ltv_pct
    assert decide(**{**_clean_file(program), "ltv_pct": limit}) == ("approve", [])
    assert decide(**{**_clean_file(program), "ltv_pct": limit + 0.1}) == ("deny", ["LTV_ABOVE_MAX"])


@pytest.mark.parametrize("program", PROGRAMS)
def test_dti_bands(program):
    rules, f = PROGRAM_RULES[program], _clean_file(program)
    refer = ("refer", ["DTI_NEEDS_COMPENSATING_FACTORS"])
    assert decide(**{**f, "dti_pct": rules.soft_dti_pct}) == ("approve", [])
    assert decide(**{**f, "dti_pct": rules.soft_dti_pct + 0.1}) == refer
    assert decide(**{**f, "dti_pct": rules.hard_dti_pct}) == refer
    assert decide(**{**f, "dti_pct": rules.hard_dti_pct + 0.1}) == ("deny", ["DTI_ABOVE_MAX"])


def test_loan_limits():
    conv, fha, jumbo = _clean_file("conventional"), _clean_file("FHA"), _clean_file("jumbo")
    assert decide(**{**conv, "loan_amount": 806_500}) == ("approve", [])
    assert decide(**{**conv, "loan_amount": 806_501}) == ("deny", ["LOAN_ABOVE_LIMIT"])
    assert decide(**{**fha, "loan_amount": 524_225}) == ("approve", [])
    assert decide(**{**fha, "loan_amount": 524_226}) == ("deny", ["LOAN_ABOVE_LIMIT"])
    # A conforming-sized loan is not a jumbo; the largest jumbo is 3,000,000.
    assert decide(**{**jumbo, "loan_amount": 806_500}) == ("deny", ["LOAN_BELOW_MIN"])
    assert decide(**{**jumbo, "loan_amount": 806_501}) == ("approve", [])
    assert decide(**{**jumbo, "loan_amount": 3_000_001}) == ("deny", ["LOAN_ABOVE_LIMIT"])
    # VA with full entitlement has no loan limit.
    assert decide(**{**_clean_file("VA"), "loan_amount": 5_000_000}) == ("approve", [])


def test_every_failing_rule_is_reported_in_rule_order():
    f = {**_clean_file("conventional"), "credit_score": 600, "ltv_pct": 98.0, "dti_pct": 47.0}
    assert decide(**f) == (
        "deny", ["CREDIT_SCORE_BELOW_MIN", "LTV_ABOVE_MAX", "DTI_NEEDS_COMPENSATING_FACTORS"])


def test_every_reason_code_has_plain_language():
    assert set(underwriting.DENY_REASONS) | {"DTI_NEEDS_COMPENSATING_FACTORS"} == set(
        underwriting.REASONS)
    assert all(text and text[0].islower() for text in underwriting.REASONS.values())


def _application(**overrides) -> dict:
    """300000 at 6 % for 360 months on a 375000 purchase appraised at 380000.

    P&I 1798.65 + escrow (3600 + 1200) / 12 = 400 -> PITI 2198.65; with 500 of debts on
    6000 income the DTI is 2698.65 / 6000 = 44.98 % -> 45.0 %, exactly the soft limit.
    LTV = 300000 / 375000 = 80.0 %.
    """
    app = {
        "borrower": {"name": "Maria García", "sex": "female", "age": 34,
                     "marital_status": "married"},
        "co_borrower": None, "program": "conventional", "credit_score": 700,
        "loan_amount": 300_000.0, "rate_pct": 6.0, "term_months": 360,
        "price": 375_000.0, "appraised_value": 380_000.0, "monthly_income": 6000.0,
        "monthly_debts": 500.0, "annual_taxes": 3600.0, "annual_insurance": 1200.0,
    }
    return {**app, **overrides}


def test_underwrite_computes_ratios_and_decides():
    assert underwriting.underwrite(_application()) == {
        "payment": 1798.65, "housing_payment": 2198.65, "dti_pct": 45.0, "ltv_pct": 80.0,
        "decision": "approve", "reasons": [],
    }
    # 2698.65 / 5990 = 45.05 % -> 45.1 %: just over the soft limit.
    assert underwriting.underwrite(_application(monthly_income=5990.0))["decision"] == "refer"


def test_protected_attributes_cannot_reach_the_decision():
    assert list(inspect.signature(decide).parameters) == [
        "program", "credit_score", "loan_amount", "ltv_pct", "dti_pct"]
    for income in (6000.0, 5990.0, 4000.0):
        baseline = underwriting.underwrite(_application(monthly_income=income))
        for person in ({"name": "James Smith", "sex": "male", "age": 71,
                        "marital_status": "unmarried"},
                       {"name": "Ngozi Okafor", "sex": "female", "age": 22,
                        "marital_status": "separated"}):
            swapped = _application(monthly_income=income, borrower=person, co_borrower=person)
            assert underwriting.underwrite(swapped) == baseline
