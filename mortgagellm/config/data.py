"""The data-making sections: the bootstrap models, the task and eval set sizes, the corpus."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mortgagellm.config.base import Section


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
    def _paths_come_in_pairs(self) -> BootstrapConfig:
        if (self.base_model is None) != (self.instruct_model is None):
            raise ValueError(
                "set both base_model and instruct_model (existing models) or neither (build the "
                f"'{self.preset}' preset)"
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
        8000,
        ge=2,
        description="Router training requests, half structured, half conversational. With "
        "routing_variety 0.5 the n-gram tier 1 gains on generated and hand-written requests up "
        "to 8000 (benchmarks/router_learning_curve.py); building and fitting them takes ~10 s.",
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
    routing_variety: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Share of routing requests (train and eval) composed by "
        "datasets/tasks/paraphrase.py: imperative and question forms, terse and wordy, whole or "
        "partial pasted documents, chit-chat, typos, explanations naming products, writing and "
        "format requests. The rest come from the fixed templates and the experts' prompts; 0 "
        "gives the template-only set of before issue 20 (benchmarks/router_learning_curve.py).",
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
    dedupe_mode: Literal["auto", "driver", "distributed"] = Field(
        "auto", description="Where duplicates are decided. 'driver' gathers every valid "
        "document's hash and signature into the driver (16 + 2 x bands x rows bytes each: "
        "about 320 MB per 1M documents); 'distributed' makes the same decision as Ray Data "
        "groupbys (by content hash, by LSH band key, then candidate pairs by each side), with "
        "nothing per document on the driver; 'auto' is 'driver' below dedupe_distributed_from "
        "documents read."
    )
    dedupe_distributed_from: int = Field(
        2_000_000, ge=0, description="With dedupe_mode 'auto', corpora of at least this many "
        "records are deduplicated distributed. The driver path holds about 0.85 GB per 1M "
        "documents and takes seconds; on 2 cores the distributed one took 130 s at 100k and "
        "430 s at 300k documents (benchmarks/dedupe.py), so it pays only where the driver's "
        "memory is the limit."
    )
    dedupe_docs_per_partition: int = Field(
        25_000, ge=1_000, description="Distributed dedupe: documents per hash partition of "
        "each groupby. A generated corpus makes about 20 candidate pairs per document, each "
        "carrying a 300 B signature: 25,000 documents are about 200 MB in one task."
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
    def _mixture_complete(self) -> CorpusConfig:
        if any(w < 0 for w in self.mixture.values()):
            raise ValueError(f"mixture weights must be >= 0 (got {self.mixture})")
        full = {"synthetic": 1.0, "regulations": 1.0, "user": 1.0} | self.mixture
        if full != self.mixture:
            object.__setattr__(self, "mixture", full)
        return self
