"""`mortgagellm serve --demo`: held-out requests through the running app, scored.

Run: mortgagellm serve configs/cpu-demo.yaml --demo

It sends DEMO_PER_EXPERT held-out decision requests (the structured expert's) and as many
held-out QA requests (the conversational expert's), drawn at random with the run's seed from the
sets the corpus stage wrote and no stage trained on, through the router as any client would. It
prints one example per expert, then how many were routed and answered right: what a newcomer can
trust, counted rather than hand-picked.
"""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mortgagellm.config import Recipe

DEMO_PER_EXPERT = 20
DEMO_MAX_TOKENS = 80
"""A grounded answer's source line and first sentence, which states the figure."""
DEMO_TASKS = (("decision", "answer", "structured", 48),
              ("qa", "chosen", "conversational", DEMO_MAX_TOKENS))
"""(held-out task, its reference field, the route it belongs to, answer tokens asked for): a
label needs few, so the long loan files still fit the prompt limit."""
DEMO_REQUESTS = (
    ("Classify the underwriting decision of this loan file as approve, refer or deny.\n\n"
     "Borrower: Alex Kim. Credit score 742. DTI 31%. LTV 78%. Employment: 6 years, salaried.",
     None),
    ("Can you explain escrow in plain English?", None),
)
"""Sample requests for a served app without held-out sets (a registry-only deployment)."""


def demo_requests(recipe: Recipe,
                  fits: Callable[[str, int], bool] = lambda text, tokens: True) -> list[dict]:
    """DEMO_PER_EXPERT records of each DEMO_TASKS set, sampled with the run's seed from those
    whose prompt `fits` the served limits with its answer tokens: {prompt, expected, task,
    route, truth, max_tokens}. Raises SystemExit naming the missing file."""
    from mortgagellm.datasets.tasks import read_task_set
    from mortgagellm.manifest import stage_dir

    rng, picked = random.Random(recipe.run.seed), []
    for task, field, route, tokens in DEMO_TASKS:
        path = stage_dir(recipe, "corpus") / "tasks" / f"eval_{task}.parquet"
        if not path.is_file():
            raise SystemExit(f"--demo needs the corpus stage's held-out set {path}: run "
                             "`mortgagellm run` with this recipe first")
        records = [r for r in read_task_set(path) if fits(r["prompt"], tokens)]
        picked += [{"prompt": r["prompt"], "expected": r[field], "task": task, "route": route,
                    "truth": r["truth"], "max_tokens": tokens}
                   for r in rng.sample(records, min(DEMO_PER_EXPERT, len(records)))]
    return picked


def fits_limits(recipe: Recipe) -> Callable[[str, int], bool]:
    """Whether a request's chat prompt plus its answer tokens is within
    serve.limits.max_prompt_tokens, counted with the models' tokenizer as the experts count it
    (longer held-out prompts would be refused with a 400, which is the door working, not a
    demo)."""
    from transformers import AutoTokenizer

    from mortgagellm.manifest import stage_dir
    from mortgagellm.modeling import chat_ids

    tokenizer = AutoTokenizer.from_pretrained(stage_dir(recipe, "bootstrap") / "instruct")
    limit = recipe.serve.limits.max_prompt_tokens
    return lambda text, tokens: len(chat_ids(tokenizer, [{"role": "user", "content": text}])
                                    ) <= limit - tokens


def ask(url: str, key: str, text: str, max_tokens: int = DEMO_MAX_TOKENS) -> dict[str, Any]:
    """One routed chat request; the OpenAI response with our `mortgagellm` metadata, or the
    error body the app answered with ({"error": {...}})."""
    body = json.dumps({"model": "mortgagellm", "max_tokens": max_tokens,
                       "messages": [{"role": "user", "content": text}]}).encode()
    request = urllib.request.Request(f"{url}/v1/chat/completions", body, {
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.load(response)
    except urllib.error.HTTPError as err:
        return {"status": err.code, **json.loads(err.read() or b"{}")}


def demo_line(url: str, key: str, text: str, expected: str | None = None,
              max_tokens: int = DEMO_MAX_TOKENS) -> str:
    """Send one routed request and describe the answer (and the expected one) in lines."""
    return describe(text, ask(url, key, text, max_tokens), expected)


def describe(text: str, answer: dict[str, Any], expected: str | None = None,
             verdict: str = "") -> str:
    """Route, confidence, expert version, the request's first line, the answer, the expected."""
    if "error" in answer:
        return (f"[refused {answer.get('status', '?')}] {text.splitlines()[0][:60]!r}\n"
                f"  -> {answer['error'].get('message', answer['error'])!r}")
    meta = answer["mortgagellm"]
    return (f"[{meta['route']} {meta['confidence']:.2f} by {meta['decided_by']}, "
            f"expert {meta['expert_version'][:12]}] {text.splitlines()[0][:60]!r}\n"
            f"  -> {answer['choices'][0]['message']['content']!r}{verdict}"
            + (f"\n  expected: {expected!r}" if expected is not None else ""))


def right(record: dict, answer: dict[str, Any]) -> bool:
    """The expert's answer scores 1 on the record's truth (tasks.score: the label, the figure)."""
    from mortgagellm.datasets.tasks import parse_answer, score

    if "error" in answer:
        return False
    text = answer["choices"][0]["message"]["content"]
    return score(record["task"], parse_answer(record["task"], text), record["truth"]) == 1.0


def tally(records: list[dict], answers: list[dict[str, Any]]) -> list[str]:
    """Per expert: one example, then routed-right and answered-right counts."""
    lines = []
    for _, _, route, _ in DEMO_TASKS:
        mine = [(r, a) for r, a in zip(records, answers) if r["route"] == route]
        if not mine:
            continue
        routed = sum(a.get("mortgagellm", {}).get("route") == route for _, a in mine)
        good = sum(right(r, a) for r, a in mine)
        refused = sum("error" in a for _, a in mine)
        record, answer = mine[0]
        lines += [describe(record["prompt"], answer, record["expected"],
                           "  (right)" if right(record, answer) else "  (wrong)"),
                  f"{route} expert: {good}/{len(mine)} held-out {record['task']} requests "
                  f"answered right; {routed}/{len(mine)} routed to it"
                  + (f"; {refused} refused (the error is in the audit log)" if refused else ""),
                  ""]
    return lines


def run(url: str, key: str, recipe: Recipe, concurrency: int = 4) -> list[str]:
    """Send the demo requests (a few at a time, so the experts batch them) and tally them."""
    records = demo_requests(recipe, fits_limits(recipe))
    with ThreadPoolExecutor(concurrency) as pool:
        cap = recipe.serve.limits.max_tokens  # never over the door's
        answers = list(pool.map(lambda r: ask(url, key, r["prompt"], min(r["max_tokens"], cap)),
                                records))
    return tally(records, answers)
