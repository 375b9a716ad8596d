"""routing.py: tier-1 accuracy on the held-out routing set, calibration and speed; the pure
decision logic on hand-made inputs."""

import math
import time

import pytest

from mortgagellm import modeling, routing
from mortgagellm.routing import Decision, Tier1, UnknownModel, clip, route

ACCURACY_FLOOR = 0.98
"""The goal on eval_routing. Measured 0.9867 (seed 0) since issue 20 gave the routing sets
paraphrase variety (typos, terse asks, partial pastes; 0.9917 on the template-only set before).
600 requests: one error = 0.17 %."""


def confusion(records, tier1):
    """{(truth, predicted): count} and accuracy of tier 1 alone."""
    table = {(t, p): 0 for t in routing.ROUTES for p in routing.ROUTES}
    for r in records:
        decision = route(r["request"], "mortgagellm", "tier1", tier1, 0.9)
        table[(r["route"], decision.route)] += 1
    correct = sum(v for (t, p), v in table.items() if t == p)
    return table, correct / len(records)


def test_tier1_accuracy_on_eval_routing_with_confusion_matrix(routing_sets, tier1):
    table, accuracy = confusion(routing_sets["eval"], tier1)
    print(f"\ntier-1 accuracy {accuracy:.4f} on {len(routing_sets['eval'])} held-out requests")
    print("truth \\ predicted   structured  conversational")
    for truth in routing.ROUTES:
        print(f"{truth:<19} {table[(truth, 'structured')]:>10}  "
              f"{table[(truth, 'conversational')]:>14}")
    assert sum(table.values()) == 600
    assert accuracy >= ACCURACY_FLOOR
    ambiguous = [r for r in routing_sets["eval"] if r["ambiguous"]]
    _, hard = confusion(ambiguous, tier1)
    assert hard >= 0.9, f"ambiguous requests: {hard:.3f}"


def test_tier1_confidence_is_calibrated(routing_sets, tier1):
    """Expected calibration error over 5 bins of confidence stays below 3 points, and the
    requests under the hybrid threshold hold most of the errors."""
    rows = []
    for r in routing_sets["eval"]:
        d = route(r["request"], "mortgagellm", "tier1", tier1, 0.9)
        rows.append((d.confidence, d.route == r["route"]))
    bins = [[] for _ in range(5)]
    for conf, ok in rows:
        bins[min(4, int((conf - 0.5) / 0.1))].append((conf, ok))
    ece = sum(abs(sum(c for c, _ in b) / len(b) - sum(o for _, o in b) / len(b)) * len(b)
              for b in bins if b) / len(rows)
    assert ece < 0.03
    errors = [conf for conf, ok in rows if not ok]
    assert sum(conf < 0.9 for conf in errors) >= len(errors) / 2


def test_tier1_is_fast(routing_sets, tier1):
    """p99 <= 2 ms per request, measured as the thread's CPU time: other engineers' jobs share
    these 2 cores, so wall time here measures them too (benchmarks/serve_routing.py reports
    wall time)."""
    requests = [r["request"] for r in routing_sets["eval"]]
    costs = []
    for text in requests:
        start = time.thread_time()
        route(text, "mortgagellm", "tier1", tier1, 0.9)
        costs.append(time.thread_time() - start)
    costs.sort()
    assert costs[int(0.99 * len(costs))] <= 2e-3


def test_tier1_json_round_trip_gives_the_same_probability(routing_sets, tier1):
    again = Tier1.from_json(tier1.to_json())
    for r in routing_sets["eval"][:20]:
        assert again.probability(r["request"]) == tier1.probability(r["request"])


def test_tier1_matches_sklearn_on_the_same_features(routing_sets):
    """The plain-Python scorer computes exactly sklearn's TF-IDF + logistic regression margin."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    train = routing_sets["train"][:300]
    texts = [clip(r["request"], 120) for r in train]
    y = [r["route"] == "structured" for r in train]
    vec = TfidfVectorizer(analyzer=routing.ngrams, sublinear_tf=True, min_df=2)
    model = LogisticRegression(C=10.0, max_iter=2000).fit(vec.fit_transform(texts), y)
    terms = {g: (float(vec.idf_[j]), float(model.coef_[0][j]))
             for g, j in vec.vocabulary_.items()}
    ours = Tier1(terms, float(model.intercept_[0]), 1.0, 120)
    sample = [r["request"] for r in routing_sets["eval"][:25]]
    expected = model.decision_function(vec.transform([clip(t, 120) for t in sample]))
    for text, z in zip(sample, expected):
        assert ours.margin(text) == pytest.approx(z, abs=1e-9)


def test_clip_keeps_head_and_tail():
    assert clip("abcdef", 3) == "abcdef"
    assert clip("0123456789", 2) == "01\n89"


def test_ngrams_lowercase_and_collapse_whitespace():
    assert routing.ngrams("A  b") == ["a", " ", "b", "a ", " b", "a b"]


# A hand-made classifier: the n-gram "zz" alone decides. For "zz": tf 1, idf 1, x = 1/1,
# z = 2 * 1 + 0 = 2, P(structured) = sigmoid(2) = 0.8808. For "qq": no known n-gram, z = 0.
HAND = Tier1({"zz": (1.0, 2.0)}, 0.0, 1.0, 120)
P_ZZ = 1 / (1 + math.exp(-2))


def test_client_choice_wins_and_unknown_models_are_refused():
    assert route("zz", "mortgagellm-chat", "hybrid", HAND, 0.9) == Decision(
        "conversational", 1.0, "client", "hybrid")
    assert route("qq", "mortgagellm-structured", "tier1", HAND, 0.9).route == "structured"
    with pytest.raises(UnknownModel, match="gpt-4"):
        route("zz", "gpt-4", "tier1", HAND, 0.9)


def test_tier1_mode_uses_the_classifier_alone():
    d = route("zz", "mortgagellm", "tier1", HAND, 0.99)
    assert (d.route, d.decided_by) == ("structured", "tier1")
    assert d.confidence == pytest.approx(P_ZZ)


def test_hybrid_asks_tier2_only_below_the_threshold_and_multiplies():
    assert route("zz", "mortgagellm", "hybrid", HAND, 0.85).decided_by == "tier1"  # 0.88 >= 0.85
    assert route("zz", "mortgagellm", "hybrid", HAND, 0.9) is None  # needs tier 2
    # tier 2 says conversational 0.9: joint structured 0.8808 * 0.1 vs 0.1192 * 0.9
    d = route("zz", "mortgagellm", "hybrid", HAND, 0.9,
              {"structured": 0.1, "conversational": 0.9})
    s, c = P_ZZ * 0.1, (1 - P_ZZ) * 0.9
    assert (d.route, d.decided_by) == ("conversational", "hybrid")
    assert d.confidence == pytest.approx(c / (s + c))
    assert d.tier1_confidence == pytest.approx(P_ZZ)


@pytest.mark.parametrize("mode", ["hybrid", "fewshot"])
def test_a_failed_tier2_falls_back_to_tier1s_decision(mode):
    """Tier 2 is needed (P_ZZ 0.88 < 0.9) but its expert fails: with no fallback_route the
    request is routed by tier 1's best guess, marked tier1_fallback, instead of failing with
    503."""
    import asyncio

    from mortgagellm.config import RouterSettings

    async def broken(request, clip_chars):
        raise RuntimeError("structured expert unavailable")

    settings = RouterSettings(mode=mode, threshold=0.9, fallback_route=None)
    d = asyncio.run(routing.decide("zz", "mortgagellm", settings, HAND, broken))
    assert (d.route, d.decided_by, d.mode) == ("structured", "tier1_fallback", mode)
    assert d.confidence == pytest.approx(P_ZZ) == d.tier1_confidence


def test_fewshot_mode_takes_tier2_as_is():
    assert route("zz", "mortgagellm", "fewshot", HAND, 0.9) is None
    d = route("zz", "mortgagellm", "fewshot", HAND, 0.9,
              {"structured": 0.3, "conversational": 0.7})
    assert (d.route, d.confidence, d.decided_by) == ("conversational", 0.7, "fewshot")


def test_fewshot_probabilities_subtract_the_prior():
    # log-probs -1 / -3 with prior -2 / -2: scores 1 and -1 -> softmax (e^1, e^-1).
    p = routing.fewshot_probabilities({"structured": -1.0, "conversational": -3.0},
                                      {"structured": -2.0, "conversational": -2.0})
    assert p["structured"] == pytest.approx(math.e / (math.e + 1 / math.e))
    # A prior favouring structured by 5 nats turns the answer around: scores -1 and 2.
    p = routing.fewshot_probabilities({"structured": -1.0, "conversational": -3.0},
                                      {"structured": 0.0, "conversational": -5.0})
    assert p["conversational"] == pytest.approx(1 / (1 + math.exp(-3)))


def test_fewshot_prompt_ends_with_the_clipped_request():
    (message,) = routing.fewshot_messages("x" * 500, 10)
    assert message["role"] == "user"
    assert message["content"].endswith("Request: " + "x" * 10 + "\n" + "x" * 10 + "\nRoute:")
    assert message["content"].count("Route: structured") == 3


def test_hybrid_with_an_uninformed_tier2_keeps_the_floor(routing_sets, tier1, micro_model):
    """Tier 2 here is a random model (the real one is the structured expert; the small bootstrap
    instruct model measured 0.77 alone and lifted hybrid to 0.9967). Multiplying the tiers keeps a
    coin-flipping tier 2 from dragging the unsure few below the floor, and it is asked rarely."""

    model, tokenizer = modeling.load_for_inference(str(micro_model), threads=1)
    prior = modeling.label_logprobs(model, tokenizer, routing.fewshot_messages(
        routing.CONTENT_FREE, 16), routing.ROUTES)
    correct = asked = 0
    for r in routing_sets["eval"]:
        decision = route(r["request"], "mortgagellm", "hybrid", tier1, 0.9)
        if decision is None:
            asked += 1
            scores = modeling.label_logprobs(model, tokenizer,
                                           routing.fewshot_messages(r["request"], 120),
                                           routing.ROUTES)
            decision = route(r["request"], "mortgagellm", "hybrid", tier1, 0.9,
                             routing.fewshot_probabilities(scores, prior))
            assert decision.decided_by == "hybrid"
        correct += decision.route == r["route"]
    assert asked <= 0.08 * len(routing_sets["eval"])  # 35 of 600 (typos, terse asks)
    assert correct / len(routing_sets["eval"]) >= ACCURACY_FLOOR


def decide(settings, tier1, answer):
    """routing.decide on 'zz' with a tier 2 that returns `answer` or raises it."""
    import asyncio

    async def tier2(request, clip_chars):
        if isinstance(answer, Exception):
            raise answer
        return answer

    return asyncio.run(routing.decide("zz", "mortgagellm", settings, tier1, tier2))


def test_a_failed_tier2_routes_to_the_configured_fallback():
    """Hybrid: tier 1 says structured at 0.88 < 0.9, tier 2 fails: the request goes to the
    conversational expert, marked fallback, with tier 1's probability of that route."""
    from mortgagellm.config import RouterSettings

    d = decide(RouterSettings(threshold=0.9), HAND, RuntimeError("down"))
    assert d == Decision("conversational", pytest.approx(1 - P_ZZ), "fallback", "hybrid",
                         pytest.approx(P_ZZ))


def test_an_unsure_tier2_abstains_to_the_fallback():
    """Joint structured P_ZZ * 0.1 vs conversational (1 - P_ZZ) * 0.9: conversational at 0.55.
    Below abstain_below 0.6 tier 2 abstains and the fallback route (here structured) answers,
    with the joint probability of structured; at 0.5 the joint decision stands."""
    from mortgagellm.config import RouterSettings

    s, c = P_ZZ * 0.1, (1 - P_ZZ) * 0.9
    unsure = {"structured": 0.1, "conversational": 0.9}
    d = decide(RouterSettings(threshold=0.9, abstain_below=0.6, fallback_route="structured"),
               HAND, unsure)
    assert (d.route, d.decided_by) == ("structured", "fallback")
    assert d.confidence == pytest.approx(s / (s + c))
    d = decide(RouterSettings(threshold=0.9, abstain_below=0.5), HAND, unsure)
    assert (d.route, d.decided_by) == ("conversational", "hybrid")


def test_auto_threshold_is_the_one_fitted_with_tier1():
    """threshold auto reads tier1.json's fitted value: P_ZZ 0.88 is sure enough at 0.85 (tier 2
    is never asked), not at 0.95; a file without one is refused with what to do."""
    from mortgagellm.config import RouterSettings

    auto = RouterSettings(threshold="auto")
    never = RuntimeError("tier 2 must not be asked")
    low = Tier1({"zz": (1.0, 2.0)}, 0.0, 1.0, 120, threshold=0.85)
    assert decide(auto, low, never).decided_by == "tier1"
    high = Tier1({"zz": (1.0, 2.0)}, 0.0, 1.0, 120, threshold=0.95)
    d = decide(auto, high, {"structured": 0.9, "conversational": 0.1})
    assert d.decided_by == "hybrid"
    again = Tier1.from_json(high.to_json())
    assert again.threshold == 0.95
    with pytest.raises(ValueError, match="mortgagellm corpus"):
        decide(auto, HAND, never)
