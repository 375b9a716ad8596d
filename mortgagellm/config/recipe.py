"""The whole recipe: its sections, loading from YAML with dotted overrides, validation with
messages that name the key and the file, and the resolved settings of one stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import AliasChoices, BaseModel, Field, ValidationError, model_validator

from mortgagellm.config.base import Section
from mortgagellm.config.cluster import RayConfig, RunConfig
from mortgagellm.config.data import BootstrapConfig, CorpusConfig
from mortgagellm.config.evaluate import EvaluateConfig
from mortgagellm.config.serve import ServeConfig
from mortgagellm.config.training import DpoConfig, PretrainConfig, ResidualConfig, SftConfig


class Recipe(Section):
    """A whole recipe: run-wide settings plus one section per stage."""

    run: RunConfig = Field(default_factory=RunConfig, description="Output and seed.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Ray connection.")
    bootstrap: BootstrapConfig = Field(
        default_factory=BootstrapConfig, description="Starting base + instruct models."
    )
    corpus: CorpusConfig = Field(
        default_factory=CorpusConfig, description="Mortgage corpus to packed token shards."
    )
    pretrain: PretrainConfig = Field(
        default_factory=PretrainConfig, description="DAPT training settings."
    )
    residual: ResidualConfig = Field(
        default_factory=ResidualConfig, description="Instruction residual merge and its gate."
    )
    sft: SftConfig = Field(
        default_factory=SftConfig, description="Structured-task expert (SFT) training settings."
    )
    dpo: DpoConfig = Field(
        default_factory=DpoConfig, description="Conversational expert (DPO) training settings."
    )
    evaluate: EvaluateConfig = Field(
        default_factory=EvaluateConfig, description="Held-out evaluation of every model made."
    )
    serve: ServeConfig = Field(
        default_factory=ServeConfig, description="Router, experts, API, limits and audit log."
    )

    @model_validator(mode="after")
    def _adapters_in_remote_storage(self) -> Recipe:
        adapters = self.serve.adapters
        if (self.serve.topology == "adapters" and adapters.engine == "vllm"
                and adapters.vllm.lora.dynamic_lora_loading_path is None
                and "://" not in self.run.output_dir):
            raise ValueError(
                "serve.adapters.vllm.lora.dynamic_lora_loading_path is required with "
                "serve.adapters.engine vllm and a local run.output_dir: Ray Serve LLM loads "
                "each adapter from <path>/<adapter version> in remote storage (s3://, gs://, "
                "...); copy the registry's registry/<version>/ folders there. With a remote "
                "output_dir it defaults to <output_dir>/serve/registry, where the registry "
                "publishes every version")
        return self


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
    shown = (error["type"] not in ("missing", "value_error")
             and not isinstance(error.get("input"), dict))
    got = f" (got {error.get('input')!r})" if shown else ""
    return f"{key or '<recipe>'}: {error['msg']}{got}"


def _known_keys(loc: tuple) -> list[str]:
    model = _section(loc)
    return sorted(model.model_fields) if model else []


def _section(loc: tuple) -> type[BaseModel] | None:
    """The section model at `loc` (a path of field names from Recipe), or None off the tree."""
    model: type[BaseModel] = Recipe
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _other_names(parts: list[str]) -> list[str]:
    """The field's other accepted names, when `parts` names a field that has an old name too
    (pretrain.domain_docs, once eval_docs)."""
    model = _section(tuple(parts[:-1]))
    for name, field in (model.model_fields.items() if model else ()):
        alias = field.validation_alias
        names = [name, *alias.choices] if isinstance(alias, AliasChoices) else [name]
        if parts[-1] in names:
            return [n for n in names if isinstance(n, str) and n != parts[-1]]
    return []


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
    # An override replaces the file's value whichever of a field's names each of them uses;
    # left beside it, the file's key would be rejected as unknown.
    for name in _other_names(parts):
        node.pop(name, None)


def stage_config(recipe: Recipe, stage: str) -> dict[str, Any]:
    """The resolved settings a stage depends on, as plain JSON data (for manifests and hashing)."""
    return {"seed": recipe.run.seed, stage: getattr(recipe, stage).model_dump(mode="json")}
