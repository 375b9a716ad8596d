"""The model-making sections in flow order: pretrain (DAPT), the residual merge, sft and dpo.

The three training stages share one base, TrainingSection, for the settings each of them reads
the same way (LoRA, LR floor, checkpoints, logging, restarts, topology, DeepSpeed). What a stage
measures its length and data by stays in its own class.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import AliasChoices, Field, ValidationError, model_validator

from mortgagellm.config.base import Section, deep_update
from mortgagellm.config.cluster import DeepSpeedSettings, ScalingSettings


class LoraSettings(Section):
    """LoRA adapters (peft); the trained adapter is merged into the exported model."""

    r: int = Field(16, ge=1, description="Adapter rank.")
    alpha: int = Field(32, ge=1, description="Scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] = Field(
        ["q_proj", "v_proj"], min_length=1, description="Module names that get adapters."
    )


class TrainingSection(Section):
    """Settings every training stage (pretrain, sft, dpo) shares, with the defaults they share.

    A subclass adds its own fields and re-declares a shared one only where its default differs.
    Pydantic lists a base's fields first, so dumps (`mortgagellm config`) show these first.
    """

    method: Literal["full", "lora"] = Field(
        "full", description="Train every parameter, or LoRA adapters merged into the exported "
        "model (sft and dpo: see `export`)."
    )
    lora: LoraSettings = Field(default_factory=LoraSettings, description="Used when method=lora.")
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
    scaling: ScalingSettings = Field(default_factory=ScalingSettings, description="Topology.")
    deepspeed: DeepSpeedSettings = Field(
        default_factory=DeepSpeedSettings, description="ZeRO, precision, batch and optimizer."
    )


class PretrainConfig(TrainingSection):
    """Domain-adaptive pretraining (DAPT) of the base model on the packed corpus shards."""

    max_steps: int = Field(200, ge=1, description="Optimizer steps.")
    warmup_steps: int = Field(10, ge=0, description="Linear warmup steps before cosine decay.")
    peak_tflops: float | None = Field(
        None,
        gt=0,
        description="Per-device peak TFLOP/s for MFU (e.g. 312 for A100 bf16, 989 for H100). "
        "Unset on CPU: MFU is then not reported.",
    )
    domain_docs: int = Field(
        50,
        ge=1,
        validation_alias=AliasChoices("domain_docs", "eval_docs"),
        description="Held-out mortgage documents for domain perplexity before/after (as in "
        "residual and evaluate; the deprecated key eval_docs is still read).",
    )

    @model_validator(mode="after")
    def _warmup_within_steps(self) -> PretrainConfig:
        if self.warmup_steps >= self.max_steps:
            raise ValueError(
                f"warmup_steps {self.warmup_steps} must be below max_steps {self.max_steps}"
            )
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


class ExpertTrainingSection(TrainingSection):
    """What the two expert stages (sft, dpo) share beyond TrainingSection: where their task sets
    come from, how the expert is exported, warmup as a share of steps, driver threads."""

    task_source: Literal["build", "corpus"] = Field(
        "build",
        description="Where the task sets come from: 'corpus' reads the corpus stage's 'tasks' "
        "output (a directory of <set>.parquet); 'build' writes them here with "
        "datasets/tasks.write_task_sets(corpus.tasks, run.seed) into <output_dir>/<stage>/tasks.",
    )
    export: Literal["merged", "adapter"] = Field(
        "merged",
        description="With method=lora: 'merged' writes a full model (merge_and_unload), "
        "'adapter' only the adapter, whose base is the start model. Full training: 'merged'.",
    )
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of steps of linear warmup.")
    threads: int | None = Field(
        None, ge=1, description="torch threads of the driver process: held-out measurements and "
        "in-process training (default: all physical cores). Small models on a busy machine run "
        "far faster on 1. Ray workers use scaling.threads_per_worker."
    )

    STAGE: ClassVar[str] = "expert"
    """The stage this section configures (its errors name it)."""
    compare: dict[str, dict[str, Any]] = Field(
        {}, description="Other settings of this stage that `mortgagellm report` trains and "
        "measures beside it on the same held-out sets, by name: overrides of this section, e.g. "
        "dpo {dpo-only: {sft: {epochs: 0}, onpolicy: {enabled: false}}}. Each trains from the "
        "same merged model in <output_dir>/variants/<stage>-<name>/ and the report sets their "
        "held-out numbers side by side; serving uses this recipe's own expert. Not part of the "
        "stage's fingerprint. {} (default): none."
    )

    @model_validator(mode="after")
    def _adapter_needs_lora(self) -> ExpertTrainingSection:
        if self.export == "adapter" and self.method != "lora":
            raise ValueError("export 'adapter' needs method 'lora'")
        return self

    def fingerprinted(self) -> dict[str, Any]:
        """The section as the stage's fingerprint takes it: all but `compare`, so adding a
        variant leaves the stage's own expert current."""
        return self.model_dump(mode="json", exclude={"compare"})

    def variant(self, name: str) -> ExpertTrainingSection:
        """This section with compare[name]'s overrides (and no compare of its own)."""
        return type(self).model_validate(deep_update(self.fingerprinted(), self.compare[name]))

    @model_validator(mode="after")
    def _variants_valid(self) -> ExpertTrainingSection:
        stage = self.STAGE
        for name, overrides in self.compare.items():
            if "compare" in overrides:
                raise ValueError(f"{stage}.compare.{name}: a variant has no compare of its own")
            try:
                self.variant(name)
            except ValidationError as err:
                problems = "; ".join(f"{stage}.compare.{name}.{'.'.join(map(str, e['loc']))}: "
                                     f"{e['msg']}" for e in err.errors())
                raise ValueError(problems) from None
        return self


class SftConfig(ExpertTrainingSection):
    """Structured-task expert: supervised fine-tuning of the merged model on classification and
    summary records (datasets/tasks/sft.py), chat template, loss on the answer tokens only."""

    STAGE: ClassVar[str] = "sft"

    epochs: int = Field(
        2, ge=1, description="Passes over the training records; steps = records x epochs / "
        "global batch (rounded down), each pass in its own seeded order."
    )
    max_seq_len: int = Field(
        512, ge=32, description="Longest training sequence (prompt + answer tokens); at most the "
        "start model's max_position_embeddings. Documents in prompts are cut to fit (counted in "
        "the manifest); a record whose answer alone does not fit is rejected as too_long."
    )
    eval_per_task: int = Field(
        60, ge=1, description="Held-out records per task answered (greedy) by the instruct "
        "baseline, the start model and the expert for the manifest's accuracies."
    )
    counterfactual: bool = Field(
        False, description="Counterfactual augmentation: every decision training record is also "
        "trained with its protected attributes swapped (datasets/fairness.swap_record) and the "
        "same decision, so the expert learns they do not decide it (ECOA / Regulation B). The "
        "manifest's held-out fairness row (flip rate over parseable pairs) measures the effect."
    )
    max_new_tokens: int = Field(
        256, ge=8, description="Generation budget of a held-out summary (labels get 16); held-out "
        "prompts are cut to max_seq_len minus this."
    )


class OnPolicySettings(Section):
    """On-policy preference pairs (training/onpolicy.py): the start model answers training
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


class ChosenSftSettings(Section):
    """SFT on the chosen answers before DPO (FinDAP's CPT -> SFT -> preference order): the
    conversational expert first learns the answers' content, then DPO, started from and
    referenced to the SFT model, learns to prefer them over the flawed ones."""

    epochs: int = Field(
        0, ge=0, description="Passes over the training pairs' chosen answers (prompt-masked LM "
        "loss) before DPO; 0 = DPO only, the paper's recipe."
    )
    method: Literal["full", "lora"] = Field(
        "full", description="Full fine-tuning or LoRA (dpo.lora's shape, merged before DPO)."
    )
    lr: float = Field(1.0e-3, gt=0, description="Peak LR of the SFT phase (same schedule shape).")
    replay_instructions: int = Field(
        0, ge=0, description="General format instructions (the training split of "
        "datasets/instructions.py) mixed into the SFT phase, so the expert that also answers "
        "general requests keeps the merged model's instruction fidelity."
    )


class DpoConfig(ExpertTrainingSection):
    """Conversational expert: DPO of the merged model on the preference pairs
    (datasets/tasks/dpo.py), against a frozen reference (a copy of the start model, or the
    adapter-disabled model with LoRA), optionally with an NLL term on the chosen answers."""

    STAGE: ClassVar[str] = "dpo"

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
    sft: ChosenSftSettings = Field(
        default_factory=ChosenSftSettings, description="Optional SFT phase on the chosen answers "
        "before DPO (off by default: epochs 0)."
    )
    onpolicy: OnPolicySettings = Field(
        default_factory=OnPolicySettings, description="On-policy pairs sampled from the model DPO "
        "starts from (the SFT model when dpo.sft.epochs > 0) and ranked by a programmatic reward "
        "(off by default)."
    )
    instruction_pairs: int = Field(
        0, ge=0, description="Format preference pairs added to the DPO pairs: a training-split "
        "format instruction (datasets/instructions.py), its reference answer chosen and a "
        "violation of its format rejected, so the expert that also answers general requests "
        "keeps instruct's formats. 0 = none."
    )
    eval_pairs: int = Field(
        100, ge=1, description="Held-out QA pairs (eval_qa) for the manifest: reward margin and "
        "preference accuracy, and greedy answers scored for numeric correctness."
    )
    eval_instructions: int = Field(
        60, ge=0, description="Held-out format instructions on which the manifest measures each "
        "model's instruction fidelity (the routed system sends general requests to this "
        "expert); 0 = not measured."
    )
    max_new_tokens: int = Field(
        160, ge=8, description="Generation budget of a held-out answer; held-out prompts are cut "
        "to max_seq_len minus this."
    )

