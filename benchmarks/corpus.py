"""Corpus pipeline throughput: the same transforms on the same input (a) in a plain single-process
loop and (b) as the corpus stage's Ray Data pipeline. Prints docs/s, tokens/s, peak memory and the
packed non-pad fraction of each, and the ratio last (goal >= 1.6 on 2 cores).

Run: .venv/bin/python benchmarks/corpus.py [--docs 40000] [--num-cpus 4]
     .venv/bin/python benchmarks/corpus.py --scale 1000000   # Ray pipeline only, end to end
                                                             # (goal <= 20 min, peak <= 6 GB)

Memory is the proportional set size (PSS) summed over this process and every process it started
(the Ray head, raylet and workers), sampled every second: shared object-store pages are counted
once, not once per process that maps them. Input: the generator (noise on) plus the three CFPB
regulations; the tokenizer is a 1,024-token byte-level BPE trained here like the small preset's.
"""

from __future__ import annotations

import argparse
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
from mortgagellm.datasets import dedupe, readers, transforms
from mortgagellm.datasets.schemas import PACKED_SCHEMA
from mortgagellm.datasets.splits import purpose_seed
from mortgagellm.pipelines import corpus

REGULATIONS = Path(__file__).resolve().parents[1].parent / "shared" / "corpora" / "cfpb-regulations"
SEED = 0


class MemoryPeak:
    """Background sampler of summed PSS over this process tree; `peak_gb` once stopped."""

    def __init__(self) -> None:
        self.peak, self.driver_peak, self._stop = 0, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "MemoryPeak":
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(1.0):
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak = max(self.peak, total)
            self.driver_peak = max(self.driver_peak, me.memory_info().rss)

    @property
    def peak_gb(self) -> float:
        return self.peak / 2**30


def make_tokenizer(directory: Path) -> str:
    """A fast byte-level BPE (1,024 tokens) trained on general text, saved as an HF directory."""
    from mortgagellm.datasets.general import general_documents
    from mortgagellm.modeling import train_tokenizer

    tokenizer = train_tokenizer(general_documents(SEED, 8000, 0.1), 1024)
    tokenizer.save_pretrained(directory)
    return str(directory)


def plain_loop(cfg: CorpusConfig, tokenizer_path: str, out_dir: Path) -> dict:
    """The stage's transforms in one process: read, clean, dedupe in memory, pack, write."""
    tokenizer = corpus.load_tokenizer(tokenizer_path)
    settings = cfg.model_dump(mode="json", exclude={"tasks"})
    units = readers.plan_units(cfg.synthetic_docs, cfg.synthetic_shards, purpose_seed(SEED, "corpus"),
                               cfg.regulations, cfg.user_corpora)
    keep = ("order", "source", "reject", "quality", "content_hash", "minhash", "input_ids")
    staged = []
    for unit in units:
        for batch in readers.read_unit(unit, cfg.max_doc_chars, cfg.text_field, cfg.id_field):
            done = corpus.clean(batch, settings, corpus._salt(SEED), tokenizer)
            staged.append({k: done[k] for k in keep})
    order = np.concatenate([np.asarray(b["order"]) for b in staged])
    valid = np.concatenate([[not r for r in b["reject"]] for b in staged]).astype(bool)
    good = np.concatenate([[not q for q in b["quality"]] for b in staged]).astype(bool)
    hashes = np.concatenate([b["content_hash"] for b in staged])
    sig = np.concatenate([np.stack(b["minhash"]) for b in staged])
    idx = np.flatnonzero(valid)
    pos, _, _ = dedupe.find_duplicates(order[idx], hashes[idx], sig[idx], cfg.minhash_bands,
                                       cfg.minhash_rows, cfg.near_dup_threshold)
    dup = np.zeros(len(order), bool)
    dup[idx[pos]] = True
    drop = np.sort(order[~(valid & good & ~dup)])
    rows = tokens = 0
    out_dir.mkdir(parents=True)
    with pq.ParquetWriter(out_dir / "shards.parquet", PACKED_SCHEMA) as writer:
        for b in staged:
            mixed = transforms.mix(corpus.select(b, drop), dict(cfg.mixture), purpose_seed(SEED,
                                                                                          "corpus"))
            packed = transforms.pack(mixed, cfg.seq_len, tokenizer.pad_token_id)
            writer.write_table(corpus.to_arrow(packed, PACKED_SCHEMA))
            rows += len(packed["input_ids"])
            tokens += int(sum(np.count_nonzero(s) for s in packed["segment_ids"]))
    return {"read": len(order), "kept": int((valid & good & ~dup).sum()), "rows": rows,
            "tokens": tokens}


def ray_pipeline(cfg: CorpusConfig, tokenizer_path: str, out_dir: Path) -> dict:
    """The corpus stage's three passes (corpus.build) on the running Ray cluster."""
    metrics = corpus.build(cfg, SEED, tokenizer_path, out_dir)
    return {"read": metrics["documents"]["read"], "kept": metrics["documents"]["kept"],
            "rows": metrics["packed"]["rows"], "tokens": metrics["packed"]["tokens"],
            "timings_s": metrics["timings_s"]}


def measure(name: str, fn, cfg: CorpusConfig, tokenizer_path: str, out_dir: Path) -> dict:
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    with MemoryPeak() as memory:
        t0 = time.monotonic()
        result = fn(cfg, tokenizer_path, out_dir / "out")
        seconds = time.monotonic() - t0
    result |= {"seconds": round(seconds, 1), "docs_per_s": round(result["read"] / seconds, 1),
               "tokens_per_s": round(result["tokens"] / seconds),
               "peak_pss_gb": round(memory.peak_gb, 2),
               "driver_peak_rss_gb": round(memory.driver_peak / 2**30, 2),
               "non_pad_fraction": round(result["tokens"] / (result["rows"] * cfg.seq_len), 4)}
    print(f"{name:>16}: {json.dumps(result)}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=40_000, help="documents for the comparison")
    parser.add_argument("--scale", type=int, help="run only the Ray pipeline on this many docs")
    parser.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of local Ray")
    parser.add_argument("--docs-per-shard", type=int, default=5000, help="generator shard size")
    parser.add_argument("--work-dir", default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="corpus-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    tokenizer_path = make_tokenizer(work / "tokenizer")
    docs = args.scale or args.docs
    cfg = CorpusConfig(synthetic_docs=docs, synthetic_shards=max(2, docs // args.docs_per_shard),
                       regulations=[str(REGULATIONS)], seq_len=512)
    print(f"{docs:,} generated documents + 3 regulations, {cfg.synthetic_shards} read units, "
          f"{os.cpu_count()} cores, Ray with {args.num_cpus} logical CPUs", flush=True)

    from mortgagellm.cluster.runtime import init_ray

    init_ray(RayConfig(num_cpus=args.num_cpus, object_store_mb=1024,  # token in <work>/ray/
                       temp_dir=tempfile.mkdtemp(prefix="rb-", dir="/tmp")), work)
    ray_result = measure("ray data", ray_pipeline, cfg, tokenizer_path, work / "out-ray")
    if args.scale:
        print(f"scale: {docs:,} docs in {ray_result['seconds'] / 60:.1f} min, peak "
              f"{ray_result['peak_pss_gb']:.2f} GB, non-pad {ray_result['non_pad_fraction']}")
        return
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core, as in every Ray worker
    plain = measure("plain loop", plain_loop, cfg, tokenizer_path, work / "out-plain")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"  # the Rust tokenizer's own threads on
    threaded = measure("plain + threads", plain_loop, cfg, tokenizer_path, work / "out-plain-t")
    assert plain["tokens"] == ray_result["tokens"], "the two paths must produce the same tokens"
    print(f"ray data / plain loop docs/s: {ray_result['docs_per_s'] / plain['docs_per_s']:.2f}x; "
          f"vs plain loop with tokenizer threads: "
          f"{ray_result['docs_per_s'] / threaded['docs_per_s']:.2f}x")


if __name__ == "__main__":
    main()
