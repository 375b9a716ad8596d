"""Routing: which expert answers a request. Pure functions; the Router deployment and the
evaluate stage's routed variant both call `decide`, so what is measured is what is served.

Tier 1 here is a character n-gram TF-IDF + logistic regression read over the request's head and
tail, temperature-calibrated, evaluated in plain Python (no sklearn on the request path; p99
~1 ms); tier1.py adds an encoder kind and fits, writes and loads every kind.
Tier 2 is the paper's few-shot self-classification: the structured expert scores each route's
log-probability after a few-shot prompt (modeling.label_logprobs, one forward pass); this module
only builds that prompt and turns the scores into probabilities. `route` combines them with the
client's explicit choice of model.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

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


class Scorer(Protocol):
    """What routing needs of a tier-1 classifier of any kind (Tier1 here, tier1.py's others)."""

    threshold: float | None

    def probability(self, request: str) -> float:
        """Calibrated P(route = structured)."""


class UnknownModel(ValueError):
    """The request names a model this app does not serve (OpenAI's 404 model_not_found)."""


@dataclass(frozen=True)
class Decision:
    """Where a request goes and why.

    `decided_by` is client (explicit model), tier1, fewshot, hybrid (tier 1 x tier 2), fallback
    (tier 2 was needed but failed or abstained, so serve.router.fallback_route was taken;
    `confidence` then is what the tiers said of that route, 0.0 when tier 2 failed in fewshot
    mode), or tier1_fallback (the same with fallback_route None: tier 1's own best guess);
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
    threshold: float | None = None
    """The tier-2 threshold fitted with it (tier1.fit), used when serve.router.threshold is
    auto."""
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
        return json.dumps({"kind": "ngram", "terms": self.terms, "bias": self.bias,
                           "scale": self.scale, "clip_chars": self.clip_chars,
                           "threshold": self.threshold, "ngrams": NGRAMS})

    @classmethod
    def from_json(cls, text: str) -> Tier1:
        """Inverse of to_json; refuses a file written with other n-gram lengths."""
        data = json.loads(text)
        if tuple(data["ngrams"]) != NGRAMS:
            raise ValueError(f"tier-1 file uses n-grams {data['ngrams']}, this code {NGRAMS}")
        # Files written before issue 20 have no fitted threshold: `auto` then refuses them.
        return cls({g: (v[0], v[1]) for g, v in data["terms"].items()}, data["bias"],
                   data["scale"], data["clip_chars"], data.get("threshold"))


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


def threshold_of(settings: RouterSettings, tier1: Scorer | None) -> float:
    """serve.router.threshold, or with `auto` the threshold fitted with tier 1 (tier1.json)."""
    if settings.threshold != "auto":
        return settings.threshold
    if tier1 is None or tier1.threshold is None:
        raise ValueError("serve.router.threshold is auto but tier1.json has no fitted threshold "
                         "(written before issue 20): run `mortgagellm corpus CONFIG` again or "
                         "set serve.router.threshold to a number")
    return tier1.threshold


def route(request: str, model: str, mode: str, tier1: Scorer, threshold: float,
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


async def decide(text: str, model: str, settings: RouterSettings, tier1: Scorer,
                 tier2: Tier2) -> Decision:
    """The two-tier protocol: `route`, and when it needs tier 2, ask `tier2` once and route
    again with its probabilities. The Router passes a call to the structured expert's replica;
    evaluation one to the same model in its own process. When tier 2 fails, or its decision is
    less sure than serve.router.abstain_below, the request goes to the fallback route."""
    threshold = threshold_of(settings, tier1) if settings.mode == "hybrid" else 1.0
    decision = route(text, model, settings.mode, tier1, threshold)
    if decision is not None:
        return decision
    try:
        probabilities = await tier2(text, settings.clip_chars)
    except Exception as err:  # noqa: BLE001 - any tier-2 failure falls back, and says so
        # Answering by the fallback beats a 503: the record and the metrics say it was one.
        log.warning("tier 2 failed (%s: %s); routing to the fallback", type(err).__name__, err)
        return fallback(text, settings, tier1, None)
    decision = route(text, model, settings.mode, tier1, threshold, probabilities)
    abstain = settings.abstain_below
    if decision is not None and abstain is not None and decision.confidence < abstain:
        return fallback(text, settings, tier1, decision)
    return decision


def fallback(text: str, settings: RouterSettings, tier1: Scorer,
             unsure: Decision | None) -> Decision:
    """The decision when tier 2 failed (`unsure` None) or abstained (`unsure` its too unsure
    decision): the configured fallback route (serve.router.fallback_route: the conversational
    expert answers any request, if not in the structured format), or with none tier 1's own best
    guess. Its confidence is the probability the last tier gave that route (0.0 when tier 2
    failed in fewshot mode, where tier 1 is not consulted)."""
    consult = settings.mode == "hybrid" or settings.fallback_route is None
    p = tier1.probability(text) if consult else None
    tier1_confidence = None if p is None else max(p, 1.0 - p)
    chosen = settings.fallback_route
    if chosen is None:
        best = "structured" if p >= 0.5 else "conversational"
        return Decision(best, tier1_confidence, "tier1_fallback", settings.mode, tier1_confidence)
    if unsure is not None:
        confidence = unsure.confidence if unsure.route == chosen else 1.0 - unsure.confidence
    elif p is not None:
        confidence = p if chosen == "structured" else 1.0 - p
    else:
        confidence = 0.0
    return Decision(chosen, confidence, "fallback", settings.mode, tier1_confidence)
