"""Mortgage arithmetic as US disclosures state it: payment, DTI, LTV, APR, cash to close, and
the way they print an amount of money.

Every function is pure and rounds the way a Loan Estimate / Closing Disclosure prints the
number: money to the cent, APR to three decimals, ratios to a tenth of a percent, always
half-up (disclosures never use banker's rounding).
"""

from decimal import ROUND_HALF_UP, Decimal


def round_half_up(x: float, places: int) -> float:
    """Round ``x`` to ``places`` decimals, halves away from zero (1.005 -> 1.01).

    ``repr`` gives the shortest decimal that reads back as ``x``, so a stored 1.005 rounds
    the way a person reading "1.005" expects rather than the way its binary value would.
    """
    return float(Decimal(repr(x)).quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP))


def monthly_payment(principal: float, annual_rate_pct: float, term_months: int) -> float:
    """Level principal-and-interest payment of a fully amortising loan, to the cent.

    M = P * r / (1 - (1 + r)^-n) with r = annual_rate_pct / 1200 and n = term_months;
    at a 0 % rate the annuity degenerates to M = P / n.
    """
    r = annual_rate_pct / 1200
    if r == 0:
        return round_half_up(principal / term_months, 2)
    return round_half_up(principal * r / (1 - (1 + r) ** -term_months), 2)


def remaining_balance(
    principal: float, annual_rate_pct: float, term_months: int, payments_made: int
) -> float:
    """Principal still owed after ``payments_made`` level payments, to the cent.

    B_k = P * (1 + r)^k - M * ((1 + r)^k - 1) / r with M the rounded payment; at 0 % it is
    P - k * M. Used for payoff quotes.
    """
    r = annual_rate_pct / 1200
    m = monthly_payment(principal, annual_rate_pct, term_months)
    if r == 0:
        return round_half_up(principal - payments_made * m, 2)
    growth = (1 + r) ** payments_made
    return round_half_up(principal * growth - m * (growth - 1) / r, 2)


def per_diem_interest(balance: float, annual_rate_pct: float) -> float:
    """Daily interest balance * rate / 365, to the cent (payoff quotes, prepaid interest)."""
    return round_half_up(balance * annual_rate_pct / 100 / 365, 2)


def dti_pct(monthly_debts: float, housing_payment: float, monthly_income: float) -> float:
    """Back-end debt-to-income ratio in percent, to 0.1 %.

    DTI = 100 * (monthly_debts + housing_payment) / monthly_income, where the housing
    payment is the proposed PITI (principal, interest, taxes, insurance).
    """
    return round_half_up(100 * (monthly_debts + housing_payment) / monthly_income, 1)


def ltv_pct(loan_amount: float, price: float, appraised_value: float) -> float:
    """Loan-to-value ratio in percent, to 0.1 %.

    LTV = 100 * loan_amount / min(price, appraised_value): lenders value a purchase at the
    lower of contract price and appraisal, so an appraisal gap raises the LTV.
    """
    return round_half_up(100 * loan_amount / min(price, appraised_value), 1)


def points_cost(loan_amount: float, points: float) -> float:
    """Dollar cost of discount points, loan_amount * points / 100, to the cent (1 point = 1 %)."""
    return round_half_up(loan_amount * points / 100, 2)


def escrow_monthly(annual_taxes: float, annual_insurance: float) -> float:
    """Monthly escrow deposit, (annual_taxes + annual_insurance) / 12, to the cent."""
    return round_half_up((annual_taxes + annual_insurance) / 12, 2)


def apr_from_payment(amount_financed: float, payment: float, term_months: int) -> float:
    """Annual percentage rate in percent, to 3 decimals, solving the annuity equation.

    Finds the monthly rate i with amount_financed = payment * (1 - (1 + i)^-n) / i by
    bisection (the right side falls monotonically in i) until the bracket is far below
    1e-6 APR points, then APR = 1200 * i. Payments that only repay the amount give 0 %.
    """
    if payment * term_months <= amount_financed:
        return 0.0
    lo, hi = 0.0, 1.0
    while (hi - lo) * 1200 > 1e-9:
        mid = (lo + hi) / 2
        if payment * (1 - (1 + mid) ** -term_months) / mid > amount_financed:
            lo = mid
        else:
            hi = mid
    return round_half_up(1200 * (lo + hi) / 2, 3)


def loan_apr(
    loan_amount: float, annual_rate_pct: float, term_months: int, finance_charges: float
) -> float:
    """APR of a fixed-rate loan whose prepaid finance charges (points, origination,
    prepaid interest) are paid at closing, to 3 decimals.

    The payment is computed on the full note amount, but the borrower only receives the
    amount financed = loan_amount - finance_charges; the APR is the rate at which that
    smaller amount is repaid by the same payments.
    """
    payment = monthly_payment(loan_amount, annual_rate_pct, term_months)
    return apr_from_payment(loan_amount - finance_charges, payment, term_months)


def cash_to_close(
    price: float,
    loan_amount: float,
    closing_costs: float,
    prepaids: float,
    deposit: float,
    seller_credits: float = 0.0,
) -> float:
    """Cash the buyer brings to closing on a purchase, to the cent.

    cash = (price - loan_amount) + closing_costs + prepaids - deposit - seller_credits:
    the down payment plus costs, less the earnest money already paid and what the seller
    contributes.
    """
    return round_half_up(
        price - loan_amount + closing_costs + prepaids - deposit - seller_credits, 2
    )


def money(x: float) -> str:
    """An amount to the cent with thousands commas, the sign before the $: "-$1,234.50".

    Used by the generator and the task builders alike, so a figure is printed the same way in
    a document and in an answer about it; ``x`` is already rounded, the format only prints it.
    """
    return f"-${-x:,.2f}" if x < 0 else f"${x:,.2f}"


def dollars(x: float) -> str:
    """A whole-dollar amount with thousands commas, the sign before the $: "-$1,235"."""
    return f"-${-x:,.0f}" if x < 0 else f"${x:,.0f}"
