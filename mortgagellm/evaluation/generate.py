"""A model's answers to the held-out sets, generated through Ray Data: one actor per copy of the
model (`Generator`, greedy modeling.chat_generate with prompts cut as the sft stage cuts them,
and document NLLs), each unique request answered once; and `measure_once`, so models with the
same content hash are generated for once.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from mortgagellm.config import Recipe
from mortgagellm.evaluation.sets import CHAT, NLL, EvalSets, probes, request_key, requests

log = logging.getLogger(__name__)


def measure_once(models: dict[str, dict], measure: Any) -> dict[str, Any]:
    """measure(path) for every model; models with the same content hash are measured once
    (a test's start model may be the instruct model itself)."""
    done: dict[str, Any] = {}
    for entry in models.values():
        if entry["sha256"] not in done:
            done[entry["sha256"]] = measure(entry["uri"])
    return {name: done[entry["sha256"]] for name, entry in models.items()}



class Generator:
    """Ray Data callable holding one model: greedy chat answers (modeling.chat_generate, prompts
    cut to fit as the sft stage cuts them) and document NLLs (modeling.document_nlls)."""

    def __init__(self, model_dir: str, max_seq_len: int, threads: int | None) -> None:
        import torch
        from transformers import AutoTokenizer

        from mortgagellm.modeling import set_threads
        from mortgagellm.training.export import load_model

        set_threads(threads)
        self.model = load_model(model_dir).eval()
        if torch.cuda.is_available():  # an actor given a GPU
            self.model = self.model.to("cuda", dtype=torch.bfloat16)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.max_seq_len = max_seq_len

    def __call__(self, batch: dict) -> dict:
        from mortgagellm.modeling import chat_generate, document_nlls
        from mortgagellm.training.chat import fit_prompt

        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        out = {"key": [r["key"] for r in rows], "text": [""] * len(rows),
               "stopped": [False] * len(rows), "nll": [0.0] * len(rows), "tokens": [0] * len(rows)}
        for i, row in enumerate(rows):
            if row["kind"] == NLL:
                out["nll"][i], out["tokens"][i] = document_nlls(self.model, self.tokenizer,
                                                                [row["prompt"]])[0]
        for budget in sorted({int(r["budget"]) for r in rows if r["kind"] == CHAT}):
            chosen = [(i, fit_prompt(self.tokenizer, r["prompt"], r["document"],
                                     self.max_seq_len - budget))
                      for i, r in enumerate(rows) if r["kind"] == CHAT and r["budget"] == budget]
            fitted = [(i, f[0]) for i, f in chosen if f]  # a prompt that cannot fit stays ""
            answers = chat_generate(self.model, self.tokenizer, [p for _, p in fitted], budget,
                                    batch_size=max(1, len(fitted)))
            for (i, _), (text, stopped) in zip(fitted, answers):
                out["text"][i], out["stopped"][i] = text, stopped
        return out


def generate(recipe: Recipe, model_dir: str, sets: EvalSets) -> dict[str, Any]:
    """A model's answers to every probe set ({set: [(text, stopped)]}) and its document NLLs,
    through Ray Data (Ray must be initialised)."""
    import ray

    cfg = recipe.evaluate
    rows = requests(sets, cfg)
    t0 = time.monotonic()
    ds = ray.data.from_items(rows).map_batches(
        Generator, fn_constructor_kwargs={"model_dir": str(model_dir),
                                          "max_seq_len": cfg.max_seq_len, "threads": cfg.threads},
        batch_size=cfg.batch_size, compute=ray.data.ActorPoolStrategy(size=cfg.concurrency),
        num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus)
    done = {row["key"]: row for row in ds.take_all()}
    log.info("evaluate: %d requests to %s in %.1f s", len(rows), model_dir, time.monotonic() - t0)
    answers = {name: [(done[k]["text"], bool(done[k]["stopped"]))
                      for k in (request_key(CHAT, p, b) for p, _, b in items)]
               for name, items in probes(sets, cfg).items()}
    nlls = [(float(done[k]["nll"]), int(done[k]["tokens"]))
            for k in (request_key(NLL, t, 0) for t in sets.texts)]
    return {"answers": answers, "nlls": nlls}
