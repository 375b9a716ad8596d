"""Feeding training ranks their rows: disjoint, in a fixed (optionally shuffled) order, from any
recorded position.

The unit of order is a Parquet row group (the corpus writes PACKED_ROW_GROUP_ROWS rows per
group). With a shuffle seed the row groups of all shards are put in a seeded random order; rows
inside a group keep theirs. The corpus is written source by source, so reading it in file order
would train on one source at a time (all regulations first); the shuffle mixes sources at a
granularity that still reads whole row groups. Global row i of that order goes to rank
i % world; a rank's position is the number of its rows consumed, and `start=k` yields exactly the
rows after those k, skipping whole groups without decoding them (a step-exact resume).

Why not Ray Data's streaming_split / get_dataset_shard: it hands blocks to whichever rank asks
first, so which rows a rank sees depends on timing, and a resumed run would have to replay the
stream from the beginning. Here a rank opens only the row groups holding its rows, through
pyarrow (local paths or s3://), from the shard list it receives in its Ray Train config dict.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow.parquet as pq

from mortgagellm.cluster import storage


def row_groups(shards: list[str], shuffle_seed: int | None = None) -> list[tuple[str, int, int]]:
    """(shard, row group, rows) of every row group, in file order or, with a seed, in a seeded
    random order (the same for every rank and every resume)."""
    groups = []
    for shard in shards:
        filesystem, path = storage.filesystem(shard)
        with filesystem.open_input_file(path) as f:
            meta = pq.ParquetFile(f).metadata
        groups += [(shard, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    if shuffle_seed is None:
        return groups
    order = np.random.default_rng(shuffle_seed).permutation(len(groups))
    return [groups[i] for i in order]


def rank_rows(shards: list[str], rank: int, world: int, start: int = 0,
              shuffle_seed: int | None = None) -> Iterator[dict]:
    """This rank's rows ({column: list}) from its `start`-th row on.

    Rows are dealt round-robin over the (shuffled) sequence of row groups: every rank sees the
    same number of rows +-1, and no row twice."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in 0..{world - 1}")
    if start < 0:
        raise ValueError(f"start {start} is negative")
    seen = 0  # rows of this rank passed so far
    global_row = 0
    for shard, group, n in row_groups(shards, shuffle_seed):
        mine = range((rank - global_row) % world, n, world)
        if seen + len(mine) <= start:
            seen, global_row = seen + len(mine), global_row + n
            continue
        filesystem, path = storage.filesystem(shard)
        with filesystem.open_input_file(path) as f:
            table = pq.ParquetFile(f).read_row_group(group)
        columns = {name: table.column(name) for name in table.column_names}
        for i in mine:
            if seen >= start:
                yield {name: column[i].as_py() for name, column in columns.items()}
            seen += 1
        global_row += n
