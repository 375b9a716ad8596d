"""metrics.py: every interval and metric against a hand computation; BERTScore with the packaged
encoder, offline."""

import json
import math
import os
import random
import subprocess
import sys

import pytest

from mortgagellm import metrics
from tests.reference import legacy


def test_wilson_interval_matches_hand_values():
    # 8/10: centre (0.8 + z^2/20) / (1 + z^2/10) = 0.71671, half-width 0.22657
    assert metrics.wilson(8, 10) == pytest.approx((0.49016, 0.94331), abs=1e-5)
    # 0/10: the interval keeps a width, [0, z^2/10 / (1 + z^2/10)] = [0, 0.27753]
    assert metrics.wilson(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)


def test_proportion_reports_value_n_and_wilson_bounds():
    m = metrics.proportion([True, False, True, True])
    lo, hi = metrics.wilson(3, 4)
    assert m == {"value": 0.75, "n": 4, "ci95": [round(lo, 6), round(hi, 6)]}
    empty = metrics.proportion([])
    assert empty["n"] == 0 and math.isnan(empty["value"]) and all(map(math.isnan, empty["ci95"]))


def test_bootstrap_of_a_two_point_mean_by_hand():
    # resampled means of [0, 1] are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4, so the 2.5th and
    # 97.5th percentiles of 1000 resamples are 0 and 1
    m = metrics.mean([0.0, 1.0], resamples=1000, seed=0)
    assert m == {"value": 0.5, "n": 2, "ci95": [0.0, 1.0]}
    assert metrics.mean([2.0, 2.0, 2.0], 200, 0)["ci95"] == [2.0, 2.0]
    again = metrics.mean([1.0, 2.0, 3.0, 7.0], 500, 3)
    assert again == metrics.mean([1.0, 2.0, 3.0, 7.0], 500, 3)  # seeded
    assert again["ci95"][0] < 3.25 < again["ci95"][1]


def test_macro_f1_with_a_class_never_predicted_and_an_unparseable_answer():
    gold = ["a", "a", "b", "b", "c"]
    predicted = ["a", "a", "b", "a", None]
    # a: 2TP 1FP -> 4/5; b: 1TP 1FN -> 2/3; c: 1FN -> 0 (the unparseable answer)
    assert metrics.macro_f1(gold, predicted) == pytest.approx((0.8 + 2 / 3 + 0) / 3)
    # a predicted class no record has counts as a class with F1 0
    assert metrics.macro_f1(["a", "a"], ["a", "b"]) == pytest.approx((2 / 3 + 0) / 2)
    assert metrics.macro_f1(["a", "b"], [None, None]) == 0.0
    m = metrics.macro_f1_metric(gold, predicted, 200, 0)
    assert m["n"] == 5 and m["ci95"][0] <= m["value"] <= m["ci95"][1]


def test_macro_f1_agrees_with_the_replaced_hand_count():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 30)
        gold = [rng.choice("abcd") for _ in range(n)]
        predicted = [rng.choice(["a", "b", "c", "e", None]) for _ in range(n)]
        assert metrics.macro_f1(gold, predicted) == pytest.approx(
            legacy.macro_f1(gold, predicted), abs=1e-12)


def test_macro_f1_from_counts_equals_scikit_learns_on_the_same_items():
    """The bootstrap's fast path computes the same number as the reported one."""
    import numpy as np

    rng = random.Random(1)
    for _ in range(200):
        n = rng.randint(1, 30)
        gold = [rng.choice("abcd") for _ in range(n)]
        predicted = [rng.choice(["a", "b", "c", "e", None]) for _ in range(n)]
        classes = sorted(set(gold) | {x for x in predicted if x is not None})
        code = {c: i for i, c in enumerate(classes)}
        g = np.array([code[x] for x in gold])
        q = np.array([len(classes) if x is None else code[x] for x in predicted])
        assert metrics.macro_f1_counts(g, q, len(classes)) == pytest.approx(
            metrics.macro_f1(gold, predicted), abs=1e-12)


def test_rouge_l_is_the_lcs_f_measure():
    # LCS of "the cat sat on the mat" / "the cat is on the mat" = the cat on the mat (5 of 6)
    assert metrics.rouge_l("The cat sat on the mat.", "the cat is on the mat") == \
        pytest.approx(5 / 6)
    assert metrics.rouge_l("a b c d", "d c b a") == pytest.approx(0.25)  # order matters: LCS 1
    # candidate 2 tokens, reference 4, LCS 2: P = 1, R = 1/2, F = 2/3
    assert metrics.rouge_l("rate lock", "the rate lock expires") == pytest.approx(2 / 3)
    assert metrics.rouge_l("x y", "p q") == 0.0 and metrics.rouge_l("", "p") == 0.0


def test_rouge_l_agrees_with_the_replaced_lcs_on_generated_summaries():
    from mortgagellm.datasets import mortgage

    texts = [r["text"] for r in mortgage.generate(2, 0, 60, noise=False)]
    rng = random.Random(1)
    pairs = [(" ".join(rng.sample(t.split(), min(25, len(t.split())))), t[:400]) for t in texts]
    pairs += [("", "x"), ("Café façade 5.5%", "cafe facade 5 5")]  # non-ASCII: both drop é, ç
    assert [metrics.rouge_l(c, r) for c, r in pairs] == \
        pytest.approx([legacy.rouge_l(c, r) for c, r in pairs], abs=1e-12)
    assert len({round(metrics.rouge_l(c, r), 3) for c, r in pairs}) > 20  # varied scores


def test_token_f1_uses_squad_normalisation():
    assert metrics.squad_tokens("The APR, is 6.9%!") == ["apr", "is", "69"]
    # [loan, was, approved] vs [loan, approved, today]: 2 shared, P = R = 2/3
    assert metrics.token_f1("The loan was approved.", "loan approved today") == \
        pytest.approx(2 / 3)
    assert metrics.token_f1("the", "a") == 1.0  # both empty after normalisation
    assert metrics.token_f1("", "approved") == 0.0


def test_percentile_metric_interpolates_linearly():
    values = [1.0, 2.0, 3.0, 4.0, 100.0]
    assert metrics.percentile_metric(values, 50, 200, 0)["value"] == 3.0
    # p99: position 0.99 x 4 = 3.96 -> 4 + 0.96 x (100 - 4)
    assert metrics.percentile_metric(values, 99, 200, 0)["value"] == pytest.approx(96.16)


BERT_SCRIPT = """
import json, torch
torch.set_num_threads(1)
from mortgagellm.metrics import BertScore
f1 = BertScore().f1(["The loan was approved.", "The loan was approved.", "Bananas are yellow.",
                     ""], ["The loan was approved.", "The mortgage is approved.",
                           "The mortgage is approved.", "The loan was approved."])
print(json.dumps(f1))
"""


def test_bertscore_uses_the_packaged_encoder_offline(tmp_path):
    """Run in a fresh process with the hub switched off and an empty HF cache: any download
    attempt would fail the test."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                        "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run([sys.executable, "-c", BERT_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    same, paraphrase, unrelated, empty = json.loads(done.stdout.strip().splitlines()[-1])
    assert same == pytest.approx(1.0, abs=1e-4)
    assert 1.0 > paraphrase > unrelated > 0.0
    assert empty == 0.0
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").rglob("*.safetensors"))


def test_bertscore_scores_each_pair_once_and_all_primed_pairs_in_one_call():
    import torch

    from mortgagellm.metrics import BertScore

    class Counting:  # bert-score's BERTScorer.score: (P, R, F) tensors
        def __init__(self):
            self.calls = []

        def score(self, cands, refs):
            self.calls.append((list(cands), list(refs)))
            return None, None, torch.tensor([len(c) / 100 for c in cands])

    bert = BertScore.__new__(BertScore)  # no encoder: the scorer is the stand-in
    bert.scorer, bert.scores = Counting(), {}
    bert.prime(["a", "bb", "a", "", "ccc"], ["r", "r", "r", "r", "s"])
    assert bert.scorer.calls == [(["a", "bb", "ccc"], ["r", "r", "s"])]  # repeats, empty: none
    assert bert.f1(["bb", "", "a"], ["r", "r", "r"]) == pytest.approx([0.02, 0.0, 0.01])
    assert len(bert.scorer.calls) == 1  # all cached
    assert bert.f1(["dddd", "a"], ["r", "r"]) == pytest.approx([0.04, 0.01])
    assert bert.scorer.calls[1] == (["dddd"], ["r"])  # only the new pair
