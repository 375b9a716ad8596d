"""Corpus pipeline throughput: the same transforms on the same input (a) in a plain single-process
loop and (b) as the corpus stage's Ray Data pipeline. Prints docs/s, tokens/s, peak memory and the
packed non-pad fraction of each, and the ratio last (goal >= 1.6 on 2 cores).

Run: .venv/bin/python benchmarks/corpus.py [--docs 100000] [--num-cpus 4] [--repeats 3]
         [--no-threaded] [--json OUT]
     .venv/bin/python benchmarks/corpus.py --scale 1000000   # Ray pipeline only, end to end
                                                             # (goal <= 20 min, peak <= 6 GB)
     .venv/bin/python benchmarks/corpus.py --scale 10000,100000,1000000 --plot scaling.png
     .venv/bin/python benchmarks/corpus.py --scale 100000 --timeline trace.json
         # where the cores idle: Ray's task timeline of the run (chrome://tracing) and, per
         # operator, its tasks and busy seconds, with the seconds 0, 1, 2... tasks ran at once
         # the scaling picture: each size in one Ray session, time and memory against size with
         # the fitted growth (time ~ docs^k; MB per 1M documents) and the 10M figures from it

Memory is the proportional set size (PSS) summed over this process and every process it started
(the Ray head, raylet and workers), sampled every second: shared object-store pages are counted
once, not once per process that maps them. CPU seconds are summed over the same processes; on a
shared machine (see load_avg_1m, at start and end) docs per CPU second is the steadier number.
Input: the generator (noise on) plus the three CFPB regulations; the tokenizer is a 1,024-token
byte-level BPE trained here like the small preset's.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq

from mortgagellm.config import CorpusConfig, RayConfig
from mortgagellm.datasets import batches, dedupe, readers
from mortgagellm.datasets.schemas import PACKED_SCHEMA
from mortgagellm.datasets.splits import purpose_seed
from mortgagellm.pipelines import corpus

REGULATIONS = Path(__file__).resolve().parents[1] / "data" / "cfpb-regulations"
SEED = 0


class Usage:
    """Background sampler over this process tree, every second: peak summed PSS, peak driver
    RSS, and CPU seconds used (user + system of every process seen, from when it was first
    seen). The machine is shared, so CPU seconds say what the work cost when wall time cannot.
    """

    def __init__(self) -> None:
        self.peak = self.driver_peak = 0
        self._first: dict[int, float] = {}  # CPU seconds when first seen; 0 if started later
        self._last: dict[int, float] = {}
        self._started = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Usage:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self._sample()

    def _sample(self) -> None:
        me, total = psutil.Process(), 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_full_info().pss
                cpu = sum(p.cpu_times()[:2])
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            self._first.setdefault(p.pid, 0.0 if self._started else cpu)
            self._last[p.pid] = cpu
        self._started = True
        self.peak = max(self.peak, total)
        self.driver_peak = max(self.driver_peak, me.memory_info().rss)

    @property
    def cpu_s(self) -> float:
        return sum(self._last[pid] - first for pid, first in self._first.items())


def make_tokenizer(directory: Path) -> str:
    """A fast byte-level BPE (1,024 tokens) trained on general text, saved as an HF directory."""
    from mortgagellm.datasets.general import general_documents
    from mortgagellm.modeling import train_tokenizer

    tokenizer = train_tokenizer(general_documents(SEED, 8000, 0.1), 1024)
    tokenizer.save_pretrained(directory)
    return str(directory)


def plain_loop(cfg: CorpusConfig, spec: dict, out_dir: Path, threads: bool = False) -> dict:
    """The stage's transforms in one process: read, clean, dedupe in memory, pack, write.
    `threads` lets the Rust tokenizer use its own thread pool (off in the stage's workers)."""
    tokenizer = corpus.load_tokenizer(spec["file"])  # (turns the pool off)
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads else "false"
    settings, salt = cfg.model_dump(mode="json", exclude={"tasks"}), corpus.pii_salt(SEED)
    units = readers.plan_units(cfg.synthetic_docs, cfg.synthetic_shards,
                               purpose_seed(SEED, "corpus"), cfg.regulations, cfg.user_corpora)
    keep = ("order", "source", "text", "reject", "quality", "content_hash", "minhash")
    staged = []
    for unit in units:
        for batch in readers.read_unit(unit, cfg.max_doc_chars, cfg.text_field, cfg.id_field,
                                       cfg.batch_docs):
            done = corpus.clean(batch, settings, salt)
            staged.append({k: done[k] for k in keep})
    order = np.concatenate([np.asarray(b["order"]) for b in staged])
    valid = np.concatenate([[not r for r in b["reject"]] for b in staged]).astype(bool)
    good = np.concatenate([[not q for q in b["quality"]] for b in staged]).astype(bool)
    sig = np.concatenate([np.stack(b["minhash"]) for b in staged])
    hashes = np.concatenate([b["content_hash"] for b in staged])
    idx = np.flatnonzero(valid)
    pos, _, _ = dedupe.find_duplicates(order[idx], hashes[idx], sig[idx], cfg.minhash_bands,
                                       cfg.minhash_rows, cfg.near_dup_threshold)
    dup = np.zeros(len(order), bool)
    dup[idx[pos]] = True
    kept = valid & good & ~dup
    drop = np.sort(order[~kept])
    columns = {k: [v for b in staged for v in b[k]] for k in ("source", "text")}
    columns["order"] = order
    rows = tokens = 0
    out_dir.mkdir(parents=True)
    for start in range(0, len(order), cfg.docs_per_shard):
        shard = {k: v[start:start + cfg.docs_per_shard] for k, v in columns.items()}
        packed, _ = corpus.pack_shard(shard, drop, dict(cfg.mixture), purpose_seed(SEED, "corpus"),
                                      cfg.seq_len, tokenizer, spec)
        if packed["input_ids"]:
            pq.write_table(batches.to_arrow(packed, PACKED_SCHEMA),
                           out_dir / f"{start:09d}.parquet")
        rows += len(packed["input_ids"])
        tokens += int(sum(np.count_nonzero(s) for s in packed["segment_ids"]))
    return {"read": len(order), "kept": int(kept.sum()), "rows": rows, "tokens": tokens}


def ray_pipeline(cfg: CorpusConfig, spec: dict, out_dir: Path) -> dict:
    """The corpus stage's three passes (corpus.build) on the running Ray cluster."""
    metrics = corpus.build(cfg, SEED, spec, out_dir)
    return {"read": metrics["documents"]["read"], "kept": metrics["documents"]["kept"],
            "rows": metrics["packed"]["rows"], "tokens": metrics["packed"]["tokens"],
            "timings_s": metrics["timings_s"]}


def measure(name: str, fn, cfg: CorpusConfig, spec: dict, out_dir: Path) -> dict:
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    load = os.getloadavg()[0]
    with Usage() as usage:
        t0, wall_t0 = time.monotonic(), time.time()
        result = fn(cfg, spec, out_dir / "out")
        seconds = time.monotonic() - t0
    result |= {"window_us": [wall_t0 * 1e6, (wall_t0 + seconds) * 1e6],
               "seconds": round(seconds, 1), "docs_per_s": round(result["read"] / seconds, 1),
               "tokens_per_s": round(result["tokens"] / seconds),
               "cpu_s": round(usage.cpu_s, 1),
               "docs_per_cpu_s": round(result["read"] / max(usage.cpu_s, 1e-9), 1),
               "peak_pss_gb": round(usage.peak / 2**30, 2),
               "driver_peak_rss_gb": round(usage.driver_peak / 2**30, 2),
               "non_pad_fraction": round(result["tokens"] / (result["rows"] * cfg.seq_len), 4),
               "load_avg_1m": [round(load, 1), round(os.getloadavg()[0], 1)]}
    print(f"{name:>16}: {json.dumps(result)}", flush=True)
    return result


def concurrency_profile(events: list[dict], start_us: float, end_us: float) -> dict:
    """Where the cores went in [start_us, end_us], from `ray.timeline()` events (chrome trace,
    microseconds): per task name, the tasks, their busy seconds and the span from the first
    start to the last end (seconds after `start_us`); and the seconds during which 0, 1, 2...
    tasks were running at once. Seconds at 0 are the driver's own work (planning, the driver's
    dedupe, waiting on results); seconds below the core count are a core left idle.

    Only remote functions (module-qualified names, e.g. Ray Data's `..._map_task`) count as
    running; Ray Data's bookkeeping actor calls (`get_reserved_resources`, ...) are listed in
    `by_task` but take no core."""
    spans = [(max(e["ts"], start_us), min(e["ts"] + e["dur"], end_us), e["name"])
             for e in events if e.get("cat", "").startswith("task::")]
    spans = [s for s in spans if s[1] > s[0]]
    by_name: dict[str, dict] = {}
    for begin, end, name in spans:
        row = by_name.setdefault(name, {"tasks": 0, "busy_s": 0.0, "first_s": float("inf"),
                                        "last_s": 0.0})
        row["tasks"] += 1
        row["busy_s"] += (end - begin) / 1e6
        row["first_s"] = min(row["first_s"], (begin - start_us) / 1e6)
        row["last_s"] = max(row["last_s"], (end - start_us) / 1e6)
    work = [(b, e) for b, e, name in spans if "." in name]
    edges = sorted([(b, 1) for b, _ in work] + [(e, -1) for _, e in work]
                   + [(start_us, 0), (end_us, 0)])
    at: dict[int, float] = {}
    running, last = 0, start_us
    for t, step in edges:
        at[running] = at.get(running, 0.0) + (t - last) / 1e6
        running, last = running + step, t
    wall = (end_us - start_us) / 1e6
    busy = sum(e - b for b, e in work) / 1e6
    return {"wall_s": round(wall, 2), "busy_task_s": round(busy, 2),
            "mean_running_tasks": round(busy / wall, 3) if wall else 0.0,
            "seconds_with_n_running": {n: round(s, 2) for n, s in sorted(at.items())},
            "by_task": {name: {k: round(v, 2) if isinstance(v, float) else v
                               for k, v in row.items()}
                        for name, row in sorted(by_name.items(),
                                                key=lambda kv: -kv[1]["busy_s"])}}


def pass_profiles(events: list[dict], run: dict) -> dict:
    """`concurrency_profile` of a Ray run as a whole and of each of its passes, whose windows
    follow each other from the run's start by its timings_s (clean, dedupe, pack)."""
    start, end = run["window_us"]
    out = {"run": concurrency_profile(events, start, end)}
    for name, seconds in run.get("timings_s", {}).items():
        out[name.removesuffix("_s")] = concurrency_profile(events, start, start + seconds * 1e6)
        start += seconds * 1e6
    return out


def print_profiles(profiles: dict) -> None:
    for name, p in profiles.items():
        counts = ", ".join(f"{n}: {s} s" for n, s in p["seconds_with_n_running"].items())
        print(f"timeline {name:>6}: {p['wall_s']} s, {p['mean_running_tasks']} tasks running on "
              f"average; seconds with n tasks running {{{counts}}}")
        if name == "run":
            for task, row in p["by_task"].items():
                print(f"    {task}: {json.dumps(row)}")


def fit_growth(runs: list[dict]) -> dict:
    """Growth with corpus size, fitted over the runs (at least two sizes): the exponent k of
    seconds ~ docs^k (least squares in log-log; 1 is linear), seconds per 1M documents from
    the two largest sizes, and memory per 1M documents (least-squares slope in MB) for the
    tree's peak PSS and the driver's peak RSS, each extrapolated to 10M documents."""
    docs = np.array([r["read"] for r in runs], float)
    secs = np.array([r["seconds"] for r in runs], float)
    k = float(np.polyfit(np.log(docs), np.log(secs), 1)[0])
    big = np.argsort(docs)[-2:]
    per_m = float((secs[big[1]] - secs[big[0]]) / (docs[big[1]] - docs[big[0]]) * 1e6)
    out = {"time_exponent": round(k, 3), "seconds_per_1m_docs": round(per_m, 1),
           "minutes_at_10m_docs": round((secs[big[1]] + per_m * (1e7 - docs[big[1]]) / 1e6)
                                        / 60, 1)}
    for key in ("peak_pss_gb", "driver_peak_rss_gb"):
        gb = np.array([r[key] for r in runs], float)
        slope = float(np.polyfit(docs, gb, 1)[0]) * 1e6 * 1024  # MB per 1M documents
        out[f"{key.removesuffix('_gb')}_mb_per_1m_docs"] = round(slope, 1)
        out[f"{key}_at_10m_docs"] = round(float(gb[big[1]] + slope / 1024 * (1e7 - docs[big[1]])
                                                / 1e6), 2)
    return out


def plot_scaling(runs: list[dict], growth: dict, path: Path) -> None:
    """Time and peak memory against documents, log-log, with the fitted growth stated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs = [r["read"] for r in runs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.loglog(docs, [r["seconds"] for r in runs], "o-", label="corpus stage (Ray Data)")
    ref = runs[0]["seconds"] / docs[0]
    left.loglog(docs, [ref * d for d in docs], ":", color="grey", label="linear from the first")
    left.set(xlabel="documents", ylabel="seconds")
    left.set_title(f"time ~ docs^{growth['time_exponent']:.2f}", fontsize=10)
    left.legend()
    right.semilogx(docs, [r["peak_pss_gb"] for r in runs], "o-", label="peak PSS, whole tree")
    right.semilogx(docs, [r["driver_peak_rss_gb"] for r in runs], "s-",
                   label="peak RSS, driver")
    right.set(xlabel="documents", ylabel="GB", ylim=(0, None))
    right.set_title(f"memory: +{growth['peak_pss_mb_per_1m_docs']:.0f} MB (tree), "
                    f"+{growth['driver_peak_rss_mb_per_1m_docs']:.0f} MB (driver) per 1M docs",
                    fontsize=10)
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=100_000, help="documents for the comparison")
    parser.add_argument("--scale", help="run only the Ray pipeline on this many docs; several "
                        "comma-separated sizes fit the growth (the scaling picture)")
    parser.add_argument("--plot", type=Path, help="with several --scale sizes: the PNG")
    parser.add_argument("--dedupe-mode", default="auto", choices=("auto", "driver", "distributed"),
                        help="corpus.dedupe_mode of the Ray pipeline")
    parser.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of local Ray")
    parser.add_argument("--docs-per-shard", type=int, default=5000, help="generator shard size")
    parser.add_argument("--work-dir", default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="timed runs of each path (plain loops first, then Ray's)")
    parser.add_argument("--no-threaded", action="store_true",
                        help="leave out the plain loop with tokenizer threads")
    parser.add_argument("--json", type=Path, help="write every timed run here")
    parser.add_argument("--timeline", type=Path, help="write the last Ray run's task timeline "
                        "here (chrome://tracing) and print where the cores idled")
    args = parser.parse_args()

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="corpus-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    spec = corpus.tokenizer_spec(make_tokenizer(work / "tokenizer"))
    sizes = [int(s) for s in args.scale.split(",")] if args.scale else [args.docs]
    docs = sizes[-1]
    cfg = CorpusConfig(synthetic_docs=docs, synthetic_shards=max(2, docs // args.docs_per_shard),
                       regulations=[str(REGULATIONS)], seq_len=512,
                       dedupe_mode=args.dedupe_mode,
                       cpus_per_task=args.num_cpus / (os.cpu_count() or 1))  # a task per core
    print(f"{docs:,} generated documents + 3 regulations, {cfg.synthetic_shards + 3} read units, "
          f"{os.cpu_count()} cores, Ray with {args.num_cpus} logical CPUs, "
          f"{cfg.cpus_per_task} per task", flush=True)

    if not args.scale:  # plain loops first, so no idle Ray process counts in their memory
        plain = [measure("plain loop", plain_loop, cfg, spec, work / "out-plain")
                 for _ in range(args.repeats)]
        threaded = [] if args.no_threaded else [
            measure("plain + threads", functools.partial(plain_loop, threads=True), cfg, spec,
                    work / "out-plain-t") for _ in range(args.repeats)]

    from mortgagellm.cluster.runtime import init_ray

    init_ray(RayConfig(num_cpus=args.num_cpus, object_store_mb=1024,  # token in <work>/ray/
                       temp_dir=tempfile.mkdtemp(prefix="rb-", dir="/tmp")), work)
    # Warm-up on 1,000 documents: Ray's worker processes start and import here, as the plain
    # loop's imports happened before its clock started.
    ray_pipeline(cfg.model_copy(update={"synthetic_docs": 1000}), spec, work / "warm-up")
    if args.scale:
        runs = []
        for size in sizes:  # one Ray session; each size sampled on its own (Usage)
            sized = cfg.model_copy(update={"synthetic_docs": size, "synthetic_shards": max(
                2, size // args.docs_per_shard)})
            runs.append(r := measure(f"ray data {size:,}", ray_pipeline, sized, spec,
                                     work / "out-ray"))
            print(f"scale: {size:,} docs in {r['seconds'] / 60:.1f} min, peak "
                  f"{r['peak_pss_gb']:.2f} GB, non-pad {r['non_pad_fraction']}", flush=True)
        timeline(args.timeline, runs)
        growth = fit_growth(runs) if len(runs) > 1 else {}
        if growth:
            print(f"growth: time ~ docs^{growth['time_exponent']}, "
                  f"{growth['seconds_per_1m_docs']} s per 1M documents "
                  f"(10M: ~{growth['minutes_at_10m_docs']} min); peak PSS "
                  f"+{growth['peak_pss_mb_per_1m_docs']} MB per 1M (10M: "
                  f"~{growth['peak_pss_gb_at_10m_docs']} GB); driver peak RSS "
                  f"+{growth['driver_peak_rss_mb_per_1m_docs']} MB per 1M (10M: "
                  f"~{growth['driver_peak_rss_gb_at_10m_docs']} GB)")
            if args.plot:
                plot_scaling(runs, growth, args.plot)
                print(f"plot: {args.plot}")
        if args.json:
            args.json.write_text(json.dumps({"sizes": sizes, "dedupe_mode": args.dedupe_mode,
                                             "scale": runs, "growth": growth}, indent=1))
        return
    ray_results = [measure("ray data", ray_pipeline, cfg, spec, work / "out-ray")
                   for _ in range(args.repeats)]
    timeline(args.timeline, ray_results)
    assert all(p["tokens"] == r["tokens"] for p in plain for r in ray_results), \
        "the two paths must produce the same tokens"
    for name, bases in (("plain loop", plain), ("plain loop with tokenizer threads", threaded)):
        for i, (base, ray_result) in enumerate(zip(bases, ray_results)):
            print(f"ray data / {name} (repeat {i + 1}): docs/s "
                  f"{ray_result['docs_per_s'] / base['docs_per_s']:.2f}x, docs per CPU-s "
                  f"{ray_result['docs_per_cpu_s'] / base['docs_per_cpu_s']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"docs": docs, "plain": plain, "threaded": threaded,
                                         "ray": ray_results}, indent=1))


def timeline(path: Path | None, runs: list[dict]) -> None:
    """With --timeline: Ray's task timeline of the session to `path`, and each run's profiles
    (its own window of it) into the run's "timeline"; the last run's are printed."""
    if path is None:
        return
    import ray

    events = ray.timeline()
    path.write_text(json.dumps(events))
    for run in runs:
        run["timeline"] = pass_profiles(events, run)
    print_profiles(runs[-1]["timeline"])
    print(f"timeline: {path} (chrome://tracing or ui.perfetto.dev)")


if __name__ == "__main__":
    main()
