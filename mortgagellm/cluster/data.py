"""Feeding Ray Train workers the packed corpus: each rank its own rows, in a fixed order, from any
recorded position.

Rows are numbered in corpus order: the shard list of the corpus manifest (names sort in corpus
order), rows in file order. Rank r of w takes rows r, r + w, r + 2w, ... of the first
w * floor(N / w), so every rank has the same number of rows and data-parallel steps stay in
lockstep. A rank's position is the number of its rows consumed; `start=k` yields exactly the
rows after those k, which is what a checkpoint records for a step-exact resume.

Why not Ray Data's streaming_split / get_dataset_shard: it hands blocks to whichever rank asks
first, so which rows a rank sees depends on timing, and a resumed run would have to replay the
stream from the beginning. Here a worker opens only the shard files holding its rows, through
pyarrow (local paths or s3://), from the plan it receives in its Ray Train config dict.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from mortgagellm.cluster import storage
from mortgagellm.datasets.schemas import PACKED_SCHEMA


def shard_plan(corpus_manifest: Any) -> dict[str, Any]:
    """What workers need from the corpus manifest, as plain JSON for Ray Train's config dict:
    the shard directory, [file, rows] in corpus order, and seq_len."""
    metrics = corpus_manifest.metrics
    return {"dir": corpus_manifest.output_path("shards"),
            "files": [[s["file"], s["rows"]] for s in metrics["shards"]],
            "seq_len": metrics["packed"]["seq_len"]}


def rows_per_rank(plan: dict[str, Any], world_size: int) -> int:
    """Rows every rank gets (the last N mod world_size rows of the corpus are left out)."""
    return sum(rows for _, rows in plan["files"]) // world_size


def iter_rows(plan: dict[str, Any], rank: int, world_size: int, start: int = 0
              ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(input_ids, segment_ids) of this rank's rows from position `start` on, in order."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    total = rows_per_rank(plan, world_size)
    if not 0 <= start <= total:
        raise ValueError(f"start {start} is outside this rank's {total} rows")
    wanted = rank + world_size * np.arange(start, total, dtype=np.int64)  # global row numbers
    first_row = 0
    for name, rows in plan["files"]:
        lo, hi = np.searchsorted(wanted, [first_row, first_row + rows])
        if hi > lo:
            ids, segments = _read(f"{plan['dir']}/{name}", plan["seq_len"])
            local = wanted[lo:hi] - first_row
            yield from zip(ids[local], segments[local], strict=True)
        first_row += rows


def iter_batches(plan: dict[str, Any], rank: int, world_size: int, batch_size: int,
                 start: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Batches {input_ids, segment_ids: (batch_size, seq_len) int32, position: rows consumed
    once this batch is done}; a last incomplete batch is dropped so ranks step together."""
    ids, segments = [], []
    position = start
    for row_ids, row_segments in iter_rows(plan, rank, world_size, start):
        ids.append(row_ids)
        segments.append(row_segments)
        if len(ids) == batch_size:
            position += batch_size
            yield {"input_ids": np.stack(ids), "segment_ids": np.stack(segments),
                   "position": np.int64(position)}
            ids, segments = [], []


def _read(uri: str, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """One shard as two (rows, seq_len) int32 arrays."""
    filesystem, path = storage.filesystem(uri)
    table = pq.read_table(path, filesystem=filesystem, schema=PACKED_SCHEMA)
    return tuple(table[name].combine_chunks().flatten().to_numpy().reshape(-1, seq_len)
                 for name in ("input_ids", "segment_ids"))
