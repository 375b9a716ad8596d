"""The typed recipe: one pydantic model per stage, loaded from YAML with dotted CLI overrides.

Every field carries a description; unknown keys and bad values are rejected with a message that
names the key and the file. This module imports no torch, so `mortgagellm --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class RunConfig(Section):
    """Where a run writes and how it is seeded."""

    name: str = Field("mortgagellm", description="Run name, used in logs and job metadata.")
    output_dir: str = Field(
        "runs/cpu-demo",
        description="Root of every stage's output (local path, relative to the working directory, "
        "or s3:// URI); each stage writes <output_dir>/<stage>/ with a manifest.json.",
    )
    seed: int = Field(0, ge=0, description="Global seed; stages derive their own seeds from it.")


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


class ModelShape(Section):
    """Architecture of a locally built Llama; None fields take the preset's value."""

    vocab_size: int | None = Field(None, ge=300, description="Byte-level BPE vocabulary size.")
    hidden_size: int | None = Field(None, ge=8, description="Model width.")
    num_layers: int | None = Field(None, ge=1, description="Decoder layers.")
    num_heads: int | None = Field(None, ge=1, description="Attention heads (= KV heads).")
    intermediate_size: int | None = Field(None, ge=8, description="MLP width.")
    max_position_embeddings: int | None = Field(
        None, ge=16, description="Longest sequence the model accepts."
    )


class BootstrapConfig(Section):
    """Starting models: verify given base/instruct paths, or build a seeded CPU preset pair."""

    base_model: str | None = Field(
        None,
        description="Local path or s3:// URI of a Hugging Face *base* model directory. Set both "
        "base_model and instruct_model to use existing models; leave both unset to build a preset.",
    )
    instruct_model: str | None = Field(
        None, description="Path or URI of the instruct model sharing base_model's initialisation."
    )
    preset: Literal["tiny", "small"] = Field(
        "small",
        description="Built pair size: 'tiny' (seconds, for tests) or 'small' (minutes, demo).",
    )
    shape: ModelShape = Field(default_factory=ModelShape, description="Overrides of the preset.")
    base_steps: int | None = Field(None, ge=1, description="Pretraining steps for base.")
    instruct_steps: int | None = Field(None, ge=1, description="Instruction-tuning steps.")
    batch_size: int | None = Field(None, ge=1, description="Sequences per step.")
    seq_len: int | None = Field(None, ge=16, description="Tokens per pretraining sequence.")
    lr: float | None = Field(None, gt=0, lt=1, description="Peak AdamW learning rate.")
    general_docs: int | None = Field(
        None, ge=10, description="General-text documents the tokenizer and base are trained on."
    )
    domain_fraction: float = Field(
        0.1,
        ge=0,
        le=0.5,
        description="Share of base's text that is light home-finance prose. A base that has seen "
        "the domain's vocabulary keeps DAPT a modest move, which the residual transfer needs "
        "(shared/FINDINGS.md, run B).",
    )
    eval_instructions: int = Field(
        60, ge=5, description="Held-out format instructions used to measure fidelity."
    )
    threads: int | None = Field(
        None, ge=1, description="torch threads for the build (default: all physical cores)."
    )

    @model_validator(mode="after")
    def _paths_come_in_pairs(self) -> "BootstrapConfig":
        if (self.base_model is None) != (self.instruct_model is None):
            raise ValueError(
                "set both base_model and instruct_model (existing models) or neither (build the "
                f"'{self.preset}' preset)"
            )
        return self


class ScalingSettings(Section):
    """Ray Train topology: nodes x workers, resources and placement."""

    num_nodes: int = Field(1, ge=1, description="Nodes the job spans.")
    workers_per_node: int = Field(1, ge=1, description="Train workers (ranks) per node.")
    use_gpu: bool = Field(False, description="One GPU per worker when true.")
    cpus_per_worker: float = Field(1.0, gt=0, description="Logical CPUs reserved per worker.")
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
    def _param_offload_needs_zero3(self) -> "DeepSpeedSettings":
        if self.offload_params and self.zero_stage != 3:
            raise ValueError(
                f"offload_params needs zero_stage 3 (got zero_stage {self.zero_stage})"
            )
        return self


class PretrainConfig(Section):
    """Domain-adaptive pretraining (DAPT): topology and DeepSpeed settings."""

    scaling: ScalingSettings = Field(default_factory=ScalingSettings, description="Topology.")
    deepspeed: DeepSpeedSettings = Field(
        default_factory=DeepSpeedSettings, description="ZeRO, precision, batch and optimizer."
    )


class Recipe(Section):
    """A whole recipe: run-wide settings plus one section per stage."""

    run: RunConfig = Field(default_factory=RunConfig, description="Output and seed.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Ray connection.")
    bootstrap: BootstrapConfig = Field(
        default_factory=BootstrapConfig, description="Starting base + instruct models."
    )
    pretrain: PretrainConfig = Field(
        default_factory=PretrainConfig, description="DAPT training settings."
    )


class ConfigError(ValueError):
    """A recipe that cannot be used; the message names the file and the key."""


def load_recipe(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> Recipe:
    """Load a YAML recipe, apply dotted overrides (`pretrain.deepspeed.lr=3e-4`), validate it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of sections, got {type(data).__name__}")
    pairs = overrides.items() if isinstance(overrides, dict) else map(_split, overrides or [])
    for dotted, value in pairs:
        _set_dotted(data, dotted, value, path)
    return validate_recipe(data, source=str(path))


def validate_recipe(data: dict[str, Any], source: str = "<dict>") -> Recipe:
    """Validate a recipe mapping; errors name each bad key and the source file."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        lines = [_describe(e) for e in err.errors()]
        raise ConfigError(f"{source}: invalid recipe:\n  " + "\n  ".join(lines)) from None


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        known = _known_keys(error["loc"][:-1])
        return f"{key}: unknown key (known keys here: {', '.join(known)})"
    shown = error["type"] not in ("missing", "value_error") and not isinstance(error.get("input"), dict)
    got = f" (got {error.get('input')!r})" if shown else ""
    return f"{key or '<recipe>'}: {error['msg']}{got}"


def _known_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] = Recipe
    for part in loc:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


def _split(override: str) -> tuple[str, Any]:
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form section.key=value")
    dotted, raw = override.split("=", 1)
    return dotted, yaml.safe_load(raw) if raw else None


def _set_dotted(data: dict[str, Any], dotted: str, value: Any, source: Path) -> None:
    parts = dotted.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(
                f"{source}: override {dotted}: {'.'.join(parts[: i + 1])} is not a section"
            )
        node = child
    node[parts[-1]] = value


def stage_config(recipe: Recipe, stage: str) -> dict[str, Any]:
    """The resolved settings a stage depends on, as plain JSON data (for manifests and hashing)."""
    return {"seed": recipe.run.seed, stage: getattr(recipe, stage).model_dump(mode="json")}
