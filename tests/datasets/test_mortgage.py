"""The synthetic mortgage corpus: determinism, coverage, and ground truth that matches the text."""

import json
import random
import re
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mortgagellm.datasets import finance, mortgage, underwriting

APPLICATION_KINDS = ("loan_application", "underwriting_note", "loan_estimate", "closing_disclosure")
SSN = re.compile(r"\b\d{3}-\d{2}-\d{4}\b")
PHONE = re.compile(r"\(?\d{3}\)?[-. ]555[-.]\d{4}")
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[a-z]+")
INCREASE = "By how much did the monthly payment increase?"


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return list(mortgage.generate(seed=7, shard=0, num_docs=2000))


@pytest.fixture(scope="module")
def clean(docs) -> list[dict]:
    return [d for d in docs if d["ground_truth"]["noise"] is None]


@pytest.fixture(scope="module")
def noisy_sample() -> list[dict]:
    return list(mortgage.generate(seed=11, shard=3, num_docs=6000))


def _dump(records) -> str:
    return json.dumps(list(records), sort_keys=True, ensure_ascii=False)


def test_same_arguments_give_byte_identical_records():
    assert _dump(mortgage.generate(3, 1, 300)) == _dump(mortgage.generate(3, 1, 300))


def test_shards_and_seeds_differ():
    texts = [d["text"] for d in mortgage.generate(3, 1, 50)]
    assert texts != [d["text"] for d in mortgage.generate(3, 2, 50)]
    assert texts != [d["text"] for d in mortgage.generate(4, 1, 50)]


def test_sharded_generation_equals_concatenated_shards():
    assert mortgage.shard_sizes(10, 3) == [4, 3, 3]
    assert mortgage.shard_sizes(2, 4) == [1, 1, 0, 0]
    sizes = mortgage.shard_sizes(1001, 4)
    assert sizes == [251, 250, 250, 250]
    expected = [d for s, n in enumerate(sizes) for d in mortgage.generate(5, s, n)]
    got = list(mortgage.generate_sharded(5, 1001, 4))
    assert _dump(got) == _dump(expected)
    assert len({d["doc_id"] for d in got}) == 1001
    assert got[251]["doc_id"] == "syn-5-1-0"


def test_record_shape(docs):
    assert [d["doc_id"] for d in docs[:3]] == ["syn-7-0-0", "syn-7-0-1", "syn-7-0-2"]
    for d in docs:
        assert d["source"] == "synthetic" and d["kind"] in mortgage.DOC_KINDS
        truth = d["ground_truth"]
        assert truth["kind"] == d["kind"]
        assert truth["decision"] in (None, "approve", "refer", "deny")
        assert (truth["decision"] is not None) == (d["kind"] in APPLICATION_KINDS)
        assert (truth["intent"] is not None) == d["kind"].endswith("_email")
        assert truth["intent"] in (None, *mortgage.INTENTS)
        assert all(isinstance(v, str) for v in truth["summary_fields"].values())


def test_every_kind_intent_and_decision_appears(docs):
    assert set(Counter(d["kind"] for d in docs)) == set(mortgage.DOC_KINDS)
    assert {d["ground_truth"]["intent"] for d in docs} - {None} == set(mortgage.INTENTS)
    assert {d["ground_truth"]["decision"] for d in docs} - {None} == {"approve", "refer", "deny"}


def test_texts_vary_within_a_kind(clean):
    # Templates differ in title, layout and field order: first lines and lengths must spread.
    for kind in mortgage.DOC_KINDS:
        texts = [d["text"] for d in clean if d["kind"] == kind]
        assert len({t.split("\n", 1)[0][:12] for t in texts}) >= 2, kind
        lengths = sorted(len(t) for t in texts)
        assert lengths[-1] > 1.3 * lengths[0], kind


def test_fact_answers_and_summary_fields_appear(clean):
    derived = 0
    for d in clean:
        truth = d["ground_truth"]
        for fact in truth["facts"]:
            if fact["question"] == INCREASE:  # the reader must subtract the two payments
                old, new = truth["numbers"]["old_payment"], truth["numbers"]["new_payment"]
                assert f"${old:,.2f}" in d["text"] and f"${new:,.2f}" in d["text"]
                assert fact["value"] == finance.round_half_up(new - old, 2)
                derived += 1
                continue
            assert fact["answer"].lower() in d["text"].lower(), (d["doc_id"], fact)
        for value in truth["summary_fields"].values():
            assert value in truth["reference_summary"], (d["doc_id"], value)
    assert derived > 0


def test_facts_agree_with_recomputation_from_numbers(clean):
    by_question = {q: key for key, q in mortgage.QUESTIONS.items()}
    checked = Counter()
    for d in (d for d in clean if d["kind"] in APPLICATION_KINDS):
        truth, numbers = d["ground_truth"], d["ground_truth"]["numbers"]
        uw = underwriting.underwrite({**numbers, "program": truth["summary_fields"]["program"]})
        assert (uw["decision"], uw["reasons"]) == (truth["decision"], truth["reasons"])
        expected = {"payment": uw["payment"], "housing": uw["housing_payment"],
                    "dti": uw["dti_pct"], "ltv": uw["ltv_pct"], "income": numbers["monthly_income"],
                    "decision": None}
        if d["kind"] in ("loan_estimate", "closing_disclosure"):
            expected["apr"] = finance.loan_apr(numbers["loan_amount"], numbers["rate_pct"],
                                               int(numbers["term_months"]),
                                               numbers["finance_charges"])
            expected["cash"] = finance.cash_to_close(
                numbers["price"], numbers["loan_amount"], numbers["closing_costs"],
                numbers["prepaids"], numbers["deposit"], numbers["seller_credits"])
            expected["closing_costs"] = numbers["closing_costs"]
        for fact in truth["facts"]:
            key = by_question[fact["question"]]
            assert fact["value"] == expected[key], (d["doc_id"], key)
            checked[key] += 1
    assert set(checked) == set(mortgage.QUESTIONS) - {"appraised"}


def test_closing_disclosures_exist_only_for_approved_loans(clean):
    decisions = {d["ground_truth"]["decision"] for d in clean if d["kind"] == "closing_disclosure"}
    assert decisions == {"approve"}


def test_closing_cost_totals_and_finance_charges():
    app = mortgage.application(random.Random(1))
    costs = mortgage.closing_costs(random.Random(2), app)
    items = {**costs["loan_costs"], **costs["prepaid_items"]}
    prepaid_interest = next(v for k, v in items.items() if k.startswith("Prepaid interest"))
    # Regulation Z: points, origination, underwriting and prepaid interest are finance charges;
    # appraisal, credit report and title fees on a purchase are not.
    charges = items["Discount points"] + items["Origination fee"] + items["Underwriting fee"]
    assert costs["finance_charges"] == finance.round_half_up(charges + prepaid_interest, 2)
    assert costs["closing_costs"] == finance.round_half_up(sum(costs["loan_costs"].values()), 2)
    assert costs["prepaids"] == finance.round_half_up(sum(costs["prepaid_items"].values()), 2)


def test_appraised_value_is_the_rounded_mean_of_adjusted_comparables(clean):
    for d in (d for d in clean if d["kind"] == "appraisal_summary"):
        numbers = d["ground_truth"]["numbers"]
        mean = sum(numbers["comp_adjusted"]) / len(numbers["comp_adjusted"])
        assert numbers["appraised_value"] == finance.round_half_up(mean, -3)
        assert d["ground_truth"]["facts"][0]["value"] == numbers["appraised_value"]


def test_rate_sheets_never_price_better_credit_or_lower_ltv_worse(clean):
    for d in (d for d in clean if d["kind"] == "rate_sheet"):
        grid = d["ground_truth"]["numbers"]["grid"]
        assert all(row == sorted(row) for row in grid)  # rate rises with LTV
        for col in zip(*grid, strict=True):  # rate falls as the FICO bucket improves
            assert list(col) == sorted(col, reverse=True)


def test_every_planted_pii_value_is_in_the_text_and_nothing_is_missed(noisy_sample):
    for d in (d for d in noisy_sample if d["ground_truth"]["noise"] != "empty"):
        values = {p["value"] for p in d["ground_truth"]["pii"]}
        assert all(v in d["text"] for v in values), d["doc_id"]
        # Completeness: every SSN-, phone- or e-mail-shaped string in the text is labelled.
        found = SSN.findall(d["text"]) + PHONE.findall(d["text"]) + EMAIL.findall(d["text"])
        assert set(found) <= values, (d["doc_id"], set(found) - values)


def test_pii_values_are_never_real(noisy_sample):
    pii = [p for d in noisy_sample for p in d["ground_truth"]["pii"]]
    assert {p["type"] for p in pii} == {"name", "ssn", "phone", "email", "address", "loan_number"}
    for p in pii:
        if p["type"] == "ssn":
            assert 900 <= int(p["value"][:3]) <= 999  # area numbers 900-999 are never issued
        elif p["type"] == "phone":
            assert re.search(r"555[-.]01\d\d$", p["value"])
        elif p["type"] == "email":
            assert p["value"].endswith(("@example.com", "@example.org"))


def test_every_noise_kind_is_planted_and_labelled(noisy_sample):
    by_id = {d["doc_id"]: d for d in noisy_sample}
    labels = Counter(d["ground_truth"]["noise"] for d in noisy_sample)
    assert set(labels) == {None, *mortgage.NOISE_RATES}
    assert 0.015 < 1 - labels[None] / len(noisy_sample) < 0.06
    for d in noisy_sample:
        truth, text = d["ground_truth"], d["text"]
        label = truth["noise"]
        if label in ("exact_duplicate", "near_duplicate"):
            original = by_id[truth["duplicate_of"]]
            assert original["ground_truth"]["noise"] is None
            assert original["doc_id"] < d["doc_id"] or len(original["doc_id"]) < len(d["doc_id"])
            if label == "exact_duplicate":
                assert text == original["text"]
            else:
                assert text != original["text"]
                assert text.split() != [] and abs(len(text) - len(original["text"])) < 50
        elif label == "mojibake":
            assert "â€" in text or "Ã" in text
        elif label == "html":
            assert text.startswith("<div") and "<p>" in text
        elif label == "empty":
            assert text.strip() == "" and truth["facts"] == [] and truth["pii"] == []
        elif label == "oversized":
            assert len(text) > mortgage.OVERSIZED_CHARS
        else:
            assert truth["duplicate_of"] is None


def test_noise_off_gives_the_clean_records_noise_on_keeps_in_place():
    with_noise = list(mortgage.generate(9, 0, 1500))
    without = list(mortgage.generate(9, 0, 1500, noise=False))
    assert all(d["ground_truth"]["noise"] is None for d in without)
    kept = [(a, b) for a, b in zip(with_noise, without, strict=True)
            if a["ground_truth"]["noise"] is None]
    assert len(kept) < 1500 and all(a == b for a, b in kept)


def test_decision_is_invariant_to_protected_attributes():
    rng = random.Random(0)
    for _ in range(300):
        app = mortgage.application(rng)
        baseline = underwriting.underwrite(app)
        for sex, age, status in (("female", 23, "married"), ("male", 79, "separated")):
            for role in ("borrower", "co_borrower"):
                if app[role]:
                    person = {**app[role], "name": "Alex Doe", "sex": sex, "age": age,
                              "marital_status": status}
                    assert underwriting.underwrite({**app, role: person}) == baseline


def test_arrow_round_trip(docs, tmp_path):
    records = docs[:300]
    table = mortgage.to_arrow(records)
    assert table.schema.equals(mortgage.RECORD_SCHEMA)
    assert table.num_rows == 300
    assert mortgage.from_arrow(table) == records
    pq.write_table(table, tmp_path / "shard.parquet")
    assert mortgage.from_arrow(pq.read_table(tmp_path / "shard.parquet")) == records
    assert isinstance(mortgage.RECORD_SCHEMA.field("text").type, type(pa.large_string()))
