"""On-policy preference pairs for the dpo stage: the start model answers training questions
several times (sampled, through Ray Data), a programmatic reward scores every answer against the
generator's ground truth, and the best and worst answers become a new pair — a small, honest
version of FinDAP's reward-model distillation, with the reward model replaced by checks that
style cannot game.

Run: mortgagellm dpo configs/cpu-demo.yaml --dpo.onpolicy.enabled true

Reward (`reward`, pure): 1.0 if the answer is correct (tasks/format.score: the figure to its
printed precision, the decision, or the stated fact), plus 0.5 x the share of the reference
answer's figures it also states (the required facts: where the number comes from), minus 1.0
if it cites a statute the document does not contain. A pair is kept only when its best answer
is correct and beats the worst by min_reward_gap, so a wrong answer is never 'chosen'.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any

from mortgagellm.cluster.storage import node_copy
from mortgagellm.config import RunConfig
from mortgagellm.datasets.tasks import invented_citations, parse_answer, score
from mortgagellm.datasets.tasks.format import figures

# ---- the reward and the pair (pure) --------------------------------------------------------------

def required_facts(reference: str) -> list[str]:
    """The figures the reference answer prints, as printed ("$1,842.10", "36.8%")."""
    return [m.group(0).strip() for _, _, _, m in figures(reference)]


def reward(answer: str, truth: dict, document: str, reference: str) -> dict[str, float]:
    """Score one answer: correctness + 0.5 x required facts present - 1.0 x invented citation."""
    correct = score("qa", parse_answer("qa", answer), truth)
    facts = required_facts(reference)
    present = sum(f in answer for f in facts) / len(facts) if facts else 1.0
    invented = float(bool(invented_citations(answer, document)))
    return {"reward": round(correct + 0.5 * present - invented, 4), "correct": correct,
            "facts": round(present, 4), "invented": invented}


def best_vs_worst(question: dict, samples: list[str], rewards: list[dict], gap: float
                  ) -> tuple[dict | None, str]:
    """(pair, why): the highest-reward sample as chosen, the lowest as rejected; no pair when
    no sample is correct, or best and worst are closer than `gap` (ties, same text)."""
    ranked = sorted(zip(rewards, samples), key=lambda rs: rs[0]["reward"])
    (low, worst), (high, best) = ranked[0], ranked[-1]
    if high["correct"] < 1.0:
        return None, "no_correct_sample"
    if high["reward"] - low["reward"] < gap or best.strip() == worst.strip():
        return None, "tie"
    return {**question, "chosen": best, "rejected": worst, "rejection_kind": "onpolicy",
            "chosen_reward": high["reward"], "rejected_reward": low["reward"]}, "kept"


def score_batch(batch: dict) -> dict:
    """Ray Data transform: rewards (JSON) of every question's sampled answers."""
    out = []
    for truth, document, reference, samples in zip(batch["truth_json"], batch["document"],
                                                   batch["chosen"], batch["samples_json"]):
        out.append(json.dumps([reward(s, json.loads(truth), document, reference)
                               for s in json.loads(samples)]))
    return {**batch, "rewards_json": out}


# ---- sampling (one model per Ray Data actor) -----------------------------------------------------

class Sampler:
    """Ray Data callable: `samples` sampled answers per question from the model `model`
    ({uri, sha256}, a copy on the actor's node: storage.node_copy), seeded per question id, so
    the same question gets the same answers on any worker."""

    def __init__(self, model: dict[str, str], run: dict[str, Any], samples: int,
                 temperature: float, top_p: float, max_new_tokens: int, seed: int,
                 threads: int | None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        model_dir = node_copy(model["uri"], model["sha256"], RunConfig(**run))
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.options = {"do_sample": True, "temperature": temperature, "top_p": top_p,
                        "num_return_sequences": samples, "max_new_tokens": max_new_tokens}
        self.seed = seed

    def __call__(self, batch: dict) -> dict:
        samples = [json.dumps(self.answer(q, p)) for q, p in zip(batch["id"], batch["fitted"])]
        return {**batch, "samples_json": samples}

    def answer(self, question_id: str, prompt: str) -> list[str]:
        """The sampled answers to one prompt, each cut at the end of its turn."""
        import torch

        from mortgagellm.modeling import stop_token_ids
        from mortgagellm.training.chat import encode, render

        stops = stop_token_ids(self.tokenizer)
        ids = torch.tensor([encode(self.tokenizer, render(self.tokenizer, prompt)["prompt"])])
        torch.manual_seed(int(hashlib.sha256(f"{self.seed}:{question_id}".encode())
                              .hexdigest()[:8], 16))
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), eos_token_id=stops,
                                      pad_token_id=self.tokenizer.pad_token_id, **self.options)
        answers = []
        for row in out[:, ids.shape[1]:].tolist():
            cut = next((i for i, t in enumerate(row) if t in stops), len(row))
            answers.append(self.tokenizer.decode(row[:cut], skip_special_tokens=True))
        return answers


def onpolicy_pairs(questions: list[dict], model: dict[str, str], run: RunConfig, cfg: Any,
                   max_len: int, seed: int, threads: int | None) -> tuple[list[dict], dict]:
    """Sample, score and pair `cfg.questions` training questions through Ray Data (Ray must be
    initialised) with the model `model` names as manifest.portable hands it over; returns the
    new pairs and counts for the manifest."""
    import ray
    from transformers import AutoTokenizer

    from mortgagellm.training.chat import fit_prompt

    tokenizer = AutoTokenizer.from_pretrained(node_copy(model["uri"], model["sha256"], run))
    items = []
    for q in questions[:cfg.questions]:
        fitted = fit_prompt(tokenizer, q["prompt"], q["document"], max_len - cfg.max_new_tokens)
        if fitted:
            items.append({"id": q["id"], "fitted": fitted[0], "prompt": q["prompt"],
                          "document": q["document"], "chosen": q["chosen"],
                          "truth_json": json.dumps(q["truth"])})
    sampler = {"model": model, "run": run.for_nodes(), "samples": cfg.samples,
               "temperature": cfg.temperature, "top_p": cfg.top_p,
               "max_new_tokens": cfg.max_new_tokens, "seed": seed, "threads": threads}
    # One actor holds the model; answers are seeded per question, so more actors (or a
    # retried task) would give the same samples.
    ds = ray.data.from_items(items).map_batches(
        Sampler, batch_size=4, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1,
        fn_constructor_kwargs=sampler).map_batches(score_batch, batch_size=16)
    pairs, why, rewards = [], Counter(), []
    for row in ds.iter_rows():
        question = {k: row[k] for k in ("id", "prompt", "document")} | {
            "truth": json.loads(row["truth_json"])}
        scored = json.loads(row["rewards_json"])
        rewards += scored
        pair, reason = best_vs_worst(question, json.loads(row["samples_json"]), scored,
                                     cfg.min_reward_gap)
        why[reason] += 1
        pairs += [pair] if pair else []
    counts = {"questions": len(items), "skipped_too_long": min(cfg.questions, len(questions))
              - len(items), "pairs": dict(sorted(why.items())),
              "sample_correct_rate": round(sum(r["correct"] for r in rewards)
                                           / max(1, len(rewards)), 4),
              "sample_mean_reward": round(sum(r["reward"] for r in rewards)
                                          / max(1, len(rewards)), 4)}
    return sorted(pairs, key=lambda p: p["id"]), counts
