"""Few-shot prompts that fit the model, and a count of the prompts that cannot fit at all.

`sets.fewshot_prefix` cuts each solved example's document to evaluate.fewshot_chars characters.
For the small preset (512 positions, a 1,024-token byte-level BPE: about 1.7 characters a token
on these documents) the 2-example prefix alone was 408-564 tokens, so in the cpu-replica run of
2026-12-06 no few-shot QA or doc_kind prompt fitted (all 400 and 270 were answered with
nothing) and 110 of 270 decision prompts did not: the "few-shot baseline" was never asked.

`fit_prefixes` gives each task's prefix at most `share` of the prompt's room (max_seq_len less
the task's answer budget), so the question keeps the rest: the examples' documents are cut
further (the most characters, by bisection, up to fewshot_chars that fit), and when even empty
documents do not fit, fewer examples are shown. What each task kept goes in the manifest.
`without_room` counts, per probe set, the prompts that still cannot fit once their own document
is cut (training/chat.fit_prompt): those are answered with nothing and scored as wrong.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from mortgagellm.evaluation.sets import EvalSets, answer_budgets, fewshot_prefix, probes
from mortgagellm.training.chat import encode, fit_prompt, render

SHARE = 0.5
"""Of a prompt's room, what a few-shot prefix may take; the question keeps the rest."""


def prefix_tokens(tokenizer: Any, prefix: str) -> int:
    """Tokens a prefix takes at the start of a templated user turn (template included)."""
    return len(encode(tokenizer, render(tokenizer, prefix)["prompt"]))


def fit_prefix(examples: list[tuple[str, str, str]], tokenizer: Any, max_tokens: int,
               chars: int) -> tuple[str, dict[str, int]]:
    """The prefix of the most examples (in order), each document cut to the most characters
    (<= chars) with which it takes at most max_tokens; ("", ...) when not even one example
    with an empty document fits. Returns (prefix, {examples, doc_chars, tokens})."""
    for k in range(len(examples), 0, -1):
        shown = examples[:k]
        if prefix_tokens(tokenizer, fewshot_prefix(shown, 0)) > max_tokens:
            continue
        lo, hi = 0, chars  # the most characters that fit: lo fits, above hi does not
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if prefix_tokens(tokenizer, fewshot_prefix(shown, mid)) <= max_tokens:
                lo = mid
            else:
                hi = mid - 1
        prefix = fewshot_prefix(shown, lo)
        return prefix, {"examples": k, "doc_chars": lo,
                        "tokens": prefix_tokens(tokenizer, prefix)}
    return "", {"examples": 0, "doc_chars": 0, "tokens": 0}


def fit_prefixes(sets: EvalSets, cfg: Any, tokenizer: Any) -> tuple[EvalSets, dict[str, dict]]:
    """`sets` with each few-shot prefix fitted from its solved examples (fit_prefix, SHARE of
    the room), and what each task kept: {task: {examples, doc_chars, tokens, max_tokens,
    asked_examples}}. A task whose prefix cannot fit is left out of the few-shot sets, and its
    entry says so."""
    prefixes, kept = {}, {}
    budgets = answer_budgets(cfg)
    for task, examples in sets.examples.items():
        max_tokens = int(SHARE * (cfg.max_seq_len - budgets[task]))
        prefix, kept[task] = fit_prefix(examples, tokenizer, max_tokens, cfg.fewshot_chars)
        kept[task] |= {"max_tokens": max_tokens, "asked_examples": cfg.fewshot}
        if prefix:
            prefixes[task] = prefix
    return replace(sets, fewshot=prefixes), kept


def without_room(sets: EvalSets, cfg: Any, tokenizer: Any) -> dict[str, dict[str, int]]:
    """{probe set: {"prompts", "without_room"}} for every set with a prompt that cannot fit
    in max_seq_len less its answer budget even with its document cut: answered with nothing."""
    out = {}
    for name, items in probes(sets, cfg).items():
        missing = sum(fit_prompt(tokenizer, p, d, cfg.max_seq_len - b) is None
                      for p, d, b in items)
        if missing:
            out[name] = {"prompts": len(items), "without_room": missing}
    return out
