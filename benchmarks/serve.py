"""The experts' two engines on the same model: static batches (engine.Decoder under @serve.batch)
against continuous batching (serve/batching.py), at concurrency 1 / 4 / 16. Prints requests/s,
tokens/s and p50 / p99 latency of each, and the ratios continuous / static last; writes them to
benchmarks/results/serve-<date>.json. Goal: >= 2x throughput at concurrency 16, p99 not worse at
concurrency 1.

Run: DS_ACCELERATOR=cpu .venv/bin/python benchmarks/serve.py [--model HF_DIR | random]
         [--hidden 32 --layers 2] [--max-tokens 16,32,64,128] [--batch 16] [--repeats 3]

In process, no Ray: each engine runs in the expert deployment's own class (Expert, as
tests/serve/test_experts.py calls it), and c asyncio clients each send their share of the
requests one after another (4 x c requests, at least 16) with Expert.complete: greedy chat
completions of a fixed set of mortgage questions, the requests' max_tokens taken in turn from
--max-tokens. A warm-up round per engine and concurrency is left out; the repeats alternate the
engines, so a change in the machine's load falls on both. Median of the repeats, with their
spread (min-max). Without --model: the bootstrap model of a demo run in /tmp/demo-before if
there is one (a trained model: its answers end on their own, mostly before max_tokens); `random`
(or no demo run): a random Llama (2 layers of 32 unless --layers / --hidden say otherwise), whose
answers run to max_tokens, so their lengths differ as the max_tokens do. Both engines must give
the same greedy answers, or the run stops.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEMO_MODEL = Path("/tmp/demo-before/bootstrap/instruct")
QUESTIONS = [
    "What is escrow?",
    "Can you explain private mortgage insurance and when I can stop paying it?",
    "How does an adjustable-rate mortgage differ from a fixed-rate one?",
    "List the documents a lender usually asks for.",
    "What is a debt-to-income ratio?",
    "Summarise the closing process for a first-time buyer, step by step.",
    "Should I pay points to lower my rate?",
    "What happens if I miss a mortgage payment?",
]
CONCURRENCY = (1, 4, 16)
ENGINES = ("static", "continuous")
KV_CACHE = {"num_blocks": 256, "max_batch_tokens": 512, "page_size": 32}


def replica(engine: str, model_dir: str, batch: int):
    """An expert replica object of `engine`, its model loaded as Serve's reconfigure does."""
    from ray.serve import batching

    from mortgagellm.manifest import sha256_path
    from mortgagellm.serve.experts import Expert

    # Outside a replica there is no deployment config to compare max_batch_size with.
    batching._BatchQueue._warn_if_max_batch_size_exceeds_max_ongoing_requests = lambda self: None
    expert = Expert.func_or_class("conversational", 1, batch, 0.01, 448, 30.0, engine, KV_CACHE)
    expert.reconfigure({"model": model_dir, "version": sha256_path(model_dir)})
    return expert


def payload(question: int, max_tokens: int) -> dict:
    return {"messages": [{"role": "user", "content": QUESTIONS[question % len(QUESTIONS)]}],
            "max_tokens": max_tokens, "temperature": 0.0, "top_p": 1.0, "seed": None, "stop": []}


async def load(expert, concurrency: int, requests: int, max_tokens: list[int]) -> dict:
    """`concurrency` clients send `requests` in all; wall time, latencies and tokens."""
    latencies, tokens = [], []

    async def client(k: int) -> None:
        # Each client takes every max_tokens in turn: one holding all the long requests would
        # make its chain of requests the run's length, whatever the engine.
        for j, i in enumerate(range(k, requests, concurrency)):
            start = time.perf_counter()
            items = await expert.complete(payload(i, max_tokens[(k + j) % len(max_tokens)]))
            latencies.append(time.perf_counter() - start)
            tokens.append(items[-1]["completion_tokens"])

    start = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(concurrency)))
    wall = time.perf_counter() - start
    ordered = sorted(latencies)
    return {"requests_per_s": requests / wall, "tokens_per_s": sum(tokens) / wall,
            "p50_s": statistics.median(ordered),
            "p99_s": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
            "requests": requests, "tokens": sum(tokens), "wall_s": wall}


async def answers(expert, max_tokens: list[int]) -> list[str]:
    """Each question's greedy answer at each max_tokens, one at a time."""
    out = []
    for i in range(len(QUESTIONS) * len(max_tokens)):
        items = await expert.complete(payload(i, max_tokens[i % len(max_tokens)]))
        out.append("".join(item["text"] for item in items[1:]))
    return out


async def measure(experts: dict, repeats: int, max_tokens: list[int]) -> dict:
    """{engine: {concurrency: [one result per repeat]}}, the engines alternating."""
    same = [await answers(experts[e], max_tokens) for e in ENGINES]
    if same[0] != same[1]:
        raise SystemExit("the engines' greedy answers differ: fix that before timing them")
    runs = {e: {c: [] for c in CONCURRENCY} for e in ENGINES}
    for repeat in range(repeats):
        for c in CONCURRENCY:
            for engine in ENGINES:
                n = max(16, 4 * c)
                await load(experts[engine], c, n, max_tokens)  # warm-up, left out
                runs[engine][c].append(await load(experts[engine], c, n, max_tokens))
                r = runs[engine][c][-1]
                print(f"  repeat {repeat + 1}  c={c:<2}  {engine:<10}  "
                      f"{r['requests_per_s']:6.2f} req/s  p99 {r['p99_s'] * 1e3:7.1f} ms",
                      flush=True)
    return runs


METRICS = ("requests_per_s", "tokens_per_s", "p50_s", "p99_s")


def summary(runs: dict) -> dict:
    """Median and spread (min, max) of each metric, and the ratios continuous / static."""
    out = {"median": {}, "spread": {}, "ratio": {}}
    for engine, by_c in runs.items():
        for c, results in by_c.items():
            key = f"{engine}/c{c}"
            out["median"][key] = {m: statistics.median(r[m] for r in results) for m in METRICS}
            out["spread"][key] = {m: [min(r[m] for r in results), max(r[m] for r in results)]
                                  for m in METRICS}
    for c in CONCURRENCY:
        new, old = out["median"][f"continuous/c{c}"], out["median"][f"static/c{c}"]
        out["ratio"][f"c{c}"] = {m: new[m] / old[m] for m in METRICS}
    return out


def report(result: dict) -> None:
    s = result["summary"]
    print(f"\n{'':16}{'req/s':>16}{'tokens/s':>18}{'p50 ms':>18}{'p99 ms':>18}   "
          "median [min-max]")
    for c in CONCURRENCY:
        for engine in ENGINES:
            key = f"{engine}/c{c}"
            med, spread = s["median"][key], s["spread"][key]
            cells = []
            for m in METRICS:
                scale = 1e3 if m.endswith("_s") and m.startswith("p") else 1
                lo, hi = (v * scale for v in spread[m])
                cells.append(f"{med[m] * scale:6.1f} [{lo:.1f}-{hi:.1f}]".rjust(18))
            print(f"{engine:>10} c={c:<3}" + "".join(cells))
    print("\ncontinuous / static (throughput: higher is better; latency: lower is better)")
    for c in CONCURRENCY:
        r = s["ratio"][f"c{c}"]
        print(f"  concurrency {c:>2}: requests/s x{r['requests_per_s']:.2f}  tokens/s "
              f"x{r['tokens_per_s']:.2f}  p50 x{r['p50_s']:.2f}  p99 x{r['p99_s']:.2f}")
    top, one = s["ratio"]["c16"], s["ratio"]["c1"]
    print(f"goal: throughput at concurrency 16 >= x2: x{top['requests_per_s']:.2f} "
          f"({'met' if top['requests_per_s'] >= 2 else 'missed'}); p99 at concurrency 1 "
          f"<= x1: x{one['p99_s']:.2f} ({'met' if one['p99_s'] <= 1 else 'missed'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="HF model directory, or `random` (default: see above)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", default="16,32,64,128",
                        help="the requests' max_tokens, taken in turn")
    parser.add_argument("--hidden", type=int, default=32, help="random model: hidden size")
    parser.add_argument("--layers", type=int, default=2, help="random model: layers")
    parser.add_argument("--batch", type=int, default=16,
                        help="serve.<expert>.max_batch_size of both engines")
    parser.add_argument("--out", help="JSON file (default benchmarks/results/serve-<date>.json)")
    args = parser.parse_args()

    max_tokens = [int(n) for n in args.max_tokens.split(",")]
    model = args.model or (str(DEMO_MODEL) if DEMO_MODEL.exists() else "random")
    work = Path(tempfile.mkdtemp(prefix="mllm-bench-engine-"))
    if model == "random":
        from serve_routing import random_model

        random_model(work / "model", args.hidden, args.layers)
        model = str(work / "model")
    experts = {e: replica(e, model, args.batch) for e in ENGINES}
    print(f"model {model}, max_tokens {max_tokens}, max_batch_size {args.batch}, "
          f"kv_cache {KV_CACHE}, {args.repeats} repeats, load average {os.getloadavg()[0]:.1f}")
    runs = asyncio.run(measure(experts, args.repeats, max_tokens))
    experts["continuous"].engine.close()
    shutil.rmtree(work, ignore_errors=True)
    label = model if not model.startswith(str(work)) else \
        f"random Llama, hidden {args.hidden}, {args.layers} layers"
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "model": label,
              "max_tokens": max_tokens, "max_batch_size": args.batch, "kv_cache": KV_CACHE,
              "repeats": args.repeats, "cpus": os.cpu_count(),
              "load_average_after": os.getloadavg()[0],
              "runs": {e: {f"c{c}": r for c, r in by_c.items()} for e, by_c in runs.items()},
              "summary": summary(runs)}
    out = Path(args.out or Path(__file__).parent / "results" /
               f"serve-{datetime.date.today().isoformat()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    report(result)
    print(f"written: {out}")


if __name__ == "__main__":
    main()
