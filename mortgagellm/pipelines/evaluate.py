"""evaluate stage: every model the recipe made, measured on the same held-out sets, each number
with a 95 % interval and its n.

Run: mortgagellm evaluate configs/cpu-demo.yaml
     mortgagellm evaluate configs/cpu-demo.yaml --model runs/cpu-demo/sft/model   (one model,
     a directory or a registry version; its results go into its registry entry)

Variants, each evaluated when its stage has written it: instruct (bootstrap), dapt (pretrain),
merged (residual), structured (sft), conversational (dpo), and routed: every request routed by
the serving router (tier 1, plus the structured expert's few-shot tier in the recipe's fewshot
or hybrid mode) and answered by the expert it chose. Greedy decoding makes the routed answer the
chosen expert's own answer to the same prompt, so no answer is generated twice; models with the
same content hash are also generated for once.

Answers are generated through Ray Data (one actor per copy of a model, `Generator`, calling
modeling.chat_generate), scored on the driver with the pure functions of mortgagellm/metrics.py,
datasets/tasks_format.py (parse_answer / score), modeling.fidelity_of and, when the recipe names
one, an LLM judge (mortgagellm/judge.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mortgagellm import manifest
from mortgagellm.config import Recipe
from mortgagellm.datasets.fairness import swap_record
from mortgagellm.datasets.instructions import Instruction, instructions
from mortgagellm.datasets.splits import heldout_domain_texts
from mortgagellm.datasets.tasks import parse_answer, read_task_set, score
from mortgagellm.datasets.tasks.format import NUMERIC_MODES
from mortgagellm.metrics import (macro_f1_metric, mean, metric, percentile_metric, proportion,
                                 rouge_l, token_f1, wilson)
from mortgagellm.modeling import FIDELITY_TOKENS
from mortgagellm.pipelines.recipe import require_manifest, stage_dir
from mortgagellm.pipelines.sft import (LABEL_TOKENS, measure_once, set_threads, subset,
                                       task_dir, task_source)

log = logging.getLogger(__name__)

VARIANTS = {"instruct": ("bootstrap", "instruct"), "dapt": ("pretrain", "model"),
            "merged": ("residual", "model"), "structured": ("sft", "model"),
            "conversational": ("dpo", "model")}
"""Variant -> (stage, output name) of the model it evaluates."""
ROUTED = "routed"
EXPERTS = ("structured", "conversational")

DECISION, DOC_KIND, INTENT, SUMMARY, QA = "decision", "doc_kind", "intent", "summary", "qa"
CLASSIFICATION = (DECISION, DOC_KIND, INTENT)
INSTRUCTION, DOMAIN, ROUTING, FAIRNESS = "instruction", "domain", "routing", "fairness"
ACCURACY, MACRO_F1, UNPARSEABLE = "accuracy", "macro_f1", "unparseable"
ROUGE_L, BERTSCORE_F1, FIELD_ACCURACY = "rouge_l", "bertscore_f1", "field_accuracy"
TOKEN_F1, NUMERIC = "token_f1", "numeric"
JUDGE, JUDGE_UNPARSEABLE = "judge", "judge_unparseable"
FIDELITY, PERPLEXITY = "fidelity", "perplexity"
P50_MS, P99_MS, FLIP_RATE = "p50_ms", "p99_ms", "flip_rate"
TASK_METRICS = {
    DECISION: (ACCURACY, MACRO_F1, UNPARSEABLE), DOC_KIND: (ACCURACY, MACRO_F1, UNPARSEABLE),
    INTENT: (ACCURACY, MACRO_F1, UNPARSEABLE), SUMMARY: (ROUGE_L, BERTSCORE_F1, FIELD_ACCURACY),
    QA: (TOKEN_F1, BERTSCORE_F1, NUMERIC), INSTRUCTION: (FIDELITY,), DOMAIN: (PERPLEXITY,),
    ROUTING: (ACCURACY, P50_MS, P99_MS), FAIRNESS: (FLIP_RATE,)}
"""Each task's metrics. With a judge, the JUDGED tasks also have JUDGE and JUDGE_UNPARSEABLE;
the routed variant has ROUTING and no DOMAIN (it answers requests, it scores no documents),
every other variant DOMAIN and no ROUTING."""
JUDGED = (*CLASSIFICATION, SUMMARY, QA)
"""Tasks the judge grades (those with a reference answer)."""

CHAT, NLL = "chat", "nll"
FAIR_ORIGINAL, FAIR_SWAPPED = "fairness:original", "fairness:swapped"


# ---- the held-out sets ---------------------------------------------------------------------------

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


def eval_sets(recipe: Recipe, tasks: Path) -> EvalSets:
    """Seeded samples of the eval sets in `tasks`, the format instructions and the held-out
    domain documents; fairness pairs whose swap changed nothing are left out."""
    cfg, seed = recipe.evaluate, recipe.run.seed

    def read(name: str, n: int) -> list[dict]:
        return subset(read_task_set(tasks / f"eval_{name}.parquet"), n, seed)

    records = {task: read(task, cfg.per_task) for task in (*CLASSIFICATION, SUMMARY)}
    records[QA] = read(QA, cfg.qa_pairs)
    pairs = [(r, swap_record(r)) for r in read(DECISION, cfg.fairness_files)]
    return EvalSets(records, list(instructions("eval", seed, cfg.eval_instructions)),
                    heldout_domain_texts(seed, cfg.domain_docs),
                    [(a, b) for a, b in pairs if a["prompt"] != b["prompt"]],
                    read("routing", cfg.routing_requests))


def probes(sets: EvalSets, cfg: Any) -> dict[str, list[tuple[str, str, int]]]:
    """(prompt, document inside it, answer budget) of every answer, by probe set."""
    budget = {DECISION: LABEL_TOKENS, DOC_KIND: LABEL_TOKENS, INTENT: LABEL_TOKENS,
              SUMMARY: cfg.summary_tokens, QA: cfg.answer_tokens}
    out = {task: [(r["prompt"], r["document"], budget[task]) for r in records]
           for task, records in sets.records.items()}
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


# ---- generation (Ray Data) -----------------------------------------------------------------------

class Generator:
    """Ray Data callable holding one model: greedy chat answers (modeling.chat_generate, prompts
    cut to fit as the sft stage cuts them) and document NLLs (modeling.document_nlls)."""

    def __init__(self, model_dir: str, max_seq_len: int, threads: int | None) -> None:
        import torch
        from transformers import AutoTokenizer

        from mortgagellm.pipelines.sft import load_model

        set_threads(threads)
        self.model = load_model(model_dir).eval()
        if torch.cuda.is_available():  # an actor given a GPU
            self.model = self.model.to("cuda", dtype=torch.bfloat16)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.max_seq_len = max_seq_len

    def __call__(self, batch: dict) -> dict:
        from mortgagellm.modeling import chat_generate, document_nlls
        from mortgagellm.pipelines.sft import fit_prompt

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


# ---- scoring (pure but for BERTScore and the judge) ----------------------------------------------

def classification_metrics(task: str, records: list[dict], texts: list[str], resamples: int,
                           seed: int) -> dict[str, dict]:
    """Accuracy and macro-F1 of the parsed labels (unparseable = wrong), and the unparseable
    share."""
    parsed = [parse_answer(task, t) for t in texts]
    return {ACCURACY: proportion([score(task, p, r["truth"]) == 1.0
                                  for p, r in zip(parsed, records)]),
            MACRO_F1: macro_f1_metric([r["truth"]["label"] for r in records], parsed, resamples,
                                      seed),
            UNPARSEABLE: proportion([p is None for p in parsed])}


def summary_metrics(records: list[dict], texts: list[str], bert: Any, resamples: int,
                    seed: int) -> dict[str, dict]:
    """ROUGE-L and BERTScore F1 against the reference summary, and the share of key fields
    right (tasks_format.score)."""
    refs = [r["answer"] for r in records]
    return {ROUGE_L: mean([rouge_l(t, ref) for t, ref in zip(texts, refs)], resamples, seed),
            BERTSCORE_F1: mean(bert.f1(texts, refs), resamples, seed),
            FIELD_ACCURACY: mean([score(SUMMARY, parse_answer(SUMMARY, t), r["truth"])
                                  for t, r in zip(texts, records)], resamples, seed)}


def qa_metrics(records: list[dict], texts: list[str], bert: Any, resamples: int,
               seed: int) -> dict[str, dict]:
    """Token F1 and BERTScore F1 against the reference answer; numeric correctness of the
    questions whose answer is a figure (tasks_format.score)."""
    refs = [r["chosen"] for r in records]
    numeric = [score(QA, parse_answer(QA, t), r["truth"]) == 1.0
               for t, r in zip(texts, records) if r["truth"]["mode"] in NUMERIC_MODES]
    return {TOKEN_F1: mean([token_f1(t, ref) for t, ref in zip(texts, refs)], resamples, seed),
            BERTSCORE_F1: mean(bert.f1(texts, refs), resamples, seed),
            NUMERIC: proportion(numeric)}


def reference(task: str, record: dict) -> str:
    """The answer the judge compares against: the label, the reference summary or answer."""
    return record["chosen"] if task == QA else record["answer"]


def judge_metrics(judge: Any, task: str, records: list[dict], texts: list[str], max_items: int,
                  resamples: int, seed: int) -> dict[str, dict]:
    """Mean 1-5 judge score of the parsed judgements and the share that did not parse."""
    grades = [judge.grade(task, r["prompt"], reference(task, r), t)
              for r, t in zip(records[:max_items], texts[:max_items])]
    return {JUDGE: mean([g for g in grades if g is not None], resamples, seed),
            JUDGE_UNPARSEABLE: proportion([g is None for g in grades])}


def fidelity_metric(instructions: list[Instruction], answers: list[tuple[str, bool]]
                    ) -> dict[str, dict]:
    """modeling.fidelity's number (answer obeys the format and ends its turn), Wilson interval."""
    from mortgagellm.modeling import fidelity_of

    report = fidelity_of(instructions, answers)
    hits = round(report["fidelity"] * report["n"])
    return {FIDELITY: metric(report["fidelity"], report["n"], wilson(hits, report["n"]))}


def perplexity_metric(nlls: list[tuple[float, int]], resamples: int, seed: int
                      ) -> dict[str, dict]:
    """Token-level perplexity over the documents (modeling.perplexity's number); the interval
    resamples documents."""
    import numpy as np

    from mortgagellm.metrics import bootstrap

    nll, tokens = np.array([n for n, _ in nlls]), np.array([t for _, t in nlls])
    ci = bootstrap(lambda idx: math.exp(nll[idx].sum() / tokens[idx].sum()), len(nlls),
                   resamples, seed)
    return {PERPLEXITY: metric(math.exp(nll.sum() / tokens.sum()), len(nlls), ci)}


def flip_metric(original: list[str], swapped: list[str]) -> dict[str, dict]:
    """Share of loan files whose parsed decision changed when only protected attributes did
    (an unparseable answer is a value of its own: parseable on one side only is a flip)."""
    return {FLIP_RATE: proportion([parse_answer(DECISION, a) != parse_answer(DECISION, b)
                                   for a, b in zip(original, swapped)])}


def routing_metrics(records: list[dict], routes: list[str], millis: list[float],
                    resamples: int, seed: int) -> dict[str, dict]:
    """Router accuracy against the labelled route, and its p50 / p99 latency."""
    return {ACCURACY: proportion([r["route"] == got for r, got in zip(records, routes)]),
            P50_MS: percentile_metric(millis, 50, resamples, seed),
            P99_MS: percentile_metric(millis, 99, resamples, seed)}


@dataclass
class Scorer:
    """What scoring needs beyond the answers: the interval settings, BERTScore's encoder, and
    the judge (None when the recipe names none)."""

    resamples: int
    seed: int
    bert: Any
    judge: Any
    judge_items: int


def make_scorer(recipe: Recipe) -> Scorer:
    """BERTScore loaded once, the judge client when evaluate.judge.base_url is set."""
    from mortgagellm.judge import Judge
    from mortgagellm.metrics import BertScore

    cfg = recipe.evaluate
    judge = Judge(cfg.judge) if cfg.judge.base_url else None
    return Scorer(cfg.resamples, recipe.run.seed, BertScore(), judge, cfg.judge.max_items)


def score_variant(sets: EvalSets, generated: dict[str, Any], scorer: Scorer) -> dict[str, dict]:
    """{task: {metric: {value, n, ci95}}} of one variant's answers (domain only when it has
    document NLLs: the routed system has none)."""
    texts = {name: [t for t, _ in items] for name, items in generated["answers"].items()}
    r, s = scorer.resamples, scorer.seed
    tasks = {task: classification_metrics(task, sets.records[task], texts[task], r, s)
             for task in CLASSIFICATION}
    tasks[SUMMARY] = summary_metrics(sets.records[SUMMARY], texts[SUMMARY], scorer.bert, r, s)
    tasks[QA] = qa_metrics(sets.records[QA], texts[QA], scorer.bert, r, s)
    if scorer.judge is not None:
        for task in JUDGED:
            tasks[task] |= judge_metrics(scorer.judge, task, sets.records[task], texts[task],
                                         scorer.judge_items, r, s)
    tasks[INSTRUCTION] = fidelity_metric(sets.instructions, generated["answers"][INSTRUCTION])
    if generated.get("nlls"):
        tasks[DOMAIN] = perplexity_metric(generated["nlls"], r, s)
    tasks[FAIRNESS] = flip_metric(texts[FAIR_ORIGINAL], texts[FAIR_SWAPPED])
    return tasks


def sample_sizes(sets: EvalSets) -> dict[str, int]:
    """Items per task (fairness: loan-file pairs; routing: requests)."""
    return {**{task: len(records) for task, records in sets.records.items()},
            INSTRUCTION: len(sets.instructions), DOMAIN: len(sets.texts),
            FAIRNESS: len(sets.fairness), ROUTING: len(sets.routing)}


# ---- the routed system ---------------------------------------------------------------------------

class RouterProbe:
    """The serving router's decision without Ray Serve: routing.route in the recipe's mode, and
    when it asks for tier 2, the structured expert's few-shot label scores computed in this
    process (what Router.decide and Expert.classify do over handles)."""

    def __init__(self, recipe: Recipe, structured_dir: str) -> None:
        from mortgagellm.serve import engine, routing
        from mortgagellm.serve.app import tier1_file

        self.cfg = recipe.serve.router
        self.tier1 = routing.Tier1.from_json(tier1_file(recipe).read_text())
        self.model = self.tokenizer = self.prior = None
        if self.cfg.mode != "tier1":
            self.model, self.tokenizer = engine.load_model(structured_dir,
                                                           recipe.evaluate.threads or 1)
            self.prior = self.label_logprobs(routing.CONTENT_FREE, 16)

    def label_logprobs(self, text: str, clip_chars: int) -> dict[str, float]:
        """Tier 2's route log-probabilities of a request (serve/engine.label_logprobs)."""
        from mortgagellm.datasets.tasks.format import ROUTES
        from mortgagellm.serve import engine, routing

        return engine.label_logprobs(self.model, self.tokenizer,
                                     routing.fewshot_messages(text, clip_chars), ROUTES)

    def __call__(self, text: str) -> str:
        """The route the served app would take for a request to model `mortgagellm`."""
        from mortgagellm.serve import routing

        r = self.cfg
        decision = routing.route(text, routing.AUTO_MODEL, r.mode, self.tier1, r.threshold)
        if decision is None:
            probs = routing.fewshot_probabilities(self.label_logprobs(text, r.clip_chars),
                                                  self.prior)
            decision = routing.route(text, routing.AUTO_MODEL, r.mode, self.tier1, r.threshold,
                                     probs)
        return decision.route


def router_config(recipe: Recipe) -> dict[str, Any]:
    """The routing settings the routed variant depends on (for the fingerprint)."""
    r = recipe.serve.router
    return {"mode": r.mode, "threshold": r.threshold, "clip_chars": r.clip_chars,
            "train_set": r.train_set, "tasks": recipe.corpus.tasks.model_dump(mode="json")}


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
    experts = [models[e] for e in EXPERTS]
    version = hashlib.sha256(json.dumps([[e["sha256"] for e in experts], router_config(recipe)],
                                        sort_keys=True).encode()).hexdigest()
    return {"model": " + ".join(e["uri"] for e in experts), "version": version, "tasks": tasks}


# ---- the stage -----------------------------------------------------------------------------------

def variant_models(recipe: Recipe) -> dict[str, dict[str, str]]:
    """{variant: model entry (uri, sha256) from its stage's manifest} of every model written so
    far; the bootstrap stage's is required, a later stage not run yet only leaves a variant out."""
    require_manifest(recipe, "bootstrap")
    found = {}
    for variant, (stage, output) in VARIANTS.items():
        written = manifest.read(str(stage_dir(recipe, stage)))
        if written is None:
            log.warning("evaluate: no %s output in %s, so no %s variant; run `mortgagellm %s "
                        "CONFIG` to add it", stage, stage_dir(recipe, stage), variant, stage)
            continue
        found[variant] = written.outputs[output]
    return found


def prepare(recipe: Recipe, out: Path) -> tuple[EvalSets, Scorer]:
    """Threads, Ray (started as the recipe says if this process has none), the sets, the
    scorer."""
    import ray

    from mortgagellm.cluster.runtime import init_ray

    set_threads(recipe.evaluate.threads)
    if not ray.is_initialized():
        init_ray(recipe.ray, recipe.run.output_dir)
    sets = eval_sets(recipe, task_dir(recipe, recipe.evaluate.task_source, out))
    return sets, make_scorer(recipe)


def run(recipe: Recipe, force: bool = False) -> manifest.Manifest:
    """Evaluate every variant written so far; skip when models, sets and config are unchanged."""
    cfg, out = recipe.evaluate, stage_dir(recipe, "evaluate")
    models = variant_models(recipe)
    source_config, inputs = task_source(recipe, cfg.task_source)
    inputs |= models
    config = {"seed": recipe.run.seed, "evaluate": cfg.model_dump(mode="json"), **source_config}
    if all(e in models for e in EXPERTS):
        config["router"] = router_config(recipe)
    fp = manifest.fingerprint("evaluate", config, inputs)
    previous, why = manifest.reusable(str(out), fp)
    if previous and not force:
        log.info("evaluate: up to date (%s); skipping", why)
        return previous
    started, t0 = manifest.now()
    sets, scorer = prepare(recipe, out)
    generated = measure_once(models, lambda path: generate(recipe, path, sets))
    variants = {name: {"model": entry["uri"], "version": entry["sha256"],
                       "tasks": score_variant(sets, generated[name], scorer)}
                for name, entry in models.items()}
    if "router" in config:
        variants[ROUTED] = routed_variant(recipe, sets, generated, models, scorer)
    metrics = {"variants": variants, "sample_sizes": sample_sizes(sets),
               "judge": scorer.judge.describe() if scorer.judge else None}
    predictions = write_predictions(out / "predictions.jsonl", generated)
    return manifest.write(str(out), manifest.Manifest(
        stage="evaluate", fingerprint=fp, config=config, inputs=inputs,
        outputs={"predictions": manifest.artifact(predictions)}, metrics=metrics,
        started_at=started, duration_s=round(time.monotonic() - t0, 2)))


def write_predictions(path: Path, generated: dict[str, dict]) -> Path:
    """Every answer of every generated variant, one JSON line each, for people to audit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for variant, result in generated.items():
            for name, items in result["answers"].items():
                for i, (text, stopped) in enumerate(items):
                    f.write(json.dumps({"variant": variant, "set": name, "index": i,
                                        "text": text, "stopped": stopped},
                                       ensure_ascii=False) + "\n")
    return path


def evaluate_model(recipe: Recipe, model_dir: str | Path, name: str,
                   version: str | None = None) -> dict[str, Any]:
    """One model on the stage's sets: {"model", "version" (its content hash unless given),
    "tasks", "sample_sizes", "judge"}; nothing is written but the built sets."""
    sets, scorer = prepare(recipe, stage_dir(recipe, "evaluate"))
    log.info("evaluate: %s (%s)", name, model_dir)
    tasks = score_variant(sets, generate(recipe, str(model_dir), sets), scorer)
    return {"model": str(model_dir), "version": version or manifest.sha256_path(model_dir),
            "tasks": tasks, "sample_sizes": sample_sizes(sets),
            "judge": scorer.judge.describe() if scorer.judge else None}


def evaluate_registered(recipe: Recipe, ref: str) -> dict[str, Any]:
    """`mortgagellm evaluate CONFIG --model REF`: a model directory (registered first when new)
    or a registry version (8+ hex characters), evaluated; the results go into its registry
    entry's metrics under 'evaluate'."""
    from mortgagellm.serve import registry
    from mortgagellm.serve.app import registry_path

    path = registry_path(recipe)
    if Path(ref).is_dir():
        version = registry.register(path, ref, source="evaluate --model")
    else:
        version = registry.resolve(path, ref)
    model_dir = registry.read(path)["versions"][version]["path"]
    result = evaluate_model(recipe, model_dir, version[:12], version)
    registry.set_metrics(path, version, {"evaluate": result})
    return result


def table(tasks: dict[str, dict[str, dict]]) -> str:
    """The results as aligned text: task, metric, value, 95 % interval, n."""
    lines = [f"{'task':<12} {'metric':<18} {'value':>10}  {'95% CI':<22} {'n':>5}"]
    for task, metrics in tasks.items():
        for name, m in metrics.items():
            lo, hi = m["ci95"]
            lines.append(f"{task:<12} {name:<18} {m['value']:>10.4f}  "
                         f"{f'[{lo:.4f}, {hi:.4f}]':<22} {m['n']:>5}")
    return "\n".join(lines)
