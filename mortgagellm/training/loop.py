"""The one training loop every stage runs (pretrain, sft, dpo): DeepSpeed from the latest
checkpoint to max_steps, the LR schedule, checkpoint/restore with RNG state, logging with
throughput and MFU. A stage hands it an `Objective` (how rows become a batch, how a batch becomes
a loss) and a WorkerConfig; everything else is this one copy.

The loop sees only a Session (cluster/training.py): its rank, its rows, its checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mortgagellm.cluster import storage
from mortgagellm.training.export import DS_TAG, load_trainable
from mortgagellm.training.worker import WorkerConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Objective:
    """What a training stage optimises; the one part of `train_loop` that differs by stage.

    `batch(rows, device)` turns a micro-batch of dataset rows into tensors; `loss(engine, batch,
    state)` returns the loss to backpropagate and extra floats to log (means per logging
    window); `setup(worker, engine)`, when given, builds once per rank the `state` the loss
    needs (DPO: the frozen reference model and beta). Plain functions in a record, not a class
    hierarchy.
    """

    name: str
    batch: Callable[[list[dict], Any], dict]
    loss: Callable[[Any, dict, Any], tuple[Any, dict[str, float]]]
    setup: Callable[[WorkerConfig, Any], Any] | None = None



def lm_loss(engine: Any, batch: dict, state: Any) -> tuple[Any, dict[str, float]]:
    """Mean next-token cross-entropy over the labelled tokens (transformers computes it)."""
    return engine(**batch).loss, {}



def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak LR: linear warmup to 1, then cosine down to min_ratio at total."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def schedule(optimizer: Any, warmup: int, total: int, min_ratio: float) -> Any:
    """The LR schedule of every training run (these stages and bootstrap): `lr_factor` per step."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup, total, min_ratio))


def flops_per_token(n_params: int, n_layers: int, n_heads: int, head_dim: int,
                    seq_len: int) -> float:
    """Training FLOPs per token: 6N for the weights plus 12·L·H·Q·T for attention scores
    (PaLM appendix B; the formula torchtitan reports MFU with)."""
    return 6 * n_params + 12 * n_layers * n_heads * head_dim * seq_len


def mfu(tokens_per_s_per_device: float, flops_token: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the device's peak."""
    return tokens_per_s_per_device * flops_token / (peak_tflops * 1e12)


# ---- the per-rank loop ---------------------------------------------------------------------------

def train_loop(config: dict, session: Any, objective: Objective) -> list[dict]:
    """Train with DeepSpeed from the latest checkpoint (if any) to max_steps; returns history.

    `config` is a WorkerConfig as plain data (what Ray Train hands each worker). Rows come from
    `session.rows` in a fixed order, so a resumed run continues at the exact next row;
    `objective` says how rows become a batch and a loss.
    """
    import deepspeed
    import torch

    worker = WorkerConfig(**config)
    torch.manual_seed(worker.seed)
    model = load_trainable(worker.start_model(), worker.method, worker.lora,
                           worker.gradient_checkpointing)
    trainable = [p for p in model.parameters() if p.requires_grad]
    total, warmup, floor = worker.max_steps, worker.warmup_steps, worker.min_lr_ratio
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=trainable, config=worker.ds_config,
        lr_scheduler=lambda opt: schedule(opt, warmup, total, floor))
    state = objective.setup(worker, engine) if objective.setup else None
    step, history = _restore(engine, session, objective.name)
    start_step = step
    micro = worker.ds_config["train_micro_batch_size_per_gpu"]
    accum = worker.ds_config["gradient_accumulation_steps"]
    rows = session.rows(step * micro * accum)
    flops = _model_flops(model, worker.seq_len)
    writer = _tensorboard(worker, session.rank)
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
        _maybe_fail(worker, step, session.rank)
        if step % worker.log_every == 0 or step == total:
            history.append(_log(window, step, engine, session, flops, worker, writer,
                                objective.name) | {"start_step": start_step})
            window = _new_window()
        if step % worker.checkpoint_every == 0 or step == total:
            _checkpoint(engine, session, step, history)
            _publish_logs(worker, writer)
    return history


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


def _maybe_fail(worker: WorkerConfig, step: int, rank: int) -> None:
    marker = worker.failure_marker  # a path or URI: a restarted rank 0 may be on another node
    if worker.fail_at_step == step and rank == 0 and not storage.exists(marker):
        storage.write_bytes(marker, str(step).encode())
        raise RuntimeError(f"injected failure at step {step}")


def _model_flops(model: Any, seq_len: int) -> float:
    c = model.config
    head_dim = c.hidden_size // c.num_attention_heads
    n = sum(p.numel() for p in model.parameters())
    return flops_per_token(n, c.num_hidden_layers, c.num_attention_heads, head_dim, seq_len)


def _tensorboard(worker: WorkerConfig, rank: int) -> Any:
    if rank != 0:
        return None
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(worker.local(worker.tensorboard_dir)))


def _publish_logs(worker: WorkerConfig, writer: Any) -> None:
    """Rank 0's TensorBoard logs to their URI, at every checkpoint: a resumed rank 0, maybe on
    another node, writes new event files beside the ones kept there. (Nothing to do when the
    location is a path: the logs are written in place.)"""
    if writer is None or not storage.is_remote(worker.tensorboard_dir):
        return
    writer.flush()
    storage.copy_into(writer.logdir, worker.tensorboard_dir)


def clock(seconds: float) -> str:
    """Seconds as m:ss (h:mm:ss from an hour)."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _log(window: dict, step: int, engine: Any, session: Any, flops: float, worker: WorkerConfig,
         writer: Any, name: str) -> dict:
    """One progress line and metrics record for the last logging interval (rank 0 logs)."""
    elapsed = time.monotonic() - window["t0"]
    per_device = window["tokens"] / elapsed
    record = {"step": step, "loss": round(window["loss"] / window["steps"], 4),
              "lr": engine.get_lr()[0], "tokens_per_s": round(per_device * session.world_size, 1),
              "data_wait_fraction": round(window["wait"] / elapsed, 4)}
    record |= {key: round(value / window["steps"], 4) for key, value in window["stats"].items()}
    if worker.peak_tflops:
        record["mfu"] = round(mfu(per_device, flops, worker.peak_tflops), 4)
    record["eta_s"] = round(elapsed / window["steps"] * (worker.max_steps - step))
    if session.rank == 0:
        log.info("%s step %d/%d  loss %.4f  lr %.2e  %.0f tok/s  data-wait %.1f%%%s  ETA %s",
                 name, step, worker.max_steps, record["loss"], record["lr"],
                 record["tokens_per_s"], 100 * record["data_wait_fraction"],
                 f"  MFU {100 * record['mfu']:.1f}%" if "mfu" in record else "",
                 clock(record["eta_s"]))
        for key, value in record.items():
            if key != "step":
                writer.add_scalar(f"{name}/{key}", value, step)
        writer.flush()
    return record
