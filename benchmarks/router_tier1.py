"""Benchmark: the router's tier-1 kinds (ngram, encoder, both) on generated and hand-written
requests: accuracy, calibration, the fitted tier-2 threshold, latency, load cost (issue 20).

Run: .venv/bin/python benchmarks/router_tier1.py [--tasks runs/cpu-demo/corpus/tasks]
         [--handset data/routing-handwritten] [--kinds ngram encoder both] [--latency 200]
         [--repeats 3]

Each kind is fitted as the corpus stage fits it (tier1.fit on routing_train: 80 % to fit, 20 %
to calibrate and fit the threshold), then measured alone (no tier 2) on eval_routing and on the
hand-written test set when --handset holds one: accuracy with its Wilson 95 % interval, the
confusion matrix, confident mistakes (wrong at confidence >= 0.9, share of all requests), ECE
over 10 bins, and at the fitted threshold the share of requests sent to tier 2 and the share of
mistakes among them. The threshold is also fitted on the hand-written calibration split, to show
what a threshold_set of real requests gives. Latency: one request at a time, one thread, warm,
CPU time of the thread (this machine is shared). Load: a fresh process loads tier1.json and
decides once (seconds and peak RSS, best of two). The n-gram kind is the baseline; the ratios
of the others' p99 to its come last. Writes benchmarks/results/router_tier1.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mortgagellm import calibration, encoder, routing, tier1  # noqa: E402
from mortgagellm.metrics import wilson  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIDENT = 0.9


def read_sets(tasks: Path | None, seed: int) -> tuple[list[dict], list[dict]]:
    """(routing_train, eval_routing): a corpus run's files, or the generator at demo sizes."""
    from mortgagellm.datasets.tasks import build_task_sets, read_task_set

    if tasks is not None and (tasks / "routing_train.jsonl").exists():
        return (read_task_set(tasks / "routing_train.jsonl"),
                read_task_set(tasks / "eval_routing.jsonl"))
    from mortgagellm.config import TaskSetsConfig

    sets = build_task_sets(TaskSetsConfig(), seed)
    return sets["routing_train"], sets["eval_routing"]


def read_handset(path: Path, name: str) -> list[dict] | None:
    """A hand-written split ({id, text, route, note} lines) as {request, route} records."""
    file = path / f"{name}.jsonl"
    if not file.exists():
        return None
    rows = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    return [{"request": r["text"], "route": r["route"]} for r in rows]


def cache_embeddings() -> None:
    """Memoise encoder.embed per text while fitting and scoring (each kind re-reads the same
    requests); latency is measured with the real one (`uncached`)."""
    real, seen = encoder.embed, {}

    def embed(texts, batch_size=32):
        todo = [t for t in dict.fromkeys(texts) if t not in seen]
        seen.update(zip(todo, real(todo, batch_size)))
        return [seen[t] for t in texts]

    encoder.embed, encoder.uncached = embed, real


def scores(model: tier1.Classifier, records: list[dict], threshold: float) -> dict:
    """Accuracy (Wilson 95 %), confusion, confident mistakes, ECE, and what the threshold does."""
    confidence, correct = tier1.judged(model, records)
    ps = tier1.probabilities(model, [r["request"] for r in records])
    n, right = len(records), sum(correct)
    confusion = {t: {p: 0 for p in routing.ROUTES} for t in routing.ROUTES}
    for r, p in zip(records, ps):
        confusion[r["route"]]["structured" if p >= 0.5 else "conversational"] += 1
    below = [ok for c, ok in zip(confidence, correct) if c < threshold]
    mistakes = n - right
    return {"n": n, "accuracy": right / n, "ci95": wilson(right, n), "confusion": confusion,
            "confident_mistakes": sum(c >= CONFIDENT and not ok
                                      for c, ok in zip(confidence, correct)) / n,
            "ece": calibration.ece(confidence, correct), "threshold": threshold,
            "to_tier2": len(below) / n,
            "mistakes_below": (len(below) - sum(below)) / mistakes if mistakes else 1.0}


def latency(model: tier1.Classifier, requests: list[str]) -> dict[str, float]:
    """p50 / p99 of one decision (routing.route, tier1 mode) in thread CPU time and wall time,
    one request at a time, after 10 warm-up decisions."""
    encoder.embed = encoder.uncached
    try:
        for text in requests[:10]:
            routing.route(text, routing.AUTO_MODEL, "tier1", model, 1.0)
        cpu, wall = [], []
        for text in requests:
            c, w = time.thread_time(), time.perf_counter()
            routing.route(text, routing.AUTO_MODEL, "tier1", model, 1.0)
            cpu.append((time.thread_time() - c) * 1e3)
            wall.append((time.perf_counter() - w) * 1e3)
    finally:
        cache_embeddings()
    cpu.sort()
    wall.sort()
    pick = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
    return {"cpu_p50_ms": pick(cpu, 0.5), "cpu_p99_ms": pick(cpu, 0.99),
            "wall_p50_ms": pick(wall, 0.5), "wall_p99_ms": pick(wall, 0.99), "n": len(cpu)}


LOAD = """
import resource, sys, time
t = time.perf_counter()
from mortgagellm import tier1
model = tier1.load(open(sys.argv[1]).read())
model.probability("Can you help me with my mortgage?")
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def load_cost(model: tier1.Classifier, repeats: int = 2) -> dict[str, float]:
    """Seconds and peak RSS (MB) for a fresh process to load tier1.json and decide once: what
    each router replica pays at start (the encoder kinds import torch and transformers for it).
    Best of `repeats`, so the first run's cold file cache is not counted."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        f.write(tier1.to_json(model))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    runs = [subprocess.run([sys.executable, "-c", LOAD, f.name], capture_output=True, text=True,
                           check=True, cwd=ROOT, env=env).stdout.split()
            for _ in range(repeats)]
    return {"load_s": min(float(s) for s, _ in runs),
            "peak_rss_mb": min(int(rss) for _, rss in runs) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=Path, default=None,
                        help="a corpus run's tasks folder (default: the generator at demo sizes)")
    parser.add_argument("--handset", type=Path, default=ROOT / "data/routing-handwritten")
    parser.add_argument("--kinds", nargs="+", default=list(tier1.KINDS))
    parser.add_argument("--latency", type=int, default=200, help="eval requests timed")
    parser.add_argument("--repeats", type=int, default=1,
                        help="latency measurements per kind (the median p99's is printed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/router_tier1.json")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    cache_embeddings()
    train, heldout = read_sets(args.tasks, args.seed)
    hand_test, hand_cal = read_handset(args.handset, "test"), read_handset(args.handset,
                                                                           "calibration")
    results = {"train": len(train), "eval": len(heldout),
               "hand_test": len(hand_test or []), "hand_calibration": len(hand_cal or []),
               "kinds": {}}
    for kind in args.kinds:
        t = time.perf_counter()
        model = tier1.fit(kind, train, 120, args.seed)
        fit_s = time.perf_counter() - t
        row = {"fit_s": fit_s, "generated": scores(model, heldout, model.threshold)}
        if hand_test is not None:
            row["hand"] = scores(model, hand_test, model.threshold)
        if hand_test is not None and hand_cal is not None:
            hand_threshold = calibration.fit_threshold(*tier1.judged(model, hand_cal))
            row["hand_at_hand_threshold"] = scores(model, hand_test, hand_threshold)
            row["generated_at_hand_threshold"] = scores(model, heldout, hand_threshold)
        timed = [r["request"] for r in heldout[:args.latency]] + [r["request"] for r in
                                                                   hand_test or []]
        row["latency_repeats"] = [latency(model, timed) for _ in range(args.repeats)]
        row["latency"] = sorted(row["latency_repeats"], key=lambda r: r["cpu_p99_ms"])[
            args.repeats // 2]
        row["load"] = load_cost(model)
        results["kinds"][kind] = row
        print_row(kind, row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    base = results["kinds"].get("ngram")
    for kind, row in results["kinds"].items():
        if base and kind != "ngram":
            print(f"p99 CPU per decision {kind} / ngram: "
                  f"{row['latency']['cpu_p99_ms'] / base['latency']['cpu_p99_ms']:.1f}x; "
                  f"{kind} p99 {row['latency']['cpu_p99_ms']:.2f} ms vs the 2 ms goal: "
                  f"{row['latency']['cpu_p99_ms'] / 2:.1f}x")
    print(f"wrote {args.out}")


def print_row(kind: str, row: dict) -> None:
    """One kind's lines of the table."""
    print(f"\n== {kind}: fitted in {row['fit_s']:.0f} s; latency p50/p99 CPU "
          f"{row['latency']['cpu_p50_ms']:.2f}/{row['latency']['cpu_p99_ms']:.2f} ms, wall "
          f"{row['latency']['wall_p50_ms']:.2f}/{row['latency']['wall_p99_ms']:.2f} ms; load "
          f"{row['load']['load_s']:.1f} s, peak RSS {row['load']['peak_rss_mb']:.0f} MB")
    print(f"{'set':<30} {'n':>4} {'acc':>6} {'95% CI':>13} {'conf.wrong':>10} {'ECE':>6} "
          f"{'thresh':>6} {'to T2':>6} {'errs<T':>6}  confusion s->(s,c) c->(s,c)")
    for name in ("generated", "hand", "hand_at_hand_threshold", "generated_at_hand_threshold"):
        if name in row:
            s, m = row[name], row[name]["confusion"]
            print(f"{name:<30} {s['n']:>4} {s['accuracy']:>6.3f} "
                  f"[{s['ci95'][0]:.3f},{s['ci95'][1]:.3f}] {s['confident_mistakes']:>10.3f} "
                  f"{s['ece']:>6.3f} {s['threshold']:>6.3f} {s['to_tier2']:>6.3f} "
                  f"{s['mistakes_below']:>6.2f}  "
                  f"({m['structured']['structured']},{m['structured']['conversational']}) "
                  f"({m['conversational']['structured']},{m['conversational']['conversational']})")


if __name__ == "__main__":
    main()
