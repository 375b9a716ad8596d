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
        description="Share of base's general documents that are light home-finance prose.",
    )
    domain_documents: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Generated mortgage documents added to base's text, as a fraction of "
        "general_docs (clean, from their own seed stream: never the corpus' or the eval sets'). "
        "A base that has seen the domain keeps DAPT a modest move, which the residual transfer "
        "needs (shared/FINDINGS.md, run B); 0 gives run A, where the transfer fails.",
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
    def _param_offload_needs_zero3(self) -> "DeepSpeedSettings":
        if self.offload_params and self.zero_stage != 3:
            raise ValueError(
                f"offload_params needs zero_stage 3 (got zero_stage {self.zero_stage})"
            )
        return self


class LoraSettings(Section):
    """LoRA adapters (peft); the trained adapter is merged into the exported model."""

    r: int = Field(16, ge=1, description="Adapter rank.")
    alpha: int = Field(32, ge=1, description="Scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] = Field(
        ["q_proj", "v_proj"], min_length=1, description="Module names that get adapters."
    )


class PretrainConfig(Section):
    """Domain-adaptive pretraining (DAPT) of the base model on the packed corpus shards."""

    method: Literal["full", "lora"] = Field(
        "full", description="Train every parameter, or LoRA adapters merged at export."
    )
    lora: LoraSettings = Field(default_factory=LoraSettings, description="Used when method=lora.")
    max_steps: int = Field(200, ge=1, description="Optimizer steps.")
    warmup_steps: int = Field(10, ge=0, description="Linear warmup steps before cosine decay.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final LR as a share of peak.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward (saves memory, costs ~30 % time)."
    )
    checkpoint_every: int = Field(50, ge=1, description="Steps between DeepSpeed checkpoints.")
    keep_checkpoints: int = Field(2, ge=1, description="Most recent checkpoints kept.")
    log_every: int = Field(10, ge=1, description="Steps between progress lines and metrics.")
    max_failures: int = Field(
        1, ge=0, description="Worker-group restarts (from the last checkpoint) before failing."
    )
    peak_tflops: float | None = Field(
        None,
        gt=0,
        description="Per-device peak TFLOP/s for MFU (e.g. 312 for A100 bf16, 989 for H100). "
        "Unset on CPU: MFU is then not reported.",
    )
    eval_docs: int = Field(
        50, ge=1, description="Held-out mortgage documents for domain perplexity before/after."
    )
    scaling: ScalingSettings = Field(default_factory=ScalingSettings, description="Topology.")
    deepspeed: DeepSpeedSettings = Field(
        default_factory=DeepSpeedSettings, description="ZeRO, precision, batch and optimizer."
    )

    @model_validator(mode="after")
    def _warmup_within_steps(self) -> "PretrainConfig":
        if self.warmup_steps >= self.max_steps:
            raise ValueError(
                f"warmup_steps {self.warmup_steps} must be below max_steps {self.max_steps}"
            )
        return self


class TaskSetsConfig(Section):
    """Sizes of the task and eval sets built from the synthetic generator (datasets/tasks.py).

    Seeds come from run.seed: each training set has its own purpose stream and every eval set
    its own shard of the 'eval' stream. Defaults suit the 2-core cpu-demo (about 5,900 records,
    built in seconds).
    """

    sft_per_task: int = Field(
        360,
        ge=1,
        description="Structured-expert training records per task (decision, doc_kind, intent, "
        "summary), spread evenly over the task's labels (summary: over document kinds).",
    )
    dpo_pairs: int = Field(
        1000, ge=1, description="Conversational-expert training preference pairs."
    )
    routing_requests: int = Field(
        2000,
        ge=2,
        description="Router training requests, half structured, half conversational; with 2000 a "
        "character n-gram logistic regression on the request's first and last 160 characters "
        "scored 99-99.5 % on eval_routing.",
    )
    eval_per_task: int = Field(
        135,
        ge=1,
        description="Held-out records per classification task and for summarisation, spread "
        "evenly over labels (135 = 45 per decision, 27 per intent, 15 per document kind).",
    )
    eval_qa_pairs: int = Field(
        300, ge=1, description="Held-out QA pairs (reference answer + rejected answer)."
    )
    eval_routing: int = Field(
        600,
        ge=2,
        description="Held-out routing requests; 600 resolves the router's 98 % floor to 1/6 %.",
    )
    ambiguous_fraction: float = Field(
        0.15,
        ge=0,
        le=0.5,
        description="Share of routing requests (train and eval) that are deliberately ambiguous.",
    )
    max_doc_chars: int = Field(
        1500,
        ge=400,
        description="Documents longer than this are left out of every set, so a prompt fits a "
        "small model's context (~600 tokens at 2.5 characters per token); every document kind "
        "still occurs. Raise it for models with a longer context.",
    )


class CorpusConfig(Section):
    """The corpus stage: sources, cleaning, dedupe, tokenisation and packing into shards."""

    tasks: TaskSetsConfig = Field(
        default_factory=TaskSetsConfig, description="SFT, DPO, routing and eval set sizes."
    )
    synthetic_docs: int = Field(
        5000, ge=0, description="Generated mortgage documents (the run's 'corpus' seed stream)."
    )
    synthetic_shards: int = Field(
        8, ge=1, description="Generator shards, read in parallel; each is byte-identical for the "
        "same seed and shard index."
    )
    synthetic_noise: bool = Field(
        True, description="Plant the generator's noise: duplicates, mojibake, HTML, empty and "
        "oversized records."
    )
    regulations: list[str] = Field(
        default_factory=list, description="RegML files or directories (local path or s3:// URI), "
        "e.g. data/cfpb-regulations (vendored in the repository)."
    )
    user_corpora: list[str] = Field(
        default_factory=list, description="User corpora: files or directories (local path or "
        "s3:// URI) of .jsonl/.json/.ndjson, .parquet or .txt/.md files (one document per file)."
    )
    text_field: str = Field("text", description="Text field of JSONL records and Parquet rows.")
    id_field: str = Field(
        "id", description="Document id field of user records (a record without one gets "
        "file:line)."
    )
    mixture: dict[Literal["synthetic", "regulations", "user"], float] = Field(
        default_factory=lambda: {"synthetic": 1.0, "regulations": 1.0, "user": 1.0},
        description="Uses of each kept document, per source: 2.0 = twice, 0.5 = half of them "
        "(chosen by hash), 0 = none. Sources left out keep 1.0.",
    )
    max_doc_chars: int = Field(
        100_000, ge=100, description="Longer records are quarantined as oversized."
    )
    max_reject_fraction: float = Field(
        0.05, ge=0, le=1, description="The stage fails when more than this share of records is "
        "malformed (quarantined); the error names the sources with the most rejects."
    )
    min_words: int = Field(10, ge=0, description="Quality: fewer words is 'too_short'.")
    max_symbol_fraction: float = Field(
        0.65, gt=0, le=1, description="Quality: a larger share of visible characters that are "
        "neither letters nor digits is 'symbols' (loan forms with dot leaders reach 0.52)."
    )
    max_repeated_line_fraction: float = Field(
        0.5, gt=0, le=1, description="Quality: a larger share of lines repeating an earlier "
        "line is 'repetitive'."
    )
    shingle_words: int = Field(
        3, ge=1, description="Near dedupe: words per shingle of the MinHash signature."
    )
    minhash_bands: int = Field(25, ge=1, description="Near dedupe: LSH bands.")
    minhash_rows: int = Field(
        6, ge=1, description="Near dedupe: signature values per band (bands x rows "
        "permutations). 25 x 6 makes pairs from Jaccard 0.75 candidates with p = 0.99."
    )
    near_dup_threshold: float = Field(
        0.75, gt=0, le=1, description="Near dedupe: a candidate pair is a duplicate when this "
        "share of its MinHash values agree (estimated Jaccard similarity of shingles)."
    )
    seq_len: int = Field(
        512, ge=16, description="Tokens per packed row; at most the base model's "
        "max_position_embeddings."
    )
    batch_docs: int = Field(
        1000, ge=10, description="Documents per Ray Data batch in the cleaning pass (and per "
        "batch a reader yields)."
    )
    docs_per_shard: int = Field(
        10_000, ge=10, description="Documents packed into one output Parquet shard; also the "
        "packing window, so only the last row of each shard is padded."
    )
    cpus_per_task: float = Field(
        1.0, gt=0, description="Logical CPUs each Ray Data task of the stage reserves. The "
        "embedded cluster advertises about 2 logical CPUs per core (ray.num_cpus), where 2.0 "
        "runs one task per core: 4 tasks on 2 cores cost 28 % more CPU time for the same work."
    )

    @model_validator(mode="after")
    def _mixture_complete(self) -> "CorpusConfig":
        if any(w < 0 for w in self.mixture.values()):
            raise ValueError(f"mixture weights must be >= 0 (got {self.mixture})")
        full = {"synthetic": 1.0, "regulations": 1.0, "user": 1.0} | self.mixture
        if full != self.mixture:
            object.__setattr__(self, "mixture", full)
        return self


class ResidualConfig(Section):
    """Residual instruction transfer: theta_dapt + lambda * (theta_instruct - theta_base)."""

    scale: float = Field(
        1.0,
        description="lambda: weight of the instruction residual (instruct - base) added to the "
        "DAPT weights. Unused when `sweep` is set.",
    )
    module_scales: dict[str, float] = Field(
        default_factory=dict,
        description="Per-tensor lambda overrides: fnmatch pattern over tensor names -> lambda, "
        "first match wins, e.g. {'model.embed_tokens.*': 0.5, 'lm_head.*': 0.5, "
        "'*norm.weight': 1.0}. A pattern that matches no tensor is an error.",
    )
    sweep: list[float] = Field(
        default_factory=list,
        description="Global lambdas to evaluate, e.g. [0, 0.25, 0.5, 0.75, 1.0, 1.25] (or "
        "'0,0.5,1' on the command line). The one written: among lambdas whose fidelity ratio "
        "reaches min_fidelity_ratio, the lowest domain perplexity (ties: the higher fidelity). "
        "Empty: only `scale` is merged and measured.",
    )
    min_fidelity_ratio: float = Field(
        0.9,
        ge=0,
        description="The gate: the stage fails unless fidelity(merged) / fidelity(instruct) "
        "reaches this on held-out format instructions.",
    )
    instruct_rows: list[str] | None = Field(
        None,
        description="Tokens whose embedding and lm_head rows are copied from instruct, not "
        "merged, because base never trained them. None: the chat markers, i.e. the special tokens "
        "instruct's chat template writes for one user turn plus the generation prompt, and its "
        "eos, other than base's own bos/eos/pad; plus any token base's vocabulary lacks.",
    )
    eval_instructions: int = Field(
        60, ge=5, description="Held-out format instructions per fidelity measurement."
    )
    domain_docs: int = Field(
        50, ge=1, description="Held-out mortgage documents for domain perplexity."
    )
    max_shard_mb: float = Field(
        4096, gt=0, description="Largest safetensors shard of the merged model, in MiB."
    )
    threads: int | None = Field(
        None, ge=1, description="torch threads for the measurements (default: all physical "
        "cores). Small models on a busy machine run far faster on 1."
    )

    @model_validator(mode="before")
    @classmethod
    def _sweep_from_text(cls, data: Any) -> Any:
        """Accept `--residual.sweep 0,0.5,1` (and a single number) besides a YAML list."""
        if isinstance(data, dict) and isinstance(data.get("sweep"), (str, int, float)):
            data = {**data, "sweep": [float(v) for v in str(data["sweep"]).split(",")]}
        return data


class SftConfig(Section):
    """Structured-task expert: supervised fine-tuning of the merged model on classification and
    summary records (datasets/tasks_sft.py), chat template, loss on the answer tokens only."""

    task_source: Literal["build", "corpus"] = Field(
        "build",
        description="Where the task sets come from: 'corpus' reads the corpus stage's 'tasks' "
        "output (a directory of <set>.parquet); 'build' writes them here with "
        "datasets/tasks.write_task_sets(corpus.tasks, run.seed) into <output_dir>/sft/tasks.",
    )
    method: Literal["full", "lora"] = Field(
        "full", description="Train every parameter, or LoRA adapters (see `export`)."
    )
    lora: LoraSettings = Field(default_factory=LoraSettings, description="Used when method=lora.")
    export: Literal["merged", "adapter"] = Field(
        "merged",
        description="With method=lora: 'merged' writes a full model (merge_and_unload), "
        "'adapter' only the adapter, whose base is the start model. Full training: 'merged'.",
    )
    epochs: int = Field(
        2, ge=1, description="Passes over the training records; steps = records x epochs / "
        "global batch (rounded down), each pass in its own seeded order."
    )
    max_seq_len: int = Field(
        512, ge=32, description="Longest training sequence (prompt + answer tokens); at most the "
        "start model's max_position_embeddings. Documents in prompts are cut to fit (counted in "
        "the manifest); a record whose answer alone does not fit is rejected as too_long."
    )
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of steps of linear warmup.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final LR as a share of peak.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward (saves memory, costs ~30 % time)."
    )
    checkpoint_every: int = Field(50, ge=1, description="Steps between DeepSpeed checkpoints.")
    keep_checkpoints: int = Field(2, ge=1, description="Most recent checkpoints kept.")
    log_every: int = Field(10, ge=1, description="Steps between progress lines and metrics.")
    max_failures: int = Field(
        1, ge=0, description="Worker-group restarts (from the last checkpoint) before failing."
    )
    eval_per_task: int = Field(
        60, ge=1, description="Held-out records per task answered (greedy) by the instruct "
        "baseline, the start model and the expert for the manifest's accuracies."
    )
    max_new_tokens: int = Field(
        256, ge=8, description="Generation budget of a held-out summary (labels get 16); held-out "
        "prompts are cut to max_seq_len minus this."
    )
    threads: int | None = Field(
        None, ge=1, description="torch threads of the driver process: held-out measurements and "
        "in-process training (default: all physical cores). Small models on a busy machine run "
        "far faster on 1. Ray workers use scaling.threads_per_worker."
    )
    scaling: ScalingSettings = Field(default_factory=ScalingSettings, description="Topology.")
    deepspeed: DeepSpeedSettings = Field(
        default_factory=DeepSpeedSettings, description="ZeRO, precision, batch and optimizer."
    )

    @model_validator(mode="after")
    def _adapter_needs_lora(self) -> "SftConfig":
        if self.export == "adapter" and self.method != "lora":
            raise ValueError("export 'adapter' needs method 'lora'")
        return self


class OnPolicySettings(Section):
    """On-policy preference pairs (pipelines/onpolicy.py): the start model answers training
    questions several times, a programmatic reward picks the best and worst answers."""

    enabled: bool = Field(False, description="Add on-policy pairs to the training pairs.")
    questions: int = Field(
        200, ge=1, description="Training questions (the first of dpo_train) answered on-policy."
    )
    samples: int = Field(4, ge=2, description="Sampled answers per question.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(160, ge=8, description="Longest sampled answer (tokens).")
    min_reward_gap: float = Field(
        0.5, gt=0, description="Keep a pair only when best - worst reward is at least this "
        "(and the best answer is correct)."
    )


class DpoConfig(Section):
    """Conversational expert: DPO of the merged model on the preference pairs
    (datasets/tasks_dpo.py), against a frozen reference (a copy of the start model, or the
    adapter-disabled model with LoRA), optionally with an NLL term on the chosen answers."""

    task_source: Literal["build", "corpus"] = Field(
        "build",
        description="Where the task sets come from: 'corpus' reads the corpus stage's 'tasks' "
        "output (a directory of <set>.parquet); 'build' writes them here with "
        "datasets/tasks.write_task_sets(corpus.tasks, run.seed) into <output_dir>/dpo/tasks.",
    )
    method: Literal["full", "lora"] = Field(
        "full", description="Train every parameter, or LoRA adapters (see `export`)."
    )
    lora: LoraSettings = Field(default_factory=LoraSettings, description="Used when method=lora.")
    export: Literal["merged", "adapter"] = Field(
        "merged",
        description="With method=lora: 'merged' writes a full model (merge_and_unload), "
        "'adapter' only the adapter, whose base is the start model. Full training: 'merged'.",
    )
    beta: float = Field(
        0.1, gt=0, description="DPO temperature: how far the policy may move from the reference "
        "(loss -log sigmoid(beta * margin of log-ratios))."
    )
    nll_weight: float = Field(
        0.0, ge=0, description="Weight of the mean token NLL of the chosen answers added to the "
        "DPO loss (DPO+NLL, trl's 'sft' loss type / rpo_alpha); 0 = plain DPO."
    )
    epochs: int = Field(
        1, ge=1, description="Passes over the training pairs; steps = pairs x epochs / global "
        "batch (rounded down), each pass in its own seeded order."
    )
    max_seq_len: int = Field(
        512, ge=32, description="Longest prompt + answer (tokens) of either side of a pair; at "
        "most the start model's max_position_embeddings. Documents in prompts are cut to fit "
        "(counted in the manifest); a pair whose answers alone do not fit is rejected as too_long."
    )
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of steps of linear warmup.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final LR as a share of peak.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward (saves memory, costs ~30 % time)."
    )
    checkpoint_every: int = Field(50, ge=1, description="Steps between DeepSpeed checkpoints.")
    keep_checkpoints: int = Field(2, ge=1, description="Most recent checkpoints kept.")
    log_every: int = Field(10, ge=1, description="Steps between progress lines and metrics.")
    max_failures: int = Field(
        1, ge=0, description="Worker-group restarts (from the last checkpoint) before failing."
    )
    onpolicy: OnPolicySettings = Field(
        default_factory=OnPolicySettings, description="On-policy pairs sampled from the start "
        "model and ranked by a programmatic reward (off by default)."
    )
    eval_pairs: int = Field(
        100, ge=1, description="Held-out QA pairs (eval_qa) for the manifest: reward margin and "
        "preference accuracy, and greedy answers scored for numeric correctness."
    )
    max_new_tokens: int = Field(
        160, ge=8, description="Generation budget of a held-out answer; held-out prompts are cut "
        "to max_seq_len minus this."
    )
    threads: int | None = Field(
        None, ge=1, description="torch threads of the driver process: held-out measurements and "
        "in-process training (default: all physical cores). Small models on a busy machine run "
        "far faster on 1. Ray workers use scaling.threads_per_worker."
    )
    scaling: ScalingSettings = Field(default_factory=ScalingSettings, description="Topology.")
    deepspeed: DeepSpeedSettings = Field(
        default_factory=DeepSpeedSettings, description="ZeRO, precision, batch and optimizer."
    )

    @model_validator(mode="after")
    def _adapter_needs_lora(self) -> "DpoConfig":
        if self.export == "adapter" and self.method != "lora":
            raise ValueError("export 'adapter' needs method 'lora'")
        return self


class JudgeSettings(Section):
    """LLM-as-judge through an OpenAI-compatible endpoint (mortgagellm/judge.py): a 1-5 rubric
    per task. Off while base_url is null."""

    base_url: str | None = Field(
        None, description="The endpoint's base URL, e.g. http://127.0.0.1:8001/v1 or "
        "https://api.openai.com/v1. null: no judge (no judge metrics, no calls).")
    model: str | None = Field(None, description="Model name sent to the endpoint.")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="Environment variable holding the endpoint's key (the key "
        "never enters the recipe or the manifest); null for an endpoint that needs none.")
    max_items: int = Field(
        20, ge=1, description="Answers judged per task and variant (the first of the evaluated "
        "records): calls = max_items x 5 tasks x variants, less the answers variants share.")
    max_tokens: int = Field(16, ge=1, description="Reply budget of one judgement ('Score: 4').")
    timeout_s: float = Field(60.0, gt=0, description="Timeout of one judge call.")
    max_retries: int = Field(2, ge=0, description="Retries of a failed judge call.")

    @model_validator(mode="after")
    def _model_with_url(self) -> "JudgeSettings":
        if self.base_url and not self.model:
            raise ValueError("judge.base_url is set but judge.model is not")
        return self


class EvaluateConfig(Section):
    """Held-out evaluation of every model the recipe made (pipelines/evaluate.py): task
    metrics, instruction fidelity, domain perplexity, routing and fair-lending invariance, each
    with a 95 % interval. Generation goes through Ray Data, greedy, with the chat template."""

    task_source: Literal["build", "corpus"] = Field(
        "build",
        description="Where the eval sets come from: 'corpus' reads the corpus stage's 'tasks' "
        "output; 'build' writes them with datasets/tasks.write_task_sets(corpus.tasks, run.seed) "
        "into <output_dir>/evaluate/tasks.",
    )
    per_task: int = Field(
        135, ge=1, description="Held-out records per classification task (decision, doc_kind, "
        "intent) and for summary: a seeded sample of each eval set (all of it when smaller).")
    qa_pairs: int = Field(300, ge=1, description="Held-out QA questions (eval_qa) answered.")
    routing_requests: int = Field(
        600, ge=1, description="eval_routing requests the router decides (routed variant).")
    fairness_files: int = Field(
        135, ge=1, description="Held-out loan files (eval_decision) decided twice, as written and "
        "with protected attributes swapped (datasets/fairness.py).")
    eval_instructions: int = Field(
        60, ge=5, description="Held-out format instructions for fidelity (the residual stage's "
        "set when the numbers match).")
    domain_docs: int = Field(
        50, ge=1, description="Held-out mortgage documents for domain perplexity.")
    max_seq_len: int = Field(
        512, ge=32, description="Longest prompt + answer (tokens); documents in prompts are cut "
        "to fit, as in the sft and dpo stages' held-out measurements.")
    summary_tokens: int = Field(256, ge=8, description="Generation budget of a summary.")
    answer_tokens: int = Field(160, ge=8, description="Generation budget of a QA answer.")
    resamples: int = Field(
        1000, ge=100, description="Bootstrap resamples (seeded by run.seed) of each interval "
        "that is not a proportion's (those are Wilson intervals).")
    batch_size: int = Field(8, ge=1, description="Prompts per Ray Data batch (one generate call).")
    concurrency: int = Field(
        1, ge=1, description="Ray Data actors per model, each holding one copy of it.")
    num_cpus: float = Field(1.0, gt=0, description="Logical CPUs each actor reserves.")
    num_gpus: float = Field(
        0.0, ge=0, description="GPUs each actor reserves; > 0 loads the model there in bf16.")
    threads: int | None = Field(
        None, ge=1, description="torch threads of each actor and of the driver (BERTScore, the "
        "router's tier 2); default all physical cores. Small models on a busy machine run far "
        "faster on 1.")
    judge: JudgeSettings = Field(default_factory=JudgeSettings, description="LLM-as-judge.")


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
    def _min_below_max(self) -> "AutoscalingSettings":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} exceeds max_replicas "
                             f"{self.max_replicas}")
        return self


class ExpertSettings(Section):
    """One expert deployment: its model, resources, scaling, queue limits and batching."""

    model: str | None = Field(
        None, description="Registry version (manifest hash) or HF model directory to serve. "
        "None: the expert's own stage output (sft for structured, dpo for conversational), "
        "registered and deployed when the registry has not seen it; otherwise the registry's "
        "deployed version; before that stage has run, the bootstrap instruct model.")
    num_cpus: float = Field(1.0, ge=0, description="Logical CPUs per replica.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (fractions allowed).")
    threads: int = Field(1, ge=1, description="torch CPU threads per replica.")
    autoscaling: AutoscalingSettings = Field(
        default_factory=AutoscalingSettings, description="Replica bounds and targets.")
    max_ongoing_requests: int = Field(
        8, ge=1, description="Requests one replica works on at once (its batch queue included).")
    max_queued_requests: int = Field(
        16, ge=-1, description="Requests waiting for a replica before callers get 503 "
        "(-1 = unbounded, which turns overload into a hang: avoid).")
    max_batch_size: int = Field(4, ge=1, description="Requests decoded together (@serve.batch).")
    batch_wait_timeout_s: float = Field(
        0.01, ge=0, description="How long a batch waits to fill before decoding starts.")
    health_check_period_s: float = Field(10.0, gt=0, description="Seconds between health checks.")
    health_check_timeout_s: float = Field(
        30.0, gt=0, description="A health check slower than this marks the replica unhealthy.")


class RouterSettings(Section):
    """How requests to model `mortgagellm` are routed, and the router deployment itself."""

    mode: Literal["tier1", "fewshot", "hybrid"] = Field(
        "hybrid", description="tier1: the n-gram classifier alone; fewshot: the structured "
        "expert scores each route's log-probability after a few-shot prompt; hybrid: tier1, "
        "and fewshot as well when tier1's confidence is below `threshold`.")
    threshold: float = Field(
        0.9, ge=0.5, le=1, description="Calibrated tier-1 confidence below which hybrid mode "
        "also asks the few-shot tier.")
    clip_chars: int = Field(
        120, ge=16, description="The classifiers read the first and last clip_chars characters "
        "of a request (the ask sits at either end of a pasted document).")
    train_set: str | None = Field(
        None, description="routing_train file (.parquet or .jsonl). None: built from "
        "corpus.tasks and run.seed, as the corpus stage would.")
    num_cpus: float = Field(0.25, ge=0, description="Logical CPUs per router replica.")
    autoscaling: AutoscalingSettings = Field(
        default_factory=lambda: AutoscalingSettings(target_ongoing_requests=64),
        description="Router replica bounds.")
    max_ongoing_requests: int = Field(
        64, ge=1, description="Requests one router replica handles at once.")
    max_queued_requests: int = Field(
        128, ge=-1, description="Requests waiting for a router replica before the proxy answers "
        "503.")
    expert_timeout_s: float = Field(
        120.0, gt=0, description="Longest wait for an expert's first token or whole answer.")


class ApiKeySettings(Section):
    """Bearer API keys of the HTTP endpoint (Ray's token does not cover Serve's port)."""

    required: bool = Field(
        True, description="Refuse requests without a valid key (401). False only for loopback "
        "experiments.")
    keys_file: str | None = Field(
        None, description="File of `key_id:sha256:<hex>` lines (hashes of the keys, never the "
        "keys). None: <output_dir>/serve/api_keys. build_app's `api_keys_file` arg overrides it.")
    env_var: str = Field(
        "MORTGAGELLM_API_KEYS", description="Environment variable with more such entries, "
        "separated by commas or newlines.")
    create_demo_key: bool = Field(
        False, description="When no key is configured, create key 'demo': its hash goes to "
        "keys_file, the key itself to <keys_file>.secret (mode 0600). For local demos only.")


class LimitSettings(Section):
    """What the door refuses before any model work: sizes and token counts."""

    max_body_bytes: int = Field(
        1 << 20, ge=1024, description="Larger request bodies get 413, decided from the "
        "Content-Length header before the body is read.")
    max_prompt_tokens: int = Field(
        2048, ge=8, description="Longer prompts get 400; the model's context length also caps "
        "prompt + max_tokens.")
    max_tokens: int = Field(512, ge=1, description="Largest max_tokens a request may ask for.")
    default_max_tokens: int = Field(
        128, ge=1, description="max_tokens of a request that gives none.")


class AuditSettings(Section):
    """The append-only, hash-chained audit log written by the router (serve/audit.py)."""

    enabled: bool = Field(True, description="Write one record per request.")
    dir: str | None = Field(
        None, description="Directory of the log files. None: <output_dir>/serve/audit.")
    retention_days: int = Field(
        1095, ge=1, description="Day files older than this are deleted when a writer starts or "
        "rolls over (1095 = three years, HMDA's retention for loan records).")
    pii_salt: str = Field(
        "mortgagellm-audit", description="Salt of the PII surrogates in logged prompts and "
        "outputs (datasets/pii.py); a deployment sets its own.")


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
    structured: ExpertSettings = Field(
        default_factory=ExpertSettings, description="StructuredExpert (SFT tasks).")
    conversational: ExpertSettings = Field(
        default_factory=ExpertSettings, description="ConversationalExpert (QA and chat).")
    auth: ApiKeySettings = Field(default_factory=ApiKeySettings, description="API keys.")
    limits: LimitSettings = Field(default_factory=LimitSettings, description="Request limits.")
    audit: AuditSettings = Field(default_factory=AuditSettings, description="Audit log.")

    @model_validator(mode="after")
    def _default_within_cap(self) -> "ServeConfig":
        if self.limits.default_max_tokens > self.limits.max_tokens:
            raise ValueError(f"limits.default_max_tokens {self.limits.default_max_tokens} "
                             f"exceeds limits.max_tokens {self.limits.max_tokens}")
        return self


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
