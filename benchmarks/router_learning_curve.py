"""Benchmark: what more routing data buys: tier-1 accuracy against the size and the variety of
its training set (issue 20, item 4).

Run: .venv/bin/python benchmarks/router_learning_curve.py [--sizes 250 500 1000 2000 4000]
         [--kinds ngram encoder] [--varieties 0 0.5] [--hand-split test] [--seed 0]

For each variety (0: the fixed templates and the experts' prompts only, as before issue 20;
0.5: half the requests composed by datasets/tasks/paraphrase.py, the recipe's default) the
routing training set is built as the corpus stage builds it (build_task_sets, run.seed), at the
largest size; each smaller size is its head (the cells are shuffled, so a head is a sample).
Each kind is fitted on it as the corpus stage fits it (tier1.fit: 80 % to fit, 20 % to
calibrate and fit the threshold) and measured alone (no tier 2) on: the generated eval set of
the recipe's variety (eval_routing), the template-only generated eval set, and the hand-written
test set (data/routing-handwritten/test.jsonl, never trained on): accuracy with its Wilson 95 %
interval, confident mistakes (wrong at confidence >= 0.9, share of all requests) and ECE. The
first row (variety 0, smallest size) is the baseline; the last lines print each variety's
largest-size accuracy against it. Writes benchmarks/results/router_learning_curve.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from router_tier1 import cache_embeddings, read_handset, scores  # noqa: E402

from mortgagellm import tier1  # noqa: E402
from mortgagellm.config import TaskSetsConfig  # noqa: E402
from mortgagellm.datasets.tasks import build_task_sets  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VARIETY = TaskSetsConfig().routing_variety
# The other sets at their smallest: only routing_train and eval_routing are read here.
TINY = {"sft_per_task": 1, "dpo_pairs": 1, "eval_per_task": 1, "eval_qa_pairs": 1}


def routing_sets(variety: float, size: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(routing_train of `size` requests, eval_routing) at `variety`, as the corpus stage
    builds them with run.seed = `seed`."""
    sets = build_task_sets(TaskSetsConfig(**TINY, routing_requests=size,
                                          routing_variety=variety), seed)
    return sets["routing_train"], sets["eval_routing"]


def measure(kind: str, train: list[dict], evals: dict[str, list[dict]], seed: int) -> dict:
    """Fit one kind on `train`; its scores on each eval set, and the fit's time and threshold."""
    t = time.perf_counter()
    model = tier1.fit(kind, train, 120, seed)
    row = {"fit_s": time.perf_counter() - t, "threshold": model.threshold}
    for name, records in evals.items():
        row[name] = scores(model, records, model.threshold)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[250, 500, 1000, 2000, 4000])
    parser.add_argument("--kinds", nargs="+", default=["ngram", "encoder"])
    parser.add_argument("--varieties", nargs="+", type=float, default=[0.0, DEFAULT_VARIETY])
    parser.add_argument("--handset", type=Path, default=ROOT / "data/routing-handwritten")
    parser.add_argument("--hand-split", default="test",
                        help="test (report) or calibration (while writing the generator)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks/results/router_learning_curve.json")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    cache_embeddings()
    hand = read_handset(args.handset, args.hand_split)
    if hand is None:
        raise SystemExit(f"{args.handset}/{args.hand_split}.jsonl: no hand-written split there")
    built = {v: routing_sets(v, max(args.sizes), args.seed) for v in args.varieties}
    for v in {0.0, DEFAULT_VARIETY} - set(built):  # the two eval sets, whatever is trained
        built[v] = ([], routing_sets(v, 2, args.seed)[1])
    evals = {"generated": built[DEFAULT_VARIETY][1], "generated_templates": built[0.0][1],
             "hand": hand}
    rows = []
    print(f"hand-written {args.hand_split}: {len(hand)}; generated eval: "
          f"{len(evals['generated'])} (variety {DEFAULT_VARIETY}), "
          f"{len(evals['generated_templates'])} (templates)")
    print(f"{'variety':>7} {'size':>5} {'kind':<8} {'generated [95% CI]':<24} {'templ.':>6} "
          f"{'hand [95% CI]':<24} {'hand conf.wrong':>15} {'hand ECE':>8} {'thresh':>6}")
    for variety in args.varieties:
        pool = built[variety][0]
        for size in args.sizes:
            for kind in args.kinds:
                row = {"variety": variety, "size": size, "kind": kind,
                       **measure(kind, pool[:size], evals, args.seed)}
                rows.append(row)
                print_row(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"seed": args.seed, "hand_split": args.hand_split,
                                    "rows": rows}, indent=1))
    for kind in args.kinds:
        base = next(r for r in rows if r["kind"] == kind)
        for variety in args.varieties:
            top = [r for r in rows if r["kind"] == kind and r["variety"] == variety][-1]
            print(f"{kind}: variety {variety:g} at {top['size']} vs variety {base['variety']:g} "
                  f"at {base['size']}: hand {top['hand']['accuracy']:.3f} / "
                  f"{base['hand']['accuracy']:.3f} = "
                  f"{top['hand']['accuracy'] / base['hand']['accuracy']:.2f}x")
    print(f"wrote {args.out}")


def print_row(row: dict) -> None:
    """One line of the table."""
    g, t, h = row["generated"], row["generated_templates"], row["hand"]
    print(f"{row['variety']:>7g} {row['size']:>5} {row['kind']:<8} "
          f"{g['accuracy']:.3f} [{g['ci95'][0]:.3f}, {g['ci95'][1]:.3f}]   "
          f"{t['accuracy']:>6.3f} {h['accuracy']:.3f} [{h['ci95'][0]:.3f}, {h['ci95'][1]:.3f}]   "
          f"{h['confident_mistakes']:>15.3f} {h['ece']:>8.3f} {row['threshold']:>6.3f}",
          flush=True)


if __name__ == "__main__":
    main()
