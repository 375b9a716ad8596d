"""pretrain stage: domain-adaptive continued pretraining (DAPT) of the base model on the packed
corpus shards, with DeepSpeed under Ray Train (or in one process without Ray).

Run: mortgagellm pretrain configs/cpu-demo.yaml

Set-up and checks happen in `run` before any worker starts; `train_loop` is the per-rank loop and
sees only a Session (cluster/training.py); the maths are plain functions below it.

The loop, its checkpoint/resume and the export are shared with the sft and dpo stages: a stage
hands `train_loop` an `Objective` (how rows become a batch, how a batch becomes a loss) and
everything else — DeepSpeed, LR schedule, checkpoints, logging — stays this one copy.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mortgagellm import manifest
from mortgagellm.cluster.deepspeed import ds_config
from mortgagellm.cluster.runtime import check_fits
from mortgagellm.cluster.training import read_placement
from mortgagellm.config import Recipe
from mortgagellm.pipelines.recipe import require_manifest, stage_dir

log = logging.getLogger(__name__)
DS_TAG = "ds"


# ---- maths -----------------------------------------------------------------------------------

def packed_inputs(input_ids: Any, segment_ids: Any) -> dict[str, Any]:
    """Model inputs for packed rows that keep attention and loss within each document.

    Position ids restart at every document; with no attention_mask given, transformers turns
    restarting positions into a block-diagonal causal mask — but only without a KV cache, hence
    use_cache=False. Labels are -100 on padding (segment 0) and on each document's first token,
    so no token is predicted across a boundary.
    """
    import torch

    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    index = torch.arange(segment_ids.shape[1]).expand_as(segment_ids)
    last_start = torch.cummax(torch.where(starts, index, torch.zeros_like(index)), dim=1).values
    labels = input_ids.masked_fill(starts | (segment_ids == 0), -100)
    return {"input_ids": input_ids, "position_ids": index - last_start, "labels": labels,
            "use_cache": False}


def lm_loss(engine: Any, batch: dict, state: Any) -> tuple[Any, dict[str, float]]:
    """Mean next-token cross-entropy over the labelled tokens (transformers computes it)."""
    return engine(**batch).loss, {}


def packed_batch(rows: list[dict], device: Any) -> dict[str, Any]:
    """Packed corpus rows -> model inputs on `device` (see `packed_inputs`)."""
    import torch

    ids = torch.tensor([r["input_ids"] for r in rows], dtype=torch.long)
    segments = torch.tensor([r["segment_ids"] for r in rows], dtype=torch.long)
    return {k: v.to(device) if hasattr(v, "to") else v
            for k, v in packed_inputs(ids, segments).items()}


@dataclass(frozen=True)
class Objective:
    """What a training stage optimises; the one part of `train_loop` that differs by stage.

    `batch(rows, device)` turns a micro-batch of dataset rows into tensors; `loss(engine, batch,
    state)` returns the loss to backpropagate and extra floats to log (means per logging
    window); `setup(config, engine)`, when given, builds once per rank the `state` the loss
    needs (DPO: the frozen reference model and beta). Plain functions in a record, not a class
    hierarchy.
    """

    name: str
    batch: Callable[[list[dict], Any], dict]
    loss: Callable[[Any, dict, Any], tuple[Any, dict[str, float]]]
    setup: Callable[[dict, Any], Any] | None = None


PACKED_LM = Objective("pretrain", packed_batch, lm_loss)
"""DAPT: causal LM loss on packed corpus rows."""


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak LR: linear warmup to 1, then cosine down to min_ratio at total."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def flops_per_token(n_params: int, n_layers: int, n_heads: int, head_dim: int,
                    seq_len: int) -> float:
    """Training FLOPs per token: 6N for the weights plus 12·L·H·Q·T for attention scores
    (PaLM appendix B; the formula torchtitan reports MFU with)."""
    return 6 * n_params + 12 * n_layers * n_heads * head_dim * seq_len


def mfu(tokens_per_s_per_device: float, flops_token: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the device's peak."""
    return tokens_per_s_per_device * flops_token / (peak_tflops * 1e12)


# ---- the stage ---------------------------------------------------------------------------------

def run(recipe: Recipe, force: bool = False, *, on_ray: bool = True,
        fail_at_step: int | None = None) -> manifest.Manifest:
    """Check everything, train on Ray (or in-process), export the DAPT model, measure it.

    `fail_at_step` makes rank 0 raise once at that step (fault-tolerance tests only).
    """
    cfg = recipe.pretrain
    out = stage_dir(recipe, "pretrain")
    boot, corpus = require_manifest(recipe, "bootstrap"), require_manifest(recipe, "corpus")
    base = Path(boot.output_path("base"))
    shards = find_shards(Path(corpus.output_path("shards")))
    seq_len = validate(recipe, base, shards)
    inputs = {"base": boot.outputs["base"], "shards": corpus.outputs["shards"]}
    config = {"seed": recipe.run.seed, "pretrain": cfg.model_dump(mode="json")}
    fp = manifest.fingerprint("pretrain", config, inputs)
    previous, why = manifest.reusable(str(out), fp)
    if previous and not force:
        log.info("pretrain: up to date (%s); skipping", why)
        return previous
    started, t0 = manifest.now()
    worker_config = _worker_config(recipe, base, shards, seq_len, out, fail_at_step)
    shutil.rmtree(out / "scratch" / "placement", ignore_errors=True)
    history, checkpoint = train(train_loop, worker_config, recipe, cfg, out, on_ray, "dapt", fp)
    model_dir = export_model(checkpoint, base, out / "model", cfg.method, cfg.lora.model_dump(),
                             cfg.deepspeed.zero_stage)
    metrics = {"train": history[-1], "history": history,
               "placement": read_placement(out / "scratch" / "placement"),
               **measure_domain(base, model_dir, recipe.run.seed, cfg.domain_docs)}
    log.info("pretrain: domain perplexity base %.3f -> DAPT %.3f", metrics["perplexity_base"],
             metrics["perplexity_dapt"])
    return manifest.write(str(out), manifest.Manifest(
        stage="pretrain", fingerprint=fp, config=config, inputs=inputs,
        outputs={"model": manifest.artifact(model_dir)}, metrics=metrics, started_at=started,
        duration_s=round(time.monotonic() - t0, 2)))


def find_shards(shard_dir: Path) -> list[str]:
    """The packed Parquet shards in sorted order, as absolute paths (a Ray Train worker runs in
    a directory of its own, so a relative run.output_dir would not resolve there); an empty or
    missing directory is an error."""
    shards = sorted(str(p.absolute()) for p in shard_dir.glob("*.parquet"))
    if not shards:
        raise FileNotFoundError(f"pretrain: no packed shards (*.parquet) in {shard_dir}; "
                                "run `mortgagellm corpus` first")
    return shards


def validate(recipe: Recipe, base: Path, shards: list[str]) -> int:
    """Fail before any worker starts: shard schema, sequence length vs the model, resources.
    Returns the packed sequence length."""
    import pyarrow.parquet as pq

    from mortgagellm.datasets.schemas import PACKED_SCHEMA

    for shard in shards:
        schema = pq.read_schema(shard)
        if not schema.remove_metadata().equals(PACKED_SCHEMA.remove_metadata()):
            raise ValueError(f"pretrain: {shard} is not a packed shard (schema {schema.names})")
    first = pq.ParquetFile(shards[0]).read_row_group(0).column("input_ids")[0].as_py()
    max_pos = json.loads((base / "config.json").read_text())["max_position_embeddings"]
    if len(first) > max_pos:
        raise ValueError(f"pretrain: packed sequence length {len(first)} exceeds the base model's "
                         f"max_position_embeddings {max_pos} ({base})")
    check_fits(recipe.ray, recipe.pretrain.scaling)
    ds_config(recipe.pretrain.deepspeed, recipe.pretrain.scaling)
    return len(first)


def _worker_config(recipe: Recipe, base: Path, shards: list[str], seq_len: int, out: Path,
                   fail_at_step: int | None) -> dict[str, Any]:
    """Everything a worker needs, as plain data (workers read no globals)."""
    cfg = recipe.pretrain
    return {
        "seed": recipe.run.seed, "base_model": str(base.absolute()), "shards": shards,
        "shuffle_seed": recipe.run.seed,  # row groups in a seeded order: sources mixed
        "seq_len": seq_len, "method": cfg.method, "lora": cfg.lora.model_dump(),
        "ds_config": ds_config(cfg.deepspeed, cfg.scaling), "max_steps": cfg.max_steps,
        "warmup_steps": cfg.warmup_steps, "min_lr_ratio": cfg.min_lr_ratio,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "checkpoint_every": cfg.checkpoint_every, "log_every": cfg.log_every,
        "peak_tflops": cfg.peak_tflops, "use_gpu": cfg.scaling.use_gpu,
        "scratch": str((out / "scratch").absolute()),
        "tensorboard_dir": str((out / "tensorboard").absolute()),
        "fail_at_step": fail_at_step, "failure_marker": str((out / "injected_failure").absolute()),
    }


def train(train_fn: Callable[[dict, Any], list[dict]], worker_config: dict, recipe: Recipe,
          cfg: Any, out: Path, on_ray: bool, name: str, fingerprint: str
          ) -> tuple[list[dict], Path]:
    """Run `train_fn` (a `train_loop`) on Ray Train or in this process, resuming from the
    latest checkpoint of the same run; returns the logged metrics history and the final
    checkpoint.

    `cfg` is the stage's recipe section (scaling, keep_checkpoints, max_failures). Checkpoints
    live under <out>/ray/<name>-<fingerprint[:12]> (or <out>/checkpoints/<fingerprint[:12]>
    in-process): a relaunch of the same stage, config and inputs resumes there; a changed config
    starts fresh, and the other runs' checkpoints are removed (they could never be resumed).
    """
    key = fingerprint[:12]
    if not on_ray:
        from mortgagellm.cluster.training import LocalSession, init_single_process

        _drop_other_runs(out / "checkpoints", key)
        init_single_process(cfg.scaling.use_gpu)
        session = LocalSession(worker_config["shards"], out / "checkpoints" / key,
                               cfg.keep_checkpoints, worker_config["shuffle_seed"])
        history = train_fn(worker_config, session)
        return history, session.latest_checkpoint()
    import ray

    from mortgagellm.cluster.runtime import init_ray
    from mortgagellm.cluster.training import run_on_ray

    if not ray.is_initialized():
        init_ray(recipe.ray, recipe.run.output_dir)
    _drop_other_runs(out / "ray", f"{name}-{key}")
    result = run_on_ray(train_fn, worker_config, cfg.scaling, str(out / "ray"), f"{name}-{key}",
                        cfg.max_failures, cfg.keep_checkpoints)
    shutil.rmtree(out / "final_checkpoint", ignore_errors=True)
    final = Path(result.checkpoint.to_directory(str(out / "final_checkpoint")))
    return json.loads((final / "history.json").read_text()), final


def _drop_other_runs(parent: Path, keep: str) -> None:
    """Remove every run directory under `parent` but `keep`: checkpoints of another config."""
    for path in sorted(parent.glob("*")) if parent.is_dir() else []:
        if path.is_dir() and path.name != keep:
            log.info("removing checkpoints of an earlier, different run: %s", path)
            shutil.rmtree(path)


# ---- the per-rank loop ---------------------------------------------------------------------------

def train_loop(config: dict, session: Any, objective: Objective = PACKED_LM) -> list[dict]:
    """Train with DeepSpeed from the latest checkpoint (if any) to max_steps; returns history.

    Rows come from `session.rows` in a fixed order, so a resumed run continues at the exact
    next row; `objective` says how rows become a batch and a loss (default: packed DAPT).
    """
    import deepspeed
    import torch

    torch.manual_seed(config["seed"])
    model = load_trainable(config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    total, warmup, floor = config["max_steps"], config["warmup_steps"], config["min_lr_ratio"]
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=trainable, config=config["ds_config"],
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, warmup, total, floor)))
    state = objective.setup(config, engine) if objective.setup else None
    step, history = _restore(engine, session, objective.name)
    start_step = step
    micro = config["ds_config"]["train_micro_batch_size_per_gpu"]
    accum = config["ds_config"]["gradient_accumulation_steps"]
    rows = session.rows(step * micro * accum)
    flops = _model_flops(model, config["seq_len"])
    writer = _tensorboard(config, session.rank)
    window = _new_window()
    while step < total:
        for _ in range(accum):
            t_wait = time.monotonic()
            batch = objective.batch(_take(rows, micro, objective.name), engine.device)
            tokens = batch["input_ids"].numel()
            window["wait"] += time.monotonic() - t_wait
            loss, stats = objective.loss(engine, batch, state)
            engine.backward(loss)
            engine.step()
            window["loss"] += loss.item() / accum
            window["tokens"] += tokens
            for key, value in stats.items():
                window["stats"][key] = window["stats"].get(key, 0.0) + value / accum
        step += 1
        window["steps"] += 1
        _maybe_fail(config, step, session.rank)
        if step % config["log_every"] == 0 or step == total:
            history.append(_log(window, step, engine, session, flops, config, writer,
                                objective.name) | {"start_step": start_step})
            window = _new_window()
        if step % config["checkpoint_every"] == 0 or step == total:
            _checkpoint(engine, session, step, history)
    return history


def load_trainable(config: dict) -> Any:
    """The base model, with LoRA adapters when asked, gradient checkpointing when asked."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(config["base_model"])
    if config["gradient_checkpointing"]:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if config["method"] == "lora":
        from peft import LoraConfig, get_peft_model

        lora = config["lora"]
        model = get_peft_model(model, LoraConfig(
            r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
            target_modules=lora["target_modules"], task_type="CAUSAL_LM"))
    return model


def _new_window() -> dict:
    return {"loss": 0.0, "tokens": 0, "wait": 0.0, "t0": time.monotonic(), "steps": 0,
            "stats": {}}


def _take(rows: Any, micro: int, name: str) -> list[dict]:
    taken = [next(rows, None) for _ in range(micro)]
    if any(r is None for r in taken):
        raise RuntimeError(f"{name}: the dataset ran out of rows before max_steps; lower "
                           f"{name}.max_steps or provide more data")
    return taken


def _restore(engine: Any, session: Any, name: str) -> tuple[int, list[dict]]:
    """Resume from the session's latest checkpoint: weights, optimizer, scheduler, step, RNG."""
    import torch

    checkpoint = session.latest_checkpoint()
    if checkpoint is None:
        return 0, []
    _, client = engine.load_checkpoint(str(checkpoint), tag=DS_TAG)
    rng = checkpoint / f"rng_rank{session.rank}.pt"
    if rng.exists():
        torch.set_rng_state(torch.load(rng, weights_only=False)["cpu"])
    log.info("%s: resumed at step %d from %s", name, client["step"], checkpoint)
    return client["step"], client["history"]


def _checkpoint(engine: Any, session: Any, step: int, history: list[dict]) -> None:
    """Every rank writes its DeepSpeed shard + RNG state; report() collects them in one place."""
    import torch

    path = session.new_checkpoint_dir(step)
    engine.save_checkpoint(str(path), tag=DS_TAG, client_state={"step": step, "history": history})
    torch.save({"cpu": torch.get_rng_state()}, path / f"rng_rank{session.rank}.pt")
    if session.rank == 0:
        (path / "history.json").write_text(json.dumps(history))
    session.report({"step": step, **(history[-1] if history else {})}, path)


def _maybe_fail(config: dict, step: int, rank: int) -> None:
    marker = Path(config["failure_marker"])
    if config["fail_at_step"] == step and rank == 0 and not marker.exists():
        marker.write_text(str(step))
        raise RuntimeError(f"injected failure at step {step}")


def _model_flops(model: Any, seq_len: int) -> float:
    c = model.config
    head_dim = c.hidden_size // c.num_attention_heads
    n = sum(p.numel() for p in model.parameters())
    return flops_per_token(n, c.num_hidden_layers, c.num_attention_heads, head_dim, seq_len)


def _tensorboard(config: dict, rank: int) -> Any:
    if rank != 0:
        return None
    from tensorboardX import SummaryWriter

    return SummaryWriter(config["tensorboard_dir"])


def _log(window: dict, step: int, engine: Any, session: Any, flops: float, config: dict,
         writer: Any, name: str) -> dict:
    """One progress line and metrics record for the last logging interval (rank 0 logs)."""
    elapsed = time.monotonic() - window["t0"]
    per_device = window["tokens"] / elapsed
    record = {"step": step, "loss": round(window["loss"] / window["steps"], 4),
              "lr": engine.get_lr()[0], "tokens_per_s": round(per_device * session.world_size, 1),
              "data_wait_fraction": round(window["wait"] / elapsed, 4)}
    record |= {key: round(value / window["steps"], 4) for key, value in window["stats"].items()}
    if config["peak_tflops"]:
        record["mfu"] = round(mfu(per_device, flops, config["peak_tflops"]), 4)
    if session.rank == 0:
        log.info("%s step %d/%d  loss %.4f  lr %.2e  %.0f tok/s  data-wait %.1f%%%s", name, step,
                 config["max_steps"], record["loss"], record["lr"], record["tokens_per_s"],
                 100 * record["data_wait_fraction"],
                 f"  MFU {100 * record['mfu']:.1f}%" if "mfu" in record else "")
        for key, value in record.items():
            if key != "step":
                writer.add_scalar(f"{name}/{key}", value, step)
        writer.flush()
    return record


# ---- export and measurement ----------------------------------------------------------------------

def export_model(checkpoint: Path, base: Path, out: Path, method: str, lora: dict,
                 zero_stage: int, merge: bool = True) -> Path:
    """Consolidate the DeepSpeed checkpoint into a Hugging Face safetensors model (+ tokenizer).

    ZeRO partitions are gathered into one fp32 state dict; LoRA adapters are merged into the
    base weights, so the next stage always receives a full model — unless `merge` is False,
    which writes the adapter alone (peft's adapter_config.json + adapter_model.safetensors)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if zero_stage == 0:
        state = torch.load(checkpoint / DS_TAG / "mp_rank_00_model_states.pt",
                           weights_only=False)["module"]
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=DS_TAG)
    model = AutoModelForCausalLM.from_pretrained(base)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
            target_modules=lora["target_modules"], task_type="CAUSAL_LM"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "lora_" in k or method == "full"]:
        raise ValueError(f"pretrain export: checkpoint does not match the model "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    if method == "lora" and merge:
        model = model.merge_and_unload()
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def measure_domain(base: Path, dapt: Path, seed: int, n_docs: int) -> dict[str, float]:
    """Perplexity of base and of the DAPT model on held-out mortgage documents."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mortgagellm.datasets.splits import heldout_domain_texts
    from mortgagellm.modeling import perplexity

    texts = heldout_domain_texts(seed, n_docs)
    tokenizer = AutoTokenizer.from_pretrained(base)
    result = {}
    for name, path in (("base", base), ("dapt", dapt)):
        model = AutoModelForCausalLM.from_pretrained(path)
        result[f"perplexity_{name}"] = round(perplexity(model, tokenizer, texts), 4)
    return result
