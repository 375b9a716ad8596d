"""The routed system as a variant: every probe answered by the expert the serving router picks
for it (routing.decide, the Router's own protocol, run in this process), plus the router's
accuracy and latency on the held-out routing requests, and tier 1 alone on the generated and the
hand-written routing sets (accuracy, confident mistakes, ECE, confusion, fitted threshold).

Greedy decoding makes the routed answer the chosen expert's own answer to the same prompt, so
no answer is generated twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

from mortgagellm import modeling, routing, tier1
from mortgagellm.config import Recipe
from mortgagellm.datasets.tasks.format import ROUTES
from mortgagellm.evaluation.scoring import (
    EXPERTS,
    ROUTING,
    Scorer,
    confusion,
    routing_metrics,
    score_variant,
    tier1_metrics,
)
from mortgagellm.evaluation.sets import ROUTING_HAND, ROUTING_TIER1, EvalSets, probes


class RouterProbe:
    """The serving router's decision without Ray Serve: routing.decide in the recipe's mode, its
    tier 2 the structured expert's few-shot label scores computed in this process (what the
    Router and Expert.classify do over handles)."""

    def __init__(self, recipe: Recipe, structured_dir: str) -> None:
        self.cfg = recipe.serve.router
        self.tier1 = tier1.load(routing.tier1_path(recipe).read_text())
        self.model = self.tokenizer = self.prior = None
        self.loop = asyncio.new_event_loop()  # one loop for every decision: no per-call set-up
        if self.cfg.mode != "tier1":
            self.model, self.tokenizer = modeling.load_for_inference(
                structured_dir, recipe.evaluate.threads or 1)
            self.prior = self.label_logprobs(routing.CONTENT_FREE, 16)

    def label_logprobs(self, text: str, clip_chars: int) -> dict[str, float]:
        """Tier 2's route log-probabilities of a request (modeling.label_logprobs)."""
        return modeling.label_logprobs(self.model, self.tokenizer,
                                       routing.fewshot_messages(text, clip_chars), ROUTES)

    async def tier2(self, text: str, clip_chars: int) -> dict[str, float]:
        """Route probabilities with the content-free prior removed (as Expert.classify)."""
        return routing.fewshot_probabilities(self.label_logprobs(text, clip_chars), self.prior)

    def __call__(self, text: str) -> str:
        """The route the served app would take for a request to model `mortgagellm`."""
        return self.loop.run_until_complete(routing.decide(
            text, routing.AUTO_MODEL, self.cfg, self.tier1, self.tier2)).route


def router_config(recipe: Recipe) -> dict[str, Any]:
    """The routing settings the routed variant depends on (for the fingerprint; tier 1 itself
    is an input, the corpus stage's 'tier1' output)."""
    r = recipe.serve.router
    return {"mode": r.mode, "threshold": r.threshold, "clip_chars": r.clip_chars,
            "fallback_route": r.fallback_route, "abstain_below": r.abstain_below}


def routed_variant(recipe: Recipe, sets: EvalSets, generated: dict[str, dict],
                   models: dict[str, dict], scorer: Scorer) -> dict[str, Any]:
    """The routed system: each probe answered by the expert the router picks for its prompt
    (that expert's greedy answer), plus the router's accuracy and latency on eval_routing."""
    router = RouterProbe(recipe, models["structured"]["uri"])
    routes, millis = [], []
    for record in sets.routing:
        t0 = time.perf_counter()
        routes.append(router(record["request"]))
        millis.append((time.perf_counter() - t0) * 1e3)
    chosen: dict[str, str] = {}  # prompt -> expert; a prompt in several probe sets routes once
    answers = {}
    for name, items in probes(sets, recipe.evaluate).items():
        for prompt, _, _ in items:
            if prompt not in chosen:
                chosen[prompt] = router(prompt)
        answers[name] = [generated[chosen[p]]["answers"][name][i]
                         for i, (p, _, _) in enumerate(items)]
    tasks = score_variant(sets, {"answers": answers}, scorer)
    tasks[ROUTING] = routing_metrics(sets.routing, routes, millis, scorer.resamples, scorer.seed)
    measured, router_info = tier1_report(recipe, router.tier1, sets, scorer)
    tasks |= measured
    experts = [models[e] for e in EXPERTS]
    version = hashlib.sha256(json.dumps([[e["sha256"] for e in experts], router_config(recipe)],
                                        sort_keys=True).encode()).hexdigest()
    return {"model": " + ".join(e["uri"] for e in experts), "version": version, "tasks": tasks,
            "router": router_info}


def tier1_report(recipe: Recipe, model: tier1.Classifier, sets: EvalSets, scorer: Scorer
                 ) -> tuple[dict[str, dict], dict[str, Any]]:
    """Tier 1 alone (no tier 2) on the generated eval_routing and, when the recipe names one,
    the hand-written routing set: ({task: metrics}, {kind, the fitted threshold and the one in
    use, what it was fitted on, confusion per task, and per task the share sent to tier 2 and
    the share of tier 1's mistakes among them at the threshold in use})."""
    r = recipe.serve.router
    in_use = routing.threshold_of(r, model) if r.mode == "hybrid" else None
    info: dict[str, Any] = {
        "kind": r.tier1, "threshold": model.threshold, "threshold_in_use": in_use,
        "threshold_fitted_on": r.threshold_set or f"{tier1.HELD_OUT:.0%} of routing_train",
        "confusion": {}, "to_tier2": {}, "mistakes_to_tier2": {}}
    tasks = {}
    for task, records in ((ROUTING_TIER1, sets.routing), (ROUTING_HAND, sets.routing_hand)):
        if not records:
            continue
        ps = tier1.probabilities(model, [x["request"] for x in records])
        tasks[task] = tier1_metrics(records, ps, scorer.resamples, scorer.seed)
        info["confusion"][task] = confusion(records, ps)
        if in_use is not None:
            sent = [max(p, 1 - p) < in_use for p in ps]
            wrong = [(p >= 0.5) != (x["route"] == "structured") for p, x in zip(ps, records)]
            info["to_tier2"][task] = sum(sent) / len(records)
            info["mistakes_to_tier2"][task] = (sum(s and w for s, w in zip(sent, wrong))
                                               / sum(wrong) if any(wrong) else None)
    return tasks, info
