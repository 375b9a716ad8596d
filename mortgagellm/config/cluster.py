"""Run-wide and distributed settings: where a run writes, how it reaches Ray, and the Ray Train
topology and DeepSpeed knobs the training sections share (cluster/ turns them into objects)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from mortgagellm.config.base import Section


class RunConfig(Section):
    """Where a run writes and how it is seeded."""

    name: str = Field("mortgagellm", description="Run name, used in logs and job metadata.")
    output_dir: str = Field(
        "runs/cpu-demo",
        description="Root of every stage's output (local path, relative to the working directory, "
        "or a URI such as s3://bucket/prefix); each stage's output and manifest.json end up in "
        "<output_dir>/<stage>/. With a URI a stage writes into cache_dir and publishes there "
        "when it finishes (manifest.json last). S3 credentials, region and endpoint come from "
        "the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the node's IAM role, "
        "AWS_DEFAULT_REGION, AWS_ENDPOINT_URL), never from the recipe.",
    )
    cache_dir: str | None = Field(
        None,
        description="Local directory used when output_dir is a URI: stages write "
        "<cache_dir>/<stage>/ before publishing it, earlier stages' outputs are downloaded "
        "there (a copy whose manifest.json equals the published one is reused), and the Ray "
        "token and serve's registry, keys and audit log live there. Default: "
        "$XDG_CACHE_HOME (else ~/.cache)/mortgagellm/<scheme>/<bucket>/<prefix>, resolved on "
        "each node: Ray workers on other nodes fetch the models they load into their own. "
        "Unused with a local output_dir.",
    )
    seed: int = Field(0, ge=0, description="Global seed; stages derive their own seeds from it.")
    repeat_seeds: list[int] = Field(
        [],
        description="Further seeds `mortgagellm report` runs the training stages at, pretrain "
        "through evaluate, each in <output_dir>/seeds/<seed>/ and sharing this run's bootstrap "
        "and corpus (their manifests are copied there). The report then gives the key numbers "
        "at every seed, with their mean and spread. [] (default): one seed.",
    )
    parallel_stages: bool = Field(
        True,
        description="`mortgagellm run` runs stages that read nothing of each other side by side "
        "(the sft and dpo experts, both from the merged model), each a Ray task in a process of "
        "its own on the driver's node with its own Ray Train job: on a 2-core laptop each trains "
        "on one core, on a cluster each gets its own workers. false: one after the other.",
    )

    @model_validator(mode="after")
    def _distinct_seeds(self) -> RunConfig:
        seeds = [self.seed, *self.repeat_seeds]
        if len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ValueError(f"run.repeat_seeds {self.repeat_seeds}: each seed at most once, "
                             f"none negative, none equal to run.seed ({self.seed})")
        return self

    @field_validator("output_dir")
    @classmethod
    def _no_query(cls, value: str) -> str:
        if "://" in value and "?" in value:
            raise ValueError(f"{value!r}: query parameters are not supported in output_dir; set "
                             "the endpoint with AWS_ENDPOINT_URL and the region with "
                             "AWS_DEFAULT_REGION")
        return value

    @property
    def local_dir(self) -> Path:
        """Where this machine writes the run: output_dir itself when it is a local path, else
        cache_dir (absolute; see its description for the default)."""
        if "://" not in self.output_dir or self.output_dir.startswith("file://"):
            return Path(self.output_dir)
        if self.cache_dir:
            return Path(self.cache_dir).expanduser().absolute()
        scheme, rest = self.output_dir.split("://", 1)
        cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return (Path(cache) / "mortgagellm" / scheme / rest.strip("/")).absolute()

    def for_nodes(self) -> dict[str, str | None]:
        """output_dir and cache_dir as plain data for a Ray task, actor or worker on any node:
        an explicit cache_dir made absolute here; the default is resolved on that node (its
        own $XDG_CACHE_HOME or ~/.cache) by `local_dir`. RunConfig(**for_nodes()) rebuilds it."""
        cache = self.cache_dir and str(Path(self.cache_dir).expanduser().absolute())
        return {"output_dir": self.output_dir, "cache_dir": cache}


class RayConfig(Section):
    """How mortgagellm reaches Ray: an embedded local cluster or an existing one."""

    address: str = Field(
        "local",
        description="'local' starts an embedded single-node cluster (never joins a stray one); "
        "'auto' uses RAY_ADDRESS; anything else is an address such as ray://head:10001 or "
        "127.0.0.1:6379.",
    )
    num_cpus: int | None = Field(
        None,
        ge=1,
        description="Logical CPUs the embedded cluster advertises (default: 2 x physical, at "
        "least 4), so Ray Data tasks still schedule while Train workers hold their CPUs.",
    )
    data_cpus: float = Field(
        1.0,
        gt=0,
        description="Logical CPUs kept back for Ray Data while training (Data never takes the CPUs "
        "reserved by Train workers; see cluster/runtime.py).",
    )
    object_store_mb: int = Field(
        512, ge=78, description="Object store size of the embedded cluster, in MiB."
    )
    auth: Literal["token", "disabled"] = Field(
        "token",
        description="Ray token auth. 'token' keeps Ray 2.60's default on, with the token in "
        "<output_dir>/ray/auth_token (or RAY_AUTH_TOKEN_PATH when connecting).",
    )
    temp_dir: str | None = Field(
        None,
        description="Session directory of the embedded cluster (default Ray's /tmp/ray); keep it "
        "short, Unix socket paths are limited to 107 characters.",
    )
    include_dashboard: bool = Field(
        False, description="Start the dashboard with the embedded cluster (bound to 127.0.0.1)."
    )


class ScalingSettings(Section):
    """Ray Train topology: nodes x workers, resources and placement."""

    num_nodes: int = Field(1, ge=1, description="Nodes the job spans.")
    workers_per_node: int = Field(1, ge=1, description="Train workers (ranks) per node.")
    use_gpu: bool = Field(False, description="One GPU per worker when true.")
    cpus_per_worker: float = Field(1.0, gt=0, description="Logical CPUs reserved per worker.")
    threads_per_worker: int | None = Field(
        None,
        ge=1,
        description="torch CPU threads per worker (default: Ray's, = cpus_per_worker). On a "
        "laptop whose logical CPUs exceed its cores, set it to the cores a worker may use.",
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Placement-group strategy for the worker bundles."
    )
    accelerator_type: str | None = Field(
        None, description="Ray accelerator type to pin workers to, e.g. 'A100'."
    )

    @property
    def num_workers(self) -> int:
        """Total ranks = nodes x workers per node."""
        return self.num_nodes * self.workers_per_node


class DeepSpeedSettings(Section):
    """The DeepSpeed knobs a recipe sets; cluster/deepspeed.py turns them into a config dict."""

    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="ZeRO stage 0-3.")
    offload_optimizer: bool = Field(False, description="Optimizer states in CPU memory.")
    offload_params: bool = Field(False, description="Parameters in CPU memory (ZeRO-3 only).")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="'auto' = bf16 on GPU, fp32 on CPU."
    )
    micro_batch_size: int = Field(1, ge=1, description="Sequences per rank per micro-step.")
    grad_accum_steps: int = Field(1, ge=1, description="Micro-steps per optimizer step.")
    grad_clip: float = Field(1.0, ge=0, description="Global gradient-norm clip (0 = off).")
    lr: float = Field(1e-4, gt=0, lt=1, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas.")

    @model_validator(mode="after")
    def _param_offload_needs_zero3(self) -> DeepSpeedSettings:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError(
                f"offload_params needs zero_stage 3 (got zero_stage {self.zero_stage})"
            )
        return self
