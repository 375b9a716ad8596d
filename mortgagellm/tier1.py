"""Tier 1 of the router in three kinds, fitted, written and loaded (issue 20).

- ngram: routing.Tier1, character n-gram TF-IDF + logistic regression (reads surface, ~1 ms);
- encoder: all-MiniLM-L6-v2 sentence embeddings (encoder.py) + logistic regression (reads
  meaning; one encoder forward pass per request, tens of ms on one CPU core);
- both: the two margins added with fitted weights.

Every kind is fitted the same way: the classifier on 80 % of routing_train, then on the other
20 % (never seen by it) its temperature (both: the two weights) and the tier-2 threshold under
which most of its would-be mistakes fall. The corpus stage writes the result as tier1.json
(`write`); the Router and evaluation read it with `load`.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mortgagellm import calibration, encoder
from mortgagellm.calibration import sigmoid
from mortgagellm.routing import Tier1, clip, train_tier1

KINDS = ("ngram", "encoder", "both")
HELD_OUT = 0.2
"""Share of routing_train held out of fitting for calibration and the threshold."""


@dataclass(frozen=True)
class EncoderTier1:
    """Logistic regression on the clipped request's sentence embedding, as plain data.

    P(structured) = sigmoid(scale * (w . e + bias)). The encoder's weights are not in here:
    they come from its pip package, whose version is recorded and checked on load.
    """

    weights: tuple[float, ...]
    bias: float
    scale: float
    clip_chars: int
    threshold: float | None = None
    encoder_version: str = ""

    def margins(self, requests: Sequence[str]) -> list[float]:
        """Uncalibrated decision values (positive: structured), the requests embedded in
        batches."""
        vectors = encoder.embed([clip(r, self.clip_chars) for r in requests])
        return [self.bias + sum(w * x for w, x in zip(self.weights, v)) for v in vectors]

    def margin(self, request: str) -> float:
        """Uncalibrated decision value of one request."""
        return self.margins([request])[0]

    def probability(self, request: str) -> float:
        """Calibrated P(route = structured)."""
        return sigmoid(self.scale * self.margin(request))

    def probabilities(self, requests: Sequence[str]) -> list[float]:
        """probability of each request, embedded in batches."""
        return [sigmoid(self.scale * z) for z in self.margins(requests)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with the encoder it was fitted on."""
        return {"kind": "encoder", "weights": list(self.weights), "bias": self.bias,
                "scale": self.scale, "clip_chars": self.clip_chars, "threshold": self.threshold,
                "encoder": {"package": encoder.PACKAGE, "version": self.encoder_version,
                            "max_tokens": encoder.MAX_TOKENS, "pooling": "mean, l2"}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderTier1:
        """Inverse of to_dict; refuses weights fitted on another version of the encoder."""
        fitted, installed = data["encoder"]["version"], encoder.version()
        if fitted != installed or data["encoder"]["max_tokens"] != encoder.MAX_TOKENS:
            raise ValueError(f"tier 1 was fitted on {encoder.PACKAGE} {fitted} embeddings, "
                             f"{installed} is installed: run `mortgagellm corpus CONFIG` again")
        return cls(tuple(data["weights"]), data["bias"], data["scale"], data["clip_chars"],
                   data["threshold"], fitted)


@dataclass(frozen=True)
class BothTier1:
    """The n-gram and encoder margins combined: P = sigmoid(a * z_ngram + b * z_encoder), with
    (a, b) fitted on held-out requests (the two classifiers' own scales are not used)."""

    ngram: Tier1
    encoder: EncoderTier1
    weights: tuple[float, float]
    threshold: float | None = None

    def probabilities(self, requests: Sequence[str]) -> list[float]:
        """Calibrated P(route = structured) of each request."""
        a, b = self.weights
        return [sigmoid(a * self.ngram.margin(r) + b * z)
                for r, z in zip(requests, self.encoder.margins(requests))]

    def probability(self, request: str) -> float:
        """Calibrated P(route = structured)."""
        return self.probabilities([request])[0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: both classifiers and the weights."""
        return {"kind": "both", "ngram": json.loads(self.ngram.to_json()),
                "encoder": self.encoder.to_dict(), "weights": list(self.weights),
                "threshold": self.threshold}


Classifier = Tier1 | EncoderTier1 | BothTier1


def to_json(model: Classifier) -> str:
    """tier1.json's text (JSON, no pickle: loading it runs no code)."""
    return model.to_json() if isinstance(model, Tier1) else json.dumps(model.to_dict())


def load(text: str) -> Classifier:
    """A classifier from tier1.json's text, of the kind it names (files without a kind are
    n-gram files written before issue 20)."""
    data = json.loads(text)
    kind = data.get("kind", "ngram")
    if kind == "ngram":
        return Tier1.from_json(text)
    if kind == "encoder":
        return EncoderTier1.from_dict(data)
    if kind == "both":
        return BothTier1(Tier1.from_json(json.dumps(data["ngram"])),
                         EncoderTier1.from_dict(data["encoder"]), tuple(data["weights"]),
                         data["threshold"])
    raise ValueError(f"tier1.json names kind {kind!r}; this code reads {', '.join(KINDS)}")


def probabilities(model: Classifier, requests: Sequence[str]) -> list[float]:
    """P(structured) of each request (batched where the kind embeds)."""
    if isinstance(model, Tier1):
        return [model.probability(r) for r in requests]
    return model.probabilities(requests)


def split(records: Sequence[dict], share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(kept, held out): `share` of each route's records held out, drawn by seed."""
    kept, held = [], []
    for route in sorted({r["route"] for r in records}):
        group = [r for r in records if r["route"] == route]
        random.Random(f"{seed}:{route}").shuffle(group)
        cut = round(len(group) * share)
        held += group[:cut]
        kept += group[cut:]
    return kept, held


def fit_encoder(requests: Sequence[str], routes: Sequence[str], clip_chars: int,
                c: float = 10.0) -> EncoderTier1:
    """Logistic regression on the embeddings of the clipped requests, scale 1 (uncalibrated)."""
    from sklearn.linear_model import LogisticRegression

    x = encoder.embed([clip(r, clip_chars) for r in requests])
    model = LogisticRegression(C=c, max_iter=5000).fit(x, [r == "structured" for r in routes])
    return EncoderTier1(tuple(float(w) for w in model.coef_[0]), float(model.intercept_[0]),
                        1.0, clip_chars, None, encoder.version())


def fit(kind: str, train: Sequence[dict], clip_chars: int, seed: int,
        threshold_set: Sequence[dict] | None = None, caught: float = 0.8) -> Classifier:
    """Fit tier 1 of `kind` on HELD_OUT-less `train`, calibrate it on the held-out part and fit
    its threshold there (or on `threshold_set`, requests written apart from the generator),
    so that `caught` of the requests it gets wrong there fall below the threshold."""
    if kind not in KINDS:
        raise ValueError(f"tier 1 kind {kind!r}; choose one of {', '.join(KINDS)}")
    kept, held = split(train, HELD_OUT, seed)
    texts, routes = [r["request"] for r in kept], [r["route"] for r in kept]
    held_texts = [r["request"] for r in held]
    truth = [r["route"] == "structured" for r in held]
    columns = []
    if kind in ("ngram", "both"):
        ngram = train_tier1(texts, routes, clip_chars, seed=seed)
        columns.append([ngram.margin(t) for t in held_texts])
    if kind in ("encoder", "both"):
        enc = fit_encoder(texts, routes, clip_chars)
        columns.append(enc.margins(held_texts))
    weights = calibration.fit_scales(list(zip(*columns)), truth)
    model: Classifier
    if kind == "ngram":
        model = Tier1(ngram.terms, ngram.bias, weights[0], clip_chars)
    elif kind == "encoder":
        model = replace(enc, scale=weights[0])
    else:
        model = BothTier1(ngram, enc, (weights[0], weights[1]))
    records = held if threshold_set is None else threshold_set
    confidence, correct = judged(model, records)
    return replace(model, threshold=calibration.fit_threshold(confidence, correct, caught))


def judged(model: Classifier, records: Sequence[dict]) -> tuple[list[float], list[bool]]:
    """(confidence, correct) of tier 1's decision on each record."""
    ps = probabilities(model, [r["request"] for r in records])
    return ([max(p, 1 - p) for p in ps],
            [(p >= 0.5) == (r["route"] == "structured") for p, r in zip(ps, records)])


def write(kind: str, train: Sequence[dict], heldout: Sequence[dict], clip_chars: int, seed: int,
          path: Path, threshold_set: Sequence[dict] | None = None, caught: float = 0.8
          ) -> dict[str, Any]:
    """Fit tier 1 (`fit`), write it to `path` (JSON, atomically) and return what the corpus
    manifest records: its kind, fitted threshold, and accuracy alone (no tier 2), ECE and share
    below the threshold on the `heldout` requests."""
    model = fit(kind, train, clip_chars, seed, threshold_set, caught)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(to_json(model))
    os.replace(tmp, path)
    confidence, correct = judged(model, heldout)
    n = max(1, len(heldout))
    return {"kind": kind, "train_requests": len(train), "heldout_requests": len(heldout),
            "heldout_accuracy": round(sum(correct) / n, 4), "threshold": model.threshold,
            "heldout_ece": round(calibration.ece(confidence, correct), 4),
            "heldout_below_threshold": round(sum(c < model.threshold for c in confidence) / n, 4)}
