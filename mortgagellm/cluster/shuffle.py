"""Ray Data hash partitioning: run a vectorised function on whole partitions of a dataset.

`groupby(key).map_groups(fn)` calls fn once per distinct key; with millions of keys (LSH band
hashes, content hashes) the per-call overhead is the cost. Here rows get a coarse partition
number from a mixed hash of the key, the groupby runs on that, and fn sees every row of a
partition at once as a pyarrow Table: all rows with equal key values meet in one call, and fn
does its work with numpy over the whole partition.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

PART = "_partition"
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def partition_of(key: np.ndarray, partitions: int) -> np.ndarray:
    """Partition numbers 0..partitions-1 of integer keys (Fibonacci hashing: the high bits of
    key * golden ratio, so keys such as unit << 32 | row spread evenly)."""
    mixed = key.astype(np.uint64) * _GOLDEN  # wraps modulo 2^64, as intended
    return ((mixed >> np.uint64(32)) % np.uint64(partitions)).astype(np.int64)


def by_partition(ds: Any, key: str, fn: Callable[..., pa.Table], partitions: int,
                 num_cpus: float = 1.0, **fn_kwargs: Any) -> Any:
    """The Dataset of fn(table, **fn_kwargs) over each hash partition of ds by column `key`.

    `num_cpus` is what each map task reserves (the corpus stage's cpus_per_task)."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    # 4 partition numbers per shuffle partition: hashing P numbers into P partitions would
    # leave about a third of them empty and others double.
    tagged = ds.map_batches(_tag, batch_format="pyarrow", num_cpus=num_cpus,
                            fn_kwargs={"key": key, "partitions": 4 * partitions})
    return tagged.groupby(PART, num_partitions=partitions).map_groups(
        _call, batch_format="pyarrow", num_cpus=num_cpus, fn_kwargs={"fn": fn, **fn_kwargs})


def _tag(table: pa.Table, key: str, partitions: int) -> pa.Table:
    return table.append_column(PART, pa.array(partition_of(table[key].to_numpy(), partitions)))


def _call(table: pa.Table, fn: Callable[..., pa.Table], **fn_kwargs: Any) -> pa.Table:
    return fn(table.drop_columns([PART]), **fn_kwargs)
