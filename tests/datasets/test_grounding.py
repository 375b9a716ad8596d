"""Grounded answers: the quote a reference answer opens with, how an answer is read after it,
and the serving guard that puts the context's own figure in place of a miscopied one."""

import random

from mortgagellm.datasets.tasks import parse_answer, score
from mortgagellm.datasets.tasks.dpo import rejected_answer
from mortgagellm.datasets.tasks.format import qa_truth
from mortgagellm.datasets.tasks.grounding import (
    grounded,
    quote_for,
    quotes,
    resolve,
    support,
    verbatim,
)
from mortgagellm.datasets.tasks.qa import excerpt, explained, grounded_answer

TABLE = """## Loan Terms and Payments
| Item | Value |
|---|---|
| Loan amount | $476,000 |
| Monthly principal & interest | $2,702.68 |
| Estimated total monthly payment | $3,330.18 |"""
PROSE = ("Qualifying score 715; P&I of $1,777.80 and PITI of $2,391.97 put the back-end DTI at "
         "63.0% on $5,208.33 monthly income.")
LOCKS = "Lock periods:\n15-day lock: 0.125 points\n60-day lock: 0.750 points"
DOTTED = "Gross monthly income (Robert) ........ $16,833.33"


def test_quotes_read_tables_prose_and_leaders_as_label_then_value():
    assert quote_for(TABLE, "$2,702.68") == "Monthly principal & interest: $2,702.68"
    assert quote_for(PROSE, "63.0%") == "$2,391.97 put the back-end DTI at 63.0%"
    assert quote_for(PROSE, "$1,777.80") == "P&I of $1,777.80"  # from the clause's start
    assert quote_for(DOTTED, "$16,833.33") == "Gross monthly income (Robert): $16,833.33"
    assert quote_for(LOCKS, "0.750") == "60-day lock: 0.750"
    assert quote_for(TABLE, "$9.99") is None  # not in the context


def test_an_answer_is_read_after_its_source_line():
    truth = qa_truth("payment", "What is the P&I?", "$2,702.68", 2702.68, "USD")
    answer = grounded("The monthly payment is $2,702.68.", "Monthly principal & interest: $9.00")
    parsed = parse_answer("qa", answer)
    assert parsed["money"] == 2702.68 and parsed["source"].endswith("$9.00")
    assert score("qa", parsed, truth) == 1.0
    assert score("qa", parse_answer("qa", "Source: “x: $2,702.68”\nIt is $1.00."), truth) == 0.0


def test_resolve_puts_the_named_lines_figure_in_the_quote_and_the_answer():
    wrote = grounded("The monthly principal and interest payment is $2,709.68.",
                     "Monthly principal & interest: $2,709.68")
    fixed, info = resolve(wrote, TABLE)
    assert fixed == grounded("The monthly principal and interest payment is $2,702.68.",
                             "Monthly principal & interest: $2,702.68")
    assert info == {"source": True, "verbatim": False, "resolved": True, "changed": True}
    # the figure on the '60-day' line, not the '15-day' one: numbers in labels are words
    fixed, _ = resolve(grounded("That lock costs 0.700 points.", "60-day lock: 0.700"), LOCKS)
    assert fixed.endswith("That lock costs 0.750 points.")


def test_resolve_leaves_verbatim_unmatched_and_sourceless_answers_as_written():
    right = grounded("It is $2,702.68.", "Monthly principal & interest: $2,702.68")
    assert resolve(right, TABLE) == (right, {"source": True, "verbatim": True,
                                             "resolved": True, "changed": False})
    stranger = grounded("It is $5.00.", "Hazard insurance premium due: $5.00")
    assert resolve(stranger, TABLE)[1] == {"source": True, "verbatim": False, "resolved": False,
                                           "changed": False}
    assert resolve("It is $5.00.", TABLE) == ("It is $5.00.", {
        "source": False, "verbatim": False, "resolved": False, "changed": False})
    assert verbatim("Loan amount: $476,000", TABLE)
    assert "Estimated total monthly payment: $3,330.18" in quotes(TABLE)


def question(answer="$2,702.68", value=2702.68, topic="payment"):
    return {"topic": topic, "chosen": f"The monthly principal and interest payment is {answer}.",
            "truth": qa_truth(topic, "What is the P&I?", answer, value, "USD"),
            "slots": {}, "phrasings": ("{question}",)}


def test_reference_answers_quote_their_figure_and_wrong_numbers_change_both_copies():
    q = question()
    chosen = grounded_answer(q, TABLE)
    assert chosen.startswith("Source for the monthly principal and interest: “Monthly principal & "
                             "interest: $2,702.68”\n")
    wrong = rejected_answer("wrong_number", q | {"chosen": chosen}, random.Random(0))
    assert "$2,702.68" not in wrong and verbatim(parse_answer("qa", wrong)["source"], TABLE) \
        is False
    assert score("qa", parse_answer("qa", wrong), q["truth"]) == 0.0


def test_an_excerpt_keeps_the_section_that_states_the_answer():
    doc = "Title line\n\n" + TABLE + "\n\nSection two\nfiller\n\nSection three\nmore filler"
    for seed in range(5):
        context = excerpt(question(), doc, random.Random(seed))
        assert "$2,702.68" in context and context.count("\n\n") == 1
    decision = question(topic="decision") | {"truth": qa_truth(
        "decision", "Why?", "deny", None, None)}
    assert excerpt(decision, doc, random.Random(0)) == doc


def test_resolve_restates_the_answers_figure_even_when_it_differs_from_the_quotes():
    wrote = grounded("The payoff is $121,191.11, good through the date in the quote.",
                     "amount to pay off the loan: $121,191.19")
    context = "Total amount to pay off the loan: $325,217.79\nRelease fee: $45.00"
    fixed, info = resolve(wrote, context)
    assert fixed == grounded("The payoff is $325,217.79, good through the date in the quote.",
                             "amount to pay off the loan: $325,217.79")
    # a date is restated as a date, never into a dollar figure
    dated = grounded("It expires on May 9, 2024, at $1.00.", "the lock expires on May 9, 2024")
    fixed, _ = resolve(dated, "Your lock expires on May 5, 2024. Fee $575.00.")
    assert fixed.endswith("It expires on May 5, 2024, at $1.00.")


def test_a_wrong_source_rejection_quotes_another_line_verbatim_and_states_its_figure():
    q = question()
    q = q | {"chosen": grounded_answer(q, TABLE), "context": TABLE}
    wrong = rejected_answer("wrong_source", q, random.Random(1))
    source = parse_answer("qa", wrong)["source"]
    assert verbatim(source, TABLE) and source != "Monthly principal & interest: $2,702.68"
    assert source.split(": ")[1] in wrong.split("\n")[1]  # the answer states that line's figure
    assert score("qa", parse_answer("qa", wrong), q["truth"]) == 0.0


def test_resolve_keeps_what_the_source_line_says_it_looks_for():
    wrote = grounded("It is $9.00.", "Monthly principal & interest: $9.00", "the P&I")
    fixed, _ = resolve(wrote, TABLE)
    assert fixed == ("Source for the P&I: “Monthly principal & interest: $2,702.68”\n"
                     "It is $2,702.68.")
    assert parse_answer("qa", fixed)["source"] == "Monthly principal & interest: $2,702.68"


def test_support_finds_the_figures_the_context_neither_states_nor_derives():
    answer = grounded("The monthly principal and interest payment is $2,702.68, for a $476,000 "
                      "loan at 5.500% over 360 months, plus $627.50 escrow.",
                      "Monthly principal & interest: $2,702.68")
    # $627.50 = $3,330.18 - $2,702.68; the rate and term are not in the table
    assert support(answer, TABLE) == {"figures": 5, "stated": 2, "derived": 1,
                                      "unsupported": ["5.500%", "360"]}
    ltv = "Loan amount: $400,000\nPurchase price: $500,000\nDeposit: -$9,500.00"
    assert support("LTV is 80.0% on $500,000, after the $9,500.00 deposit.", ltv)["unsupported"] \
        == []  # a share of two figures; a credit stated as its amount
    assert support("LTV is 81.0% and income $4,000.00 a month.", ltv)["unsupported"] == [
        "81.0%", "$4,000.00"]
    assert support("It was locked on March 3, 2025.", "Locked: March 3, 2025")["derived"] == 0
    assert support("It expires March 4, 2025.", "Locked: March 3, 2025")["unsupported"] == [
        "March 4, 2025"]
    assert support("Monthly income is $4,000.00.", "Annual income: $48,000.00")["derived"] == 1


def test_an_explanation_whose_figures_the_document_lacks_is_the_answer_alone():
    ctx = {"loan_amount": "$476,000", "rate": "5.500%", "term": "360"}
    assert explained("payment", "$2,702.68", ctx, TABLE + "\nTerm: 360 months\nRate: 5.500%") \
        == "The monthly principal and interest payment is $2,702.68, for a $476,000 loan at " \
           "5.500% over 360 months."
    assert explained("payment", "$2,702.68", ctx, TABLE) == \
        "The monthly principal and interest is $2,702.68."


SHEET_CSV = "fico,≤90,90.01-95\n660-679,5.875%,6.000%\n700-719,5.875%,6.000%"
SHEET_PIPES = ("| FICO | ≤90 | 90.01-95 |\n|---|---|---|\n| 660-679 | 5.875% | 6.000% |\n"
               "| 700-719 | 5.875% | 6.000% |")
SHEET_LINES = ("FICO 660-679: LTV ≤90 5.875% / LTV 90.01-95 6.000%\n"
               "FICO 700-719: LTV ≤90 5.875% / LTV 90.01-95 6.000%")


def test_a_rate_sheet_cell_is_quoted_by_its_row_and_column_and_the_asked_one_is_chosen():
    asked = "What is the 30-day rate for FICO 700-719 at LTV 90.01-95?"
    assert quote_for(SHEET_CSV, "6.000%", asked) == "700-719, 90.01-95: 6.000%"
    assert quote_for(SHEET_PIPES, "6.000%", asked) == "700-719, 90.01-95: 6.000%"
    assert quote_for(SHEET_LINES, "6.000%", asked) == "FICO 700-719: LTV 90.01-95 6.000%"
    assert quote_for(SHEET_CSV, "6.000%") == "660-679, 90.01-95: 6.000%"  # no question: first
    assert quotes(SHEET_CSV) == ["660-679, ≤90: 5.875%", "660-679, 90.01-95: 6.000%",
                                 "700-719, ≤90: 5.875%", "700-719, 90.01-95: 6.000%"]
    # a model naming the right cell with a miscopied rate gets the sheet's
    fixed, info = resolve(grounded("The rate is 6.125%.", "700-719, 90.01-95: 6.125%"),
                          SHEET_PIPES)
    assert fixed.endswith("“700-719, 90.01-95: 6.000%”\nThe rate is 6.000%.") and info["changed"]
    # two-column tables (label | value) and figures with thousands commas are not grids
    assert quote_for(TABLE, "$2,702.68") == "Monthly principal & interest: $2,702.68"
