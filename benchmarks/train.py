"""Training throughput: the same model and packed data trained (a) in a plain single-process torch
loop and (b) through Ray Train + DeepSpeed with one worker (the pretrain stage's loop). Prints
tokens/s of each, the ratio (goal >= 0.9) and the data-wait fraction (goal <= 5 %).

Run: DS_ACCELERATOR=cpu .venv/bin/python benchmarks/train.py [--hidden 256 --layers 4 --steps 60]
     .venv/bin/python benchmarks/train.py --gpu   # 1B Llama, bf16, ZeRO-2, MFU (CUDA machine)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import random
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mortgagellm.cluster.data import rank_rows
from mortgagellm.datasets.schemas import PACKED_SCHEMA
from mortgagellm.pipelines.pretrain import packed_inputs

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def make_model(path: Path, hidden: int, layers: int, vocab: int, seq_len: int) -> None:
    """A random Llama saved as an HF directory (the pretrain loop loads it by path)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    heads = max(1, hidden // 64)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=heads, max_position_embeddings=seq_len)
    LlamaForCausalLM(config).save_pretrained(path)


def make_shards(directory: Path, rows: int, seq_len: int, vocab: int) -> list[str]:
    """Packed rows of random tokens with documents of random length (PACKED_SCHEMA)."""
    rng = random.Random(0)
    ids, segs = [], []
    for _ in range(rows):
        row_segs, segment = [], 0
        while len(row_segs) < seq_len:
            segment += 1
            row_segs += [segment] * rng.randint(16, seq_len)
        ids.append([rng.randrange(vocab) for _ in range(seq_len)])
        segs.append(row_segs[:seq_len])
    directory.mkdir(parents=True)
    path = directory / "part-00000.parquet"
    pq.write_table(pa.table({"input_ids": ids, "segment_ids": segs}, schema=PACKED_SCHEMA), path,
                   row_group_size=64)
    return [str(path)]


def plain_loop(model_dir: Path, shards: list[str], steps: int, micro: int, lr: float,
               device: str) -> float:
    """Tokens/s of a bare torch loop (AdamW, fp32 on CPU), after 3 warm-up steps."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).to(device)
    model.config.use_cache = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95))
    rows = rank_rows(shards, 0, 1, 0, shuffle_seed=0)
    tokens, t0 = 0, 0.0
    for step in range(steps):
        if step == 3:
            tokens, t0 = 0, time.monotonic()
        batch = [next(rows) for _ in range(micro)]
        inputs = packed_inputs(torch.tensor([r["input_ids"] for r in batch]),
                               torch.tensor([r["segment_ids"] for r in batch]))
        inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += inputs["input_ids"].numel()
    if device == "cuda":
        torch.cuda.synchronize()
    return tokens / (time.monotonic() - t0)


def ray_deepspeed(model_dir: Path, shards: list[str], work: Path, args: argparse.Namespace
                  ) -> dict:
    """Tokens/s and data-wait of the pretrain loop on a 1-worker TorchTrainer with DeepSpeed."""
    from mortgagellm.cluster.deepspeed import ds_config
    from mortgagellm.cluster.runtime import init_ray
    from mortgagellm.cluster.training import run_on_ray
    from mortgagellm.config import DeepSpeedSettings, RayConfig, ScalingSettings
    from mortgagellm.pipelines.pretrain import PACKED_LM
    from mortgagellm.training.loop import train_loop
    from mortgagellm.training.worker import WorkerConfig

    scaling = ScalingSettings(use_gpu=args.gpu, threads_per_worker=args.threads)
    ds = DeepSpeedSettings(zero_stage=args.zero, micro_batch_size=args.micro, lr=args.lr)
    init_ray(RayConfig(num_cpus=4), work)
    config = dataclasses.asdict(WorkerConfig(
        seed=0, base_model=str(model_dir), shards=shards, shuffle_seed=0, seq_len=args.seq_len,
        method="full", lora={}, ds_config=ds_config(ds, scaling), max_steps=args.steps,
        warmup_steps=1, min_lr_ratio=1.0, gradient_checkpointing=False,
        checkpoint_every=args.steps, log_every=max(1, args.steps // 4),
        peak_tflops=args.peak_tflops, use_gpu=args.gpu, scratch=str(work / "scratch"),
        tensorboard_dir=str(work / "tb"), fail_at_step=None, failure_marker=str(work / "none")))
    train_fn = functools.partial(train_loop, objective=PACKED_LM)
    t0 = time.monotonic()
    result = run_on_ray(train_fn, config, scaling, str(work / "ray"), "bench", 0, 1)
    wall = time.monotonic() - t0
    final = Path(result.checkpoint.to_directory(str(work / "final")))
    return {"wall_s": wall, **json.loads((final / "history.json").read_text())[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--zero", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads, both runs")
    parser.add_argument("--gpu", action="store_true", help="1B Llama, bf16, ZeRO-2, MFU")
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args()
    import torch

    if args.gpu:
        args.hidden, args.layers, args.vocab, args.seq_len, args.micro = 2048, 16, 32000, 2048, 4
        name = torch.cuda.get_device_name()
        args.peak_tflops = args.peak_tflops or next(
            (v for k, v in PEAK_TFLOPS.items() if k in name), None)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="mllm-bench-", dir="/tmp"))
    make_model(work / "model", args.hidden, args.layers, args.vocab, args.seq_len)
    shards = make_shards(work / "shards", args.steps * args.micro + 64, args.seq_len, args.vocab)
    plain = plain_loop(work / "model", shards, args.steps, args.micro, args.lr,
                       "cuda" if args.gpu else "cpu")
    ray_ds = ray_deepspeed(work / "model", shards, work, args)
    print(f"model: hidden {args.hidden}, {args.layers} layers, seq {args.seq_len}, "
          f"micro-batch {args.micro}, {args.steps} steps, ZeRO-{args.zero}")
    print(f"plain torch loop      : {plain:10.0f} tokens/s")
    print(f"Ray Train + DeepSpeed : {ray_ds['tokens_per_s']:10.0f} tokens/s  "
          f"(data-wait {100 * ray_ds['data_wait_fraction']:.1f} %, goal <= 5 %)")
    if "mfu" in ray_ds:
        print(f"MFU                   : {100 * ray_ds['mfu']:.1f} % (goal >= 40 % on H100)")
    print(f"ratio Ray+DS / plain  : {ray_ds['tokens_per_s'] / plain:.2f} (goal >= 0.9)")


if __name__ == "__main__":
    main()
