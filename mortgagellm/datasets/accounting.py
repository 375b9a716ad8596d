"""The corpus stage's pass 2, one read unit at a time: which of the unit's documents are
dropped and why, from its staging file and the duplicates found across the corpus.

Duplicates arrive as Parquet rows (order, kind, kept) partitioned by the duplicate's unit
(`<found>/unit=N/`, hive style), so a unit reads only its own. Each unit writes its quarantine
rows, its duplicate list and its drop list (orders) as part files in corpus order; the stage
concatenates the parts unit by unit and sums the counts, so no per-document array is held in
one place.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mortgagellm.cluster import storage
from mortgagellm.datasets import pii
from mortgagellm.datasets.dedupe import DUP_SCHEMA, find_duplicates, lookup
from mortgagellm.datasets.schemas import DUPLICATES_SCHEMA, QUARANTINE_SCHEMA

SOURCES = ("regulations", "user", "synthetic")
COUNT_COLUMNS = ["order", "source", "location", "doc_id", "reject", "quality", "snippet",
                 "mojibake_repaired", "html_stripped"] + [f"pii_{kind}" for kind in pii.KINDS]
DROP_SCHEMA = pa.schema([("order", pa.int64())])
"""The orders pass 3 leaves out of a unit: rejected, duplicate and low-quality documents."""


def unit_file(directory: Path | str, unit: int, part: str = "") -> str:
    """<directory>/unit-NNNNNN[.part].parquet: a unit's staging file or one of its parts (a path
    or, under a URI, a URI: pyarrow reads and writes both)."""
    return f"{directory}/unit-{unit:06d}{'.' + part if part else ''}.parquet"


def driver_duplicates(staging: str, bands: int, rows: int, threshold: float) -> pa.Table:
    """DUP_SCHEMA rows decided in this process (`find_duplicates`) from every valid document's
    hash and signature in the staging files."""
    import pyarrow.dataset as pads

    table = pads.dataset(staging, format="parquet").to_table(
        columns=["order", "content_hash", "minhash"], filter=pc.field("reject") == "")
    order = table["order"].to_numpy()
    sig = np.concatenate([c.flatten().to_numpy() for c in table["minhash"].chunks]
                         or [np.zeros(0, np.uint16)]).reshape(len(table), -1)
    table = table.drop_columns(["minhash"])
    pos, kind, kept = find_duplicates(order, table["content_hash"].to_numpy(), sig, bands, rows,
                                      threshold)
    return pa.table({"order": order[pos], "kind": kind, "kept": order[kept]}, schema=DUP_SCHEMA)


def valid_only(table: pa.Table) -> pa.Table:
    """The rows with no `reject` reason, without the column (the documents dedupe sees)."""
    return table.filter(pc.equal(table["reject"], "")).drop_columns(["reject"])


def with_unit(table: pa.Table) -> pa.Table:
    """DUP_SCHEMA rows plus `unit`: the read unit of the duplicate (order >> 32)."""
    return table.append_column("unit", pc.shift_right(table["order"], 32))


def write_found(dups: pa.Table, found: str) -> None:
    """Duplicates (DUP_SCHEMA) as <found>/unit=N/*.parquet, N the duplicate's unit, as the
    distributed path writes them."""
    pq.write_to_dataset(with_unit(dups), found, partition_cols=["unit"])


def account_unit(unit: int, staging: str, found: str, parts: str, unit_uris: list[str]
                 ) -> dict[str, Any]:
    """Write the unit's quarantine, duplicates and drop parts into `parts`; its counts. The
    three folders are paths or URIs."""
    table = pq.read_table(unit_file(staging, unit), columns=COUNT_COLUMNS)
    mine = f"{found}/unit={unit}"
    dups = (pq.read_table(mine, columns=DUP_SCHEMA.names) if storage.exists(mine)
            else DUP_SCHEMA.empty_table()).sort_by("order")
    order = table["order"].to_numpy()
    valid = pc.equal(table["reject"], "").to_numpy(zero_copy_only=False)
    row = lookup(dups["order"].to_numpy(), order, np.arange(len(order)))
    is_dup = np.zeros(len(order), bool)
    is_dup[row] = True
    kind = dups["kind"].to_numpy()
    pq.write_table(pa.table({
        "location": table["location"].take(row), "doc_id": table["doc_id"].take(row),
        "kind": np.where(kind == 0, "exact", "near"),
        "kept_location": kept_locations(dups["kept"].to_numpy(), staging)},
        schema=DUPLICATES_SCHEMA), unit_file(parts, unit, "duplicates"))

    low = valid & ~is_dup & pc.not_equal(table["quality"], "").to_numpy(zero_copy_only=False)
    kept = valid & ~is_dup & ~low
    bad = table.filter(pa.array(~valid | low)).sort_by("order")
    reason = [r or f"quality:{q}" for r, q in zip(bad["reject"].to_pylist(),
                                                   bad["quality"].to_pylist(), strict=True)]
    pq.write_table(pa.table({"location": bad["location"], "source": bad["source"],
                             "doc_id": bad["doc_id"], "reason": reason,
                             "snippet": bad["snippet"]}, schema=QUARANTINE_SCHEMA),
                   unit_file(parts, unit, "quarantine"))
    pq.write_table(pa.table({"order": np.sort(order[~kept])}, schema=DROP_SCHEMA),
                   unit_file(parts, unit, "drop"))
    return counts(table, unit_uris, valid, is_dup, kind, low, kept)


def kept_locations(kept: np.ndarray, staging: str) -> pa.Array:
    """The `location` of each kept order, read from the staging files of the units it names."""
    out = np.empty(len(kept), dtype=object)
    for unit in np.unique(kept >> 32):
        at = np.flatnonzero(kept >> 32 == unit)
        table = pq.read_table(unit_file(staging, int(unit)), columns=["order", "location"])
        out[at] = lookup(kept[at], table["order"].to_numpy(),
                         table["location"].to_numpy(zero_copy_only=False))
    return pa.array(out, pa.string())


def counts(table: pa.Table, unit_uris: list[str], valid: np.ndarray, is_dup: np.ndarray,
           dup_kind: np.ndarray, low: np.ndarray, kept: np.ndarray) -> dict[str, Any]:
    """The manifest's per-step counts; read = rejected + duplicates + low_quality + kept.
    Counts of several units add up (`add`); rejects_by_source keeps every source here."""
    source = table["source"].to_numpy(False)
    reject, quality = table["reject"].to_numpy(False), table["quality"].to_numpy(False)
    origin = np.array(unit_uris, dtype=object)[table["order"].to_numpy() >> 32]
    return {
        "documents": {"read": len(table), "rejected": int((~valid).sum()),
                      "exact_duplicates": int((dup_kind == 0).sum()),
                      "near_duplicates": int((dup_kind == 1).sum()),
                      "low_quality": int(low.sum()), "kept": int(kept.sum())},
        "rejects_by_reason": dict(Counter(reject[~valid].tolist())),
        "rejects_by_source": dict(Counter(origin[~valid].tolist())),
        "low_quality_by_reason": dict(Counter(quality[low].tolist())),
        "by_source": {s: {"read": int((source == s).sum()),
                          "kept": int((kept & (source == s)).sum())} for s in SOURCES},
        "normalised": {"mojibake_repaired": int(table["mojibake_repaired"].to_numpy().sum()),
                       "html_stripped": int(table["html_stripped"].to_numpy().sum())},
        "pii_redacted": {k: int(table[f"pii_{k}"].to_numpy()[valid & ~is_dup].sum())
                         for k in pii.KINDS},
    }


def add(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Nested sum of two `counts` results (keys of either, numbers added)."""
    out = dict(a)
    for key, value in b.items():
        out[key] = add(a.get(key, {}), value) if isinstance(value, dict) else \
            a.get(key, 0) + value
    return out


def concat(parts: str, units: list[int], part: str, schema: pa.Schema, path: Path) -> int:
    """The units' `part` files, in unit order, into one Parquet file at `path`; its rows.
    One part is in memory at a time."""
    rows = 0
    with pq.ParquetWriter(path, schema) as writer:
        for unit in units:
            table = pq.read_table(unit_file(parts, unit, part), schema=schema)
            writer.write_table(table)
            rows += len(table)
    return rows
