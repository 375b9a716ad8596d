"""Corpus pass 2 (dedupe, counts, quarantine) on the driver vs distributed: peak driver memory
and time at growing corpus sizes, and the 10 M figure extrapolated from the measured growth.

Run: .venv/bin/python benchmarks/dedupe.py [--docs 100000] [--copies 1 3 10] [--num-cpus 4]

Pass 1 of the corpus stage (clean_pass) writes the staging files of --docs documents once (about
3.5 min per 100k documents on 2 cores); each --copies size is that corpus copied c times, each
copy a new corpus with the same duplicate structure (its own unit numbers, content hashes xored
and signature values mapped through a bijection of its own, so copies agree only by chance).
Each size's staging files go through
  - main: the pass as main had it (a79c3f1..01531b6): every document's counted columns and
    signature read into the driver, `find_duplicates`, counts and quarantine from that table;
  - driver: corpus.dedupe_mode=driver (signatures and hashes gathered, bookkeeping per unit);
  - distributed: corpus.dedupe_mode=distributed (Ray Data groupbys, bookkeeping per unit).
The three must find the same duplicates. Driver memory is the peak resident set of this
process (VmHWM, reset before each run through /proc/self/clear_refs) less its size at the start
of the run; Ray's workers are other processes, summed in `tree_peak_pss_gb` (sampled each second).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import REGULATIONS, Usage  # noqa: E402  (benchmarks/corpus.py)

from mortgagellm.config import CorpusConfig, RayConfig  # noqa: E402
from mortgagellm.datasets import accounting, dedupe, readers  # noqa: E402
from mortgagellm.datasets.splits import purpose_seed  # noqa: E402
from mortgagellm.pipelines import corpus  # noqa: E402

SEED = 0


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def main_pass(cfg: CorpusConfig, staging: Path, units: list[dict], documents: int,
              out: Path) -> dict:
    """Pass 2 as main ran it: the per-document table and signatures in the driver."""
    import pyarrow.compute as pc

    columns = accounting.COUNT_COLUMNS[:6] + ["content_hash", "minhash"] + \
        accounting.COUNT_COLUMNS[7:]
    table = pads.dataset(str(staging), format="parquet").to_table(columns=columns)
    order = table["order"].to_numpy()
    valid = pc.equal(table["reject"], "").to_numpy(zero_copy_only=False)
    sig = np.concatenate([c.flatten().to_numpy() for c in table["minhash"].chunks]
                         ).reshape(len(table), -1)
    table = table.drop_columns(["minhash"])
    pos, kind, kept = dedupe.find_duplicates(
        order, table["content_hash"].to_numpy(), sig, cfg.minhash_bands, cfg.minhash_rows,
        cfg.near_dup_threshold, members=np.flatnonzero(valid))
    del sig
    is_dup = np.zeros(len(table), bool)
    is_dup[pos] = True
    low = valid & ~is_dup & pc.not_equal(table["quality"], "").to_numpy(zero_copy_only=False)
    metrics = accounting.counts(table, [u["uri"] for u in units], valid, is_dup, kind, low,
                                valid & ~is_dup & ~low)
    metrics["rejects_by_source"] = dict(Counter(metrics["rejects_by_source"]).most_common(20))
    pq.write_table(pa.table({"order": order[pos], "kind": kind, "kept": order[kept]}),
                   out / "found.parquet")
    return metrics


def replicate(staging: Path, units: list[dict], copies: int, out: Path
              ) -> tuple[Path, list[dict]]:
    """`copies` copies of a staging folder as one corpus (see the module docstring)."""
    out.mkdir(exist_ok=True)
    rng = np.random.default_rng(copies)
    all_units = []
    for k in range(copies):
        a, b = rng.integers(0, 1 << 16, 2, dtype=np.uint32)
        a |= 1  # odd: v -> a * v + b (mod 2^16) is a bijection
        salt = np.uint64(rng.integers(0, 1 << 63)) if k else np.uint64(0)
        for unit in units:
            number = unit["unit"] + k * len(units)
            all_units.append(unit | {"unit": number, "uri": f"copy{k}:{unit['uri']}"})
            target = accounting.unit_file(out, number)
            if Path(target).exists():
                continue
            table = pq.read_table(accounting.unit_file(staging, unit["unit"]))
            sig = table["minhash"].combine_chunks()
            values = sig.values.to_numpy().astype(np.uint32) if k else None
            columns = {
                "order": pa.array(table["order"].to_numpy() + (k * len(units) << 32)),
                "content_hash": pa.array(table["content_hash"].to_numpy() ^ salt),
                "minhash": sig if not k else pa.ListArray.from_arrays(
                    sig.offsets, pa.array(((values * a + b) & 0xFFFF).astype(np.uint16)))}
            for name, column in columns.items():
                table = table.set_column(table.schema.get_field_index(name), name, column)
            pq.write_table(table, target)
    return out, all_units


def new_pass(mode: str):
    def run(cfg: CorpusConfig, staging: Path, units: list[dict], documents: int, out: Path
            ) -> dict:
        _, metrics = corpus.dedupe_pass(cfg.model_copy(update={"dedupe_mode": mode}), staging,
                                        units, documents, out)
        return metrics
    return run


def measure(name: str, fn, cfg, staging, units, documents, work: Path) -> dict:
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    start = _status("VmRSS")
    with Usage() as usage:
        t0 = time.monotonic()
        metrics = fn(cfg, staging, units, documents, out)
        seconds = time.monotonic() - t0
    result = {"mode": name, "documents": documents, "seconds": round(seconds, 1),
              "driver_peak_gb": round(_status("VmHWM") / 2**30, 3),
              "driver_growth_mb": round((_status("VmHWM") - start) / 2**20, 1),
              "tree_peak_pss_gb": round(usage.peak / 2**30, 2),
              "duplicates": [metrics["documents"]["exact_duplicates"],
                             metrics["documents"]["near_duplicates"]]}
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=100_000, help="documents pass 1 makes")
    parser.add_argument("--copies", type=int, nargs="+", default=[1, 3, 10],
                        help="corpus sizes as copies of those documents")
    parser.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of local Ray")
    parser.add_argument("--docs-per-shard", type=int, default=5000, help="generator shard size")
    parser.add_argument("--modes", nargs="+", default=["distributed", "driver", "main"])
    parser.add_argument("--work-dir", default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="dedupe-bench-"))

    from mortgagellm.cluster.runtime import init_ray

    init_ray(RayConfig(num_cpus=args.num_cpus, object_store_mb=1024,
                       temp_dir=tempfile.mkdtemp(prefix="rb-", dir="/tmp")), work)
    runs = {"main": main_pass, "driver": new_pass("driver"),
            "distributed": new_pass("distributed")}
    results = []
    for copies in [0, *args.copies]:  # 0: 2,000 documents that warm Ray's workers up
        docs = 2000 if copies == 0 else args.docs
        cfg = CorpusConfig(synthetic_docs=docs, regulations=[str(REGULATIONS)],
                           synthetic_shards=max(2, docs // args.docs_per_shard),
                           cpus_per_task=args.num_cpus / (os.cpu_count() or 1))
        units = readers.plan_units(cfg.synthetic_docs, cfg.synthetic_shards,
                                   purpose_seed(SEED, "corpus"), cfg.regulations,
                                   cfg.user_corpora, cfg.synthetic_noise)
        staging = work / f"staging-{docs}"
        if not staging.is_dir():
            t = time.monotonic()
            corpus.clean_pass(cfg, SEED, units, staging).materialize()
            print(f"{docs:,} documents: pass 1 in {time.monotonic() - t:.0f} s", flush=True)
        if copies > 1:
            staging, units = replicate(staging, units, copies, work / f"staging-{docs}x{copies}")
        documents = sum(pq.ParquetFile(accounting.unit_file(staging, u["unit"])).metadata.num_rows
                        for u in units)
        found = {}
        for mode in args.modes:
            result = measure(mode, runs[mode], cfg, staging, units, documents,
                             work / f"out-{documents}")
            found[mode] = result.pop("duplicates")
            if copies:
                results.append(result)
        assert len({tuple(f) for f in found.values()}) == 1, found
    print(f"\n{'mode':>12} {'docs':>10} {'seconds':>8} {'driver growth MB':>17} "
          f"{'tree peak PSS GB':>17}")
    for r in results:
        print(f"{r['mode']:>12} {r['documents']:>10,} {r['seconds']:>8} "
              f"{r['driver_growth_mb']:>17} {r['tree_peak_pss_gb']:>17}")
    sizes = sorted({r["documents"] for r in results})
    for mode in args.modes if len(sizes) >= 2 else []:
        by = {r["documents"]: r for r in results if r["mode"] == mode}
        small, large = by[sizes[0]], by[sizes[-1]]
        slope = (large["driver_growth_mb"] - small["driver_growth_mb"]) / (sizes[-1] - sizes[0])
        at_10m = large["driver_growth_mb"] + slope * (10_000_000 - sizes[-1])
        line = (f"{mode}: driver growth {slope * 1e6:.0f} MB per 1M documents -> "
                f"{at_10m / 1024:.2f} GB at 10M")
        if "main" in args.modes:
            main_s = next(r["seconds"] for r in results
                          if r["mode"] == "main" and r["documents"] == sizes[-1])
            line += f"; time / main's at {sizes[-1]:,}: {large['seconds'] / main_s:.2f}x"
        print(line)


if __name__ == "__main__":
    main()
