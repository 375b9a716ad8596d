"""The two serving topologies (serve.topology) on the same load: `separate` (two expert
deployments, each holding its own full model: its LoRA adapter merged into the base) against
`adapters` (one deployment: the base once, both experts as PEFT adapters, each request decoded
with its own in a batch that mixes them; static engine). Prints the memory of each replica (RSS
and PSS) and of each topology, requests/s, tokens/s and p50 / p99 latency at concurrency 1 / 4 /
16, and the ratios adapters / separate last; writes them to
benchmarks/results/serve-topology-<date>.json.

Run: DS_ACCELERATOR=cpu .venv/bin/python benchmarks/serve_topology.py [--hidden 512 --layers 8]
         [--rank 16] [--max-tokens 16,32,64] [--repeats 2]

The models: a random Llama (benchmarks/serve_routing.random_model) as the merged model, two
random LoRA adapters of rank --rank on q_proj / v_proj (the recipes' default targets), and the
two merged experts the separate topology serves. Each replica runs in a process of its own, as
Serve runs it: the deployment's own class (Expert) answering JSON lines, one torch thread each
(--adapters-threads for the adapters replicas: on a busy 2-core machine two threads per
process made a decode step 50-100x slower). Settings: separate with both engines, static (the
adapters topology's engine: the topology's own cost) and continuous (the default: what
switching topology costs; its paged KV cache, serve.py's KV_CACHE, counts in its memory);
adapters with one replica (the weights held once: the memory saved, on half the CPUs) and
adapters-x2, two replicas each serving both routes (as many replicas and CPUs as separate: the
throughput cost of the adapters alone). c asyncio clients send 4 x c requests (at least 16),
the routes alternating: the separate topology's to their expert's replica, the adapters
topology's to a replica naming the route's adapter. A warm-up round per setting and
concurrency is left out; the repeats alternate the settings; medians and spread (min-max).
Memory: each replica's RSS and PSS (psutil) after the runs, its peak RSS, and its RSS before
the model was loaded (Python, torch, transformers, Ray Serve imported).
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

from serve import KV_CACHE, QUESTIONS  # noqa: E402  (benchmarks/serve.py, the engines' benchmark)

ROUTES = ("structured", "conversational")
CONCURRENCY = (1, 4, 16)
SETTINGS = ("separate-static", "separate-continuous", "adapters", "adapters-x2")
METRICS = ("requests_per_s", "tokens_per_s", "p50_s", "p99_s")
RATIOS = (("adapters", "separate-static"), ("adapters", "separate-continuous"),
          ("adapters-x2", "separate-static"), ("adapters-x2", "separate-continuous"))
"""adapters: one replica (the memory saved); adapters-x2: as many replicas and CPUs as
separate (the throughput cost of the adapters alone)."""


def build_models(work: Path, hidden: int, layers: int, rank: int) -> dict:
    """The base, two adapters and the two merged experts, as directories."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from serve_routing import random_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    random_model(work / "base", hidden, layers)
    tokenizer = AutoTokenizer.from_pretrained(work / "base")
    dirs = {"base": str(work / "base")}
    for seed, route in enumerate(ROUTES):
        torch.manual_seed(seed)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(work / "base"), LoraConfig(
            r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"],
            init_lora_weights=False, task_type="CAUSAL_LM"))
        model.save_pretrained(work / f"adapter-{route}")
        merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(work / "base"),
                                           work / f"adapter-{route}").merge_and_unload()
        merged.save_pretrained(work / f"merged-{route}")
        tokenizer.save_pretrained(work / f"merged-{route}")
        dirs[f"adapter-{route}"] = str(work / f"adapter-{route}")
        dirs[f"merged-{route}"] = str(work / f"merged-{route}")
    return dirs


def replica(kind: str, dirs: dict, engine: str, threads: int, batch: int):
    """An Expert replica object: one separate expert (kind = its route) or AdapterExperts."""
    from ray.serve import batching

    from mortgagellm.manifest import sha256_path
    from mortgagellm.serve.experts import Expert

    batching._BatchQueue._warn_if_max_batch_size_exceeds_max_ongoing_requests = lambda self: None
    if kind == "adapters":
        expert = Expert.func_or_class("adapters", threads, batch, 0.01, 448, 30.0, "static",
                                      KV_CACHE, dict.fromkeys(ROUTES, False))
        expert.reconfigure({"model": dirs["base"], "version": sha256_path(dirs["base"]),
                            "adapters": {r: {"model": dirs[f"adapter-{r}"],
                                             "version": sha256_path(dirs[f"adapter-{r}"])}
                                         for r in ROUTES}})
    else:
        model = dirs[f"merged-{kind}"]
        expert = Expert.func_or_class(kind, threads, batch, 0.01, 448, 30.0, engine, KV_CACHE)
        expert.reconfigure({"model": model, "version": sha256_path(model)})
    return expert


def payload(i: int, max_tokens: int, adapter: str | None) -> dict:
    body = {"messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            "max_tokens": max_tokens, "temperature": 0.0, "top_p": 1.0, "seed": None,
            "stop": []}
    return body | ({"adapter": adapter} if adapter else {})


# ---- one process per replica, as Serve runs them ----------------------------------------------

def memory() -> dict:
    """This process's RSS and PSS now and its peak RSS, in MiB."""
    import resource

    import psutil

    info = psutil.Process().memory_full_info()
    return {"rss_mb": info.rss / 2**20, "pss_mb": info.pss / 2**20,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10}


def child(spec: str) -> None:
    """A replica's process: loads it, then answers JSON lines from stdin ({"id", "payload"} ->
    {"id", "items"}; {"id", "memory": true} -> {"id", "memory"}) until stdin closes."""
    import peft  # noqa: F401  (the runtime, measured before the model loads)
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import mortgagellm.serve.experts  # noqa: F401

    kind, dirs, engine, threads, batch = json.loads(spec)
    runtime = memory()["rss_mb"]
    expert = replica(kind, dirs, engine, threads, batch)

    async def serve_stdin() -> None:
        async def one(message: dict) -> None:
            try:
                reply = ({"memory": memory() | {"runtime_rss_mb": runtime}}
                         if message.get("memory") else
                         {"items": await expert.complete(message["payload"])})
            except Exception as err:  # noqa: BLE001 - the parent raises it
                reply = {"error": f"{type(err).__name__}: {err}"}
            sys.stdout.write(json.dumps({"id": message["id"]} | reply) + "\n")
            sys.stdout.flush()

        tasks = set()
        while line := await asyncio.to_thread(sys.stdin.readline):
            task = asyncio.ensure_future(one(json.loads(line)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)

    sys.stdout.write(json.dumps({"ready": True}) + "\n")
    sys.stdout.flush()
    asyncio.run(serve_stdin())
    if expert.engine is not None:
        expert.engine.close()


class Replica:
    """The parent's end of a replica process: complete(payload) -> the items it answered."""

    def __init__(self, kind: str, dirs: dict, engine: str, threads: int, batch: int):
        self.spec = json.dumps([kind, dirs, engine, threads, batch])
        self.threads, self.futures, self.ids = threads, {}, 0

    async def start(self) -> Replica:
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads))
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--child", self.spec, env=env, limit=2**24,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert json.loads(await self.proc.stdout.readline()) == {"ready": True}
        self.reader = asyncio.ensure_future(self._read())
        return self

    async def _read(self) -> None:
        while line := await self.proc.stdout.readline():
            message = json.loads(line)
            self.futures.pop(message.pop("id")).set_result(message)

    async def ask(self, message: dict) -> dict:
        self.ids += 1
        self.futures[self.ids] = asyncio.get_running_loop().create_future()
        self.proc.stdin.write((json.dumps({"id": self.ids} | message) + "\n").encode())
        return await self.futures[self.ids]

    async def complete(self, body: dict) -> list[dict]:
        reply = await self.ask({"payload": body})
        if "error" in reply:
            raise RuntimeError(f"replica {self.spec[:40]}...: {reply['error']}")
        return reply["items"]

    async def memory(self) -> dict:
        return (await self.ask({"memory": True}))["memory"]

    async def stop(self) -> None:
        self.proc.stdin.close()
        await self.proc.wait()
        self.reader.cancel()


class Topology:
    """Where a request of a route goes: the route's replica (separate) or the one replica with
    the route's adapter (adapters)."""

    def __init__(self, replicas: dict[str, Replica]):
        self.replicas = replicas

    async def complete(self, i: int, max_tokens: int) -> list[dict]:
        route = ROUTES[i % 2]
        if route in self.replicas:
            return await self.replicas[route].complete(payload(i, max_tokens, None))
        # Adapters: any replica takes either route (pairs of requests in turn, so each
        # replica gets both routes).
        replica = list(self.replicas.values())[i // 2 % len(self.replicas)]
        return await replica.complete(payload(i, max_tokens, route))


def topologies(dirs: dict, batch: int, adapters_threads: int) -> dict[str, dict[str, Replica]]:
    """{setting: {replica name: its (unstarted) process}}."""
    return {"separate-static": {r: Replica(r, dirs, "static", 1, batch) for r in ROUTES},
            "separate-continuous": {r: Replica(r, dirs, "continuous", 1, batch) for r in ROUTES},
            "adapters": {"adapters": Replica("adapters", dirs, "static", adapters_threads,
                                             batch)},
            "adapters-x2": {f"adapters-{k}": Replica("adapters", dirs, "static",
                                                     adapters_threads, batch) for k in (0, 1)}}


async def load(topology: Topology, concurrency: int, requests: int, max_tokens: list[int]
               ) -> dict:
    """`concurrency` clients send `requests` in all; wall time, latencies and tokens."""
    latencies, tokens = [], []

    async def client(k: int) -> None:
        # Each client takes every max_tokens in turn, and both routes.
        for j, i in enumerate(range(k, requests, concurrency)):
            start = time.perf_counter()
            items = await topology.complete(i, max_tokens[(k + j) % len(max_tokens)])
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


async def answers(topology: Topology, max_tokens: list[int]) -> list[str]:
    """Each question's greedy answer on each route, one at a time."""
    out = []
    for i in range(2 * len(QUESTIONS)):
        items = await topology.complete(i, max_tokens[i % len(max_tokens)])
        out.append("".join(item["text"] for item in items[1:]))
    return out


async def measure(settings: dict, repeats: int, max_tokens: list[int]) -> dict:
    """Runs {setting: {concurrency: [one result per repeat]}}, the settings alternating; the
    share of greedy answers equal to separate-static's; each replica's memory at the end."""
    for replicas in settings.values():
        await asyncio.gather(*(r.start() for r in replicas.values()))
    tops = {name: Topology(replicas) for name, replicas in settings.items()}
    reference = await answers(tops["separate-static"], max_tokens)
    agree = {}
    for name in SETTINGS:
        got = await answers(tops[name], max_tokens)
        agree[name] = sum(a == b for a, b in zip(got, reference)) / len(reference)
    runs = {name: {c: [] for c in CONCURRENCY} for name in SETTINGS}
    for repeat in range(repeats):
        for c in CONCURRENCY:
            for name in SETTINGS:
                n = max(16, 4 * c)
                await load(tops[name], c, n, max_tokens)  # warm-up, left out
                runs[name][c].append(await load(tops[name], c, n, max_tokens))
                r = runs[name][c][-1]
                print(f"  repeat {repeat + 1}  c={c:<2}  {name:<20}  "
                      f"{r['requests_per_s']:6.2f} req/s  p99 {r['p99_s'] * 1e3:7.1f} ms",
                      flush=True)
    mem = {f"{name}/{replica}": await r.memory()
           for name, replicas in settings.items() for replica, r in replicas.items()}
    for replicas in settings.values():
        await asyncio.gather(*(r.stop() for r in replicas.values()))
    totals = {name: {m: sum(mem[f"{name}/{replica}"][m] for replica in replicas)
                     for m in ("rss_mb", "pss_mb", "peak_rss_mb")}
              for name, replicas in settings.items()}
    return {"runs": runs, "agreement": agree, "memory": {"replicas": mem, "topologies": totals}}


# ---- summary and report ------------------------------------------------------------------------

def summary(runs: dict) -> dict:
    """Median and spread of each metric; ratios adapters / each separate setting."""
    out = {"median": {}, "spread": {}, "ratio": {}}
    for name, by_c in runs.items():
        for c, results in by_c.items():
            key = f"{name}/c{c}"
            out["median"][key] = {m: statistics.median(r[m] for r in results) for m in METRICS}
            out["spread"][key] = {m: [min(r[m] for r in results), max(r[m] for r in results)]
                                  for m in METRICS}
    for new_name, base in RATIOS:
        for c in CONCURRENCY:
            new, old = out["median"][f"{new_name}/c{c}"], out["median"][f"{base}/c{c}"]
            out["ratio"][f"{new_name}/{base}/c{c}"] = {m: new[m] / old[m] for m in METRICS}
    return out


def report(result: dict) -> None:
    mem = result["memory"]
    print(f"\n{'replica process':36}{'RSS MiB':>10}{'PSS MiB':>10}{'peak RSS':>10}"
          f"{'runtime RSS':>13}")
    for name, m in mem["replicas"].items():
        print(f"{name:36}{m['rss_mb']:10.0f}{m['pss_mb']:10.0f}{m['peak_rss_mb']:10.0f}"
              f"{m['runtime_rss_mb']:13.0f}")
    for name, m in mem["topologies"].items():
        print(f"{name + ' (all its replicas)':36}{m['rss_mb']:10.0f}{m['pss_mb']:10.0f}"
              f"{m['peak_rss_mb']:10.0f}")
    s = result["summary"]
    print(f"\n{'':26}{'req/s':>16}{'tokens/s':>18}{'p50 ms':>18}{'p99 ms':>18}   "
          "median [min-max]")
    for c in CONCURRENCY:
        for name in SETTINGS:
            med, spread = s["median"][f"{name}/c{c}"], s["spread"][f"{name}/c{c}"]
            cells = []
            for m in METRICS:
                scale = 1e3 if m.startswith("p") else 1
                lo, hi = (v * scale for v in spread[m])
                cells.append(f"{med[m] * scale:6.1f} [{lo:.1f}-{hi:.1f}]".rjust(18))
            print(f"{name:>20} c={c:<3}" + "".join(cells))
    print("\ngreedy answers equal to separate-static's: "
          + ", ".join(f"{k} {v:.0%}" for k, v in result["agreement"].items()))
    for new_name, base in RATIOS:
        ada, sep = mem["topologies"][new_name], mem["topologies"][base]
        print(f"\n{new_name} / {base}: memory of all replicas RSS x"
              f"{ada['rss_mb'] / sep['rss_mb']:.2f}  PSS x{ada['pss_mb'] / sep['pss_mb']:.2f}"
              "  (throughput: higher is better; latency: lower is better)")
        for c in CONCURRENCY:
            r = s["ratio"][f"{new_name}/{base}/c{c}"]
            print(f"  concurrency {c:>2}: requests/s x{r['requests_per_s']:.2f}  tokens/s "
                  f"x{r['tokens_per_s']:.2f}  p50 x{r['p50_s']:.2f}  p99 x{r['p99_s']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512, help="random model: hidden size")
    parser.add_argument("--layers", type=int, default=8, help="random model: layers")
    parser.add_argument("--rank", type=int, default=16, help="the adapters' LoRA rank")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-tokens", default="16,32,64",
                        help="the requests' max_tokens, taken in turn")
    parser.add_argument("--batch", type=int, default=16, help="max_batch_size of every replica")
    parser.add_argument("--adapters-threads", type=int, default=1,
                        help="torch threads of each adapters replica (separate: 1 each)")
    parser.add_argument("--out", help="JSON file (default "
                        "benchmarks/results/serve-topology-<date>.json)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)

    max_tokens = [int(n) for n in args.max_tokens.split(",")]
    work = Path(tempfile.mkdtemp(prefix="mllm-bench-topology-"))
    dirs = build_models(work, args.hidden, args.layers, args.rank)
    weights = {name: sum(f.stat().st_size for f in Path(d).glob("*.safetensors")) / 2**20
               for name, d in dirs.items()}
    print(f"random Llama hidden {args.hidden}, {args.layers} layers ({weights['base']:.0f} MiB); "
          f"LoRA rank {args.rank} on q/v ({weights['adapter-structured']:.1f} MiB each); "
          f"max_tokens {max_tokens}; max_batch_size {args.batch}; {args.repeats} repeats; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    measured = asyncio.run(measure(topologies(dirs, args.batch, args.adapters_threads),
                                   args.repeats, max_tokens))
    shutil.rmtree(work, ignore_errors=True)
    runs = measured["runs"]
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
              "model": f"random Llama, hidden {args.hidden}, {args.layers} layers",
              "lora_rank": args.rank, "weights_mb": weights, "max_tokens": max_tokens,
              "max_batch_size": args.batch, "kv_cache": KV_CACHE,
              "adapters_threads": args.adapters_threads, "repeats": args.repeats,
              "cpus": os.cpu_count(), "load_average_after": os.getloadavg()[0],
              "memory": measured["memory"], "agreement": measured["agreement"],
              "runs": {n: {f"c{c}": r for c, r in by_c.items()} for n, by_c in runs.items()},
              "summary": summary(runs)}
    out = Path(args.out or Path(__file__).parent / "results" /
               f"serve-topology-{datetime.date.today().isoformat()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    report(result)
    print(f"written: {out}")


if __name__ == "__main__":
    main()
