"""E-mails about a serviced loan: the servicer's letters answering one intent with the figures
it computed, and borrowers' own informal questions."""

import random
from datetime import timedelta

from mortgagellm.datasets import finance
from mortgagellm.datasets.finance import dollars, money, round_half_up
from mortgagellm.datasets.mortgage.layout import (
    _day,
    _fact,
    _fmt_date,
    _pii,
    _rate,
    _truth,
)
from mortgagellm.datasets.mortgage.people import _LENDERS, _loan_number, _person

INTENTS = ("escrow", "payoff", "forbearance", "rate_lock", "late_fee")
"""Customer-query intents carried by servicing and customer e-mails."""

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
    body = [f"Your annual escrow analysis is complete. We expect to pay {money(taxes)} in "
            f"property taxes and {money(insurance)} for homeowner’s insurance this year, so "
            f"your monthly escrow deposit becomes {money(escrow)}.",
            f"The analysis found a shortage of {money(shortage)}, which we have spread over 12 "
            f"months ({money(spread)} a month).",
            f"Starting {day}, your total monthly payment will be {money(total)}, including "
            f"{money(loan['payment'])} principal and interest.",
            rng.choice(("Federal rules (RESPA) limit the cushion we may hold to one-sixth of the "
                        "year’s escrow disbursements.",
                        "You may also pay the shortage in one lump sum instead."))]
    facts = [_fact("What is the new monthly escrow deposit?", money(escrow), escrow, "USD"),
             _fact("What is the new total monthly payment?", money(total), total, "USD")]
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
            f"Unpaid principal balance: {money(balance)}. Interest accrues at {money(per_diem)} "
            f"per day; {days} days of interest are included. Release fee: {money(fee)}.",
            f"Total amount to pay off the loan: {money(total)}.",
            rng.choice(("Funds received after the good-through date need additional interest.",
                        "Please wire funds or send certified funds; personal checks are not "
                        "accepted for payoffs."))]
    facts = [_fact("What is the daily interest (per diem)?", money(per_diem), per_diem, "USD"),
             _fact("What is the total payoff amount?", money(total), total, "USD")]
    numbers = {k: float(loan[k]) for k in ("amount", "rate_pct", "term_months", "made")}
    return body, facts, {**numbers, "days": float(days), "fee": fee}


def _forbearance_body(rng: random.Random, loan: dict, day: str) -> tuple[list, list, dict]:
    """Forbearance approval: the suspended PITI times the months of the plan."""
    months, piti = rng.choice((3, 6)), round_half_up(loan["payment"] + loan["escrow"], 2)
    deferred = round_half_up(piti * months, 2)
    body = [f"We have approved a {months}-month forbearance plan beginning {day}.",
            f"Your regular payment of {money(piti)} is suspended during the plan; no late fees "
            "will be charged.",
            f"At the end of the plan the {money(deferred)} in missed payments can be handled "
            "through a repayment plan, a deferral to the end of the loan, or a loan modification "
            "— it does not have to be repaid at once.",
            "Please contact us 30 days before the plan ends so we can review your options."]
    facts = [_fact("What total amount is deferred by the forbearance plan?", money(deferred),
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
            f"{money(extension)} on your {dollars(loan['amount'])} loan.",
            rng.choice(("Changes to the loan amount or program may change the locked price.",
                        f"Your disclosures dated {day} will be updated to reflect the lock."))]
    facts = [_fact("When does the rate lock expire?", expires, None, "date"),
             _fact("How much does a 15-day lock extension cost?", money(extension), extension,
                   "USD")]
    return body, facts, {"amount": loan["amount"], "lock_days": float(lock_days)}


def _late_fee_body(rng: random.Random, loan: dict, day: str) -> tuple[list, list, dict]:
    """Late charge notice: a percentage of the principal-and-interest payment."""
    pct = rng.choice((4.0, 5.0))
    fee = round_half_up(loan["payment"] * pct / 100, 2)
    body = [f"We did not receive your payment due {day} within the 15-day grace period.",
            f"As your note allows, a late charge of {pct:.0f}% of the principal and interest "
            f"payment ({money(loan['payment'])}) has been assessed: {money(fee)}.",
            rng.choice(("If you believe this is an error, reply with the date and confirmation "
                        "number of your payment.",
                        "Setting up automatic payments can help you avoid future late charges."))]
    return body, [_fact("How much is the late fee?", money(fee), fee, "USD")], \
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
    ask = template.format(old=money(old), new=money(new), rate=_rate(loan["rate_pct"]),
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
        facts.append(_fact("By how much did the monthly payment increase?", money(increase),
                           increase, "USD"))
        numbers = {"old_payment": old, "new_payment": new}
    fields = {"customer": b["name"], "intent": intent, "loan_number": loan_no}
    summary = (f"{b['name']} wrote to the servicer about {_TOPIC[intent]} (intent {intent}) on "
               f"loan {loan_no}.")
    return "\n".join(line for line in lines if line), _truth(
        "customer_email", fields, summary, facts, pii, intent=intent, numbers=numbers)
