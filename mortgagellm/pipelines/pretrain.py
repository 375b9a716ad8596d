"""pretrain stage: domain-adaptive continued pretraining (DAPT) of the base model on the packed
corpus shards, with DeepSpeed under Ray Train (or in one process without Ray).

Run: mortgagellm pretrain configs/cpu-demo.yaml

Set-up and checks happen in `run` before any worker starts. What is DAPT's own is here: packed
rows with per-document attention and loss (`packed_inputs`), the causal-LM `Objective`, and the
domain perplexity before and after. The loop, checkpoint/resume, LR schedule and export are
mortgagellm/training/, the one copy the sft and dpo stages run too.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from mortgagellm import manifest, training
from mortgagellm.cluster.deepspeed import ds_config
from mortgagellm.cluster.runtime import check_fits
from mortgagellm.config import Recipe
from mortgagellm.training.export import export_model
from mortgagellm.training.loop import Objective, lm_loss
from mortgagellm.training.worker import worker_config

log = logging.getLogger(__name__)


# ---- maths -----------------------------------------------------------------------------------

def packed_inputs(input_ids: Any, segment_ids: Any) -> dict[str, Any]:
    """Model inputs for packed rows that keep attention and loss within each document.

    Position ids restart at every document; with no attention_mask given, transformers turns
    restarting positions into a block-diagonal causal mask — but only without a KV cache, hence
    use_cache=False. Labels are -100 on padding (segment 0) and on each document's first token,
    so no token is predicted across a boundary.
    """
    import torch

    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    index = torch.arange(segment_ids.shape[1]).expand_as(segment_ids)
    last_start = torch.cummax(torch.where(starts, index, torch.zeros_like(index)), dim=1).values
    labels = input_ids.masked_fill(starts | (segment_ids == 0), -100)
    return {"input_ids": input_ids, "position_ids": index - last_start, "labels": labels,
            "use_cache": False}


def packed_batch(rows: list[dict], device: Any) -> dict[str, Any]:
    """Packed corpus rows -> model inputs on `device` (see `packed_inputs`)."""
    import torch

    ids = torch.tensor([r["input_ids"] for r in rows], dtype=torch.long)
    segments = torch.tensor([r["segment_ids"] for r in rows], dtype=torch.long)
    return {k: v.to(device) if hasattr(v, "to") else v
            for k, v in packed_inputs(ids, segments).items()}


PACKED_LM = Objective("pretrain", packed_batch, lm_loss)
"""DAPT: causal LM loss on packed corpus rows."""


# ---- the stage ---------------------------------------------------------------------------------

def run(recipe: Recipe, force: bool = False, *, on_ray: bool = True,
        fail_at_step: int | None = None) -> manifest.Manifest:
    """Check everything, train on Ray (or in-process), export the DAPT model, measure it.

    `fail_at_step` makes rank 0 raise once at that step (fault-tolerance tests only).
    """
    cfg = recipe.pretrain
    out = manifest.stage_dir(recipe, "pretrain")
    boot = manifest.require_manifest(recipe, "bootstrap")
    corpus = manifest.require_manifest(recipe, "corpus")
    base = Path(boot.output_path("base"))
    shards = find_shards(Path(corpus.output_path("shards")))
    seq_len = validate(recipe, base, shards)
    inputs = {"base": boot.outputs["base"], "shards": corpus.outputs["shards"]}
    config = {"seed": recipe.run.seed, "pretrain": cfg.model_dump(mode="json")}
    pending = manifest.begin("pretrain", out, config, inputs,
                             uri=manifest.stage_uri(recipe, "pretrain"))
    if done := manifest.skip_if_current(pending, force):
        return done
    shard_dir = manifest.portable(recipe, corpus.outputs["shards"])["uri"]  # read in place
    worker = worker_config(recipe, cfg, boot.outputs["base"],
                           [f"{shard_dir}/{Path(s).name}" for s in shards], out, seq_len=seq_len,
                           max_steps=cfg.max_steps, warmup_steps=cfg.warmup_steps,
                           shuffle_seed=recipe.run.seed,  # row groups in a seeded order: mixed
                           peak_tflops=cfg.peak_tflops, fail_at_step=fail_at_step)
    history, checkpoint, placement = training.run(PACKED_LM, worker, recipe, cfg, out, on_ray,
                                                  pending.fingerprint, name="dapt")
    model_dir = export_model(checkpoint, base, out / "model", cfg.method, cfg.lora.model_dump(),
                             cfg.deepspeed.zero_stage)
    metrics = {"train": history[-1], "history": history, "placement": placement,
               **measure_domain(base, model_dir, recipe.run.seed, cfg.domain_docs)}
    log.info("pretrain: domain perplexity base %.3f -> DAPT %.3f", metrics["perplexity_base"],
             metrics["perplexity_dapt"])
    return manifest.finish(pending, {"model": manifest.artifact(model_dir)}, metrics)


def find_shards(shard_dir: Path) -> list[str]:
    """The packed Parquet shards in sorted order, as absolute paths (a Ray Train worker runs in
    a directory of its own, so a relative run.output_dir would not resolve there); an empty or
    missing directory is an error."""
    shards = sorted(str(p.absolute()) for p in shard_dir.glob("*.parquet"))
    if not shards:
        raise FileNotFoundError(f"pretrain: no packed shards (*.parquet) in {shard_dir}; "
                                "run `mortgagellm corpus` first")
    return shards


def validate(recipe: Recipe, base: Path, shards: list[str]) -> int:
    """Fail before any worker starts: shard schema, sequence length vs the model, resources.
    Returns the packed sequence length."""
    import pyarrow.parquet as pq

    from mortgagellm.datasets.schemas import PACKED_SCHEMA

    for shard in shards:
        schema = pq.read_schema(shard)
        if not schema.remove_metadata().equals(PACKED_SCHEMA.remove_metadata()):
            raise ValueError(f"pretrain: {shard} is not a packed shard (schema {schema.names})")
    first = pq.ParquetFile(shards[0]).read_row_group(0).column("input_ids")[0].as_py()
    max_pos = json.loads((base / "config.json").read_text())["max_position_embeddings"]
    if len(first) > max_pos:
        raise ValueError(f"pretrain: packed sequence length {len(first)} exceeds the base model's "
                         f"max_position_embeddings {max_pos} ({base})")
    check_fits(recipe.ray, recipe.pretrain.scaling)
    ds_config(recipe.pretrain.deepspeed, recipe.pretrain.scaling)
    return len(first)


# ---- export and measurement ----------------------------------------------------------------------

def measure_domain(base: Path, dapt: Path, seed: int, n_docs: int) -> dict[str, float]:
    """Perplexity of base and of the DAPT model on held-out mortgage documents."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mortgagellm.datasets.splits import heldout_domain_texts
    from mortgagellm.modeling import perplexity

    texts = heldout_domain_texts(seed, n_docs)
    tokenizer = AutoTokenizer.from_pretrained(base)
    result = {}
    for name, path in (("base", base), ("dapt", dapt)):
        model = AutoModelForCausalLM.from_pretrained(path)
        result[f"perplexity_{name}"] = round(perplexity(model, tokenizer, texts), 4)
    return result
