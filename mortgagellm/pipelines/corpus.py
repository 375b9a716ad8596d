"""corpus stage: synthetic, regulation and user text to packed token shards, streamed by Ray Data.

Run: mortgagellm corpus configs/cpu-demo.yaml

Three passes, because deciding which copy of a duplicate stays needs the whole corpus:
  1. clean (Ray Data, streaming): read -> validate -> normalise -> redact PII -> content hash +
     MinHash signature -> quality flag, written to <out>/staging/ (one row per record read).
  2. dedupe: (order, hash, signature) of every valid document -> duplicates, decided on the
     driver (numpy, about 320 MB for 1M documents) or by Ray Data groupbys holding nothing per
     document on the driver (corpus.dedupe_mode); then one Ray task per read unit writes its
     quarantine rows, duplicate list and drop list and counts them, and the stage stops here if
     too many records were malformed.
  3. pack (Ray Data, streaming): drop rejected, duplicate and low-quality documents -> tokenize
     (fast tokenizer, one batched call) -> mixture weights -> pack into seq_len rows -> one
     Parquet shard (PACKED_SCHEMA) per docs_per_shard documents, named by its place in corpus
     order.

Outputs in <output_dir>/corpus/: shards/, quarantine.parquet, duplicates.parquet and
manifest.json (counts per step, tokens, rejects by reason and source, shard list, hashes).

The Ray Data tasks, on whichever node they run, read and write only what every node reaches:
with a remote output_dir, staging/, dedupe/ and shards/ are under the stage's URI, and the
tokenizer is read from the published base model; the driver then copies the shards into its
cache, hashes them and publishes them as any stage does (the same bytes as a local run).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mortgagellm import manifest, routing, tier1
from mortgagellm.cluster import storage
from mortgagellm.config import CorpusConfig, Recipe
from mortgagellm.datasets import accounting, batches, dedupe, pii, readers, transforms
from mortgagellm.datasets.schemas import (
    DUPLICATES_SCHEMA,
    PACKED_ROW_GROUP_ROWS,
    PACKED_SCHEMA,
    QUARANTINE_SCHEMA,
)
from mortgagellm.datasets.splits import purpose_seed
from mortgagellm.manifest import require_manifest, stage_dir

log = logging.getLogger(__name__)

STAGING_SCHEMA = pa.schema(
    list(readers.RAW_SCHEMA) + [
        pa.field("content_hash", pa.uint64()),
        pa.field("minhash", pa.list_(pa.uint16())),
        pa.field("quality", pa.string()),
        pa.field("mojibake_repaired", pa.bool_()),
        pa.field("html_stripped", pa.bool_()),
    ] + [pa.field(f"pii_{kind}", pa.int32()) for kind in pii.KINDS])
"""One row per record read, after pass 1; `text` is the cleaned, redacted text."""

SOURCES = ("regulations", "user", "synthetic")
SHARD_STATS = pa.schema(
    [pa.field("file", pa.string()), pa.field("rows", pa.int64()), pa.field("tokens", pa.int64())]
    + [pa.field(f"{s}_tokens", pa.int64()) for s in SOURCES])
"""What pass 3 reports per shard written: rows, packed tokens, document tokens per source."""


def run(recipe: Recipe, force: bool = False) -> manifest.Manifest:
    """Build the packed corpus (or return the manifest of an identical earlier build)."""
    cfg, out_dir = recipe.corpus, stage_dir(recipe, "corpus")
    boot = require_manifest(recipe, "bootstrap")  # its base model's tokenizer
    base = boot.output_path("base")
    _check_seq_len(cfg, base)
    router = recipe.serve.router  # tier 1 is trained here: its settings are the corpus's too
    config = {"seed": recipe.run.seed, "corpus": cfg.model_dump(mode="json"),
              "tier1": {"clip_chars": router.clip_chars, "train_set": router.train_set,
                        "kind": router.tier1, "threshold_set": router.threshold_set,
                        "caught": router.caught}}
    inputs = {"base": boot.outputs["base"]}
    inputs |= {f"regulations:{uri}": _input(uri) for uri in cfg.regulations}
    inputs |= {f"user:{uri}": _input(uri) for uri in cfg.user_corpora}
    if router.train_set:
        inputs["tier1_train_set"] = manifest.artifact(router.train_set)
    if router.threshold_set:
        inputs["tier1_threshold_set"] = manifest.artifact(router.threshold_set)
    pending = manifest.begin("corpus", out_dir, config, inputs,
                             uri=manifest.stage_uri(recipe, "corpus"))
    if done := manifest.skip_if_current(pending, force):
        return done

    from mortgagellm.cluster.runtime import ensure_ray

    ensure_ray(recipe.ray, recipe.run.local_dir)
    spec = tokenizer_spec(base) | {  # as the tasks read it, from any node
        "file": f"{manifest.portable(recipe, boot.outputs['base'])['uri']}/tokenizer.json"}
    metrics = build(cfg, recipe.run.seed, spec, out_dir,
                    manifest.published(recipe, out_dir.absolute()))
    metrics["tasks"] = write_tasks(cfg, recipe.run.seed, out_dir / "tasks")
    metrics["tier1"] = write_tier1(recipe, out_dir / "tasks", out_dir / routing.TIER1_FILE)
    outputs = {name: manifest.artifact(out_dir / file) for name, file in (
        ("shards", "shards"), ("quarantine.parquet", "quarantine.parquet"),
        ("duplicates.parquet", "duplicates.parquet"), ("tasks", "tasks"),
        ("tier1", routing.TIER1_FILE))}
    metrics["content_sha256"] = outputs["shards"]["sha256"]
    return manifest.finish(pending, outputs, metrics)


def write_tasks(cfg: CorpusConfig, seed: int, out: Path) -> dict[str, int]:
    """The SFT, DPO, routing and held-out eval sets from the same generator (split by seed),
    as <out>/<set>.parquet + .jsonl; returns {set: records}."""
    from mortgagellm.datasets.tasks import write_task_sets

    shutil.rmtree(out, ignore_errors=True)
    t = time.monotonic()
    paths = write_task_sets(out, cfg.tasks, seed)
    counts = {name: pq.ParquetFile(path).metadata.num_rows for name, path in paths.items()}
    log.info("corpus: task sets %s -> %s (%.1f s)", counts, out, time.monotonic() - t)
    return counts


def write_tier1(recipe: Recipe, tasks: Path, path: Path) -> dict[str, float]:
    """Tier 1 of the serving router, trained on routing_train (or serve.router.train_set) and
    measured on eval_routing: an artifact of this stage, so serving and evaluation read the
    same classifier and nothing is trained when the app is built."""
    from mortgagellm.datasets.tasks import read_task_set

    r = recipe.serve.router
    train = read_task_set(Path(r.train_set) if r.train_set else tasks / "routing_train.parquet")
    # A hand-written threshold set names the request `text`; the generator's sets `request`.
    threshold_set = None if r.threshold_set is None else [
        {"request": x["request"] if "request" in x else x["text"], "route": x["route"]}
        for x in read_task_set(Path(r.threshold_set))]
    result = tier1.write(r.tier1, train, read_task_set(tasks / "eval_routing.parquet"),
                         r.clip_chars, recipe.run.seed, path, threshold_set, r.caught)
    log.info("corpus: %s tier-1 router on %d requests, %.1f %% on %d held-out, threshold %.3f",
             r.tier1, len(train), 100 * result["heldout_accuracy"], result["heldout_requests"],
             result["threshold"])
    return result


def build(cfg: CorpusConfig, seed: int, tokenizer: dict[str, Any], out_dir: Path,
          work: str | None = None) -> dict[str, Any]:
    """The three passes; returns the manifest's metrics. Ray must be initialised; `tokenizer`
    is a `tokenizer_spec`. The tasks write under `work` (default out_dir; a URI with a remote
    output_dir), and shards/, quarantine.parquet and duplicates.parquet end up in out_dir."""
    # Reproducible without preserve_order: every task handles one read unit or one staging
    # file, pass 2 orders by `order`, and shards are named by their first document's order.
    work = work or str(out_dir.absolute())
    staging, shards = f"{work}/staging", f"{work}/shards"
    for path in (staging, shards):
        storage.delete(path)
    out_dir.mkdir(parents=True, exist_ok=True)  # quarantine and duplicates are written here
    units = readers.plan_units(cfg.synthetic_docs, cfg.synthetic_shards,
                               purpose_seed(seed, "corpus"), cfg.regulations, cfg.user_corpora,
                               cfg.synthetic_noise)
    log.info("corpus pass 1/3 (clean): %d read units -> %s", len(units), staging)
    t = time.monotonic()
    documents = sum(row["rows"] for row in clean_pass(cfg, seed, units, staging).iter_rows())
    timings = {"clean_s": time.monotonic() - t}

    t = time.monotonic()
    drops, metrics = dedupe_pass(cfg, staging, units, documents, out_dir, work)
    timings["dedupe_s"] = time.monotonic() - t
    check_rejects(metrics, cfg.max_reject_fraction, out_dir / "quarantine.parquet")

    log.info("corpus pass 3/3 (pack): %d documents -> %s", metrics["documents"]["kept"], shards)
    t = time.monotonic()
    stats = pack_pass(cfg, seed, staging, drops, tokenizer, shards).to_pandas()
    timings["pack_s"] = time.monotonic() - t
    storage.delete(staging)
    storage.delete(f"{work}/dedupe")
    if storage.is_remote(work):
        storage.download(shards, out_dir / "shards")  # hashed and published by the stage
    for source in SOURCES:
        metrics["by_source"][source]["tokens"] = int(stats[f"{source}_tokens"].sum())
    metrics["tokens_kept_documents"] = sum(int(stats[f"{s}_tokens"].sum()) for s in SOURCES)
    rows, tokens = int(stats["rows"].sum()), int(stats["tokens"].sum())
    metrics["packed"] = {"rows": rows, "seq_len": cfg.seq_len, "tokens": tokens,
                         "non_pad_fraction": round(tokens / max(1, rows * cfg.seq_len), 6),
                         "shards": len(stats)}
    metrics["shards"] = [{"file": f, "rows": int(r)}
                         for f, r in sorted(zip(stats["file"], stats["rows"], strict=True))]
    metrics["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    log.info("corpus: %d documents -> %d rows of %d tokens (non-pad %.4f) in %d shards",
             metrics["documents"]["kept"], rows, cfg.seq_len,
             metrics["packed"]["non_pad_fraction"], len(stats))
    return metrics


# --- pass 1: clean ---------------------------------------------------------------------------


def clean_pass(cfg: CorpusConfig, seed: int, units: list[dict], staging: str | Path):
    """The Ray Data dataset of pass 1: one task per read unit, reading, cleaning and writing it
    to <staging>/unit-NNNNNN.parquet batch by batch; yields a (unit, rows) row per unit.

    Each task writes its own file: with Ray Data's write_parquet as a second operator, the
    scheduler split the CPUs between the two operators and ran one clean task at a time.
    """
    import ray

    ds = ray.data.from_items(units, override_num_blocks=len(units))
    return ds.map_batches(_clean_unit, batch_size=1, batch_format="pyarrow",
                          num_cpus=cfg.cpus_per_task, fn_kwargs={
                              "cfg": cfg.model_dump(mode="json", exclude={"tasks"}),
                              "salt": pii_salt(seed), "staging": str(staging)})


def _clean_unit(units: pa.Table, cfg: dict, salt: str, staging: str):
    for unit in units.to_pylist():
        filesystem, path = storage.filesystem(f"{staging}/unit-{unit['unit']:06d}.parquet")
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        rows = 0
        with pq.ParquetWriter(path, STAGING_SCHEMA, filesystem=filesystem) as writer:
            for batch in readers.read_unit(unit, cfg["max_doc_chars"], cfg["text_field"],
                                           cfg["id_field"], cfg["batch_docs"]):
                writer.write_table(batches.to_arrow(clean(batch, cfg, salt), STAGING_SCHEMA))
                rows += len(batch["order"])
        yield pa.table({"unit": [unit["unit"]], "rows": [rows]})


def clean(batch: dict, cfg: dict, salt: str) -> dict:
    """Pass 1 on one batch of RAW_SCHEMA columns, transform by transform, in pipeline order."""
    batch = transforms.validate(batch, cfg["max_doc_chars"])
    batch = transforms.normalise(batch)
    batch = pii.redact(batch, salt)
    batch = dedupe.signatures(batch, cfg["shingle_words"],
                              cfg["minhash_bands"] * cfg["minhash_rows"])
    return transforms.quality(batch, cfg["min_words"], cfg["max_symbol_fraction"],
                              cfg["max_repeated_line_fraction"])


def tokenizer_spec(base: str) -> dict[str, Any]:
    """The base model's tokenizer as workers load it: its tokenizer.json and special-token ids.

    AutoTokenizer reads the directory here, once, on the driver; workers load only the Rust
    tokenizer from tokenizer.json, because importing transformers costs each new worker ~4 s.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    file = Path(base) / "tokenizer.json"  # the stage hands the tasks its URI (run)
    if not tokenizer.is_fast or not file.is_file():
        raise ValueError(f"{base}: the corpus stage needs a fast tokenizer (tokenizer.json)")
    ids = {"bos_id": tokenizer.bos_token_id, "eos_id": tokenizer.eos_token_id,
           "pad_id": tokenizer.pad_token_id}
    if None in ids.values():
        raise ValueError(f"{base}: the tokenizer needs BOS, EOS and PAD tokens, has {ids}")
    return {"file": str(file), **ids}


@functools.lru_cache(maxsize=2)
def load_tokenizer(file: str) -> Any:
    """The Rust tokenizer of a tokenizer.json (path or URI), loaded once per worker process.

    Its own thread pool is turned off in the process: Ray already runs one task per CPU, and a
    pool per task on top used about 25 % more CPU time on 2 cores (threads spinning).
    """
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    return Tokenizer.from_str(storage.read_bytes(file).decode())


def pii_salt(seed: int) -> str:
    """The key surrogates derive from, per run seed (pii.document_key adds the text)."""
    return f"corpus-pii:{purpose_seed(seed, 'corpus')}"


# --- pass 2: dedupe, counts, quarantine ------------------------------------------------------


def dedupe_pass(cfg: CorpusConfig, staging: str | Path, units: list[dict], documents: int,
                out_dir: Path, work: str | None = None) -> tuple[str, dict[str, Any]]:
    """Find duplicates, write quarantine + duplicate list into out_dir; (folder of the units'
    drop lists, metrics). Each unit's bookkeeping is a Ray task (datasets/accounting.py),
    writing under <work>/dedupe (work: default out_dir, a URI with a remote output_dir)."""
    import ray

    staging, dedupe_dir = str(staging), f"{work or out_dir.absolute()}/dedupe"
    storage.delete(dedupe_dir)
    found, parts = f"{dedupe_dir}/found", f"{dedupe_dir}/units"
    filesystem, path = storage.filesystem(parts)
    filesystem.create_dir(path, recursive=True)
    mode = dedupe_mode(cfg, documents)
    t = time.monotonic()
    if mode == "driver":
        accounting.write_found(accounting.driver_duplicates(
            staging, cfg.minhash_bands, cfg.minhash_rows, cfg.near_dup_threshold), found)
    else:
        distributed(cfg, staging, documents).write_parquet(found, partition_cols=["unit"])
    log.info("corpus pass 2/3 (dedupe): %s, %d documents, %.1f s", mode, documents,
             time.monotonic() - t)
    uris = [u["uri"] for u in units]
    numbers = [u["unit"] for u in units]
    counted = ray.data.from_items([{"unit": n} for n in numbers],
                                  override_num_blocks=len(numbers)).map_batches(
        _account, batch_format="pyarrow", num_cpus=cfg.cpus_per_task, fn_kwargs={
            "staging": staging, "found": found, "parts": parts, "uris": uris})
    metrics: dict[str, Any] = {}
    for row in sorted(counted.iter_rows(), key=lambda row: row["unit"]):  # one per unit
        metrics = accounting.add(metrics, json.loads(row["counts"]))
    sources = Counter(metrics.get("rejects_by_source", {})).most_common(20)
    metrics["rejects_by_source"] = dict(sources)
    for part, schema, file in (("quarantine", QUARANTINE_SCHEMA, "quarantine.parquet"),
                               ("duplicates", DUPLICATES_SCHEMA, "duplicates.parquet")):
        accounting.concat(parts, numbers, part, schema, out_dir / file)
    log.info("corpus pass 2/3 (dedupe): %s", json.dumps(metrics["documents"]))
    return parts, metrics


def dedupe_mode(cfg: CorpusConfig, documents: int) -> str:
    """'driver' or 'distributed': corpus.dedupe_mode, or with 'auto' by corpus size."""
    if cfg.dedupe_mode != "auto":
        return cfg.dedupe_mode
    return "distributed" if documents >= cfg.dedupe_distributed_from else "driver"


def distributed(cfg: CorpusConfig, staging: str, documents: int):
    """The Ray Dataset of DUP_SCHEMA rows plus `unit`, decided by Ray Data groupbys."""
    import ray

    docs = ray.data.read_parquet(staging).select_columns(
        ["order", "reject", "content_hash", "minhash"])
    cpus = cfg.cpus_per_task
    docs = docs.map_batches(accounting.valid_only, batch_format="pyarrow", num_cpus=cpus)
    partitions = max(2, -(-documents // cfg.dedupe_docs_per_partition))
    dups = dedupe.distributed_duplicates(
        docs, cfg.minhash_bands, cfg.minhash_rows, cfg.near_dup_threshold,
        dedupe.NEIGHBOURS, partitions, cpus)
    return dups.map_batches(accounting.with_unit, batch_format="pyarrow", num_cpus=cpus)


def _account(units: pa.Table, staging: str, found: str, parts: str, uris: list[str]
             ) -> pa.Table:
    numbers = units["unit"].to_pylist()
    counts = [json.dumps(accounting.account_unit(unit, staging, found, parts, uris))
              for unit in numbers]
    return pa.table({"unit": numbers, "counts": counts})


def check_rejects(metrics: dict[str, Any], max_fraction: float, quarantine: Path) -> None:
    """Fail, naming the sources with the most malformed records, above max_reject_fraction."""
    docs = metrics["documents"]
    fraction = docs["rejected"] / max(1, docs["read"])
    if fraction <= max_fraction:
        return
    worst = list(metrics["rejects_by_source"].items())[:5]
    raise ValueError(
        f"corpus: {docs['rejected']} of {docs['read']} records ({fraction:.1%}) are malformed, "
        f"above max_reject_fraction {max_fraction:.1%}. Worst sources: "
        + "; ".join(f"{uri} ({n})" for uri, n in worst)
        + f". Reasons: {metrics['rejects_by_reason']}. Details in {quarantine}")


# --- pass 3: pack ----------------------------------------------------------------------------


def pack_pass(cfg: CorpusConfig, seed: int, staging: str, drops: str,
              tokenizer: dict[str, Any], shards: str):
    """The Ray Data dataset of pass 3: one task per staging file (one per read unit), each
    leaving out its unit's drop list (in `drops`), writing a shard per docs_per_shard documents
    and yielding its SHARD_STATS row.

    Not read_parquet: Ray 2.60 read this pass's few small files in one task and packed them in
    one more, leaving a core idle.
    """
    import ray

    files = [f"{staging}/{n}" for n in storage.files(staging) if n.endswith(".parquet")]
    ds = ray.data.from_items([{"file": f} for f in files], override_num_blocks=len(files))
    kwargs = {"drops": str(drops), "weights": dict(cfg.mixture),
              "salt": purpose_seed(seed, "corpus"), "seq_len": cfg.seq_len,
              "docs_per_shard": cfg.docs_per_shard, "tokenizer": tokenizer, "out_dir": shards}
    return ds.map_batches(_pack_file, batch_size=1, batch_format="pyarrow",
                          num_cpus=cfg.cpus_per_task, fn_kwargs=kwargs)


def _pack_file(files: pa.Table, docs_per_shard: int, drops: str, **kwargs: Any):
    for file in files["file"].to_pylist():
        unit = int(Path(file).stem.split("-")[1])
        drop = pq.read_table(accounting.unit_file(drops, unit, "drop"))["order"].to_numpy()
        for batch in pq.ParquetFile(file).iter_batches(docs_per_shard,
                                                       columns=["order", "source", "text"]):
            yield _pack_shard(pa.Table.from_batches([batch]), drop, **kwargs)


def pack_shard(batch: dict, drop: np.ndarray, weights: dict, salt: int, seq_len: int,
               tokenizer: Any, ids: dict[str, int]) -> tuple[dict, dict]:
    """Pass 3 on one shard's documents: (packed columns, document tokens per source).
    `tokenizer` is a tokenizers.Tokenizer, `ids` its bos_id, eos_id and pad_id."""
    batch = transforms.tokenize(transforms.select(batch, drop), tokenizer, ids["bos_id"],
                                ids["eos_id"])
    sources = np.asarray(batch["source"], dtype=object)
    per_source = {s: int(batch["n_tokens"][sources == s].sum()) for s in SOURCES}
    batch = transforms.mix(batch, weights, salt)
    return transforms.pack(batch, seq_len, ids["pad_id"]), per_source


def _pack_shard(table: pa.Table, drop: np.ndarray, weights: dict, salt: int, seq_len: int,
                tokenizer: dict[str, Any], out_dir: str) -> pa.Table:
    """Pack and write one shard, named by its first document's place in corpus order (names
    sort in corpus order, and a retried task rewrites the same file); its SHARD_STATS row."""
    batch = batches.to_columns(table)
    packed, per_source = pack_shard(batch, drop, weights, salt, seq_len,
                                    load_tokenizer(tokenizer["file"]), tokenizer)
    if not packed["input_ids"]:
        return SHARD_STATS.empty_table()
    name = f"shard-{int(np.min(batch['order'])):016x}.parquet"
    filesystem, path = storage.filesystem(f"{out_dir}/{name}")
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pq.write_table(batches.to_arrow(packed, PACKED_SCHEMA), path, filesystem=filesystem,
                   row_group_size=PACKED_ROW_GROUP_ROWS)
    tokens = int(sum(np.count_nonzero(s) for s in packed["segment_ids"]))
    return pa.table({"file": [name], "rows": [len(packed["input_ids"])], "tokens": [tokens],
                     **{f"{s}_tokens": [n] for s, n in per_source.items()}}, schema=SHARD_STATS)


# --- inputs and Ray --------------------------------------------------------------------------


def _input(uri: str) -> dict[str, str]:
    """Manifest input entry: content hash for local paths, listing hash (names, sizes, mtimes)
    for remote URIs, where reading everything just to hash it would cost a second download."""
    if not storage.is_remote(uri):
        return manifest.artifact(storage.filesystem(uri)[1])
    filesystem, _ = storage.filesystem(uri)
    infos = [filesystem.get_file_info(storage.filesystem(f)[1]) for f in readers.list_files(uri)]
    listing = [(i.path, i.size, i.mtime_ns) for i in infos]
    return {"uri": uri, "sha256": hashlib.sha256(json.dumps(listing).encode()).hexdigest()}


def _check_seq_len(cfg: CorpusConfig, base: str) -> None:
    config = json.loads((Path(base) / "config.json").read_text())
    limit = config.get("max_position_embeddings")
    if limit and cfg.seq_len > limit:
        raise ValueError(f"corpus.seq_len {cfg.seq_len} exceeds the base model's "
                         f"max_position_embeddings {limit} ({base})")
