"""Where a training loop runs: under Ray Train (TorchTrainer, one DeepSpeed rank per worker) or in
one plain process (for GPU machines without Ray). The loop sees only a `Session`.

A Session gives the loop its rank, its rows of the packed dataset in a fixed order from any row
position, the latest checkpoint to resume from, and `report(metrics, checkpoint_dir)`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mortgagellm.cluster import storage
from mortgagellm.cluster.data import rank_rows
from mortgagellm.cluster.runtime import scaling_config
from mortgagellm.config import RunConfig, ScalingSettings


def init_single_process(use_gpu: bool) -> None:
    """A one-rank process group on loopback, as DeepSpeed expects one, when not under Ray."""
    import socket

    import torch.distributed as dist

    if dist.is_initialized():
        return
    # DeepSpeed checks the variables a launcher would set.
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl" if use_gpu else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=0, world_size=1)


@dataclass
class LocalSession:
    """One process, no Ray: checkpoints are directories under `checkpoint_root`."""

    shards: list[str]
    checkpoint_root: Path
    keep: int = 2
    shuffle_seed: int | None = None
    rank: int = 0
    world_size: int = 1

    def rows(self, start: int) -> Iterator[dict]:
        """This process's rows from position `start`."""
        return rank_rows(self.shards, self.rank, self.world_size, start, self.shuffle_seed)

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint directory, if any."""
        done = sorted(self.checkpoint_root.glob("step_*/COMPLETE"))
        return done[-1].parent if done else None

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        """Keep the checkpoint (marked complete) and drop all but the newest `keep`."""
        if checkpoint_dir is None:
            return
        (checkpoint_dir / "COMPLETE").write_text(str(metrics.get("step", "")))
        for old in sorted(self.checkpoint_root.glob("step_*"))[: -self.keep]:
            shutil.rmtree(old)

    def new_checkpoint_dir(self, step: int) -> Path:
        """Where the checkpoint of `step` is written."""
        path = self.checkpoint_root / f"step_{step:08d}"
        path.mkdir(parents=True, exist_ok=True)
        return path


class RaySession:
    """Inside a Ray Train worker: rank from the train context, checkpoints through report()."""

    def __init__(self, shards: list[str], scratch: str, shuffle_seed: int | None = None) -> None:
        import ray.train

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.shards, self.shuffle_seed = shards, shuffle_seed
        self.scratch = Path(scratch)
        self._restored: Path | None = None

    def rows(self, start: int) -> Iterator[dict]:
        """This rank's rows from position `start`."""
        return rank_rows(self.shards, self.rank, self.world_size, start, self.shuffle_seed)

    def latest_checkpoint(self) -> Path | None:
        """Ray's latest reported checkpoint, copied to local scratch (all ranks' files)."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        target = self.scratch / f"restore-rank{self.rank}"
        shutil.rmtree(target, ignore_errors=True)
        return Path(checkpoint.to_directory(str(target)))

    def new_checkpoint_dir(self, step: int) -> Path:
        """A fresh local directory for this rank's part of the checkpoint of `step`."""
        path = self.scratch / f"ckpt-rank{self.rank}-step{step:08d}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        """Report metrics; with a checkpoint, every rank uploads its files into one checkpoint."""
        import ray.train

        if checkpoint_dir is None:
            ray.train.report(metrics)
            return
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir))
        shutil.rmtree(checkpoint_dir, ignore_errors=True)


def record_placement(directory: str, rank: int) -> None:
    """Write which node and host this rank runs on into `directory`, a path or URI the driver
    reads back (read_placement) into the stage's manifest."""
    import json
    import socket

    import ray

    storage.write_bytes(f"{directory}/rank{rank}.json", json.dumps(
        {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(),
         "host": socket.gethostname(), "pid": os.getpid()}).encode())


def read_placement(directory: str) -> list[dict]:
    """The placement records of every rank in `directory` (path or URI), by rank."""
    import json

    return sorted((json.loads(storage.read_bytes(f"{directory}/{name}"))
                   for name in storage.files(directory)
                   if name.startswith("rank") and name.endswith(".json")), key=lambda r: r["rank"])


def run_on_ray(train_fn: Callable[[dict, Any], Any], config: dict, scaling: ScalingSettings,
               where: str, name: str, max_failures: int, keep: int) -> Any:
    """Run `train_fn(config, RaySession)` on a TorchTrainer; returns Ray's Result. `where` is
    Ray Train's storage_path: a local directory or a URI (s3://...) every node can reach.

    Re-running with the same storage and name resumes from the latest checkpoint there (a
    stopped job relaunched continues instead of starting over).
    """
    from ray.train import CheckpointConfig, FailureConfig
    from ray.train import RunConfig as TrainRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    def worker(cfg: dict) -> None:
        if scaling.threads_per_worker:
            import torch

            torch.set_num_threads(scaling.threads_per_worker)
        scratch = storage.node_path(cfg["scratch"], RunConfig(**cfg["run"]))  # this node's
        session = RaySession(cfg["shards"], str(scratch), cfg["shuffle_seed"])
        record_placement(cfg["placement_dir"], session.rank)
        train_fn(cfg, session)

    # A URI is resolved here, with this process's settings (AWS_ENDPOINT_URL, region), and
    # handed to Ray as a filesystem: Ray's controller and workers would resolve the URI again
    # in their own environment. Credentials still come from each process's (IAM role, AWS_*).
    fs, path = storage.filesystem(where) if storage.is_remote(where) else (
        None, os.path.abspath(where))
    run_config = TrainRunConfig(
        storage_path=path, storage_filesystem=fs, name=name,
        failure_config=FailureConfig(max_failures=max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=keep),
    )
    trainer = TorchTrainer(
        worker, train_loop_config=config, scaling_config=scaling_config(scaling),
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        run_config=run_config,
    )
    return trainer.fit()
