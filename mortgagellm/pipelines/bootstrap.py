"""bootstrap stage: the *base* and *instruct* starting models the recipe needs.

Run: mortgagellm bootstrap configs/cpu-demo.yaml

Production recipes name existing Hugging Face model directories (local or s3://); they are checked
file by file and loaded with from_pretrained, never downloaded from a hub. CPU presets build the
pair here, deterministically from the seed: a byte-level BPE tokenizer, a random Llama pretrained
on general text (base), then tuned on format-following instructions (instruct), and measured.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mortgagellm import manifest, model_files
from mortgagellm.config import BootstrapConfig, Recipe
from mortgagellm.datasets import mortgage
from mortgagellm.datasets.general import general_documents
from mortgagellm.datasets.instructions import instructions
from mortgagellm.datasets.splits import purpose_seed
from mortgagellm.manifest import stage_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildPlan:
    """Every number a preset build uses, after the recipe's overrides."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    base_steps: int
    instruct_steps: int
    batch_size: int
    seq_len: int
    lr: float
    general_docs: int


PRESETS = {
    "tiny": BuildPlan(vocab_size=640, hidden_size=64, num_layers=2, num_heads=4,
                      intermediate_size=192, max_position_embeddings=256, base_steps=120,
                      instruct_steps=150, batch_size=16, seq_len=96, lr=3e-3, general_docs=2000),
    "small": BuildPlan(vocab_size=1024, hidden_size=128, num_layers=4, num_heads=4,
                       intermediate_size=384, max_position_embeddings=512, base_steps=500,
                       instruct_steps=300, batch_size=32, seq_len=128, lr=1e-3, general_docs=8000),
}


def resolve_plan(cfg: BootstrapConfig) -> BuildPlan:
    """The preset's numbers with every field the recipe sets taken from the recipe."""
    overrides = {k: v for k, v in cfg.shape.model_dump().items() if v is not None}
    overrides |= {k: getattr(cfg, k) for k in ("base_steps", "instruct_steps", "batch_size",
                                               "seq_len", "lr", "general_docs")
                  if getattr(cfg, k) is not None}
    plan = BuildPlan(**(asdict(PRESETS[cfg.preset]) | overrides))
    if plan.hidden_size % plan.num_heads:
        raise ValueError(f"bootstrap.shape: hidden_size {plan.hidden_size} is not divisible by "
                         f"num_heads {plan.num_heads}")
    if plan.seq_len > plan.max_position_embeddings:
        raise ValueError(f"bootstrap.seq_len {plan.seq_len} exceeds max_position_embeddings "
                         f"{plan.max_position_embeddings}")
    return plan


def run(recipe: Recipe, force: bool = False) -> manifest.Manifest:
    """Verify the given model pair, or build the preset pair; skip when the manifest matches."""
    cfg = recipe.bootstrap
    out_dir = stage_dir(recipe, "bootstrap")
    if cfg.base_model is not None:
        return _run_verify(recipe, out_dir, force)
    plan = resolve_plan(cfg)
    config = {"seed": recipe.run.seed, "bootstrap": cfg.model_dump(mode="json"),
              "plan": asdict(plan)}
    pending = manifest.begin("bootstrap", out_dir, config,
                             uri=manifest.stage_uri(recipe, "bootstrap"))
    if done := manifest.skip_if_current(pending, force):
        return done
    log.info("bootstrap: building the '%s' preset", cfg.preset)
    metrics = build_pair(plan, cfg, recipe.run.seed, out_dir)
    outputs = {name: manifest.artifact(out_dir / name) for name in ("base", "instruct")}
    return manifest.finish(pending, outputs, metrics)


def build_pair(plan: BuildPlan, cfg: BootstrapConfig, seed: int, out_dir: Path) -> dict[str, Any]:
    """Build, save and measure base and instruct; returns the measurements."""
    import torch

    from mortgagellm.modeling import EOS, EOT, build_llama, fidelity, perplexity, train_tokenizer

    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    n_instr = plan.instruct_steps * plan.batch_size
    train_set = list(instructions("train", seed, n_instr))
    texts = list(general_documents(seed, plan.general_docs, cfg.domain_fraction))
    texts += domain_documents(seed, round(cfg.domain_documents * plan.general_docs))
    tokenizer = train_tokenizer(
        itertools.chain(texts, (f"{i.prompt}\n{i.answer}" for i in train_set)), plan.vocab_size)
    model = build_llama(asdict(plan), tokenizer, seed)
    log.info("bootstrap: %s parameters, vocabulary %d",
             f"{sum(p.numel() for p in model.parameters()):,}", len(tokenizer))

    base_loss = train_loop(model, _packed_batches(tokenizer, texts, plan, seed),
                           plan.base_steps, plan.lr, "base")
    _save(model, tokenizer, out_dir / "base", eos=EOS)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    instruct_loss = train_loop(model, _instruction_batches(tokenizer, train_set, plan, seed),
                               plan.instruct_steps, plan.lr / 2, "instruct")
    _save(model, tokenizer, out_dir / "instruct", eos=EOT)

    eval_set = list(instructions("eval", seed, cfg.eval_instructions))
    held_out = list(general_documents(seed + 10_000, 50, cfg.domain_fraction))
    instruct_report = fidelity(model, tokenizer, eval_set)
    instruct_ppl = perplexity(model, tokenizer, held_out)
    model.load_state_dict(base_state)
    base_report = fidelity(model, tokenizer, eval_set)
    metrics = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "base": {"final_loss": base_loss, "general_perplexity": perplexity(model, tokenizer,
                                                                             held_out),
                 **base_report},
        "instruct": {"final_loss": instruct_loss, "general_perplexity": instruct_ppl,
                     **instruct_report},
        "weight_change": model_files.relative_change(base_state, out_dir / "instruct"),
        "eval_instructions": len(eval_set),
    }
    log.info("bootstrap: fidelity base %.2f -> instruct %.2f on %d held-out instructions",
             base_report["fidelity"], instruct_report["fidelity"], len(eval_set))
    return metrics


def train_loop(model: Any, batches: Any, steps: int, lr: float, name: str) -> float:
    """AdamW with the training loop's schedule (linear warmup, cosine decay to zero); returns the
    mean loss of the last 10 steps."""
    import torch

    from mortgagellm.training.loop import schedule as lr_schedule

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95),
                                  weight_decay=0.0)
    schedule = lr_schedule(optimizer, max(1, steps // 20), steps, 0.0)
    model.train()
    losses, t0, tokens = [], time.monotonic(), 0
    for step in range(steps):
        batch = next(batches)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        tokens += int(batch["attention_mask"].sum())
        if (step + 1) % max(1, steps // 10) == 0 or step + 1 == steps:
            log.info("bootstrap %s: step %d/%d loss %.3f  %.0f tokens/s", name, step + 1, steps,
                     sum(losses[-10:]) / len(losses[-10:]), tokens / (time.monotonic() - t0))
    return round(sum(losses[-10:]) / len(losses[-10:]), 4)


def domain_documents(seed: int, n: int) -> list[str]:
    """n clean generated mortgage documents from the 'bootstrap' seed stream, so base has seen
    the domain (as a real base model has) without seeing the corpus or any eval document."""
    return [r["text"] for r in mortgage.generate(purpose_seed(seed, "bootstrap"), 0, n,
                                                 noise=False)]


def _packed_batches(tokenizer: Any, texts: list[str], plan: BuildPlan, seed: int):
    """Endless random batches of seq_len blocks cut from BOS + doc + EOS concatenated."""
    import torch

    from mortgagellm.modeling import BOS, EOS

    ids = tokenizer([BOS + t + EOS for t in texts], add_special_tokens=False)["input_ids"]
    flat = torch.tensor(list(itertools.chain.from_iterable(ids)))
    blocks = flat[: len(flat) // plan.seq_len * plan.seq_len].view(-1, plan.seq_len)
    generator = torch.Generator().manual_seed(seed)
    while True:
        rows = blocks[torch.randint(len(blocks), (plan.batch_size,), generator=generator)]
        yield {"input_ids": rows, "labels": rows, "attention_mask": torch.ones_like(rows)}


def _instruction_batches(tokenizer: Any, examples: list, plan: BuildPlan, seed: int):
    """Batches of chat-formatted instructions; loss only on the answer and its <|eot_id|>."""
    import torch

    from mortgagellm.modeling import EOT

    rows = []
    for ex in examples:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": ex.prompt}],
                                               tokenize=False, add_generation_prompt=True)
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a = tokenizer(ex.answer + EOT, add_special_tokens=False)["input_ids"]
        rows.append((p + a, [-100] * len(p) + a))
    rng = random.Random(f"instruct-batches:{seed}")
    while True:
        batch = rng.sample(rows, plan.batch_size)
        width = max(len(ids) for ids, _ in batch)
        pad = tokenizer.pad_token_id
        yield {
            "input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch]),
            "labels": torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch]),
            "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids))
                                            for ids, _ in batch]),
        }


def _save(model: Any, tokenizer: Any, path: Path, eos: str) -> None:
    """Save as an ordinary HF model directory; `eos` is the token that ends this model's text."""
    from mortgagellm.modeling import stop_token_ids

    eos_id = tokenizer.convert_tokens_to_ids(eos)
    model.config.eos_token_id = eos_id
    model.generation_config.eos_token_id = stop_token_ids(tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.eos_token = eos
    tokenizer.save_pretrained(path)


def _run_verify(recipe: Recipe, out_dir: Path, force: bool) -> manifest.Manifest:
    """Production: check the given base/instruct directories and record their hashes."""
    cfg = recipe.bootstrap
    local = {name: model_files.fetch_model(uri, out_dir / "cache" / name)
             for name, uri in (("base", cfg.base_model), ("instruct", cfg.instruct_model))}
    inputs = {name: manifest.artifact(path) for name, path in local.items()}
    config = {"seed": recipe.run.seed, "bootstrap": cfg.model_dump(mode="json")}
    pending = manifest.begin("bootstrap", out_dir, config, inputs,
                             uri=manifest.stage_uri(recipe, "bootstrap"))
    if done := manifest.skip_if_current(pending, force):
        return done
    metrics = model_files.verify_pair(local["base"], local["instruct"])
    log.info("bootstrap: verified base %s and instruct %s", local["base"], local["instruct"])
    return manifest.finish(pending, inputs, metrics)
