"""Routing: which expert answers a request. Pure functions; the Router deployment and the
evaluate stage's routed variant both call `decide`, so what is measured is what is served.

Tier 1 is a character n-gram TF-IDF + logistic regression read over the request's head and tail,
temperature-calibrated, evaluated in plain Python (no sklearn on the request path; p99 ~1 ms).
Tier 2 is the paper's few-shot self-classification: the structured expert scores each route's
log-probability after a few-shot prompt (modeling.label_logprobs, one forward pass); this module
only builds that prompt and turns the scores into probabilities. `route` combines them with the
client's explicit choice of model.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mortgagellm.datasets.tasks.format import ROUTES

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from mortgagellm.config import Recipe, RouterSettings

AUTO_MODEL = "mortgagellm"
MODEL_ROUTES = {"mortgagellm-structured": "structured", "mortgagellm-chat": "conversational"}
"""Model names a client may send: `mortgagellm` = route for me, the others pick an expert."""
ROUTE_MODELS = {route: name for name, route in MODEL_ROUTES.items()}
NGRAMS = (1, 5)
"""Character n-gram lengths of tier 1 (chosen by 5-fold CV on routing_train: 99.5 %)."""
_SPACES = re.compile(r"\s+")


class UnknownModel(ValueError):
    """The request names a model this app does not serve (OpenAI's 404 model_not_found)."""


@dataclass(frozen=True)
class Decision:
    """Where a request goes and why.

    `decided_by` is client (explicit model), tier1, fewshot, hybrid (tier 1 x tier 2), or
    tier1_fallback (tier 2 was needed but failed, so tier 1's own best guess was taken);
    `confidence` is the probability of `route` under whatever decided it (1.0 for client).
    """

    route: str
    confidence: float
    decided_by: str
    mode: str
    tier1_confidence: float | None = None


def clip(text: str, chars: int) -> str:
    """The first and last `chars` characters: the ask sits before or after a pasted document."""
    return text if len(text) <= 2 * chars else f"{text[:chars]}\n{text[-chars:]}"


def ngrams(text: str) -> list[str]:
    """Lower-cased character n-grams (NGRAMS) of text with runs of whitespace made one space."""
    text = _SPACES.sub(" ", text.lower())
    return [text[i:i + n] for n in range(NGRAMS[0], NGRAMS[1] + 1)
            for i in range(len(text) - n + 1)]


@dataclass(frozen=True)
class Tier1:
    """A trained tier-1 classifier as plain data: n-gram -> (idf, weight), bias, scale.

    P(structured) = sigmoid(scale * z), z = w . x + bias, x the l2-normalised sublinear TF-IDF
    of the clipped request, exactly as sklearn's TfidfVectorizer computes it at training time.
    """

    terms: dict[str, tuple[float, float]]
    bias: float
    scale: float
    clip_chars: int
    _products: dict[str, tuple[float, float]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # (idf * weight, idf^2) per n-gram: two multiplications per n-gram on the request path.
        object.__setattr__(self, "_products", {g: (idf * w, idf * idf)
                                               for g, (idf, w) in self.terms.items()})

    def margin(self, request: str) -> float:
        """Uncalibrated decision value z (positive: structured)."""
        products, dot, norm = self._products, 0.0, 0.0
        for gram, count in Counter(ngrams(clip(request, self.clip_chars))).items():
            known = products.get(gram)
            if known is not None:
                tf = 1.0 + math.log(count) if count > 1 else 1.0
                dot += tf * known[0]
                norm += tf * tf * known[1]
        return self.bias + (dot / math.sqrt(norm) if norm else 0.0)

    def probability(self, request: str) -> float:
        """Calibrated P(route = structured)."""
        return 1.0 / (1.0 + math.exp(-self.scale * self.margin(request)))

    def to_json(self) -> str:
        """Serialised form (JSON, no pickle: loading it runs no code)."""
        return json.dumps({"terms": self.terms, "bias": self.bias, "scale": self.scale,
                           "clip_chars": self.clip_chars, "ngrams": NGRAMS})

    @classmethod
    def from_json(cls, text: str) -> Tier1:
        """Inverse of to_json; refuses a file written with other n-gram lengths."""
        data = json.loads(text)
        if tuple(data["ngrams"]) != NGRAMS:
            raise ValueError(f"tier-1 file uses n-grams {data['ngrams']}, this code {NGRAMS}")
        return cls({g: (v[0], v[1]) for g, v in data["terms"].items()}, data["bias"],
                   data["scale"], data["clip_chars"])


def train_tier1(requests: Sequence[str], routes: Sequence[str], clip_chars: int = 120,
                c: float = 10.0, seed: int = 0) -> Tier1:
    """Fit TF-IDF + logistic regression on clipped requests, then temperature-scale its margins.

    The scale is fitted on 5-fold out-of-fold margins, so the confidence a served request gets is
    calibrated on requests the classifier had not seen (in-sample margins are overconfident).
    A scale without offset (not full Platt scaling) keeps the decision boundary at z = 0:
    calibration changes how sure a route is, never which route wins.
    """
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    vectorizer = TfidfVectorizer(analyzer=ngrams, sublinear_tf=True, min_df=2)
    x = vectorizer.fit_transform([clip(r, clip_chars) for r in requests])
    y = np.array([r == "structured" for r in routes])
    model = LogisticRegression(C=c, max_iter=2000)
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    margins = cross_val_predict(model, x, y, cv=folds, method="decision_function")
    scale = LogisticRegression(C=1e4, fit_intercept=False).fit(margins.reshape(-1, 1), y)
    model.fit(x, y)
    weights, idf = model.coef_[0], vectorizer.idf_
    terms = {gram: (float(idf[j]), float(weights[j]))
             for gram, j in vectorizer.vocabulary_.items()}
    return Tier1(terms, float(model.intercept_[0]), float(scale.coef_[0, 0]), clip_chars)


TIER1_FILE = "tier1.json"
"""The corpus stage's output: tier 1 trained on routing_train (or serve.router.train_set)."""


def write_tier1(train: Sequence[dict], heldout: Sequence[dict], clip_chars: int, seed: int,
                path: Path) -> dict[str, float]:
    """Train tier 1 on `train` requests, write it to `path` (JSON, atomically) and return its
    accuracy alone (no tier 2) on the `heldout` requests, for the corpus manifest."""
    model = train_tier1([r["request"] for r in train], [r["route"] for r in train], clip_chars,
                        seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(model.to_json())
    os.replace(tmp, path)
    right = sum((model.probability(r["request"]) >= 0.5) == (r["route"] == "structured")
                for r in heldout)
    return {"train_requests": len(train), "heldout_requests": len(heldout),
            "heldout_accuracy": round(right / max(1, len(heldout)), 4)}


def tier1_path(recipe: Recipe) -> Path:
    """The tier-1 router the corpus stage wrote (its manifest's 'tier1' output)."""
    from mortgagellm.manifest import require_manifest, stage_dir

    corpus = require_manifest(recipe, "corpus")
    if "tier1" not in corpus.outputs:
        raise FileNotFoundError(f"the corpus manifest in {stage_dir(recipe, 'corpus')} has no "
                                "'tier1' output (written before tier 1 moved into the corpus "
                                "stage); run `mortgagellm corpus CONFIG` again")
    return Path(corpus.output_path("tier1"))


FEWSHOT_INSTRUCTION = (
    "Route each request. Answer 'structured' when it wants a structured task output: one label "
    "from a fixed set (an underwriting decision, a document type, a customer request type) or a "
    "summary of the text it supplies. Answer 'conversational' for everything else: a figure, a "
    "fact, an explanation, advice, a definition or small talk.")
FEWSHOT_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("Classify the document type of the text below.\n\nLOAN ESTIMATE ...", "structured"),
    ("What is PMI?", "conversational"),
    ("Approve, refer or deny? Reply with the label only.\n\nBorrower: ...", "structured"),
    ("Should I lock my rate now or wait?", "conversational"),
    ("Summarise this email in the standard layout.\n\nFrom: ...", "structured"),
    ("What is the monthly payment in this Loan Estimate?\n\nLOAN ESTIMATE ...",
     "conversational"),
)
"""Hand-written shots, kept short: small models have short contexts."""
CONTENT_FREE = "N/A"
"""The request whose tier-2 scores are the prior fewshot_probabilities removes."""


def fewshot_messages(request: str, clip_chars: int) -> list[dict[str, str]]:
    """One user turn: instruction, shots, the clipped request; the answer is a route name."""
    shots = "\n\n".join(f"Request: {text}\nRoute: {route}" for text, route in FEWSHOT_EXAMPLES)
    body = f"{FEWSHOT_INSTRUCTION}\n\n{shots}\n\nRequest: {clip(request, clip_chars)}\nRoute:"
    return [{"role": "user", "content": body}]


def fewshot_probabilities(logprobs: Mapping[str, float],
                          prior: Mapping[str, float] | None = None) -> dict[str, float]:
    """Route probabilities from label log-probabilities, minus a content-free prior when given.

    Subtracting the scores the same prompt gets for a content-free request ("N/A") removes the
    model's bias toward one label's surface form (contextual calibration, Zhao et al. 2021).
    """
    scores = {r: logprobs[r] - (prior[r] if prior else 0.0) for r in ROUTES}
    top = max(scores.values())
    exp = {r: math.exp(s - top) for r, s in scores.items()}
    total = sum(exp.values())
    return {r: v / total for r, v in exp.items()}


def client_route(model: str) -> str | None:
    """The expert a client picked by model name, None for `mortgagellm` (route for me)."""
    if model == AUTO_MODEL:
        return None
    if model not in MODEL_ROUTES:
        known = ", ".join([AUTO_MODEL, *MODEL_ROUTES])
        raise UnknownModel(f"model {model!r} does not exist; models: {known}")
    return MODEL_ROUTES[model]


def route(request: str, model: str, mode: str, tier1: Tier1, threshold: float,
          fewshot: Mapping[str, float] | None = None) -> Decision | None:
    """Decide the expert for `request`; None when tier-2 probabilities are needed but not given.

    The caller (the Router, a test, the benchmark) then asks the structured expert for them and
    calls again with `fewshot` = fewshot_probabilities(...). In hybrid mode the two tiers'
    probabilities are multiplied: an unsure tier 2 cannot overturn a fairly sure tier 1.
    """
    chosen = client_route(model)
    if chosen is not None:
        return Decision(chosen, 1.0, "client", mode)
    if mode == "fewshot":
        if fewshot is None:
            return None
        best = max(ROUTES, key=fewshot.__getitem__)
        return Decision(best, fewshot[best], "fewshot", mode)
    p = tier1.probability(request)
    best, confidence = ("structured", p) if p >= 0.5 else ("conversational", 1.0 - p)
    if mode == "tier1" or confidence >= threshold:
        return Decision(best, confidence, "tier1", mode, confidence)
    if fewshot is None:
        return None
    joint = {"structured": p * fewshot["structured"],
             "conversational": (1.0 - p) * fewshot["conversational"]}
    total = sum(joint.values()) or 1.0
    best = max(ROUTES, key=joint.__getitem__)
    return Decision(best, joint[best] / total, "hybrid", mode, confidence)


Tier2 = Callable[[str, int], Awaitable[Mapping[str, float]]]
"""Tier 2: (request, clip_chars) -> route probabilities, from the structured expert."""


async def decide(text: str, model: str, settings: RouterSettings, tier1: Tier1,
                 tier2: Tier2) -> Decision:
    """The two-tier protocol: `route`, and when it needs tier 2, ask `tier2` once and route
    again with its probabilities. The Router passes a call to the structured expert's replica;
    evaluation one to the same model in its own process."""
    decision = route(text, model, settings.mode, tier1, settings.threshold)
    if decision is None:
        try:
            probabilities = await tier2(text, settings.clip_chars)
        except Exception as err:  # noqa: BLE001 - any tier-2 failure falls back, and says so
            # Answering with tier 1's guess beats a 503: the record says it was a fallback.
            log.warning("tier 2 failed (%s: %s); routing by tier 1 alone", type(err).__name__, err)
            p = tier1.probability(text)
            best, confidence = ("structured", p) if p >= 0.5 else ("conversational", 1.0 - p)
            return Decision(best, confidence, "tier1_fallback", settings.mode, confidence)
        decision = route(text, model, settings.mode, tier1, settings.threshold, probabilities)
    return decision
