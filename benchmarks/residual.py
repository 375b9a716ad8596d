"""Benchmark: the streaming residual merge against a raw read of the same three checkpoints.

Run: .venv/bin/python benchmarks/residual.py [--sizes 0.5,2] [--cache warm,cold] [--repeats 3]
         [--work-dir DIR] [--out-dir /dev/shm/mllm-merged] [--json OUT]

For each size (GB per model) it writes synthetic bf16 Llama-shaped base / instruct / dapt
checkpoints (hidden 2048, MLP 5632, vocabulary 32000; the layer count sets the size), then times,
in fresh child processes, (a) reading every byte of the three models and (b) the merge (read,
compute, write the sharded output), best of --repeats each, with the inputs in the page cache
(warm: the merge's compute against memcpy) and evicted from it (cold: both read the disk).
Prints the read/merge time ratio (goal >= 0.7) and the merge's peak RSS above the interpreter's
(goal: flat as the model grows, bounded by a few tensors); --json keeps every timed run (the
n-th read, write and merge ran one after the other).

Where the merged model goes: warm runs write it to a tmpfs (/dev/shm when it has room), so
warm is all memory, as its name says; cold runs write it beside the inputs, on disk. Each
repeat also times (c) a raw write of the merged model's bytes to the same place, so the
slowest I/O a merge cannot avoid, read + write, is in the JSON beside the read alone (on this
VM's disk a 0.47 GB write took 1.9 s, against 0.26 s to read the 1.41 GB of inputs warm).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HIDDEN, MLP, VOCAB = 2048, 5632, 32000
SHARD_BYTES = 1 << 30


def layer_shapes(i: int) -> dict[str, tuple[int, int]]:
    """One decoder layer's matrices (norm vectors included), Llama names."""
    p = f"model.layers.{i}."
    return {p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
            p + "self_attn.k_proj.weight": (HIDDEN, HIDDEN),
            p + "self_attn.v_proj.weight": (HIDDEN, HIDDEN),
            p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            p + "mlp.gate_proj.weight": (MLP, HIDDEN), p + "mlp.up_proj.weight": (MLP, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, MLP),
            p + "input_layernorm.weight": (HIDDEN,),
            p + "post_attention_layernorm.weight": (HIDDEN,)}


def model_shapes(size_gb: float) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a bf16 model of about size_gb gigabytes."""
    per_layer = sum(_numel(s) for s in layer_shapes(0).values()) * 2
    layers = max(1, round((size_gb * 1e9 - 2 * VOCAB * HIDDEN * 2) / per_layer))
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        shapes |= layer_shapes(i)
    return shapes | {"model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)}


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def write_checkpoint(path: Path, shapes: dict[str, tuple[int, ...]], seed: int) -> None:
    """Random bf16 weights in 1 GiB safetensors shards with an index, as save_pretrained does."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    groups, size = [[]], 0
    for name, shape in shapes.items():
        if groups[-1] and size + _numel(shape) * 2 > SHARD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += _numel(shape) * 2
    weight_map = {}
    for i, names in enumerate(groups):
        shard = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: torch.randn(shapes[n], generator=generator).bfloat16() for n in names},
                  path / shard, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(names, shard)
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def child(mode: str, cache: str, work: Path, out: Path) -> dict[str, float]:
    """One timed run in this (fresh) process: 'read' the three models, 'write' as many bytes
    as one model to out, or 'merge' them into out, after evicting the input files from the
    page cache when cache is 'cold'."""
    import torch  # noqa: F401  (imported before the RSS baseline: not the merge's memory)

    from mortgagellm.merge import MergePlan
    from mortgagellm.model_files import weight_files
    from mortgagellm.pipelines.residual import merge_dirs

    files = [f for role in ("dapt", "instruct", "base") for f in weight_files(work / role)]
    if cache == "cold":
        evict(files)
    baseline = memory_kb("VmRSS")
    t0 = time.perf_counter()
    if mode == "read":
        buffer = bytearray(64 << 20)
        for file in files:
            with file.open("rb", buffering=0) as f:
                while f.readinto(buffer):
                    pass
    elif mode == "write":  # the merged model's bytes, as the merge writes them (no fsync)
        left = sum(f.stat().st_size for f in weight_files(work / "base"))
        buffer = bytes(64 << 20)
        out.mkdir(parents=True, exist_ok=True)
        with (out / "raw-write.bin").open("wb", buffering=0) as f:
            while left > 0:
                left -= f.write(buffer[:min(left, len(buffer))])
    else:
        plan = MergePlan(scale=1.0, instruct_rows={"model.embed_tokens.weight": (1, 2, 3),
                                                    "lm_head.weight": (1, 2, 3)})
        merge_dirs(work / "dapt", work / "instruct", work / "base", plan, out, 4 << 30)
    seconds = time.perf_counter() - t0
    peak = memory_kb("VmHWM")
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": seconds, "rss_above_start_mb": (peak - baseline) / 1024}


def memory_kb(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process, in KiB. Not getrusage's ru_maxrss: Linux
    carries that over from the forking parent across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def evict(files: list[Path]) -> None:
    """Drop these files (only these: the machine is shared) from the page cache."""
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def spawn(mode: str, cache: str, work: Path, out: Path) -> dict[str, float]:
    printed = subprocess.run([sys.executable, __file__, "--child", mode, "--cache", cache,
                              "--work-dir", str(work), "--out-dir", str(out)],
                             check=True, capture_output=True, text=True).stdout
    return json.loads(printed.strip().splitlines()[-1])


def output_dir(cache: str, work: Path, asked: str | None, model_bytes: int) -> Path:
    """--out-dir if given; else a tmpfs for warm runs (when /dev/shm has room for the output
    twice over), and the work directory, on disk, for cold ones."""
    if asked:
        return Path(asked)
    shm = Path("/dev/shm")
    if cache == "warm" and shm.is_dir() and shutil.disk_usage(shm).free > 2 * model_bytes:
        return shm / f"mllm-merged-{os.getpid()}"
    return work / "merged"


def bench_size(size_gb: float, work: Path, out_dir: str | None, cache: str, repeats: int
               ) -> dict[str, float]:
    """Write the three checkpoints of one size (once), then time read, write and merge in
    turn."""
    shapes = model_shapes(size_gb)
    if not (work / "base/model.safetensors.index.json").exists():
        for seed, role in enumerate(("base", "instruct", "dapt")):
            write_checkpoint(work / role, shapes, seed)
    out = output_dir(cache, work, out_dir, sum(_numel(s) for s in shapes.values()) * 2)
    spawn("read", "warm", work, out)  # the first read of fresh files warms the page cache
    reads, writes, merges = [], [], []
    for _ in range(repeats):
        reads.append(spawn("read", cache, work, out))
        writes.append(spawn("write", cache, work, out))
        merges.append(spawn("merge", cache, work, out))
    read = min(r["seconds"] for r in reads)
    merge = min(m["seconds"] for m in merges)
    return {"model_gb": sum(_numel(s) for s in shapes.values()) * 2 / 1e9, "cache": cache,
            "read_s": read, "merge_s": merge, "ratio": read / merge,
            "merge_rss_mb": max(m["rss_above_start_mb"] for m in merges),
            "output": "tmpfs" if str(out).startswith("/dev/shm") else "disk",
            "read_runs_s": [r["seconds"] for r in reads],
            "write_runs_s": [w["seconds"] for w in writes],
            "merge_runs_s": [m["seconds"] for m in merges],
            "merge_rss_runs_mb": [m["rss_above_start_mb"] for m in merges],
            "largest_tensor_mb": max(_numel(s) for s in shapes.values()) * 2 / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.5,2", help="GB per model, comma separated")
    parser.add_argument("--cache", default="warm,cold",
                        help="page-cache states to time: warm (inputs in memory: the merge's "
                        "compute against memcpy), cold (inputs evicted: read from disk)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each, best kept")
    parser.add_argument("--work-dir", default="/tmp/mllm-residual-bench",
                        help="where the checkpoints are written (about 4 x size each)")
    parser.add_argument("--out-dir", default=None,
                        help="where the merged model goes (default WORK_DIR/merged); a tmpfs "
                        "such as /dev/shm/mllm-merged takes the disk's write speed out")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints afterwards")
    parser.add_argument("--json", type=Path, help="write every timed run here")
    parser.add_argument("--child", choices=("read", "write", "merge"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    root = Path(args.work_dir)
    if args.child:
        out = Path(args.out_dir or root / "merged")
        print(json.dumps(child(args.child, args.cache, root, out)))
        return 0
    results = []
    for size in (float(s) for s in args.sizes.split(",")):
        for cache in args.cache.split(","):
            results.append(r := bench_size(size, root / f"{size:g}gb", args.out_dir, cache,
                                           args.repeats))
            print(f"{r['model_gb']:.2f} GB per model, {cache}: read {r['read_s']:.2f} s, write "
                  f"{min(r['write_runs_s']):.2f} s ({r['output']}), merge {r['merge_s']:.2f} s, "
                  f"merge peak RSS +{r['merge_rss_mb']:.0f} MB", flush=True)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps({"results": results}, indent=1))
    print("\nmodel GB  cache  read s  merge s  ratio read/merge (goal >= 0.7)  "
          "merge peak RSS MB (goal: flat)  largest tensor MB")
    for r in results:
        print(f"{r['model_gb']:8.2f}  {r['cache']:5}  {r['read_s']:6.2f}  {r['merge_s']:7.2f}  "
              f"{r['ratio']:32.2f}  {r['merge_rss_mb']:30.0f}  {r['largest_tensor_mb']:17.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
