"""PII redaction: every kind found, surrogates of the same shape, consistent within a document,
nothing the generator planted survives, and ordinary capitalised words are left alone."""

import re

import pytest

from mortgagellm.datasets import mortgage, pii, transforms

SALT = "test-salt"
LETTER = (
    "From: Zebulon Quartermaine <zeb.q@canary-mail.org>\n"
    "Dear Zebulon Quartermaine,\n"
    "My SSN is 078-05-1120 and my loan number is 9981234567.\n"
    "Call (415) 555-2671 or 415.555.2671. Mail: 1600 Canary Row, Monterey, CA 93940.\n"
    "Zebulon asked about the 15-day Grace Period.\n"
    "Sincerely,\n"
    "Maria Lopez"
)


def test_every_kind_is_replaced_by_a_value_of_the_same_shape():
    text, counts, masked = pii.redact_text(LETTER, SALT)
    for value in ("Zebulon", "Quartermaine", "zeb.q@canary-mail.org", "078-05-1120",
                  "9981234567", "555-2671", "1600 Canary Row", "Monterey", "Maria", "Lopez"):
        assert value not in text
    assert counts == {"email": 1, "ssn": 1, "phone": 2, "address": 1, "card": 0, "loan_number": 1,
                      "name": 7}
    ssn = re.search(r"My SSN is (\S+) and my loan number is (\d+)\.", text)
    assert re.fullmatch(r"\d{3}-\d{2}-\d{4}", ssn.group(1)) and len(ssn.group(2)) == 10
    assert re.search(r"Call \(\d{3}\) \d{3}-\d{4} or \d{3}\.\d{3}\.\d{4}\.", text)
    assert re.search(r"Mail: \d+ \w+ Street, \w+, [A-Z]{2} \d{5}\.", text)
    assert "Grace Period" in text  # a capitalised phrase after a known first name, not a name
    assert masked.startswith("From: <name> <name> <<email>>\nDear <name> <name>,\n"
                             "My SSN is <ssn> and my loan number is <loan_number>.")


def test_surrogates_are_consistent_within_a_document_and_differ_across_documents():
    text, _, _ = pii.redact_text(LETTER, SALT)
    fake_first, fake_last = re.search(r"Dear (\w+) (\w+),", text).groups()
    assert text.startswith(f"From: {fake_first} {fake_last} <")
    assert f"\n{fake_first} asked" in text  # the first name alone maps to the same fake
    phones = re.findall(r"\d{3}\D{1,2}\d{3}\D\d{4}", text.split("Call ")[1])
    assert re.sub(r"\D", "", phones[0]) == re.sub(r"\D", "", phones[1])  # same number, same fake
    other, _, _ = pii.redact_text(LETTER + "\nP.S. one more line.", SALT)
    # Another document with the same SSN gets another fake: documents cannot be linked by it.
    assert re.search(r"SSN is (\S+)", other).group(1) != re.search(r"SSN is (\S+)", text).group(1)
    # An exact copy redacts identically, so exact dedupe still sees one document.
    assert pii.redact_text(LETTER, SALT)[0] == text


def test_cue_and_sign_off_find_names_no_list_knows():
    assert pii.find_names("Borrower name: Xaviera Quillfeather\nAge: 40") == \
        {"Xaviera Quillfeather"}
    assert pii.find_names("Regards,\nOzymandias Thornquist") == {"Ozymandias Thornquist"}
    assert pii.find_names("Dear Borrower,\nThe Escrow Account Summary follows.") == set()


@pytest.mark.parametrize("text", [
    "Monthly payment: $1,354,500.00 on 2023-01-02; OMB No. 3170-0013; FICO 740-759.",
    "Section 1024.17(c)(1) and 12 CFR 1002.9(b)(2) apply.",
])
def test_amounts_dates_and_citations_are_not_pii(text):
    assert pii.redact_text(text, SALT)[0] == text


def test_no_planted_pii_survives_in_generated_documents():
    """Recall on the generator's ground truth, including mojibake and HTML noise (cleaned first,
    as the pipeline does)."""
    leaks = []
    for record in mortgage.generate(seed=21, shard=0, num_docs=2000):
        truth = record["ground_truth"]
        if truth["noise"] in ("empty", "oversized"):
            continue
        clean = transforms.normalise({"text": [record["text"]]})["text"][0]
        redacted, _, _ = pii.redact_text(clean, SALT)
        values = [transforms.repair_mojibake(p["value"]) for p in truth["pii"]]
        leaks += [(record["doc_id"], v) for v in pii.leaked(redacted, values)]
    assert leaks == []


def test_redact_batch_counts_and_redacts_snippets():
    batch = {"text": [LETTER, ""], "snippet": ["", "bad line: SSN 078-05-1120"]}
    out = pii.redact(batch, SALT)
    assert out["pii_ssn"] == [1, 0] and out["pii_name"] == [7, 0]
    assert "078-05-1120" not in out["snippet"][1] and out["text"][1] == ""
    assert out["masked_text"][0].count("<name>") == 7


@pytest.mark.parametrize("text, value, kind", [
    ("SSN 123 45 6789 on file", "123 45 6789", "ssn"),
    ("ssn: 123-45-6789.", "123-45-6789", "ssn"),
    ("card 4111 1111 1111 1111 exp 09/27", "4111 1111 1111 1111", "card"),
    ("card 5500-0000-0000-0004.", "5500-0000-0000-0004", "card"),
    ("paid with 4012888888881881 today", "4012888888881881", "card"),
])
def test_spaced_ssns_and_card_numbers_are_redacted(text, value, kind):
    clean, counts, masked = pii.redact_text(text, "salt")
    assert value not in clean and counts[kind] == 1 and f"<{kind}>" in masked
    fake = clean[text.index(value):text.index(value) + len(value)]
    assert len(fake) == len(value) and [c.isdigit() for c in fake] == [c.isdigit() for c in value]
    if kind == "card":
        assert pii.luhn_ok(fake)  # still reads as a card number


@pytest.mark.parametrize("text", [
    "reference 1234567812345678 (fails Luhn: a 16-digit reference, not a card)",
    "ticket 1234 5678 1234 5678 is closed",
    "figures 900 12 3456 and 123 00 4567 and 666 12 3456",  # no valid SSN: area 9xx/666, group 00
    "mixed 4111 1111-1111 1111 separators",
    "amount $4,111,111,111,111,111 and rate 6.125 and 2024 12 31",
])
def test_lookalikes_are_not_redacted(text):
    assert pii.redact_text(text, "salt")[0] == text


def test_luhn_by_hand():
    # 4111 1111 1111 1111: doubled digits 8+2*7 = 22, others 1*8 = 8 -> 30, divisible by 10
    assert pii.luhn_ok("4111 1111 1111 1111") and not pii.luhn_ok("4111 1111 1111 1112")
