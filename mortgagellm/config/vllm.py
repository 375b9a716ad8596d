"""Engine vllm's section of an expert (serve.<expert>.vllm): Ray Serve LLM's LLMConfig as plain
data, and what a deployment needs to run it. serve/llm.py turns it into the LLMConfig."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from mortgagellm.config.base import Section

LLM_CONFIG_SET = {
    "model_loading_config": "the model comes from the registry, its id from vllm.model_id",
    "engine_kwargs": "set vllm.engine_kwargs",
    "deployment_config": "set the expert's autoscaling, max_ongoing_requests, "
                         "max_queued_requests, health_check_* and num_cpus",
    "lora_config": "set serve.adapters.vllm.lora (topology adapters only)",
    "accelerator_type": "set the expert's accelerator_type",
    "llm_engine": "vLLM, the one engine Ray Serve LLM has",
}
"""LLMConfig fields mortgagellm sets from the recipe (serve/llm.py), refused in vllm.llm_config,
and where to set each instead."""
LLM_CONFIG_EXTRA = ("runtime_env", "placement_group_config", "accelerator_config",
                    "experimental_configs", "log_engine_metrics", "callback_config")
"""The other LLMConfig fields (Ray 2.60), which vllm.llm_config passes through as given."""
ENGINE_KWARGS_SET = {
    "model": "the model comes from the registry (serve.<expert>.model)",
    "served_model_name": "set serve.<expert>.vllm.model_id",
    "max_num_seqs": "set serve.<expert>.max_batch_size, which engine vllm passes as max_num_seqs",
    "enable_lora": "set by serve.adapters.vllm.lora (topology adapters only)",
    "max_loras": "set serve.adapters.vllm.lora.max_num_adapters_per_replica",
}
"""vLLM engine arguments mortgagellm sets itself, and where to set each instead."""
REMOTE_SCHEMES = ("s3://", "gs://", "abfss://", "azure://")
"""Where Ray Serve LLM's LoRA loader reads adapters from (its dynamic_lora_loading_path)."""


class VllmSettings(Section):
    """Engine vllm: Ray Serve LLM's LLMConfig fields as plain data. serve/llm.py builds the
    LLMConfig of the expert's LLMServer deployment from these and from the expert's own settings
    (num_cpus, num_gpus, accelerator_type, autoscaling, queue limits, health checks,
    max_batch_size); nothing here imports Ray Serve LLM or vLLM."""

    model_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9._-]+$", description="The id the LLMServer serves the model "
        "under (LLMConfig.model_loading_config.model_id: vLLM's served model name and its "
        "metrics' model_name). None: the expert's public model name (mortgagellm-structured, "
        "mortgagellm-chat; AdapterExperts: mortgagellm-base). Letters, digits, '.', '_', '-': "
        "a LoRA adapter is asked for as `<model_id>:<adapter version>`.")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="vLLM engine arguments (LLMConfig.engine_kwargs: "
        "AsyncEngineArgs' fields), e.g. max_model_len, gpu_memory_utilization, dtype, "
        "enable_prefix_caching, enforce_eager, max_lora_rank. tensor_parallel_size defaults to "
        "num_gpus, and tensor_parallel_size x pipeline_parallel_size must equal it. vLLM sizes "
        "its KV cache from gpu_memory_utilization: serve.<expert>.kv_cache, threads and "
        "batch_wait_timeout_s are not read. Refused, with where to set them: "
        + "; ".join(f"{k} ({why})" for k, why in ENGINE_KWARGS_SET.items()) + ".")
    llm_config: dict[str, Any] = Field(
        default_factory=dict, description="Other LLMConfig fields, passed as given: "
        + ", ".join(LLM_CONFIG_EXTRA) + ". E.g. placement_group_config: {bundle_per_worker: "
        "{GPU: 0.5}} runs the engine on part of a GPU (then num_gpus may be a fraction), "
        "runtime_env: {env_vars: {...}}. The fields mortgagellm sets (" + ", ".join(
            LLM_CONFIG_SET) + ") come from the recipe and are refused here.")
    proxy_num_cpus: float = Field(
        0.25, ge=0, description="Logical CPUs of each replica of the expert deployment in "
        "front of the LLMServer (request translation, grounding check; no model). It runs "
        "where accelerator_type says, beside the LLMServers: it imports Ray Serve LLM's "
        "request types, which need vLLM installed. The LLMServer's replica takes num_cpus, "
        "its engine the GPUs.")

    @field_validator("engine_kwargs")
    @classmethod
    def _not_ours(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        for key, why in ENGINE_KWARGS_SET.items():
            if key in kwargs:
                raise ValueError(f"engine_kwargs.{key} is set by mortgagellm: {why}")
        return kwargs

    @field_validator("llm_config")
    @classmethod
    def _known_fields(cls, fields: dict[str, Any]) -> dict[str, Any]:
        for key in fields:
            if key in LLM_CONFIG_SET:
                raise ValueError(f"llm_config.{key} is set by mortgagellm: {LLM_CONFIG_SET[key]}")
            if key not in LLM_CONFIG_EXTRA:
                raise ValueError(f"llm_config.{key}: not an LLMConfig field this recipe can "
                                 f"set; known: {', '.join(LLM_CONFIG_EXTRA)}")
        return fields


class VllmLoraSettings(Section):
    """Ray Serve LLM multi-LoRA (LLMConfig.lora_config) for serve.topology adapters with
    engine vllm: each request names its route's adapter as `<model_id>:<adapter version>`, and
    the LLMServer loads that adapter from `<dynamic_lora_loading_path>/<adapter version>` on
    first use (kept per replica, least recently used evicted)."""

    dynamic_lora_loading_path: str | None = Field(
        None, description="Remote folder (" + ", ".join(REMOTE_SCHEMES) + ") holding one "
        "folder per adapter version, named by the version (the registry's registry/<version>/ "
        "folders, copied there). Ray Serve LLM loads adapters from remote storage only: None "
        "takes <run.output_dir>/serve/registry, where the registry publishes every version, "
        "when output_dir is remote (required otherwise).")
    max_num_adapters_per_replica: int = Field(
        2, ge=1, description="Adapters one replica keeps loaded (also vLLM's max_loras): 2, "
        "one per expert; more keeps a just-replaced version loaded through a deploy.")

    @field_validator("dynamic_lora_loading_path")
    @classmethod
    def _remote(cls, path: str | None) -> str | None:
        if path is not None and not path.startswith(REMOTE_SCHEMES):
            raise ValueError(f"dynamic_lora_loading_path {path!r}: Ray Serve LLM loads LoRA "
                             f"adapters from remote storage only ({', '.join(REMOTE_SCHEMES)})")
        return path


class AdapterVllmSettings(VllmSettings):
    """VllmSettings of AdapterExperts: one LLMServer with the base model, both adapters on it."""

    lora: VllmLoraSettings = Field(
        default_factory=VllmLoraSettings, description="Where the adapters are loaded from.")
