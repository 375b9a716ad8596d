"""The held-out evaluation section and its LLM judge."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mortgagellm.config.base import Section


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
    def _model_with_url(self) -> JudgeSettings:
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
    routing_test_set: str | None = Field(
        None, description="Hand-written routing requests tier 1 is also measured on (routed "
        "variant): JSONL, one {text (or request), route} object per line, written apart from "
        "the generator and never trained on; the shipped recipes name "
        "data/routing-handwritten/test.jsonl. None: the generated eval_routing only.")
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
    fewshot: int = Field(
        0, ge=0, le=3, description="Also ask every variant each classification and QA question "
        "after this many solved training examples of the task (evaluation/sets.fewshot_prefix, "
        "documents cut to fewshot_chars), as one prompts an instruct model; reported as the "
        "fewshot_<task> rows. 0: zero-shot only.")
    fewshot_chars: int = Field(
        240, ge=40, description="Characters of each few-shot example's document kept: the "
        "small models' 512 tokens hold the examples and the question's own document.")
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
    score_threads: int | None = Field(
        None, ge=1, description="torch threads of the driver while it scores the answers "
        "(BERTScore, the router's tier 2), after generation, when the actors are gone; default "
        "all physical cores (BERTScore ran 1.7x faster on 2 idle cores than on 1).")
    judge: JudgeSettings = Field(default_factory=JudgeSettings, description="LLM-as-judge.")
