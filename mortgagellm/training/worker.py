"""What a training worker is given: a typed WorkerConfig (plain data at the Ray boundary: workers
read no globals), how a stage builds one from its recipe section, and the row order and checks
that come before any worker starts.

A worker may run on another node than the driver, with no volume in common: with a remote
run.output_dir everything it reads is named by its URI (the start model with its hash, fetched
into the worker node's own cache; the rows, read in place) and everything the driver reads back
(placement records, TensorBoard logs) goes to a URI too. With a local output_dir they are the
absolute paths, as a shared volume (or one node) sees them.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mortgagellm import manifest
from mortgagellm.cluster.deepspeed import ds_config
from mortgagellm.cluster.runtime import check_fits
from mortgagellm.cluster.storage import node_copy, node_path
from mortgagellm.config import Recipe, RunConfig


@dataclass(frozen=True)
class WorkerConfig:
    """Everything one rank of the training loop needs; Ray Train carries it as a dict
    (dataclasses.asdict) and the loop rebuilds it (WorkerConfig(**config))."""

    seed: int
    base_model: str
    """The model training starts from: its URI, or its absolute path (see `start_model`)."""
    base_model_sha256: str
    shards: list[str]
    """The Parquet files of training rows: URIs or absolute paths, read in place."""
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
    """Node-local work space (checkpoint parts), placed on each worker's node by `local`."""
    tensorboard_dir: str
    """Where rank 0's TensorBoard logs end up; written on its node (`local`), then uploaded."""
    placement_dir: str
    """Where each rank records its node (cluster/training.py record_placement)."""
    fail_at_step: int | None
    """Rank 0 raises once at this step (fault-tolerance tests only)."""
    failure_marker: str
    run: dict[str, Any]
    """RunConfig.for_nodes(): the worker resolves its own node's cache from it."""
    objective_args: dict[str, Any] = field(default_factory=dict)
    """What the stage's Objective reads beyond these (DPO: beta, nll_weight)."""

    def local(self, where: str) -> Path:
        """This node's place for one of the locations above (storage.node_path)."""
        return node_path(where, RunConfig(**self.run))

    def start_model(self) -> str:
        """The start model as a directory on this node: downloaded once per node and checked
        against its hash when it is a URI (storage.node_copy)."""
        return str(node_copy(self.base_model, self.base_model_sha256, RunConfig(**self.run)))


def worker_config(recipe: Recipe, cfg: Any, start: dict[str, str], shards: list[str], out: Path,
                  *, seq_len: int, max_steps: int, warmup_steps: int,
                  shuffle_seed: int | None = None, peak_tflops: float | None = None,
                  fail_at_step: int | None = None,
                  objective_args: dict[str, Any] | None = None) -> WorkerConfig:
    """A stage's WorkerConfig from its recipe section `cfg` (pretrain, sft or dpo), its start
    model's manifest entry and its rows as `manifest.portable` names them. Every location is a
    URI with a remote output_dir, else an absolute path (a Ray Train worker runs in a directory
    of its own); none is under the driver's cache."""
    start = manifest.portable(recipe, start)

    def where(name: str) -> str:
        return manifest.published(recipe, (out / name).absolute())

    return WorkerConfig(
        seed=recipe.run.seed, base_model=start["uri"], base_model_sha256=start["sha256"],
        shards=shards, shuffle_seed=shuffle_seed, seq_len=seq_len, method=cfg.method,
        lora=cfg.lora.model_dump(), ds_config=ds_config(cfg.deepspeed, cfg.scaling),
        max_steps=max_steps, warmup_steps=warmup_steps, min_lr_ratio=cfg.min_lr_ratio,
        gradient_checkpointing=cfg.gradient_checkpointing,
        checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every,
        peak_tflops=peak_tflops, use_gpu=cfg.scaling.use_gpu, scratch=where("scratch"),
        tensorboard_dir=where("tensorboard"), placement_dir=where("scratch/placement"),
        fail_at_step=fail_at_step, failure_marker=where("injected_failure"),
        run=recipe.run.for_nodes(),
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


def write_rows(recipe: Recipe, rows: list[dict], order: list[int], path: Path) -> str:
    """The training rows in `order` as one Parquet file (small row groups: a resume decodes
    little before its position); returns where workers read it (`manifest.share`: its URI,
    uploaded there, with a remote output_dir, else its absolute path)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([rows[i] for i in order]), path, row_group_size=256)
    return manifest.share(recipe, manifest.artifact(path))["uri"]


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
