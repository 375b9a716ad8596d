"""sft stage: the structured-task expert — supervised fine-tuning of the merged model on the
classification (decision, doc_kind, intent) and summary records, chat template, loss on the
answer tokens only, under Ray Train + DeepSpeed (or in one process without Ray).

Run: mortgagellm sft configs/cpu-demo.yaml

What comes from trl and why the loop is ours: records are rendered with trl's prompt-completion
chat formatting (`trl.data_utils.apply_chat_template`) and padded with `trl.trainer.utils.pad`;
the loop is mortgagellm/training's with the SFT `Objective`, so checkpoint/resume, the ZeRO ->
safetensors export and logging are the one copy every stage uses (SFTTrainer would bring a
second, accelerate-based one that Ray Train and our manifests know nothing of).

Data: bad records are counted and never trained on; the document inside a prompt is cut to fit
max_seq_len (counted); every epoch is written in its own seeded order to one Parquet file that
the ranks read with `rank_rows`, so a resumed run continues at the exact next record.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from mortgagellm import manifest, training
from mortgagellm.config import Recipe
from mortgagellm.datasets.fairness import swap_record
from mortgagellm.datasets.tasks import SFT_TASKS, parse_answer, read_task_set, score
from mortgagellm.evaluation.generate import measure_once
from mortgagellm.evaluation.scoring import flip_metric
from mortgagellm.evaluation.sets import subset
from mortgagellm.manifest import stage_dir
from mortgagellm.modeling import set_threads
from mortgagellm.training.chat import fit_prompt
from mortgagellm.training.export import export_model, load_model
from mortgagellm.training.inputs import start_models, task_dir, task_source
from mortgagellm.training.objectives import SFT, completion_row
from mortgagellm.training.worker import (
    check_setup,
    epoch_order,
    global_batch,
    worker_config,
    write_rows,
)

log = logging.getLogger(__name__)
SFT_FIELDS = ("task", "prompt", "answer", "document", "truth")
LABEL_TOKENS = 24
"""Generation budget of a held-out label answer: the longest label, regulatory_explanation, is
16 tokens of the tiny preset's 640-token BPE, plus <|eot_id|>."""


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


def counterfactuals(records: list[dict]) -> list[dict]:
    """Counterfactual augmentation (sft.counterfactual): the records, then each decision record
    with its protected attributes swapped and the same decision. A file with no attribute to
    swap adds nothing; a record missing its prompt or document is left to sft_problem."""
    added = []
    for record in records:
        if record.get("task") != "decision" or record.get("prompt") is None \
                or record.get("document") is None:
            continue
        swapped = swap_record(record)
        if (swapped["prompt"], swapped["document"]) != (record["prompt"], record["document"]):
            added.append(swapped)
    return records + added


def sft_rows(records: list[dict], tokenizer: Any, max_len: int) -> tuple[list[dict], dict]:
    """Tokenised rows {input_ids, prompt_len} of the good records and the counts: kept,
    rejected by reason (too_long: the answer leaves no room), documents cut per task."""
    rows, rejected, cut = [], Counter(), Counter()
    for record in records:
        problem = sft_problem(record)
        row = None if problem else completion_row(tokenizer, record["prompt"],
                                                  record["document"], record["answer"], max_len)
        if problem is None and row is None:
            problem = "too_long"
        if problem:
            rejected[problem] += 1
            continue
        cut[record["task"]] += row[1]
        rows.append(row[0])
    return rows, {"kept": len(rows), "rejected": dict(sorted(rejected.items())),
                  "documents_cut": dict(sorted(cut.items()))}


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


def fairness_prompts(records: list[dict], tokenizer: Any, max_len: int
                     ) -> list[tuple[str, str]]:
    """(prompt, the same with protected attributes swapped) for each held-out decision record
    a swap changes and whose two prompts fit: the pairs of the manifest's fairness row."""
    pairs = []
    for record in records:
        swapped = swap_record(record)
        if (swapped["prompt"], swapped["document"]) == (record["prompt"], record["document"]):
            continue
        fitted = [fit_prompt(tokenizer, r["prompt"], r["document"], max_len - LABEL_TOKENS)
                  for r in (record, swapped)]
        if all(fitted):
            pairs.append((fitted[0][0], fitted[1][0]))
    return pairs


def structured_metrics(model_dir: str | Path, prepared: dict[str, list[tuple[dict, str, bool]]],
                       max_new_tokens: int, fairness: list[tuple[str, str]] = ()
                       ) -> dict[str, dict]:
    """Greedy answers to the held-out prompts, per task: accuracy (classification) or field
    accuracy (summary), the share that parses in the task's format, prompts cut, n; and with
    `fairness` pairs, how often the decision flips when only protected attributes change (over
    the pairs whose two answers parse, their n) and the share with an unparseable side."""
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
    if fairness:
        answers = [text for text, _ in chat_generate(
            model, tokenizer, [p for pair in fairness for p in pair], LABEL_TOKENS)]
        result["fairness"] = flip_metric(answers[0::2], answers[1::2])
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
    config = {"seed": recipe.run.seed, "sft": cfg.fingerprinted(), **source_config}
    pending = manifest.begin("sft", out, config, inputs,
                             uri=manifest.stage_uri(recipe, "sft"))
    if done := manifest.skip_if_current(pending, force):
        return done
    set_threads(cfg.threads)
    start = Path(models["start"]["uri"])
    tasks = task_dir(recipe, cfg.task_source, out)
    tokenizer = AutoTokenizer.from_pretrained(start)
    records = read_task_set(tasks / "sft_train.parquet")
    augmented = counterfactuals(records) if cfg.counterfactual else records
    rows, counts = sft_rows(augmented, tokenizer, cfg.max_seq_len)
    counts["counterfactual"] = len(augmented) - len(records)
    sets = {name: subset(read_task_set(tasks / f"eval_{name}.parquet"), cfg.eval_per_task,
                         recipe.run.seed) for name in SFT_TASKS}
    heldout = heldout_prompts(sets, tokenizer, cfg.max_seq_len, cfg.max_new_tokens)
    fairness = fairness_prompts(sets["decision"], tokenizer, cfg.max_seq_len)
    order = epoch_order(len(rows), cfg.epochs, global_batch(cfg), recipe.run.seed)
    steps = len(order) // global_batch(cfg)
    check_setup(recipe, cfg, start, steps, "sft")
    log.info("sft: %d records kept (%s rejected), %d steps", counts["kept"], counts["rejected"],
             steps)
    rows_file = write_rows(recipe, rows, order, out / "data" / "train.parquet")
    worker = worker_config(recipe, cfg, models["start"], [rows_file], out,
                           seq_len=cfg.max_seq_len, max_steps=steps,
                           warmup_steps=round(cfg.warmup_ratio * steps),
                           fail_at_step=fail_at_step)  # epoch_order is the row order
    history, checkpoint, placement = training.run(SFT, worker, recipe, cfg, out, on_ray,
                                                  pending.fingerprint)
    shutil.rmtree(out / "model", ignore_errors=True)
    shutil.rmtree(out / "adapter", ignore_errors=True)
    model_dir = export_model(checkpoint, start, out / "model", cfg.method, cfg.lora.model_dump(),
                             cfg.deepspeed.zero_stage, merge=cfg.export == "merged",
                             adapter_out=out / "adapter")
    # LoRA: the adapter too (serve.topology adapters), and the hash of the model it applies to.
    adapter = None if cfg.method != "lora" else out / "adapter" if cfg.export == "merged" \
        else model_dir
    adapters = {"adapter": manifest.artifact(adapter)} if adapter else {}
    measured = measure_once(models | {"expert": manifest.artifact(model_dir)}, lambda path:
                            structured_metrics(path, heldout, cfg.max_new_tokens, fairness))
    metrics = {"records": counts | {"steps": steps, "epochs": cfg.epochs}, "train": history[-1],
               "history": history, "heldout": measured, "export": cfg.export,
               "placement": placement,
               "adapter_base": models["start"]["sha256"] if adapter else None}
    return manifest.finish(pending, {"model": manifest.artifact(model_dir)} | adapters, metrics)
