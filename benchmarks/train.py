"""Training throughput: the same model and packed data trained (a) in a plain single-process torch
loop and (b) through Ray Train + DeepSpeed with one worker (the pretrain stage's loop). Prints
tokens/s of each, the ratio (goal >= 0.9) and the data-wait fraction (goal <= 5 %).

Run: DS_ACCELERATOR=cpu .venv/bin/python benchmarks/train.py [--hidden 256 --layers 4 --steps 40]
         [--zero 0] [--threads 1] [--repeats 3] [--json OUT]
     ... benchmarks/train.py --breakdown     # where the time goes (see below)
     .venv/bin/python benchmarks/train.py --gpu   # 1B Llama, bf16, ZeRO-2, MFU (CUDA machine)

Throughput is steady state: each step's start is stamped (wall and process CPU time) and the
first quarter of the steps (warm-up: first allocations, DeepSpeed's first step) is left out, in
both loops alike. CPU seconds per token (of the training process: its threads, and in a Ray
worker also Ray's own threads) move less with the machine's load than wall time does. The repeats
alternate the loops, so a change in the machine's load falls on both; Ray is up (idle) during
the plain loop too. --breakdown first times the plain loop before Ray starts (no Ray daemon
up), then, in rounds, the plain loop with --threads and 1 thread, the training loop with
DeepSpeed in this process (no Ray) at ZeRO 0 / 2, and on a 1-worker TorchTrainer at ZeRO
0 / 2 with --threads, and at --zero with 1 thread: the steps from plain torch to Ray Train +
DeepSpeed, each as a ratio to the plain loop of the same round (the first: to its repeat).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mortgagellm.cluster.data import rank_rows
from mortgagellm.datasets.schemas import PACKED_SCHEMA
from mortgagellm.pipelines.pretrain import packed_inputs

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way of training: `plain` torch loop, the training loop with DeepSpeed in this
    process (`deepspeed`), or on a 1-worker TorchTrainer (`ray`)."""

    kind: str
    zero: int
    threads: int
    before_ray: bool = False
    """Timed (all repeats) before Ray starts: no Ray daemon on the machine."""

    @property
    def label(self) -> str:
        if self.kind == "plain":
            return f"plain torch, {self.threads} thread(s)" + (", no Ray up" * self.before_ray)
        where = "Ray Train + DeepSpeed" if self.kind == "ray" else "DeepSpeed, no Ray"
        return f"{where}, ZeRO-{self.zero}, {self.threads} thread(s)"


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


def steady(stamps: list[list[float]], tokens_per_step: int, skip: int) -> dict:
    """Tokens per wall second and CPU seconds per 1,000 tokens between the starts of step
    `skip` and of the last step (`stamps`: [wall, process CPU] at each step's start)."""
    (w0, c0), (w1, c1) = stamps[skip], stamps[-1]
    tokens = tokens_per_step * (len(stamps) - 1 - skip)
    return {"tokens_per_s": tokens / (w1 - w0), "cpu_s_per_1k_tokens": 1e3 * (c1 - c0) / tokens}


def stamp(stamps: list) -> None:
    stamps.append([time.monotonic(), time.process_time()])


def plain_loop(model_dir: Path, shards: list[str], args: argparse.Namespace, threads: int,
               device: str) -> dict:
    """A bare torch loop (AdamW, fp32 on CPU, clipping): steady throughput and data-wait."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(device)
    model.config.use_cache = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95))
    rows = rank_rows(shards, 0, 1, 0, shuffle_seed=0)
    stamps, wait = [], 0.0
    for _ in range(args.steps):
        t_wait = time.monotonic()
        batch = [next(rows) for _ in range(args.micro)]
        inputs = packed_inputs(torch.tensor([r["input_ids"] for r in batch]),
                               torch.tensor([r["segment_ids"] for r in batch]))
        inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
        if len(stamps) > warm_up(args):
            wait += time.monotonic() - t_wait
        if device == "cuda":
            torch.cuda.synchronize()
        stamp(stamps)
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
    result = steady(stamps, args.micro * args.seq_len, warm_up(args))
    return result | {"data_wait_fraction": wait / (stamps[-1][0] - stamps[warm_up(args)][0])}


def warm_up(args: argparse.Namespace) -> int:
    """Steps left out of the throughput: the first quarter."""
    return max(1, args.steps // 4)


def timed_train(config: dict, session: object, stamps_file: str) -> list[dict]:
    """The pretrain loop (PACKED_LM), stamping each step's start as its loss is computed; the
    stamps go to `stamps_file` (this may run in a Ray Train worker)."""
    from mortgagellm.pipelines.pretrain import PACKED_LM
    from mortgagellm.training.loop import Objective, train_loop

    stamps: list = []

    def loss(engine, batch, state):
        stamp(stamps)
        return PACKED_LM.loss(engine, batch, state)

    history = train_loop(config, session, Objective(PACKED_LM.name, PACKED_LM.batch, loss))
    Path(stamps_file).write_text(json.dumps(stamps))
    return history


def worker_config(model_dir: Path, shards: list[str], work: Path, args: argparse.Namespace,
                  variant: Variant) -> tuple[dict, object]:
    """The pretrain loop's WorkerConfig (as a dict) and ScalingSettings for `variant`."""
    from mortgagellm.cluster.deepspeed import ds_config
    from mortgagellm.config import DeepSpeedSettings, ScalingSettings
    from mortgagellm.training.worker import WorkerConfig

    scaling = ScalingSettings(use_gpu=args.gpu, threads_per_worker=variant.threads)
    ds = DeepSpeedSettings(zero_stage=variant.zero, micro_batch_size=args.micro, lr=args.lr)
    config = dataclasses.asdict(WorkerConfig(
        seed=0, base_model=str(model_dir), base_model_sha256="", shards=shards, shuffle_seed=0,
        seq_len=args.seq_len,
        method="full", lora={}, ds_config=ds_config(ds, scaling), max_steps=args.steps,
        warmup_steps=1, min_lr_ratio=1.0, gradient_checkpointing=False,
        checkpoint_every=args.steps, log_every=warm_up(args),
        peak_tflops=args.peak_tflops, use_gpu=args.gpu, scratch=str(work / "scratch"),
        tensorboard_dir=str(work / "tb"), placement_dir=str(work / "placement"),
        fail_at_step=None, failure_marker=str(work / "none"),
        run={"output_dir": str(work), "cache_dir": None}))
    return config, scaling


def loop_result(history: list[dict], stamps_file: Path, args: argparse.Namespace) -> dict:
    """Steady throughput from the step stamps; data-wait of the windows after the first."""
    windows = history[1:] or history
    return steady(json.loads(stamps_file.read_text()), args.micro * args.seq_len,
                  warm_up(args)) | {
        "data_wait_fraction": statistics.mean(w["data_wait_fraction"] for w in windows)} | (
        {"mfu": history[-1]["mfu"]} if "mfu" in history[-1] else {})


def in_process(model_dir: Path, shards: list[str], work: Path, args: argparse.Namespace,
               variant: Variant) -> dict:
    """The pretrain loop with DeepSpeed in this process (no Ray)."""
    import torch

    from mortgagellm.cluster.training import LocalSession, init_single_process

    torch.set_num_threads(variant.threads)
    config, _ = worker_config(model_dir, shards, work, args, variant)
    init_single_process(args.gpu)
    history = timed_train(config, LocalSession(shards, work / "checkpoints"),
                          str(work / "stamps.json"))
    return loop_result(history, work / "stamps.json", args)


def on_ray(model_dir: Path, shards: list[str], work: Path, args: argparse.Namespace,
           variant: Variant) -> dict:
    """The pretrain loop on a 1-worker TorchTrainer (the stage's run_on_ray)."""
    from mortgagellm.cluster.training import run_on_ray

    config, scaling = worker_config(model_dir, shards, work, args, variant)
    train_fn = functools.partial(timed_train, stamps_file=str(work / "stamps.json"))
    t0 = time.monotonic()
    result = run_on_ray(train_fn, config, scaling, str(work / "ray"), work.name, 0, 1)
    wall = time.monotonic() - t0
    final = Path(result.checkpoint.to_directory(str(work / "final")))
    history = json.loads((final / "history.json").read_text())
    return loop_result(history, work / "stamps.json", args) | {"wall_s": wall}


def measure(variant: Variant, model_dir: Path, shards: list[str], work: Path,
            args: argparse.Namespace) -> dict:
    """One timed run of `variant` in a fresh scratch directory under `work`."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{variant.kind}-", dir=work))
    device = "cuda" if args.gpu else "cpu"
    if variant.kind == "plain":
        result = plain_loop(model_dir, shards, args, variant.threads, device)
    elif variant.kind == "deepspeed":
        result = in_process(model_dir, shards, run_dir, args, variant)
    else:
        result = on_ray(model_dir, shards, run_dir, args, variant)
    print(f"  {variant.label:<45} {result['tokens_per_s']:10.0f} tokens/s  "
          f"{result['cpu_s_per_1k_tokens']:6.3f} CPU-s/1k tokens  data-wait "
          f"{100 * result['data_wait_fraction']:.1f} %  (load {os.getloadavg()[0]:.1f})",
          flush=True)
    return result


def variants(args: argparse.Namespace) -> list[Variant]:
    """The plain baseline first, then what is compared with it."""
    if not args.breakdown:
        return [Variant("plain", 0, args.threads), Variant("ray", args.zero, args.threads)]
    out = [Variant("plain", 0, args.threads), Variant("plain", 0, args.threads, before_ray=True)]
    if args.threads != 1:
        out.append(Variant("plain", 0, 1))
    out += [Variant("deepspeed", z, args.threads) for z in (0, 2)]
    out += [Variant("ray", z, args.threads) for z in sorted({0, 2, args.zero})]
    if args.threads != 1:
        out.append(Variant("ray", args.zero, 1))
    return out


def summarise(runs: dict[Variant, list[dict]]) -> list[dict]:
    """Per variant: tokens/s of each repeat, its ratio to the plain loop's in the same round,
    and the median and spread of the ratio."""
    base = next(iter(runs.values()))
    rows = []
    for variant, results in runs.items():
        ratios = [r["tokens_per_s"] / b["tokens_per_s"] for r, b in zip(results, base)]
        rows.append({"variant": dataclasses.asdict(variant), "label": variant.label,
                     "tokens_per_s": [r["tokens_per_s"] for r in results],
                     "baseline_tokens_per_s": [b["tokens_per_s"] for b in base],
                     "data_wait_fraction": [r["data_wait_fraction"] for r in results],
                     "cpu_s_per_1k_tokens": [r["cpu_s_per_1k_tokens"] for r in results],
                     "baseline_cpu_s_per_1k_tokens": [b["cpu_s_per_1k_tokens"] for b in base],
                     "cpu_ratio": [b["cpu_s_per_1k_tokens"] / r["cpu_s_per_1k_tokens"]
                                   for r, b in zip(results, base)],
                     "ratio": ratios, "ratio_median": statistics.median(ratios),
                     "ratio_spread": [min(ratios), max(ratios)]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--zero", type=int, default=0,
                        help="ZeRO stage of the Ray run (the CPU recipes' 0)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of every run (the CPU recipes' threads_per_worker)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every run")
    parser.add_argument("--breakdown", action="store_true",
                        help="also DeepSpeed without Ray, ZeRO 0/2, 1 thread (see above)")
    parser.add_argument("--json", type=Path, help="write every run and ratio here")
    parser.add_argument("--gpu", action="store_true", help="1B Llama, bf16, ZeRO-2, MFU")
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args()
    import torch

    if args.gpu:
        args.hidden, args.layers, args.vocab, args.seq_len, args.micro = 2048, 16, 32000, 2048, 4
        args.zero = 2
        name = torch.cuda.get_device_name()
        args.peak_tflops = args.peak_tflops or next(
            (v for k, v in PEAK_TFLOPS.items() if k in name), None)
    work = Path(tempfile.mkdtemp(prefix="mllm-bench-", dir="/tmp"))
    make_model(work / "model", args.hidden, args.layers, args.vocab, args.seq_len)
    shards = make_shards(work / "shards", args.steps * args.micro + 64, args.seq_len, args.vocab)
    todo = variants(args)
    print(f"model: hidden {args.hidden}, {args.layers} layers, seq {args.seq_len}, "
          f"micro-batch {args.micro}, {args.steps} steps (first {warm_up(args)} left out), "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    runs: dict[Variant, list[dict]] = {v: [] for v in todo}
    for variant in (v for v in todo if v.before_ray):
        runs[variant] = [measure(variant, work / "model", shards, work, args)
                         for _ in range(args.repeats)]
    if any(v.kind == "ray" for v in todo):  # before any in-process DeepSpeed run: Ray's
        from mortgagellm.cluster.runtime import init_ray  # daemons must not inherit its
        from mortgagellm.config import RayConfig  # RANK / WORLD_SIZE variables

        init_ray(RayConfig(num_cpus=4), work)
    for repeat in range(args.repeats):
        print(f"round {repeat + 1}/{args.repeats}", flush=True)
        for variant in (v for v in todo if not v.before_ray):
            runs[variant].append(measure(variant, work / "model", shards, work, args))
    rows = summarise(runs)
    print(f"\n{'':45} {'tokens/s':>10} {'CPU-s/1k tok':>12} {'data-wait':>9}  tokens/s ratio "
          "to plain, median [min-max]   CPU ratio (plain CPU-s / this)")
    for row in rows:
        lo, hi = row["ratio_spread"]
        cpu = row["cpu_ratio"]
        print(f"{row['label']:<45} {statistics.median(row['tokens_per_s']):10.0f} "
              f"{statistics.median(row['cpu_s_per_1k_tokens']):12.3f} "
              f"{100 * statistics.median(row['data_wait_fraction']):8.1f}%  "
              f"{row['ratio_median']:.2f} [{lo:.2f}-{hi:.2f}]{'':21}"
              f"{statistics.median(cpu):.2f} [{min(cpu):.2f}-{max(cpu):.2f}]")
    if "mfu" in runs[todo[-1]][-1]:
        print(f"MFU: {100 * runs[todo[-1]][-1]['mfu']:.1f} % (goal >= 40 % on H100)")
    headline = next(r for r in rows if r["variant"] == dataclasses.asdict(
        Variant("ray", args.zero, args.threads)))
    print(f"ratio Ray+DS (ZeRO-{args.zero}) / plain: {headline['ratio_median']:.2f} "
          f"[{headline['ratio_spread'][0]:.2f}-{headline['ratio_spread'][1]:.2f}] (goal >= 0.9)")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: v for k, v in vars(args).items()
                                                  if k != "json"}, "rows": rows,
                                         "headline": headline}, indent=1))


if __name__ == "__main__":
    main()
