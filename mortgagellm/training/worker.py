"""What a training worker is given: a typed WorkerConfig (plain data at the Ray boundary: workers
read no globals), how a stage builds one from its recipe section, and the row order and checks
that come before any worker starts.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mortgagellm.cluster.deepspeed import ds_config
from mortgagellm.cluster.runtime import check_fits
from mortgagellm.config import Recipe


@dataclass(frozen=True)
class WorkerConfig:
    """Everything one rank of the training loop needs; Ray Train carries it as a dict
    (dataclasses.asdict) and the loop rebuilds it (WorkerConfig(**config))."""

    seed: int
    base_model: str
    """Absolute path of the model training starts from."""
    shards: list[str]
    """Absolute paths of the Parquet files of training rows."""
    shuffle_seed: int | None
    """Seed of the row-group order (pretrain mixes sources); None keeps the file order."""
    seq_len: int
    method: str
    lora: dict[str, Any]
    ds_config: dict[str, Any]
    max_steps: int
    warmup_steps: int
    min_lr_ratio: float
    gradient_checkpointing: bool
    checkpoint_every: int
    log_every: int
    peak_tflops: float | None
    use_gpu: bool
    scratch: str
    tensorboard_dir: str
    fail_at_step: int | None
    """Rank 0 raises once at this step (fault-tolerance tests only)."""
    failure_marker: str
    objective_args: dict[str, Any] = field(default_factory=dict)
    """What the stage's Objective reads beyond these (DPO: beta, nll_weight)."""


def worker_config(recipe: Recipe, cfg: Any, start: Path, shards: list[str], out: Path, *,
                  seq_len: int, max_steps: int, warmup_steps: int,
                  shuffle_seed: int | None = None, peak_tflops: float | None = None,
                  fail_at_step: int | None = None,
                  objective_args: dict[str, Any] | None = None) -> WorkerConfig:
    """A stage's WorkerConfig from its recipe section `cfg` (pretrain, sft or dpo); paths are
    absolute, since a Ray Train worker runs in a directory of its own."""
    return WorkerConfig(
        seed=recipe.run.seed, base_model=str(start.absolute()), shards=shards,
        shuffle_seed=shuffle_seed, seq_len=seq_len, method=cfg.method,
        lora=cfg.lora.model_dump(), ds_config=ds_config(cfg.deepspeed, cfg.scaling),
        max_steps=max_steps, warmup_steps=warmup_steps, min_lr_ratio=cfg.min_lr_ratio,
        gradient_checkpointing=cfg.gradient_checkpointing,
        checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every,
        peak_tflops=peak_tflops, use_gpu=cfg.scaling.use_gpu,
        scratch=str((out / "scratch").absolute()),
        tensorboard_dir=str((out / "tensorboard").absolute()), fail_at_step=fail_at_step,
        failure_marker=str((out / "injected_failure").absolute()),
        objective_args=objective_args or {})


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
    max_pos = json.loads((start / "config.json").read_text())["max_position_embeddings"]
    if cfg.max_seq_len > max_pos:
        raise ValueError(f"{name}.max_seq_len {cfg.max_seq_len} exceeds the start model's "
                         f"max_position_embeddings {max_pos} ({start})")
    if steps < 1:
        raise ValueError(f"{name}: fewer training rows than one global batch "
                         f"({global_batch(cfg)}); raise {name}.epochs or the set sizes")
    check_fits(recipe.ray, cfg.scaling)
