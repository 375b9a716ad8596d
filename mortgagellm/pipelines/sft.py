"""sft stage: the structured-task expert — supervised fine-tuning of the merged model on the
classification (decision, doc_kind, intent) and summary records, chat template, loss on the
answer tokens only, under Ray Train + DeepSpeed (or in one process without Ray).

Run: mortgagellm sft configs/cpu-demo.yaml

What comes from trl and why the loop is ours: records are rendered with trl's prompt-completion
chat formatting (`trl.data_utils.apply_chat_template`) and padded with `trl.trainer.utils.pad`;
the loop is pretrain's `train_loop` with the SFT `Objective`, so checkpoint/resume, the ZeRO ->
safetensors export and logging are the one copy every stage uses (SFTTrainer would bring a
second, accelerate-based one that Ray Train and our manifests know nothing of).

Data: bad records are counted and never trained on; the document inside a prompt is cut to fit
max_seq_len (counted); every epoch is written in its own seeded order to one Parquet file that
the ranks read with `rank_rows`, so a resumed run continues at the exact next record. The
helpers under "shared with dpo" are used by pipelines/dpo.py as well.
"""

from __future__ import annotations

import functools
import logging
import random
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from mortgagellm import manifest
from mortgagellm.cluster.deepspeed import ds_config
from mortgagellm.cluster.runtime import check_fits
from mortgagellm.cluster.training import read_placement
from mortgagellm.config import Recipe
from mortgagellm.datasets.tasks import SFT_TASKS, parse_answer, read_task_set, score
from mortgagellm.pipelines.pretrain import Objective, export_model, lm_loss, train, train_loop
from mortgagellm.pipelines.recipe import require_manifest, stage_dir

log = logging.getLogger(__name__)
SFT_FIELDS = ("task", "prompt", "answer", "document", "truth")
LABEL_TOKENS = 24
"""Generation budget of a held-out label answer: the longest label, regulatory_explanation, is
16 tokens of the tiny preset's 640-token BPE, plus <|eot_id|>."""


# ---- shared with dpo: inputs, prompt fitting, rows, worker config, loading ---------------------

def start_models(recipe: Recipe) -> dict[str, dict[str, str]]:
    """The merged model both experts start from (residual's 'model') and the instruct model
    they are compared against (bootstrap's 'instruct'), as manifest entries with hashes."""
    return {"start": require_manifest(recipe, "residual").outputs["model"],
            "instruct": require_manifest(recipe, "bootstrap").outputs["instruct"]}


def task_source(recipe: Recipe, source: str) -> tuple[dict, dict]:
    """(config entries, input entries) that identify the task sets for the fingerprint:
    'corpus' -> the corpus manifest's 'tasks' output; 'build' -> the corpus.tasks sizes."""
    if source == "build":
        return {"tasks": recipe.corpus.tasks.model_dump(mode="json")}, {}
    corpus = require_manifest(recipe, "corpus")
    if "tasks" not in corpus.outputs:
        raise FileNotFoundError(f"the corpus manifest in {stage_dir(recipe, 'corpus')} has no "
                                "'tasks' output; set task_source: build for this stage")
    return {}, {"tasks": corpus.outputs["tasks"]}


def task_dir(recipe: Recipe, source: str, out: Path) -> Path:
    """Directory of <set>.parquet files: the corpus stage's, or built here into <out>/tasks."""
    if source == "corpus":
        return Path(require_manifest(recipe, "corpus").output_path("tasks"))
    from mortgagellm.datasets.tasks import write_task_sets

    write_task_sets(out / "tasks", recipe.corpus.tasks, recipe.run.seed)
    return out / "tasks"


def render(tokenizer: Any, user: str, **answers: str) -> dict[str, str]:
    """Chat-template text of a one-turn prompt (ending in the assistant header) and of each
    answer (ending in <|eot_id|>), via trl's prompt-completion formatting."""
    from trl.data_utils import apply_chat_template

    example = {"prompt": [{"role": "user", "content": user}]}
    example |= {k: [{"role": "assistant", "content": v}] for k, v in answers.items()}
    return apply_chat_template(example, tokenizer)


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of already-templated text (the template writes BOS itself)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def fit_prompt(tokenizer: Any, user: str, document: str, budget: int
               ) -> tuple[str, list[int], bool] | None:
    """(user text, templated prompt ids, cut?) with the prompt at most `budget` tokens.

    Only the document inside the user text is cut, at a token boundary from its end, so the
    instruction always survives; None when even the instruction alone does not fit (or the
    prompt is too long and holds no document to cut).
    """
    ids = encode(tokenizer, render(tokenizer, user)["prompt"])
    if len(ids) <= budget:
        return user, ids, False
    if not document or document not in user:
        return None
    offsets = tokenizer(document, add_special_tokens=False,
                        return_offsets_mapping=True)["offset_mapping"]
    keep = len(offsets) - (len(ids) - budget)
    while keep > 0:  # tokens can merge differently at the cut: shrink until it fits
        cut = user.replace(document, document[:offsets[keep - 1][1]], 1)
        ids = encode(tokenizer, render(tokenizer, cut)["prompt"])
        if len(ids) <= budget:
            return cut, ids, True
        keep -= len(ids) - budget
    return None


def epoch_order(n: int, epochs: int, global_batch: int, seed: int) -> list[int]:
    """Record indices in training order: each epoch its own seeded shuffle, cut to whole
    global batches so every rank gets the same number of rows."""
    order = []
    for epoch in range(epochs):
        indices = list(range(n))
        random.Random(f"{seed}:{epoch}").shuffle(indices)
        order += indices
    return order[:len(order) // global_batch * global_batch]


def write_rows(rows: list[dict], order: list[int], path: Path) -> Path:
    """The training rows in `order` as one Parquet file (small row groups: a resume decodes
    little before its position)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([rows[i] for i in order]), path, row_group_size=256)
    return path


def global_batch(cfg: Any) -> int:
    """Rows per optimizer step over all ranks."""
    return cfg.deepspeed.micro_batch_size * cfg.deepspeed.grad_accum_steps * cfg.scaling.num_workers


def check_setup(recipe: Recipe, cfg: Any, start: Path, steps: int, name: str) -> None:
    """Fail before any worker starts: sequence length vs the model, steps, resources."""
    import json

    max_pos = json.loads((start / "config.json").read_text())["max_position_embeddings"]
    if cfg.max_seq_len > max_pos:
        raise ValueError(f"{name}.max_seq_len {cfg.max_seq_len} exceeds the start model's "
                         f"max_position_embeddings {max_pos} ({start})")
    if steps < 1:
        raise ValueError(f"{name}: fewer training rows than one global batch "
                         f"({global_batch(cfg)}); raise {name}.epochs or the set sizes")
    check_fits(recipe.ray, cfg.scaling)


def worker_config(recipe: Recipe, cfg: Any, start: Path, rows_file: Path, steps: int,
                  out: Path, fail_at_step: int | None) -> dict[str, Any]:
    """Everything a worker needs, as plain data (workers read no globals); the keys of
    pretrain's worker config, so the same `train_loop` runs it."""
    return {
        "seed": recipe.run.seed, "base_model": str(start.absolute()),
        "shards": [str(rows_file.absolute())], "shuffle_seed": None,  # epoch_order is the order
        "seq_len": cfg.max_seq_len, "method": cfg.method,
        "lora": cfg.lora.model_dump(), "ds_config": ds_config(cfg.deepspeed, cfg.scaling),
        "max_steps": steps, "warmup_steps": round(cfg.warmup_ratio * steps),
        "min_lr_ratio": cfg.min_lr_ratio, "gradient_checkpointing": cfg.gradient_checkpointing,
        "checkpoint_every": cfg.checkpoint_every, "log_every": cfg.log_every,
        "peak_tflops": None, "use_gpu": cfg.scaling.use_gpu,
        "scratch": str((out / "scratch").absolute()),
        "tensorboard_dir": str((out / "tensorboard").absolute()),
        "fail_at_step": fail_at_step, "failure_marker": str((out / "injected_failure").absolute()),
    }


def train_and_export(recipe: Recipe, cfg: Any, objective: Objective, config: dict, start: Path,
                     out: Path, on_ray: bool, fingerprint: str
                     ) -> tuple[list[dict], Path, list[dict]]:
    """Train with the shared loop and export: (history, model dir, placement). A relaunch with
    the same `fingerprint` resumes from its checkpoints."""
    shutil.rmtree(out / "scratch" / "placement", ignore_errors=True)
    fn = functools.partial(train_loop, objective=objective)
    history, checkpoint = train(fn, config, recipe, cfg, out, on_ray, objective.name,
                                fingerprint)
    shutil.rmtree(out / "model", ignore_errors=True)
    model_dir = export_model(checkpoint, start, out / "model", cfg.method, cfg.lora.model_dump(),
                             cfg.deepspeed.zero_stage, merge=cfg.export == "merged")
    return history, model_dir, read_placement(out / "scratch" / "placement")


def subset(records: list[dict], n: int, seed: int) -> list[dict]:
    """A seeded sample of n records in their original order (eval sets are built in document
    order, so their head is not balanced over labels)."""
    picked = random.Random(f"heldout:{seed}").sample(range(len(records)), min(n, len(records)))
    return [records[i] for i in sorted(picked)]


def measure_once(models: dict[str, dict], measure: Any) -> dict[str, Any]:
    """measure(path) for every model; models with the same content hash are measured once
    (a test's start model may be the instruct model itself)."""
    done: dict[str, Any] = {}
    for entry in models.values():
        if entry["sha256"] not in done:
            done[entry["sha256"]] = measure(entry["uri"])
    return {name: done[entry["sha256"]] for name, entry in models.items()}


def set_threads(threads: int | None) -> None:
    """torch threads of this process (None keeps torch's default, all physical cores)."""
    import torch

    torch.set_num_threads(threads or torch.get_num_threads())


def load_model(path: str | Path) -> Any:
    """An exported model for evaluation: a full model, or start model + adapter."""
    path = Path(path)
    if (path / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        return AutoPeftModelForCausalLM.from_pretrained(path)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


# ---- SFT data ------------------------------------------------------------------------------------

def sft_problem(record: dict) -> str | None:
    """Why a record must not be trained on, or None: missing field, unknown task, empty
    prompt or answer, or an answer that does not parse in its task's fixed format."""
    if any(record.get(f) is None for f in SFT_FIELDS):
        return "missing_field"
    if record["task"] not in SFT_TASKS:
        return "unknown_task"
    if not record["prompt"].strip():
        return "empty_prompt"
    if not record["answer"].strip():
        return "empty_answer"
    if parse_answer(record["task"], record["answer"]) is None:
        return "unparseable_answer"
    return None


def sft_rows(records: list[dict], tokenizer: Any, max_len: int) -> tuple[list[dict], dict]:
    """Tokenised rows {input_ids, prompt_len} of the good records and the counts: kept,
    rejected by reason (too_long: the answer leaves no room), documents cut per task."""
    rows, rejected, cut = [], Counter(), Counter()
    for record in records:
        problem = sft_problem(record)
        if problem is None:
            answer = render(tokenizer, "", completion=record["answer"])["completion"]
            answer_ids = encode(tokenizer, answer)
            fitted = fit_prompt(tokenizer, record["prompt"], record["document"],
                                max_len - len(answer_ids))
            problem = None if fitted else "too_long"
        if problem:
            rejected[problem] += 1
            continue
        cut[record["task"]] += fitted[2]
        rows.append({"input_ids": fitted[1] + answer_ids, "prompt_len": len(fitted[1])})
    return rows, {"kept": len(rows), "rejected": dict(sorted(rejected.items())),
                  "documents_cut": dict(sorted(cut.items()))}


def sft_batch(rows: list[dict], device: Any) -> dict[str, Any]:
    """Right-padded inputs; labels are -100 on the prompt and padding, so only the answer
    tokens (through <|eot_id|>) carry loss."""
    import torch
    from trl.trainer.utils import pad

    ids = [torch.tensor(r["input_ids"], dtype=torch.long) for r in rows]
    labels = [t.clone() for t in ids]
    for label, row in zip(labels, rows):
        label[:row["prompt_len"]] = -100
    batch = {"input_ids": pad(ids, 0), "attention_mask": pad([torch.ones_like(t) for t in ids], 0),
             "labels": pad(labels, -100)}
    return {k: v.to(device) for k, v in batch.items()} | {"use_cache": False}


SFT = Objective("sft", sft_batch, lm_loss)
"""Prompt-masked causal LM loss on chat-templated records."""


# ---- held-out measurement ------------------------------------------------------------------------

def answer_budget(task: str, max_new_tokens: int) -> int:
    """Tokens a held-out answer may take: a summary max_new_tokens, a label LABEL_TOKENS."""
    return max_new_tokens if task == "summary" else LABEL_TOKENS


def heldout_prompts(sets: dict[str, list[dict]], tokenizer: Any, max_len: int,
                    max_new_tokens: int) -> dict[str, list[tuple[dict, str, bool]]]:
    """(record, prompt cut to leave room for the answer, cut?) per task, before any training:
    a task none of whose held-out prompts fits is an error now, not after training."""
    prepared = {}
    for task, records in sets.items():
        budget = answer_budget(task, max_new_tokens)
        fitted = [(r, fit_prompt(tokenizer, r["prompt"], r["document"], max_len - budget))
                  for r in records]
        prepared[task] = [(r, f[0], f[2]) for r, f in fitted if f]
        if not prepared[task]:
            raise ValueError(f"sft: no held-out {task} prompt fits max_seq_len {max_len} minus "
                             f"its {budget}-token answer; raise sft.max_seq_len")
    return prepared


def structured_metrics(model_dir: str | Path, prepared: dict[str, list[tuple[dict, str, bool]]],
                       max_new_tokens: int) -> dict[str, dict]:
    """Greedy answers to the held-out prompts, per task: accuracy (classification) or field
    accuracy (summary), the share that parses in the task's format, prompts cut, n."""
    from transformers import AutoTokenizer

    from mortgagellm.modeling import chat_generate

    tokenizer, model = AutoTokenizer.from_pretrained(model_dir), load_model(model_dir)
    result = {}
    for task, items in prepared.items():
        outputs = chat_generate(model, tokenizer, [text for _, text, _ in items],
                                answer_budget(task, max_new_tokens))
        parsed = [parse_answer(task, text) for text, _ in outputs]
        scores = [score(task, p, r["truth"]) for (r, _, _), p in zip(items, parsed)]
        key = "field_accuracy" if task == "summary" else "accuracy"
        result[task] = {key: round(sum(scores) / len(scores), 4),
                        "parsed": round(sum(p is not None for p in parsed) / len(parsed), 4),
                        "prompts_cut": sum(cut for _, _, cut in items), "n": len(items),
                        "example": outputs[0][0][:300]}
    return result


# ---- the stage -----------------------------------------------------------------------------------

def run(recipe: Recipe, force: bool = False, *, on_ray: bool = True,
        fail_at_step: int | None = None) -> manifest.Manifest:
    """Fine-tune the start model on the SFT records, export it, measure it against the start
    and instruct models on the held-out sets. `fail_at_step`: fault-tolerance tests only."""
    from transformers import AutoTokenizer

    cfg, out = recipe.sft, stage_dir(recipe, "sft")
    models = start_models(recipe)
    source_config, inputs = task_source(recipe, cfg.task_source)
    inputs |= models
    config = {"seed": recipe.run.seed, "sft": cfg.model_dump(mode="json"), **source_config}
    fp = manifest.fingerprint("sft", config, inputs)
    previous, why = manifest.reusable(str(out), fp)
    if previous and not force:
        log.info("sft: up to date (%s); skipping", why)
        return previous
    started, t0 = manifest.now()
    set_threads(cfg.threads)
    start = Path(models["start"]["uri"])
    tasks = task_dir(recipe, cfg.task_source, out)
    tokenizer = AutoTokenizer.from_pretrained(start)
    rows, counts = sft_rows(read_task_set(tasks / "sft_train.parquet"), tokenizer, cfg.max_seq_len)
    heldout = heldout_prompts(
        {name: subset(read_task_set(tasks / f"eval_{name}.parquet"), cfg.eval_per_task,
                      recipe.run.seed) for name in SFT_TASKS},
        tokenizer, cfg.max_seq_len, cfg.max_new_tokens)
    order = epoch_order(len(rows), cfg.epochs, global_batch(cfg), recipe.run.seed)
    steps = len(order) // global_batch(cfg)
    check_setup(recipe, cfg, start, steps, "sft")
    log.info("sft: %d records kept (%s rejected), %d steps", counts["kept"], counts["rejected"],
             steps)
    rows_file = write_rows(rows, order, out / "data" / "train.parquet")
    history, model_dir, placement = train_and_export(
        recipe, cfg, SFT, worker_config(recipe, cfg, start, rows_file, steps, out, fail_at_step),
        start, out, on_ray, fp)
    measured = measure_once(models | {"expert": manifest.artifact(model_dir)}, lambda path:
                            structured_metrics(path, heldout, cfg.max_new_tokens))
    metrics = {"records": counts | {"steps": steps, "epochs": cfg.epochs}, "train": history[-1],
               "history": history, "heldout": measured, "export": cfg.export,
               "placement": placement}
    return manifest.write(str(out), manifest.Manifest(
        stage="sft", fingerprint=fp, config=config, inputs=inputs,
        outputs={"model": manifest.artifact(model_dir)}, metrics=metrics, started_at=started,
        duration_s=round(time.monotonic() - t0, 2)))
