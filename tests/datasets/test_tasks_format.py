"""Answer formats: parse_answer and score on hand-worked outputs, the figure reader, citations."""

import pytest

from mortgagellm.datasets.tasks.format import (
    figures,
    format_summary,
    invented_citations,
    parse_answer,
    qa_truth,
    score,
)


@pytest.mark.parametrize("task,text,expected", [
    ("decision", "approve", "approve"), ("decision", " Deny. ", "deny"),
    ("decision", "'refer'", "refer"), ("decision", "approved", None),
    ("decision", "I think approve", None), ("decision", "", None),
    ("doc_kind", "Loan application", "loan_application"),
    ("doc_kind", "loan_estimate\n", "loan_estimate"), ("doc_kind", "mortgage", None),
    ("intent", "rate-lock", "rate_lock"), ("intent", "escrow!", "escrow"),
    ("intent", "approve", None), ("route", "Structured", "structured"),
])
def test_labels_parse_exactly_with_light_tolerance(task, text, expected):
    assert parse_answer(task, text) == expected


def test_label_scores_one_only_when_equal():
    assert score("decision", "deny", {"label": "deny"}) == 1.0
    assert score("decision", "refer", {"label": "deny"}) == 0.0
    assert score("decision", None, {"label": "deny"}) == 0.0


TRUTH = {"summary_fields": {"borrower": "Ngozi Lee", "loan_amount": "$439,000",
                            "rate": "5.500%", "term_months": "360"},
         "reference_summary": "..."}


def test_summary_layout_round_trips_and_scores_by_field():
    text = format_summary(TRUTH["summary_fields"], "Ngozi Lee borrows $439,000.")
    assert text.splitlines()[0] == "borrower: Ngozi Lee"
    assert text.splitlines()[-1] == "summary: Ngozi Lee borrows $439,000."
    parsed = parse_answer("summary", text)
    assert parsed == {"fields": TRUTH["summary_fields"], "summary": "Ngozi Lee borrows $439,000."}
    assert score("summary", parsed, TRUTH) == 1.0


def test_summary_field_accuracy_hand_worked():
    # name: case ignored (match); 439,000 equals $439,000 as a figure (match); 5.5% equals
    # 5.500% to its printed 3 decimals (match); 180 is not 360 (miss) -> 3 / 4.
    output = "Borrower: x\nborrower: ngozi  lee\nloan_amount: 439,000\nrate: 5.5%\nterm_months: 180"
    parsed = parse_answer("summary", output)
    assert parsed["summary"] is None and parsed["fields"]["borrower"] == "ngozi  lee"
    assert score("summary", parsed, TRUTH) == 0.75


@pytest.mark.parametrize("text", ["", "I cannot help with that.", "Summary - none", "42"])
def test_summary_garbage_is_unparseable(text):
    assert parse_answer("summary", text) is None
    assert score("summary", parse_answer("summary", text), TRUTH) == 0.0


DTI = qa_truth("dti", "What is the debt-to-income ratio?", "36.8%", 36.8, "%")
CASH = qa_truth("cash", "How much cash is needed to close?", "$-2,131.24", -2131.24, "USD")


def test_qa_truth_fixes_mode_figure_and_decimals():
    assert (DTI["mode"], DTI["figure"], DTI["decimals"]) == ("percent", 36.8, 1)
    assert (CASH["mode"], CASH["figure"], CASH["decimals"]) == ("money", -2131.24, 2)
    rule = qa_truth("regulation", "How long?", "third business day", 3.0, "business days")
    assert rule["mode"] == "text" and rule["figure"] is None
    assert qa_truth("lock_expiry", "When?", "March 26, 2025", None, "date")["mode"] == "text"
    assert qa_truth("decision", "Why?", "deny", None, None)["mode"] == "decision"


@pytest.mark.parametrize("truth,text,expected", [
    (DTI, "Your DTI is 36.8%.", 1.0),
    (DTI, "It is about 36.84 percent of income.", 1.0),  # rounds to the printed 36.8
    (DTI, "With $906.00 of debts over $7,291.67, the DTI is 36.8%.", 1.0),  # first percentage
    (DTI, "36.9%", 0.0),
    (DTI, "Your DTI is 40.1%, not 36.8%.", 0.0),
    (DTI, "I can't say.", 0.0),
    (CASH, "You get back -$2,131.24 at closing.", 1.0),
    (CASH, "You need $2,131.24.", 0.0),  # the sign matters
    (CASH, "2131.24", 0.0),  # a money answer needs its $
    (qa_truth("decision", "Why?", "deny", None, None), "This file would be denied: DTI.", 1.0),
    (qa_truth("decision", "Why?", "deny", None, None), "It would be approved, not denied.", 0.0),
    (qa_truth("regulation", "Q", "third business day", 3.0, "days"),
     "Until midnight of the Third Business Day.", 1.0),
    (qa_truth("regulation", "Q", "six", 6.0, "items"), "Sixty days.", 0.0),  # whole words
])
def test_qa_scores_hand_worked(truth, text, expected):
    assert score("qa", parse_answer("qa", text), truth) == expected


def test_qa_blank_is_unparseable():
    assert parse_answer("qa", "  \n") is None
    assert score("qa", None, DTI) == 0.0


def test_figures_read_kinds_signs_and_skip_range_tails():
    got = [(k, v, d) for k, v, d, _ in figures(
        "FICO 660-679 at LTV 90.01-95: 6.875%, $1,360,500 and -$13,200.00; call (972) 555-0194")]
    assert got == [("plain", 660.0, 0), ("plain", 90.01, 2), ("percent", 6.875, 3),
                   ("money", 1360500.0, 0), ("money", -13200.0, 2), ("plain", 972.0, 0),
                   ("plain", 555.0, 0)]


def test_invented_citations_are_those_the_document_lacks():
    doc = "RESPA caps the escrow cushion. See Section 10 of this notice."
    answer = ("Under Section 12(b) of the Home Loan Transparency Act of 2008, it is fixed; "
              "see also 12 CFR 1024.17 and Section 10.")
    assert invented_citations(answer, doc) == [
        "Section 12(b)", "Home Loan Transparency Act of 2008", "12 CFR 1024.17"]
    assert invented_citations("RESPA caps the escrow cushion at one-sixth.", doc) == []


def test_unknown_task_fails_naming_the_tasks():
    with pytest.raises(ValueError, match="one of decision"):
        parse_answer("sentiment", "positive")
    with pytest.raises(ValueError, match="unknown task"):
        score("sentiment", "positive", {})
