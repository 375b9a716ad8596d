"""dpo stage: the conversational expert — DPO of the merged model on the preference pairs, against
an explicit frozen reference, optionally with an NLL term on the chosen answers (DPO+NLL), under
Ray Train + DeepSpeed (or in one process without Ray).

Run: mortgagellm dpo configs/cpu-demo.yaml

The reference is the start model, held one of two ways: with LoRA, the policy itself with its
adapters disabled (no second copy in memory); with full training, a frozen copy on every rank
(under ZeRO-3 partitioned by DeepSpeed like the policy, as trl's `prepare_deepspeed` does).

What comes from trl and why the loop is ours: pairs are rendered with trl's preference chat
formatting (`trl.data_utils.apply_chat_template`), padded with `trl.trainer.utils.pad`, and
log-probabilities taken with `trl.trainer.utils.selective_log_softmax`; the loss is trl 1.16's
DPOTrainer formulation — summed completion log-probs, loss_type "sigmoid" plus, when nll_weight
> 0, loss_type "sft" (mean token NLL of the chosen answers). The loop is mortgagellm/training's
with the DPO `Objective`, so checkpoint/resume and the ZeRO export are the one shared copy.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from mortgagellm import manifest, training
from mortgagellm.config import Recipe
from mortgagellm.datasets.instructions import Instruction, instructions, preference_pairs
from mortgagellm.datasets.tasks import parse_answer, read_task_set, score
from mortgagellm.datasets.tasks.format import NUMERIC_MODES
from mortgagellm.evaluation.generate import measure_once
from mortgagellm.evaluation.sets import subset
from mortgagellm.manifest import stage_dir
from mortgagellm.modeling import set_threads
from mortgagellm.training.chat import encode, fit_prompt, render
from mortgagellm.training.export import export_model, load_model
from mortgagellm.training.inputs import start_models, task_dir, task_source
from mortgagellm.training.loop import Objective
from mortgagellm.training.objectives import SFT, completion_row
from mortgagellm.training.worker import (
    WorkerConfig,
    check_setup,
    epoch_order,
    global_batch,
    worker_config,
    write_rows,
)

log = logging.getLogger(__name__)
DPO_FIELDS = ("prompt", "chosen", "rejected", "document")


# ---- maths ---------------------------------------------------------------------------------------

def completion_logps(logits: Any, input_ids: Any, completion_mask: Any) -> tuple[Any, Any, Any]:
    """(summed log-prob of each sequence's completion, per-token log-probs, their mask).

    Token t is predicted by the logits at t-1, hence the shift; only completion tokens count.
    """
    from trl.trainer.utils import selective_log_softmax

    token_logps = selective_log_softmax(logits[:, :-1], input_ids[:, 1:])
    mask = completion_mask[:, 1:].to(token_logps.dtype)
    return (token_logps * mask).sum(dim=1), token_logps, mask


def dpo_losses(chosen: Any, rejected: Any, ref_chosen: Any, ref_rejected: Any, beta: float
               ) -> tuple[Any, Any]:
    """Per-pair DPO loss -log sigmoid(beta * margin) and implicit reward margin beta * margin,
    where margin = (log pi(c) - log ref(c)) - (log pi(r) - log ref(r)) (Rafailov et al. 2023)."""
    import torch.nn.functional as F

    margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    return -F.logsigmoid(margin), margin


def chosen_nll(token_logps: Any, mask: Any) -> Any:
    """Mean negative log-likelihood of the chosen answers' tokens (the first half of the batch):
    trl's 'sft' loss type, the NLL term of DPO+NLL / RPO."""
    half = token_logps.shape[0] // 2
    return -(token_logps[:half] * mask[:half]).sum() / mask[:half].sum()


# ---- data ----------------------------------------------------------------------------------------

def pair_problem(pair: dict) -> str | None:
    """Why a pair must not be trained on, or None: a missing field, an empty prompt or
    answer, or chosen equal to rejected (no preference to learn)."""
    if any(pair.get(f) is None for f in DPO_FIELDS):
        return "missing_field"
    if not pair["prompt"].strip():
        return "empty_prompt"
    if not pair["chosen"].strip() or not pair["rejected"].strip():
        return "empty_answer"
    if pair["chosen"].strip() == pair["rejected"].strip():
        return "chosen_equals_rejected"
    return None


def dpo_rows(pairs: list[dict], tokenizer: Any, max_len: int) -> tuple[list[dict], dict]:
    """Tokenised rows {prompt_ids, chosen_ids, rejected_ids} of the good pairs and the
    counts: kept, rejected by reason (too_long: the answers leave no room), documents cut."""
    rows, rejected, cut = [], Counter(), 0
    for pair in pairs:
        problem = pair_problem(pair)
        if problem is None:
            texts = render(tokenizer, "", chosen=pair["chosen"], rejected=pair["rejected"])
            chosen, other = encode(tokenizer, texts["chosen"]), encode(tokenizer, texts["rejected"])
            fitted = fit_prompt(tokenizer, pair["prompt"], pair["document"],
                                max_len - max(len(chosen), len(other)))
            problem = None if fitted else "too_long"
        if problem:
            rejected[problem] += 1
            continue
        cut += fitted[2]
        rows.append({"prompt_ids": fitted[1], "chosen_ids": chosen, "rejected_ids": other})
    return rows, {"kept": len(rows), "rejected": dict(sorted(rejected.items())),
                  "documents_cut": cut}


def chosen_rows(pairs: list[dict], replay: list[Any], tokenizer: Any, max_len: int
                ) -> tuple[list[dict], dict]:
    """SFT rows {input_ids, prompt_len} of the good pairs' chosen answers and of the replayed
    format instructions, and the counts (the same rejection reasons as ``dpo_rows``)."""
    rows, rejected, cut = [], Counter(), 0
    examples = [(pair_problem(p), p.get("prompt"), p.get("document"), p.get("chosen"))
                for p in pairs]
    examples += [(None, i.prompt, "", i.answer) for i in replay]
    for problem, prompt, document, answer in examples:
        row = None if problem else completion_row(tokenizer, prompt, document, answer, max_len)
        if problem is None and row is None:
            problem = "too_long"
        if problem:
            rejected[problem] += 1
            continue
        cut += row[1]
        rows.append(row[0])
    return rows, {"kept": len(rows), "replay_instructions": len(replay),
                  "rejected": dict(sorted(rejected.items())), "documents_cut": cut}


def dpo_batch(rows: list[dict], device: Any) -> dict[str, Any]:
    """Prompt + chosen sequences, then prompt + rejected (one forward pass for both, as trl's
    concatenated forward), right-padded, with a mask of the completion tokens."""
    import torch
    from trl.trainer.utils import pad

    seqs, masks = [], []
    for side in ("chosen_ids", "rejected_ids"):
        for row in rows:
            seqs.append(torch.tensor(row["prompt_ids"] + row[side], dtype=torch.long))
            masks.append(torch.tensor([0] * len(row["prompt_ids"]) + [1] * len(row[side])))
    batch = {"input_ids": pad(seqs, 0), "completion_mask": pad(masks, 0),
             "attention_mask": pad([torch.ones_like(s) for s in seqs], 0)}
    return {k: v.to(device) for k, v in batch.items()}


# ---- the objective (runs on every rank) ----------------------------------------------------------

def dpo_setup(worker: WorkerConfig, engine: Any) -> dict[str, Any]:
    """Per-rank state of the loss: beta, the NLL weight and the frozen reference (None with
    LoRA: the policy with its adapters disabled is the start model)."""
    state = {"beta": worker.objective_args["beta"],
             "nll_weight": worker.objective_args["nll_weight"], "model": None}
    if worker.method == "lora":
        return state
    return state | {"model": frozen_reference(worker, engine)}


def frozen_reference(worker: WorkerConfig, engine: Any) -> Any:
    """A frozen copy of the start model beside the policy, in the policy's dtype. Under ZeRO-3
    DeepSpeed partitions it over the ranks (no optimizer), so a large copy is never whole on
    one device."""
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(worker.start_model())
    reference.eval().requires_grad_(False)
    ds = worker.ds_config
    if ds["zero_optimization"]["stage"] != 3:
        return reference.to(engine.device, dtype=next(engine.module.parameters()).dtype)
    import deepspeed

    inference = {k: ds[k] for k in ("train_micro_batch_size_per_gpu", "bf16", "fp16")}
    inference["zero_optimization"] = {"stage": 3, "stage3_param_persistence_threshold": 0}
    wrapped, *_ = deepspeed.initialize(model=reference, config=inference)
    wrapped.eval()
    return wrapped


def reference_logps(engine: Any, state: dict, batch: dict) -> Any:
    """Summed completion log-probs under the reference, without gradients."""
    import torch

    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "use_cache": False}
    with torch.no_grad():
        if state["model"] is None:
            with engine.module.disable_adapter():
                logits = engine.module(**inputs).logits
        else:
            logits = state["model"](**inputs).logits
    return completion_logps(logits, batch["input_ids"], batch["completion_mask"])[0]


def dpo_loss(engine: Any, batch: dict, state: dict) -> tuple[Any, dict[str, float]]:
    """DPO (+ nll_weight x chosen NLL) of one micro-batch, and what to log about it."""
    logits = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    use_cache=False).logits
    logps, token_logps, mask = completion_logps(logits, batch["input_ids"],
                                                batch["completion_mask"])
    ref = reference_logps(engine, state, batch)
    losses, rewards = dpo_losses(*logps.chunk(2), *ref.chunk(2), state["beta"])
    nll = chosen_nll(token_logps, mask)
    loss = losses.mean() + state["nll_weight"] * nll
    return loss, {"dpo_loss": losses.mean().item(), "reward_margin": rewards.mean().item(),
                  "reward_accuracy": (rewards > 0).float().mean().item(),
                  "chosen_nll": nll.item()}


DPO = Objective("dpo", dpo_batch, dpo_loss, dpo_setup)
"""Preference pairs against a frozen reference."""


# ---- held-out measurement ------------------------------------------------------------------------

def pair_logps(model: Any, rows: list[dict], batch_size: int = 8) -> list[tuple[float, float]]:
    """(log pi(chosen), log pi(rejected)) of every held-out row, summed over answer tokens."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            batch = dpo_batch(rows[i:i + batch_size], "cpu")
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           use_cache=False).logits
            chosen, rejected = completion_logps(logits, batch["input_ids"],
                                                batch["completion_mask"])[0].chunk(2)
            out += list(zip(chosen.tolist(), rejected.tolist()))
    return out


def preference_metrics(policy: list[tuple[float, float]], reference: list[tuple[float, float]],
                       beta: float) -> dict[str, float]:
    """Against the reference: mean implicit reward margin and the share of pairs it ranks
    right (reward accuracy); on its own: the share of pairs whose chosen answer is more
    likely than the rejected one (win rate against the rejected answers)."""
    margins = [beta * ((c - rc) - (r - rr)) for (c, r), (rc, rr) in zip(policy, reference)]
    return {"reward_margin": round(sum(margins) / len(margins), 4),
            "reward_accuracy": round(sum(m > 0 for m in margins) / len(margins), 4),
            "win_rate": round(sum(c > r for c, r in policy) / len(policy), 4)}


def heldout_pairs(pairs: list[dict], tokenizer: Any, max_len: int, max_new_tokens: int
                  ) -> tuple[list[dict], dict, list[tuple[dict, str]]]:
    """Before any training: the held-out rows (both answers scored), their counts, and the
    (pair, prompt cut to leave max_new_tokens) questions answered greedily; none that fits is
    an error now, not after training."""
    rows, counts = dpo_rows(pairs, tokenizer, max_len)
    fitted = [(p, fit_prompt(tokenizer, p["prompt"], p["document"], max_len - max_new_tokens))
              for p in pairs if pair_problem(p) is None]
    questions = [(p, f[0]) for p, f in fitted if f]
    if not rows or not questions:
        raise ValueError(f"dpo: none of the {len(pairs)} held-out pairs fits max_seq_len "
                         f"{max_len} (with max_new_tokens {max_new_tokens} for answers); raise "
                         "dpo.max_seq_len")
    return rows, counts, questions


def qa_metrics(model: Any, tokenizer: Any, questions: list[tuple[dict, str]],
               max_new_tokens: int) -> dict[str, Any]:
    """Greedy answers to the held-out questions scored against the truth: overall correctness,
    numeric correctness (questions with a context whose answer is a figure) as written and with
    the answer's source resolved against the prompt (tasks/grounding.py), correctness on the
    knowledge questions (no context); of the context answers (but decisions) that state a figure
    (n_supported), the share whose figures their context all supports (tasks/grounding.support);
    and invented citations."""
    from mortgagellm.datasets.tasks import invented_citations
    from mortgagellm.datasets.tasks.grounding import resolve, support
    from mortgagellm.modeling import chat_generate

    outputs = chat_generate(model, tokenizer, [text for _, text in questions], max_new_tokens)
    texts = [text for text, _ in outputs]
    pairs = [p for p, _ in questions]
    scores = [score("qa", parse_answer("qa", t), p["truth"]) for p, t in zip(pairs, texts)]
    served = [resolve(t, q)[0] for (_, q), t in zip(questions, texts)]
    grounded = [score("qa", parse_answer("qa", t), p["truth"]) for p, t in zip(pairs, served)]
    checked = [not c["unsupported"] for c in (
        support(t, q) for (p, q), t in zip(questions, served)
        if p["document"] and p["truth"]["mode"] != "decision") if c["figures"]]
    numeric = [bool(p["document"]) and p["truth"]["mode"] in NUMERIC_MODES for p in pairs]
    known = [s for p, s in zip(pairs, scores) if not p["document"]]
    invented = sum(bool(invented_citations(t, p["document"])) for p, t in zip(pairs, texts))

    def share(values: list[float]) -> float:
        kept = [v for v, n in zip(values, numeric) if n]
        return round(sum(kept) / max(1, len(kept)), 4)

    return {"qa_correct": round(sum(scores) / len(scores), 4),
            "qa_numeric_correct": share(scores), "qa_numeric_grounded": share(grounded),
            "qa_knowledge": round(sum(known) / max(1, len(known)), 4), "n_knowledge": len(known),
            "qa_supported": round(sum(checked) / max(1, len(checked)), 4),
            "n_supported": len(checked),
            "n_numeric": sum(numeric), "invented_citation_rate": round(invented / len(texts), 4),
            "n": len(texts), "example": texts[0][:300]}


def conversational_metrics(models: dict[str, dict], rows: list[dict],
                           questions: list[tuple[dict, str]], held: list[Instruction], cfg: Any
                           ) -> dict[str, dict]:
    """Preference metrics of every model against the start model (the DPO reference), its QA
    metrics and its instruction fidelity on the `held` out format instructions (none: not
    measured); models with the same content hash are measured once."""
    from transformers import AutoTokenizer

    from mortgagellm.modeling import fidelity

    def measure(path: str) -> tuple[list, dict]:
        model, tokenizer = load_model(path), AutoTokenizer.from_pretrained(path)
        obeyed = {"fidelity": round(fidelity(model, tokenizer, held)["fidelity"], 4),
                  "n_instructions": len(held)} if held else {}
        return pair_logps(model, rows), qa_metrics(model, tokenizer, questions,
                                                   cfg.max_new_tokens) | obeyed

    measured = measure_once(models, measure)
    reference = measured["start"][0]
    return {name: preference_metrics(logps, reference, cfg.beta) | qa
            for name, (logps, qa) in measured.items()}


# ---- the stage -----------------------------------------------------------------------------------

def training_pairs(recipe: Recipe, cfg: Any, start: dict[str, str], tasks: Path
                   ) -> tuple[list[dict], dict | None]:
    """dpo_train's pairs, plus on-policy pairs from the start model (its manifest entry) when
    the recipe asks (training/onpolicy.py; its Ray Data pipeline starts Ray as the recipe says
    if this process has none yet). Returns the pairs and the on-policy counts (None when off)."""
    pairs = read_task_set(tasks / "dpo_train.parquet")
    if not cfg.onpolicy.enabled:
        return pairs, None

    from mortgagellm.cluster.runtime import ensure_ray
    from mortgagellm.training.onpolicy import onpolicy_pairs

    ensure_ray(recipe.ray, recipe.run.local_dir)
    new, counts = onpolicy_pairs(pairs, manifest.portable(recipe, start), recipe.run,
                                 cfg.onpolicy, cfg.max_seq_len, recipe.run.seed, cfg.threads)
    return pairs + new, counts


def sft_phase(recipe: Recipe, cfg: Any, entry: dict[str, str], pairs: list[dict],
              tokenizer: Any, out: Path, on_ray: bool, fingerprint: str) -> tuple[Path, dict]:
    """dpo.sft: fine-tune the start model (`entry`, its manifest entry) on the chosen answers
    (plus replayed format instructions), export it merged to <out>/sft_model; returns it and
    what the phase did."""
    settings, start = cfg.sft, Path(entry["uri"])
    replay = list(instructions("train", recipe.run.seed, settings.replay_instructions)
                  ) if settings.replay_instructions else []
    rows, counts = chosen_rows(pairs, replay, tokenizer, cfg.max_seq_len)
    phase = cfg.model_copy(update={
        "method": settings.method, "epochs": settings.epochs,
        "deepspeed": cfg.deepspeed.model_copy(update={"lr": settings.lr})})
    order = epoch_order(len(rows), settings.epochs, global_batch(phase), recipe.run.seed)
    steps = len(order) // global_batch(phase)
    check_setup(recipe, phase, start, steps, "dpo.sft")
    log.info("dpo.sft: %d chosen answers and %d instructions, %d steps", len(rows) - len(replay),
             len(replay), steps)
    work = out / "sft_phase"
    rows_file = write_rows(recipe, rows, order, work / "data" / "train.parquet")
    worker = worker_config(recipe, phase, entry, [rows_file], work,
                           seq_len=cfg.max_seq_len, max_steps=steps,
                           warmup_steps=round(cfg.warmup_ratio * steps))
    history, checkpoint, _ = training.run(SFT, worker, recipe, phase, work, on_ray, fingerprint,
                                          name="chosen-sft")
    shutil.rmtree(out / "sft_model", ignore_errors=True)
    model_dir = export_model(checkpoint, start, out / "sft_model", phase.method,
                             cfg.lora.model_dump(), cfg.deepspeed.zero_stage, merge=True)
    return model_dir, counts | {"steps": steps, "epochs": settings.epochs,
                                "train": history[-1]}


def run(recipe: Recipe, force: bool = False, *, on_ray: bool = True,
        fail_at_step: int | None = None) -> manifest.Manifest:
    """Train the start model on the preference pairs, export it, measure it against the start
    and instruct models on held-out QA. `fail_at_step`: fault-tolerance tests only."""
    from transformers import AutoTokenizer

    cfg, out = recipe.dpo, stage_dir(recipe, "dpo")
    models = start_models(recipe)
    source_config, inputs = task_source(recipe, cfg.task_source)
    inputs |= models
    config = {"seed": recipe.run.seed, "dpo": cfg.fingerprinted(), **source_config}
    pending = manifest.begin("dpo", out, config, inputs,
                             uri=manifest.stage_uri(recipe, "dpo"))
    if done := manifest.skip_if_current(pending, force):
        return done
    set_threads(cfg.threads)
    start = Path(models["start"]["uri"])
    tasks = task_dir(recipe, cfg.task_source, out)
    tokenizer = AutoTokenizer.from_pretrained(start)
    sft = None
    if cfg.sft.epochs:
        sft_model, sft = sft_phase(recipe, cfg, models["start"],
                                   read_task_set(tasks / "dpo_train.parquet"), tokenizer, out,
                                   on_ray, pending.fingerprint)
        models["sft"] = manifest.artifact(sft_model)
        manifest.share(recipe, models["sft"])  # the start of what follows, on any node
        start = sft_model
    pairs, sampled = training_pairs(recipe, cfg, models.get("sft", models["start"]), tasks)
    formats = preference_pairs("train", recipe.run.seed, cfg.instruction_pairs)
    rows, counts = dpo_rows(pairs + formats, tokenizer, cfg.max_seq_len)
    eval_rows, eval_counts, questions = heldout_pairs(
        subset(read_task_set(tasks / "eval_qa.parquet"), cfg.eval_pairs, recipe.run.seed),
        tokenizer, cfg.max_seq_len, cfg.max_new_tokens)
    order = epoch_order(len(rows), cfg.epochs, global_batch(cfg), recipe.run.seed)
    steps = len(order) // global_batch(cfg)
    check_setup(recipe, cfg, start, steps, "dpo")
    log.info("dpo: %d pairs kept (%s rejected), %d steps", counts["kept"], counts["rejected"],
             steps)
    rows_file = write_rows(recipe, rows, order, out / "data" / "train.parquet")
    worker = worker_config(recipe, cfg, models.get("sft", models["start"]), [rows_file], out,
                           seq_len=cfg.max_seq_len, max_steps=steps,
                           warmup_steps=round(cfg.warmup_ratio * steps), fail_at_step=fail_at_step,
                           objective_args={"beta": cfg.beta, "nll_weight": cfg.nll_weight})
    history, checkpoint, placement = training.run(DPO, worker, recipe, cfg, out, on_ray,
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
    measured = conversational_metrics(models | {"expert": manifest.artifact(model_dir)},
                                      eval_rows, questions,
                                      list(instructions("eval", recipe.run.seed,
                                                        cfg.eval_instructions)), cfg)
    metrics = {"records": counts | {"steps": steps, "epochs": cfg.epochs,
                                    "instruction_pairs": len(formats)}, "sft": sft,
               "onpolicy": sampled,
               "heldout_pairs": eval_counts, "train": history[-1], "history": history,
               "heldout": measured, "export": cfg.export, "placement": placement,
               "adapter_base": models.get("sft", models["start"])["sha256"] if adapter else None}
    return manifest.finish(pending, {"model": manifest.artifact(model_dir)} | adapters, metrics)
