"""The typed recipe: one pydantic model per stage, loaded from YAML with dotted CLI overrides.

Every field carries a description; unknown keys and bad values are rejected with a message that
names the key and the file. This package imports no torch, so `mortgagellm --help` stays instant.

Modules, in the order a recipe reads: base (Section), cluster (run, Ray, scaling, DeepSpeed),
data (bootstrap, task sets, corpus), training (pretrain, residual, sft, dpo), evaluate, vllm (an
expert's engine vllm), serve, recipe (Recipe, load_recipe, validate_recipe, stage_config). Import
from here.
"""

from mortgagellm.config.base import Section
from mortgagellm.config.cluster import DeepSpeedSettings, RayConfig, RunConfig, ScalingSettings
from mortgagellm.config.data import BootstrapConfig, CorpusConfig, ModelShape, TaskSetsConfig
from mortgagellm.config.evaluate import EvaluateConfig, JudgeSettings
from mortgagellm.config.recipe import (
    ConfigError,
    Recipe,
    load_recipe,
    stage_config,
    validate_recipe,
)
from mortgagellm.config.serve import (
    AdapterSettings,
    ApiKeySettings,
    AuditSettings,
    AutoscalingSettings,
    ExpertSettings,
    KvCacheSettings,
    LimitSettings,
    RouterSettings,
    ServeConfig,
)
from mortgagellm.config.training import (
    DpoConfig,
    LoraSettings,
    OnPolicySettings,
    PretrainConfig,
    ResidualConfig,
    SftConfig,
    TrainingSection,
)
from mortgagellm.config.vllm import AdapterVllmSettings, VllmLoraSettings, VllmSettings

__all__ = [
    "AdapterSettings",
    "AdapterVllmSettings",
    "ApiKeySettings",
    "AuditSettings",
    "AutoscalingSettings",
    "BootstrapConfig",
    "ConfigError",
    "CorpusConfig",
    "DeepSpeedSettings",
    "DpoConfig",
    "EvaluateConfig",
    "ExpertSettings",
    "JudgeSettings",
    "KvCacheSettings",
    "LimitSettings",
    "LoraSettings",
    "ModelShape",
    "OnPolicySettings",
    "PretrainConfig",
    "RayConfig",
    "Recipe",
    "ResidualConfig",
    "RouterSettings",
    "RunConfig",
    "ScalingSettings",
    "Section",
    "ServeConfig",
    "SftConfig",
    "TaskSetsConfig",
    "TrainingSection",
    "VllmLoraSettings",
    "VllmSettings",
    "load_recipe",
    "stage_config",
    "validate_recipe",
]
