"""The held-out sets every variant is measured on, the same for all: seeded samples of the corpus
stage's eval sets, the format instructions, the held-out domain documents and the fairness
pairs; and the unique generation requests a model answers for them.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mortgagellm.config import Recipe
from mortgagellm.datasets.fairness import swap_record
from mortgagellm.datasets.instructions import Instruction, instructions
from mortgagellm.datasets.splits import heldout_domain_texts
from mortgagellm.datasets.tasks import read_task_set
from mortgagellm.datasets.tasks.format import ROUTES
from mortgagellm.modeling import FIDELITY_TOKENS

LABEL_TOKENS = 24
"""Generation budget of a held-out label answer: the longest label, regulatory_explanation, is
16 tokens of the tiny preset's 640-token BPE, plus <|eot_id|>."""
DECISION, DOC_KIND, INTENT, SUMMARY, QA = "decision", "doc_kind", "intent", "summary", "qa"
CLASSIFICATION = (DECISION, DOC_KIND, INTENT)
INSTRUCTION, DOMAIN, ROUTING, FAIRNESS = "instruction", "domain", "routing", "fairness"
CHAT, NLL = "chat", "nll"
ROUTING_TIER1, ROUTING_HAND = "routing_tier1", "routing_hand"
"""Tier 1 alone on the generated eval_routing and on the hand-written routing test set."""
FAIR_ORIGINAL, FAIR_SWAPPED = "fairness:original", "fairness:swapped"



def subset(records: list[dict], n: int, seed: int) -> list[dict]:
    """A seeded sample of n records in their original order (eval sets are built in document
    order, so their head is not balanced over labels)."""
    picked = random.Random(f"heldout:{seed}").sample(range(len(records)), min(n, len(records)))
    return [records[i] for i in sorted(picked)]



@dataclass
class EvalSets:
    """Everything a model is measured on, the same for every variant."""

    records: dict[str, list[dict]]
    """decision, doc_kind, intent, summary (SFT records) and qa (eval_qa pairs)."""
    instructions: list[Instruction]
    texts: list[str]
    fairness: list[tuple[dict, dict]]
    """(decision record, the same with protected attributes swapped)."""
    routing: list[dict]
    fewshot: dict[str, str] = field(default_factory=dict)
    """Task -> the few-shot prefix its questions are also asked after (evaluate.fewshot)."""
    examples: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)
    """Task -> the solved examples (prompt, document, answer) its prefix shows, before any cut
    (evaluation/fewshot.py fits the prefix to a model from them)."""
    routing_hand: list[dict] = field(default_factory=list)
    """Hand-written {request, route} requests (evaluate.routing_test_set), empty without one."""


FEWSHOT_TASKS = (*CLASSIFICATION, QA)
"""Tasks also asked few-shot: those with a short reference answer."""


def fewshot_task(task: str) -> str:
    """The probe set and report task of ``task`` asked few-shot."""
    return f"fewshot_{task}"


def fewshot_prefix(examples: list[tuple[str, str, str]], chars: int) -> str:
    """Solved examples (prompt, its document, answer) before a question, each document cut to
    ``chars`` characters."""
    parts = ["Here are solved examples of this task."]
    for i, (prompt, document, answer) in enumerate(examples, 1):
        cut = document if len(document) <= chars else document[:chars].rstrip() + " …"
        parts.append(f"Example {i}:\n{prompt.replace(document, cut, 1)}\nAnswer: {answer}")
    return "\n\n".join(parts + ["Now this one:\n"])


def fewshot_examples(train: list[dict], task: str, k: int) -> list[tuple[str, str, str]]:
    """k training examples of ``task``: the first of each label in turn (classification), the
    first k otherwise; deterministic in the training set's order."""
    if task == QA:
        return [(r["prompt"], r["document"], r["chosen"]) for r in train[:k]]
    records, labels = [r for r in train if r["task"] == task], []
    for r in records:
        if r["truth"]["label"] not in labels:
            labels.append(r["truth"]["label"])
    picked = [next(r for r in records if r["truth"]["label"] == label) for label in labels[:k]]
    return [(r["prompt"], r["document"], r["answer"]) for r in picked]


def read_routing_set(path: str | Path) -> list[dict]:
    """{request, route} records of a hand-written routing set: JSONL, one {text (or request),
    route} object per line. A line that is not one fails naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"evaluate.routing_test_set: no file {path}")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not a JSON object ({e.msg})") from None
        text = row.get("request", row.get("text")) if isinstance(row, dict) else None
        if not isinstance(text, str) or not text.strip() or row.get("route") not in ROUTES:
            raise ValueError(f"{path}:{number}: a routing request needs a non-empty 'text' (or "
                             f"'request') and a 'route' of {' | '.join(ROUTES)}")
        records.append({"request": text, "route": row["route"]})
    if not records:
        raise ValueError(f"{path}: no routing requests in it")
    return records


def eval_sets(recipe: Recipe, tasks: Path) -> EvalSets:
    """Seeded samples of the eval sets in `tasks`, the format instructions and the held-out
    domain documents; fairness pairs whose swap changed nothing are left out."""
    cfg, seed = recipe.evaluate, recipe.run.seed

    def read(name: str, n: int) -> list[dict]:
        return subset(read_task_set(tasks / f"eval_{name}.parquet"), n, seed)

    records = {task: read(task, cfg.per_task) for task in (*CLASSIFICATION, SUMMARY)}
    records[QA] = read(QA, cfg.qa_pairs)
    pairs = [(r, swap_record(r)) for r in read(DECISION, cfg.fairness_files)]
    examples = {}
    if cfg.fewshot:
        train = {"sft": read_task_set(tasks / "sft_train.parquet"),
                 QA: read_task_set(tasks / "dpo_train.parquet")}
        examples = {task: fewshot_examples(train[QA if task == QA else "sft"], task, cfg.fewshot)
                    for task in FEWSHOT_TASKS}
    fewshot = {task: fewshot_prefix(shown, cfg.fewshot_chars) for task, shown in examples.items()}
    return EvalSets(records, list(instructions("eval", seed, cfg.eval_instructions)),
                    heldout_domain_texts(seed, cfg.domain_docs),
                    [(a, b) for a, b in pairs if a["prompt"] != b["prompt"]],
                    read("routing", cfg.routing_requests), fewshot=fewshot, examples=examples,
                    routing_hand=read_routing_set(cfg.routing_test_set)
                    if cfg.routing_test_set else [])


def answer_budgets(cfg: Any) -> dict[str, int]:
    """Generation budget of an answer to each task's questions (evaluate's section `cfg`)."""
    return {DECISION: LABEL_TOKENS, DOC_KIND: LABEL_TOKENS, INTENT: LABEL_TOKENS,
            SUMMARY: cfg.summary_tokens, QA: cfg.answer_tokens}


def probes(sets: EvalSets, cfg: Any) -> dict[str, list[tuple[str, str, int]]]:
    """(prompt, document inside it, answer budget) of every answer, by probe set."""
    budget = answer_budgets(cfg)
    out = {task: [(r["prompt"], r["document"], budget[task]) for r in records]
           for task, records in sets.records.items()}
    for task, prefix in sets.fewshot.items():
        out[fewshot_task(task)] = [(prefix + p, d, b) for p, d, b in out[task]]
    out[INSTRUCTION] = [(i.prompt, "", FIDELITY_TOKENS) for i in sets.instructions]
    out[FAIR_ORIGINAL] = [(a["prompt"], a["document"], LABEL_TOKENS) for a, _ in sets.fairness]
    out[FAIR_SWAPPED] = [(b["prompt"], b["document"], LABEL_TOKENS) for _, b in sets.fairness]
    return out


def request_key(kind: str, prompt: str, budget: int) -> str:
    """One generation request's identity: the same prompt and budget is answered once."""
    return hashlib.sha256(f"{kind}\0{budget}\0{prompt}".encode()).hexdigest()[:20]


def requests(sets: EvalSets, cfg: Any) -> list[dict]:
    """The unique Ray Data rows of a model's work, sorted so batches share kind and budget."""
    rows = {request_key(CHAT, p, b): {"kind": CHAT, "prompt": p, "document": d, "budget": b}
            for items in probes(sets, cfg).values() for p, d, b in items}
    rows |= {request_key(NLL, t, 0): {"kind": NLL, "prompt": t, "document": "", "budget": 0}
             for t in sets.texts}
    return sorted(({"key": k, **v} for k, v in rows.items()),
                  key=lambda r: (r["kind"], r["budget"], len(r["prompt"])))
