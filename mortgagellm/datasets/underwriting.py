"""Explicit underwriting rules per loan program: approve, refer or deny, with reason codes.

The rules are written for a compliance reviewer to read top to bottom: one threshold table
(``PROGRAM_RULES``), one reason-code glossary (``REASONS``) and one function (``decide``)
that applies them. The thresholds are illustrative, loosely modelled on 2025 agency
guidelines; they are the ground truth of the synthetic corpus, not lending advice.

Fair lending: ``decide`` takes only credit score, loan amount, LTV and DTI, so name, sex,
age and marital status cannot reach it; ``underwrite`` reads only the financial keys of an
application.
"""

from collections.abc import Mapping
from dataclasses import dataclass

from mortgagellm.datasets import finance

CONFORMING_LIMIT = 806_500.0
"""2025 FHFA baseline conforming loan limit for a one-unit home; larger loans are jumbo."""


@dataclass(frozen=True)
class ProgramRules:
    """Thresholds of one loan program. Limits are inclusive: a value exactly at a limit passes.

    min_credit_score: lowest qualifying score (deny below).
    max_ltv_pct: highest loan-to-value (deny above).
    soft_dti_pct: DTI up to which the file is approved without further review.
    hard_dti_pct: DTI above which the file is denied; between soft and hard it is referred
        to an underwriter who looks for compensating factors (reserves, residual income).
    min_loan / max_loan: loan amount range the program serves; None means no limit.
    """

    min_credit_score: int
    max_ltv_pct: float
    soft_dti_pct: float
    hard_dti_pct: float
    min_loan: float | None
    max_loan: float | None


PROGRAM_RULES: dict[str, ProgramRules] = {
    # Fannie/Freddie eligible: 620 floor, 97 % LTV first-time-buyer ceiling, DU allows 50 %.
    "conventional": ProgramRules(
        min_credit_score=620, max_ltv_pct=97.0, soft_dti_pct=45.0, hard_dti_pct=50.0,
        min_loan=None, max_loan=CONFORMING_LIMIT),
    # FHA: 580 for 3.5 % down; the TOTAL scorecard tolerates DTI up to ~57 %; 2025 floor limit
    # of low-cost counties (higher-cost counties allow more; this corpus uses the floor).
    "FHA": ProgramRules(
        min_credit_score=580, max_ltv_pct=96.5, soft_dti_pct=43.0, hard_dti_pct=57.0,
        min_loan=None, max_loan=524_225.0),
    # VA sets no score floor (620 is the usual lender overlay) and no loan limit with full
    # entitlement; 41 % is the VA benchmark above which residual income must carry the file.
    "VA": ProgramRules(
        min_credit_score=620, max_ltv_pct=100.0, soft_dti_pct=41.0, hard_dti_pct=60.0,
        min_loan=None, max_loan=None),
    # Portfolio jumbo: only above the conforming limit, and stricter on every axis.
    "jumbo": ProgramRules(
        min_credit_score=700, max_ltv_pct=80.0, soft_dti_pct=38.0, hard_dti_pct=43.0,
        min_loan=CONFORMING_LIMIT + 1, max_loan=3_000_000.0),
}

PROGRAMS: tuple[str, ...] = tuple(PROGRAM_RULES)

REASONS: dict[str, str] = {
    "CREDIT_SCORE_BELOW_MIN": "credit score is below the program minimum",
    "LTV_ABOVE_MAX": "loan-to-value ratio exceeds the program maximum",
    "DTI_ABOVE_MAX": "debt-to-income ratio exceeds the program maximum",
    "LOAN_ABOVE_LIMIT": "loan amount exceeds the program loan limit",
    "LOAN_BELOW_MIN": "loan amount is below the program minimum",
    "DTI_NEEDS_COMPENSATING_FACTORS": "debt-to-income ratio requires compensating factors",
}
"""Reason code -> plain-language reason, as an adverse action notice would state it."""

DENY_REASONS = frozenset(REASONS) - {"DTI_NEEDS_COMPENSATING_FACTORS"}


def decide(
    program: str, credit_score: int, loan_amount: float, ltv_pct: float, dti_pct: float
) -> tuple[str, list[str]]:
    """Apply the program's rules; return (decision, reason codes in rule order).

    Every failing rule is reported, not just the first, so an adverse action notice can list
    all principal reasons. Any deny reason makes the decision "deny"; otherwise a DTI in
    the (soft, hard] band makes it "refer"; otherwise "approve" with no reasons.
    """
    rules = PROGRAM_RULES[program]
    reasons = []
    if credit_score < rules.min_credit_score:
        reasons.append("CREDIT_SCORE_BELOW_MIN")
    if ltv_pct > rules.max_ltv_pct:
        reasons.append("LTV_ABOVE_MAX")
    if dti_pct > rules.hard_dti_pct:
        reasons.append("DTI_ABOVE_MAX")
    elif dti_pct > rules.soft_dti_pct:
        reasons.append("DTI_NEEDS_COMPENSATING_FACTORS")
    if rules.max_loan is not None and loan_amount > rules.max_loan:
        reasons.append("LOAN_ABOVE_LIMIT")
    if rules.min_loan is not None and loan_amount < rules.min_loan:
        reasons.append("LOAN_BELOW_MIN")
    if DENY_REASONS.intersection(reasons):
        return "deny", reasons
    return ("refer" if reasons else "approve"), reasons


def underwrite(app: Mapping) -> dict:
    """Compute an application's payment and ratios with ``finance`` and decide it.

    Reads only the financial keys: program, credit_score (the lowest representative score
    of all borrowers), loan_amount, rate_pct, term_months, price, appraised_value,
    monthly_income, monthly_debts, annual_taxes, annual_insurance. Returns payment
    (principal and interest), housing_payment (PITI), dti_pct, ltv_pct, decision, reasons.
    """
    payment = finance.monthly_payment(app["loan_amount"], app["rate_pct"], app["term_months"])
    housing = finance.round_half_up(
        payment + finance.escrow_monthly(app["annual_taxes"], app["annual_insurance"]), 2
    )
    dti = finance.dti_pct(app["monthly_debts"], housing, app["monthly_income"])
    ltv = finance.ltv_pct(app["loan_amount"], app["price"], app["appraised_value"])
    decision, reasons = decide(app["program"], app["credit_score"], app["loan_amount"], ltv, dti)
    return {
        "payment": payment,
        "housing_payment": housing,
        "dti_pct": dti,
        "ltv_pct": ltv,
        "decision": decision,
        "reasons": reasons,
    }
