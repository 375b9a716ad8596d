"""Plain-language explainers of the federal rules mortgage files live under, from a fixed table
of what each rule says."""

import random

from mortgagellm.datasets.mortgage.layout import _fact, _truth

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
