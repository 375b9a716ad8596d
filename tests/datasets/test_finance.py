"""Mortgage arithmetic against numbers worked out by hand."""

import pytest

from mortgagellm.datasets import finance


def _present_value(apr_pct: float, payment: float, n: int) -> float:
    """What ``n`` level payments are worth at ``apr_pct``: payment * (1 - (1 + i)^-n) / i."""
    i = apr_pct / 1200
    return payment * (1 - (1 + i) ** -n) / i


def test_round_half_up_rounds_halves_away_from_zero_unlike_round():
    # round() rounds 2.675 to 2.67 (binary value) and 43.25 to 43.2 (banker's rounding).
    assert finance.round_half_up(2.675, 2) == 2.68
    assert finance.round_half_up(1.005, 2) == 1.01
    assert finance.round_half_up(43.25, 1) == 43.3
    assert finance.round_half_up(412_500.0, -3) == 413_000.0


@pytest.mark.parametrize(
    ("principal", "rate", "months", "expected"),
    [
        # r = 0.005, 1.005^360 = 6.022575; 300000 * 0.005 * 6.022575 / 5.022575 = 1798.65
        (300_000, 6.0, 360, 1798.65),
        (200_000, 6.5, 360, 1264.14),
        (200_000, 6.0, 180, 1687.71),
        # 0 % rate: the principal is simply split into equal payments.
        (36_000, 0.0, 360, 100.00),
        (12_000, 0.0, 360, 33.33),
    ],
)
def test_monthly_payment(principal, rate, months, expected):
    assert finance.monthly_payment(principal, rate, months) == expected


def test_remaining_balance_matches_the_amortisation_schedule():
    balance = 300_000.0
    for _ in range(12):  # each month: add interest at 0.5 %, subtract the 1798.65 payment
        balance = balance * 1.005 - 1798.65
    assert finance.remaining_balance(300_000, 6.0, 360, 12) == round(balance, 2) == 296_315.98
    assert finance.remaining_balance(300_000, 6.0, 360, 0) == 300_000.0
    assert finance.remaining_balance(36_000, 0.0, 360, 10) == 35_000.0


def test_per_diem_interest():
    # 300000 * 6 % / 365 = 49.315... -> 49.32
    assert finance.per_diem_interest(300_000, 6.0) == 49.32


def test_dti_counts_the_housing_payment_with_other_debts():
    # (500 + 1500) / 5000 = 40 %
    assert finance.dti_pct(500, 1500, 5000) == 40.0
    # 2698.65 / 6000 = 44.9775 % -> 45.0 %
    assert finance.dti_pct(500, 2198.65, 6000) == 45.0
    # exactly 43.25 % rounds half up, not to even
    assert finance.dti_pct(0, 432.5, 1000) == 43.3


def test_ltv_uses_the_lower_of_price_and_appraisal():
    assert finance.ltv_pct(360_000, 400_000, 450_000) == 90.0
    # appraisal gap: 360000 / 380000 = 94.74 % -> 94.7 %
    assert finance.ltv_pct(360_000, 400_000, 380_000) == 94.7


def test_points_and_escrow():
    assert finance.points_cost(300_000, 1.5) == 4500.0
    assert finance.escrow_monthly(3600, 1200) == 400.0


def test_apr_of_the_regulation_z_appendix_j_example():
    # $5,000 repaid by 36 payments of $166.07 is the textbook 12 % APR; 166.07 is the exact
    # 1 %-a-month payment (166.0714...) rounded down, so the APR lands just under 12.
    assert finance.apr_from_payment(5000, 166.0714, 36) == 12.000
    assert finance.apr_from_payment(5000, 166.07, 36) == 11.999


def test_apr_equals_note_rate_without_finance_charges():
    assert finance.loan_apr(300_000, 6.0, 360, 0.0) == 6.0


def test_apr_with_points_solves_the_annuity_equation():
    # 200000 at 6 % -> 1199.10 a month; 4000 of charges leave 196000 financed. The APR must
    # discount those payments to 196000: above it at 6.1885 %, below it at 6.1895 %.
    assert _present_value(6.1885, 1199.10, 360) > 196_000 > _present_value(6.1895, 1199.10, 360)
    assert finance.loan_apr(200_000, 6.0, 360, 4000.0) == 6.189


def test_apr_of_a_zero_interest_loan_is_zero():
    assert finance.apr_from_payment(12_000, 100.0, 120) == 0.0


def test_cash_to_close():
    # down payment 40000 + costs 8000 + prepaids 3000 - deposit 10000 - seller credit 2000
    assert finance.cash_to_close(400_000, 360_000, 8000, 3000, 10_000, 2000) == 39_000.0
    assert finance.cash_to_close(250_000, 245_000, 1234.56, 0.0, 0.0) == 6234.56


def test_money_and_dollars_put_the_sign_before_the_dollar_sign():
    assert finance.money(1234.5) == "$1,234.50"
    assert finance.money(-1421.24) == "-$1,421.24"  # a negative cash to close
    assert finance.money(0.0) == "$0.00"
    assert finance.dollars(439_000.0) == "$439,000"
    assert finance.dollars(-12_500.0) == "-$12,500"
