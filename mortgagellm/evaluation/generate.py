"""The models' answers to the held-out sets, generated through one Ray Data pipeline for all of
them (`Generator` actors: greedy modeling.chat_generate with prompts cut as the sft stage cuts
them, and document NLLs), each unique request answered once per model and models with the same
content hash once; and `measure_once`, the same rule for the stages' own measurements.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from mortgagellm.config import Recipe, RunConfig
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
    """Ray Data callable answering for whichever model each row names: greedy chat answers
    (modeling.chat_generate, prompts cut to fit as the sft stage cuts them) and document NLLs
    (modeling.document_nlls). It holds one model at a time and loads the next when rows for it
    arrive (the rows come in model order, so each actor loads each model about once).

    Rows name a model by path or URI; `hashes` ({uri: sha256}) and `run` (RunConfig.for_nodes)
    let the actor fetch a URI into its own node's cache (storage.node_copy)."""

    def __init__(self, max_seq_len: int, threads: int | None, hashes: dict[str, str],
                 run: dict[str, Any]) -> None:
        from mortgagellm.modeling import set_threads

        set_threads(threads)
        self.max_seq_len = max_seq_len
        self.hashes, self.run = hashes, RunConfig(**run)
        self.path: str | None = None

    def load(self, model: str) -> None:
        import torch
        from transformers import AutoTokenizer

        from mortgagellm.cluster.storage import node_copy
        from mortgagellm.training.export import load_model

        self.model = None  # the last model's memory goes before the next one's comes
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        model_dir = node_copy(model, self.hashes[model], self.run)
        self.model = load_model(model_dir).eval()
        if torch.cuda.is_available():  # an actor given a GPU
            self.model = self.model.to("cuda", dtype=torch.bfloat16)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.path = model

    def __call__(self, batch: dict) -> dict:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        out = {"model": [r["model"] for r in rows], "key": [r["key"] for r in rows],
               "text": [""] * len(rows), "stopped": [False] * len(rows),
               "nll": [0.0] * len(rows), "tokens": [0] * len(rows)}
        for model_dir in dict.fromkeys(r["model"] for r in rows):
            if model_dir != self.path:
                self.load(model_dir)
            self.answer([(i, r) for i, r in enumerate(rows) if r["model"] == model_dir], out)
        return out

    def answer(self, rows: list[tuple[int, dict]], out: dict) -> None:
        """The loaded model's answers and NLLs for (position, row) pairs, written into out."""
        from mortgagellm.modeling import chat_generate, document_nlls
        from mortgagellm.training.chat import fit_prompt

        for i, row in rows:
            if row["kind"] == NLL:
                out["nll"][i], out["tokens"][i] = document_nlls(self.model, self.tokenizer,
                                                                [row["prompt"]])[0]
        for budget in sorted({int(r["budget"]) for _, r in rows if r["kind"] == CHAT}):
            chosen = [(i, fit_prompt(self.tokenizer, r["prompt"], r["document"],
                                     self.max_seq_len - budget))
                      for i, r in rows if r["kind"] == CHAT and r["budget"] == budget]
            fitted = [(i, f[0]) for i, f in chosen if f]  # a prompt that cannot fit stays ""
            answers = chat_generate(self.model, self.tokenizer, [p for _, p in fitted], budget,
                                    batch_size=max(1, len(fitted)))
            for (i, _), (text, stopped) in zip(fitted, answers):
                out["text"][i], out["stopped"][i] = text, stopped


def generate_models(recipe: Recipe, models: dict[str, dict], sets: EvalSets
                    ) -> dict[str, dict[str, Any]]:
    """Every model's answers to every probe set and its document NLLs ({name: {"answers":
    {set: [(text, stopped)]}, "nlls": [(nll, tokens)]}}), through one Ray Data pipeline (Ray
    must be initialised): its actors start once for all the models, not once per model (each
    start cost seconds of a demo's minutes). Models with the same content hash are generated
    for once. Entries name models as the actors' nodes can read them (manifest.portable)."""
    import ray

    cfg = recipe.evaluate
    unique = {entry["sha256"]: str(entry["uri"]) for entry in models.values()}
    rows = requests(sets, cfg)
    t0 = time.monotonic()
    ds = ray.data.from_items([{"model": path, **row} for path in unique.values() for row in rows]
                             ).map_batches(
        Generator, fn_constructor_kwargs={
            "max_seq_len": cfg.max_seq_len, "threads": cfg.threads, "run": recipe.run.for_nodes(),
            "hashes": {uri: sha256 for sha256, uri in unique.items()}},
        batch_size=cfg.batch_size, compute=ray.data.ActorPoolStrategy(size=cfg.concurrency),
        num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus)
    done: dict[str, dict[str, dict]] = {path: {} for path in unique.values()}
    for row in ds.take_all():
        done[row["model"]][row["key"]] = row
    log.info("evaluate: %d requests to each of %d models (%s) in %.1f s", len(rows), len(unique),
             ", ".join(unique.values()), time.monotonic() - t0)
    results = {path: collect(sets, cfg, answered) for path, answered in done.items()}
    return {name: results[unique[entry["sha256"]]] for name, entry in models.items()}


def generate(recipe: Recipe, model_dir: str, sets: EvalSets) -> dict[str, Any]:
    """One model's answers to every probe set and its document NLLs (generate_models)."""
    return generate_models(recipe, {"model": {"uri": model_dir, "sha256": str(model_dir)}},
                           sets)["model"]


def collect(sets: EvalSets, cfg: Any, done: dict[str, dict]) -> dict[str, Any]:
    """A model's answered rows (by request key) as {"answers": {set: [...]}, "nlls": [...]}."""
    answers = {name: [(done[k]["text"], bool(done[k]["stopped"]))
                      for k in (request_key(CHAT, p, b) for p, _, b in items)]
               for name, items in probes(sets, cfg).items()}
    nlls = [(float(done[k]["nll"]), int(done[k]["tokens"]))
            for k in (request_key(NLL, t, 0) for t in sets.texts)]
    return {"answers": answers, "nlls": nlls}
