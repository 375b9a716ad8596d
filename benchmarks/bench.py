"""Every benchmark in one run: each goal of issue 18 side by side, as a ratio against a baseline
measured in the same run, each measurement repeated (median and spread of the ratio).

Run: make bench                      # full sizes (an idle machine: tens of minutes)
     make bench-quick                # small sizes, under 5 minutes on 2 cores
     .venv/bin/python benchmarks/bench.py [--quick] [--repeats 3] [--only corpus,train]
         [--out FILE]

Each benchmark runs as a child process of this one (a fresh interpreter and its own Ray, so one
that crashes or hangs is a failed row, not a failed run) with `--json FILE`, its repeats inside
it; `rows_<name>` below reads that file into table rows. Prints one table (metric, ours,
baseline, ratio median [min-max], goal, met?) and writes benchmarks/results/<date>-<host>.json
(-quick.json for --quick) with every repeat. The machine's load average is recorded before and
after each benchmark: on a shared machine the ratios move with it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class Spec:
    """One benchmark: its script, the arguments of a full and of a quick run (the harness adds
    the repeats and where to write the JSON; "{work}" is a scratch directory of its own), and
    its time limit in seconds."""

    name: str
    script: str
    full: list[str]
    quick: list[str]
    timeout_s: dict[str, int] = field(default_factory=lambda: {"full": 7200, "quick": 600})
    json_flag: str = "--json"


SPECS = [
    Spec("corpus", "corpus.py", ["--no-threaded", "--timeline", "{results}-corpus-timeline.json"],
         ["--docs", "3000", "--docs-per-shard", "1000", "--no-threaded", "--timeline",
          "{results}-corpus-timeline.json"]),
    # The scaling picture: one run per size (its --repeats is ignored), the PNG beside the JSON.
    Spec("corpus_scaling", "corpus.py",
         ["--scale", "10000,100000,1000000", "--plot", "{results}-corpus-scaling.png"],
         ["--scale", "1000,4000", "--plot", "{results}-corpus-scaling.png"]),
    Spec("train", "train.py", [],  # quick: the demo's model shape (bootstrap's small preset)
         ["--hidden", "128", "--layers", "4", "--vocab", "1024", "--seq-len", "256", "--micro",
          "8", "--steps", "12"]),
    Spec("residual", "residual.py", ["--sizes", "0.5,2", "--work-dir", "{work}"],
         ["--sizes", "0.5", "--cache", "warm", "--work-dir", "{work}"]),
    Spec("serve_routing", "serve_routing.py", [], ["--requests", "20", "--concurrency", "1"]),
    Spec("serve_routing_direct", "serve_routing.py", ["--direct-ingress"],
         ["--requests", "20", "--concurrency", "1", "--direct-ingress"]),
    Spec("serve", "serve.py", ["--model", "random"],
         ["--model", "random", "--max-tokens", "8,16,32"], json_flag="--out"),
    Spec("router_tier1", "router_tier1.py", [], ["--kinds", "ngram", "--latency", "60"],
         json_flag="--out"),
]


# ---- rows: what each benchmark's JSON says about its goals --------------------------------------

def row(metric: str, unit: str, ours: list[float], baseline: list[float] | None = None,
        ratio: list[float] | None = None, goal: tuple[str, str, float] | None = None) -> dict:
    """One table row. `ratio` defaults to ours / baseline per repeat; `goal` is (what, op,
    value): what = 'ratio' or 'ours', op = '>=' or '<='."""
    if ratio is None and baseline is not None:
        ratio = [o / b for o, b in zip(ours, baseline)]
    return {"metric": metric, "unit": unit, "ours": ours, "baseline": baseline, "ratio": ratio,
            "goal": None if goal is None else dict(zip(("on", "op", "value"), goal))}


def rows_corpus(raw: dict) -> list[dict]:
    ray, plain = raw["ray"], raw["plain"]
    return [row("corpus: Ray Data / plain loop, docs/s", "docs/s",
                [r["docs_per_s"] for r in ray], [p["docs_per_s"] for p in plain],
                goal=("ratio", ">=", 1.6)),
            row("corpus: Ray Data / plain loop, docs per CPU-s", "docs/CPU-s",
                [r["docs_per_cpu_s"] for r in ray], [p["docs_per_cpu_s"] for p in plain])] + [
            # Where a core idled (benchmarks/corpus.py --timeline): Ray tasks running at once.
            row(f"corpus: Ray tasks running at once, mean over {name} ({os.cpu_count()} cores)",
                "tasks",
                [r["timeline"][key]["mean_running_tasks"] for r in ray])
            for key, name in (("run", "the run"), ("clean", "pass 1 (clean)"),
                              ("pack", "pass 3 (pack)"))
            if all(key in r.get("timeline", {}) for r in ray)]


def rows_corpus_scaling(raw: dict) -> list[dict]:
    growth, runs = raw["growth"], raw["scale"]
    span = f"{runs[0]['read']:,}-{runs[-1]['read']:,} docs"
    return [row(f"corpus scaling: time exponent k, seconds ~ docs^k ({span})", "",
                [growth["time_exponent"]], goal=("ours", "<=", 1.1)),
            row(f"corpus scaling: minutes for the largest ({runs[-1]['read']:,} docs)", "min",
                [runs[-1]["seconds"] / 60]),
            row("corpus scaling: driver peak RSS growth per 1M docs", "MB",
                [growth["driver_peak_rss_mb_per_1m_docs"]]),
            row("corpus scaling: peak PSS (whole tree) growth per 1M docs", "MB",
                [growth["peak_pss_mb_per_1m_docs"]])]


def rows_train(raw: dict) -> list[dict]:
    head = raw["headline"]
    zero, threads = head["variant"]["zero"], head["variant"]["threads"]
    return [row(f"train: Ray Train + DeepSpeed (ZeRO-{zero}, {threads} thread(s)) / plain torch",
                "tokens/s", head["tokens_per_s"], head["baseline_tokens_per_s"],
                goal=("ratio", ">=", 0.9)),
            # Wall time on a loaded machine swings with the load; CPU seconds per token of the
            # training process much less (benchmarks/train.py docstring).
            row("train: same, tokens per CPU-second (steadier under load)", "CPU-s/1k tokens",
                head["cpu_s_per_1k_tokens"], head["baseline_cpu_s_per_1k_tokens"],
                ratio=head["cpu_ratio"]),
            row("train: Ray Train + DeepSpeed data-wait fraction", "", head["data_wait_fraction"],
                goal=("ours", "<=", 0.05))]


def rows_residual(raw: dict) -> list[dict]:
    out = []
    for r in raw["results"]:
        size = f"{r['model_gb']:.2f} GB/model, {r['cache']}"
        if "output" in r:  # where the merged model was written: tmpfs or disk
            size += f", output on {r['output']}"
        out.append(row(f"residual: merge vs raw read of the 3 models ({size})", "s",
                       r["merge_runs_s"], r["read_runs_s"],
                       ratio=[b / m for b, m in zip(r["read_runs_s"], r["merge_runs_s"])],
                       goal=("ratio", ">=", 0.7)))
        if "write_runs_s" in r:  # the I/O a merge cannot avoid: read the inputs, write one
            io = [a + b for a, b in zip(r["read_runs_s"], r["write_runs_s"])]
            out.append(row(f"residual: merge vs raw read + raw write of the output ({size})",
                           "s", r["merge_runs_s"], io,
                           ratio=[b / m for b, m in zip(io, r["merge_runs_s"])]))
        out.append(row(f"residual: merge peak RSS above start ({size})", "MB",
                       r["merge_rss_runs_mb"]))
    return out


def rows_serve_routing(raw: dict) -> list[dict]:
    runs = raw["repeats"]
    rows = [row("router: extra Serve hops, (routed - direct) / one hop, p50", "ms",
                [1e3 * (r["routed_p50_s"] - r["direct_p50_s"]) for r in runs],
                [1e3 * r["hop_p50_s"] for r in runs], goal=("ratio", "<=", 1.0))]
    if "floor_p50_s" not in runs[0]:  # a run from before the floor was measured
        return rows
    return rows + [
        row("router: Serve's floor, plainest ingress -> same expert, hops", "ms",
            [1e3 * (r["floor_p50_s"] - r["direct_p50_s"]) for r in runs],
            [1e3 * r["hop_p50_s"] for r in runs]),
        row("router: our Router over the floor, (routed - floor) / one hop", "ms",
            [1e3 * (r["routed_p50_s"] - r["floor_p50_s"]) for r in runs],
            [1e3 * r["hop_p50_s"] for r in runs]),
        row("router: request-body fetch, (POST echo - GET) / one hop", "ms",
            [1e3 * (r["floor_echo_p50_s"] - r["floor_get_p50_s"]) for r in runs],
            [1e3 * r["hop_p50_s"] for r in runs])]


def rows_serve_routing_direct(raw: dict) -> list[dict]:
    """The routed path straight to the Router replica's own HTTP server (Ray 2.60's
    experimental direct ingress), against the same proxied hop."""
    runs = raw["repeats"]
    return [row("router, direct ingress: (routed - direct) / one proxied hop, p50", "ms",
                [1e3 * (r["routed_p50_s"] - r["direct_p50_s"]) for r in runs],
                [1e3 * r["hop_p50_s"] for r in runs], goal=("ratio", "<=", 1.0))]


def rows_serve(raw: dict) -> list[dict]:
    runs = raw["runs"]
    return [row("serve: continuous / static batching, requests/s at concurrency 16", "req/s",
                [r["requests_per_s"] for r in runs["continuous"]["c16"]],
                [r["requests_per_s"] for r in runs["static"]["c16"]],
                goal=("ratio", ">=", 2.0)),
            row("serve: continuous / static batching, p99 latency at concurrency 1", "ms",
                [1e3 * r["p99_s"] for r in runs["continuous"]["c1"]],
                [1e3 * r["p99_s"] for r in runs["static"]["c1"]], goal=("ratio", "<=", 1.0))]


def rows_router_tier1(raw: dict) -> list[dict]:
    kinds = raw["kinds"]
    base = [lat["cpu_p99_ms"] for lat in kinds["ngram"]["latency_repeats"]] \
        if "ngram" in kinds else None
    out = []
    for kind, result in kinds.items():
        ours = [lat["cpu_p99_ms"] for lat in result["latency_repeats"]]
        out.append(row(f"router tier-1 ({kind}): p99 CPU per decision" +
                       (" / ngram's" if kind != "ngram" and base else ""), "ms", ours,
                       base if kind != "ngram" else None, goal=("ours", "<=", 2.0)))
    return out


ROWS: dict[str, Callable[[dict], list[dict]]] = {
    "corpus": rows_corpus, "corpus_scaling": rows_corpus_scaling, "train": rows_train,
    "residual": rows_residual,
    "serve_routing": rows_serve_routing, "serve_routing_direct": rows_serve_routing_direct,
    "serve": rows_serve, "router_tier1": rows_router_tier1}


# ---- the summary and the table ------------------------------------------------------------------

def summarise(r: dict) -> dict:
    """The row with medians, the spread (min, max) of the ratio (or of `ours` when the goal is
    on `ours`), and met: True / False, None without a goal."""
    out = dict(r)
    out["ours_median"] = statistics.median(r["ours"])
    out["baseline_median"] = statistics.median(r["baseline"]) if r["baseline"] else None
    out["ratio_median"] = statistics.median(r["ratio"]) if r["ratio"] else None
    out["ratio_spread"] = [min(r["ratio"]), max(r["ratio"])] if r["ratio"] else None
    out["ours_spread"] = [min(r["ours"]), max(r["ours"])]
    goal = r["goal"]
    if goal is None:
        out["met"] = None
    else:
        value = out["ratio_median"] if goal["on"] == "ratio" else out["ours_median"]
        out["met"] = value >= goal["value"] if goal["op"] == ">=" else value <= goal["value"]
    return out


def run_all(specs: list[Spec], runner: Callable[[Spec], dict]) -> dict[str, dict]:
    """{name: {status, seconds, load, rows | error}}: every benchmark, a failure (an exception
    from the runner or from reading its JSON) recorded with its message, the rest still run."""
    out = {}
    for spec in specs:
        load, t0 = os.getloadavg()[0], time.monotonic()
        try:
            raw = runner(spec)
            result = {"status": "ok", "rows": [summarise(r) for r in ROWS[spec.name](raw)],
                      "raw": raw}
        except Exception as error:  # noqa: BLE001  a failed benchmark is a row of the table
            result = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
        result |= {"seconds": round(time.monotonic() - t0, 1),
                   "load_avg_1m": [round(load, 2), round(os.getloadavg()[0], 2)]}
        print(f"[bench] {spec.name}: {result['status']} in {result['seconds']:.0f} s"
              + (f" ({result['error']})" if result["status"] == "failed" else ""), flush=True)
        out[spec.name] = result
    return out


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def table(results: dict[str, dict]) -> str:
    """One table: metric, ours, baseline (medians, with units), ratio median [min-max], goal,
    met?; a failed benchmark is one FAILED row, its error under the table."""
    head = ("metric", "ours", "baseline", "ratio median [min-max]", "goal", "met?")
    lines = []
    for name, result in results.items():
        if result["status"] != "ok":
            lines.append((f"{name}: FAILED (below)", "", "", "", "", "FAILED"))
            continue
        for r in result["rows"]:
            unit = f" {r['unit']}" if r["unit"] else ""
            ours = _num(r["ours_median"]) + unit
            if r["ratio"] is None and len(r["ours"]) > 1:
                ours += f" [{_num(r['ours_spread'][0])}-{_num(r['ours_spread'][1])}]"
            ratio = "-" if r["ratio"] is None else (
                f"{r['ratio_median']:.2f} [{r['ratio_spread'][0]:.2f}-{r['ratio_spread'][1]:.2f}]")
            goal = "-" if r["goal"] is None else (
                ("ratio " if r["goal"]["on"] == "ratio" else "") +
                f"{r['goal']['op']} {r['goal']['value']:g}")
            met = {None: "-", True: "yes", False: "no"}[r["met"]]
            base = "-" if r["baseline_median"] is None else _num(r["baseline_median"]) + unit
            lines.append((r["metric"], ours, base, ratio, goal, met))
    widths = [max(len(str(c)) for c in col) for col in zip(head, *lines)]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    errors = [f"{name} FAILED: {r['error']}" for name, r in results.items()
              if r["status"] != "ok"]
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, lines),
                      *([""] + errors if errors else [])])


# ---- running the children -----------------------------------------------------------------------

def subprocess_runner(mode: str, repeats: int, work: Path, results: Path | None = None
                      ) -> Callable[[Spec], dict]:
    """Runs a Spec's script in a child process and returns the JSON it wrote. The child's
    output goes to work/<name>.log; it runs in its own session, so on a timeout its whole
    process group (its Ray included) is killed. "{results}" in its arguments is the run's
    report path without its suffix (files kept beside the JSON; work/results without one)."""
    stem = str(results.with_suffix("") if results else work / "results")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.setdefault("DS_ACCELERATOR", "cpu")

    def run(spec: Spec) -> dict:
        out, log = work / f"{spec.name}.json", work / f"{spec.name}.log"
        command = [sys.executable, str(ROOT / "benchmarks" / spec.script),
                   *(a.replace("{work}", str(work / spec.name)).replace("{results}", stem)
                     for a in (spec.quick if mode == "quick" else spec.full)),
                   "--repeats", str(repeats), spec.json_flag, str(out)]
        print(f"[bench] {spec.name}: {' '.join(command[1:])}  (log {log})", flush=True)
        with log.open("w") as sink:
            child = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, text=True,
                                     cwd=ROOT, env=env, start_new_session=True)
            try:
                child.wait(timeout=spec.timeout_s[mode])
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                raise TimeoutError(f"no result after {spec.timeout_s[mode]} s; see {log}") from None
        if child.returncode != 0:
            lines = [t for t in log.read_text(errors="replace").splitlines() if t.strip()]
            raise RuntimeError(f"exit {child.returncode}: {lines[-1] if lines else ''} "
                               f"(see {log})")
        return json.loads(out.read_text())

    return run


def git_commit() -> str | None:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                          capture_output=True)
    return done.stdout.strip() or None


def write_report(results: dict[str, dict], path: Path, meta: dict) -> None:
    """The JSON next to the table: run facts, then each benchmark's rows and raw output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta | {"benchmarks": results}, indent=1) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (under 5 minutes)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each measurement")
    parser.add_argument("--only", help="comma-separated benchmark names: "
                        + ",".join(s.name for s in SPECS))
    parser.add_argument("--out", type=Path, help="JSON (default benchmarks/results/"
                        "<date>-<host>[-quick].json)")
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error("--repeats must be at least 3 (a median and a spread need them)")
    names = args.only.split(",") if args.only else [s.name for s in SPECS]
    unknown = set(names) - {s.name for s in SPECS}
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {sorted(unknown)}")
    mode = "quick" if args.quick else "full"
    work = Path(tempfile.mkdtemp(prefix="mllm-bench-all-"))
    started = datetime.datetime.now(datetime.timezone.utc)
    meta = {"date": started.isoformat(timespec="seconds"), "host": socket.gethostname(),
            "mode": mode, "repeats": args.repeats, "cpus": os.cpu_count(),
            "commit": git_commit(), "load_avg_1m_start": round(os.getloadavg()[0], 2)}
    out = args.out or RESULTS / (f"{started.date().isoformat()}-{meta['host']}"
                                 f"{'-quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    results = run_all([s for s in SPECS if s.name in names],
                      subprocess_runner(mode, args.repeats, work, out))
    meta |= {"load_avg_1m_end": round(os.getloadavg()[0], 2),
             "minutes": round((datetime.datetime.now(datetime.timezone.utc) - started)
                              .total_seconds() / 60, 1)}
    write_report(results, out, meta)
    print(f"\n{mode} run, {args.repeats} repeats, {meta['cpus']} CPUs, load average "
          f"{meta['load_avg_1m_start']} -> {meta['load_avg_1m_end']}, {meta['minutes']} min; "
          f"ratios are per repeat, median [min-max]\n")
    print(table(results))
    print(f"\nwritten: {out} (children's logs in {work})")
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
