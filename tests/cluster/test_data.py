"""Feeding train ranks: disjoint rows in a fixed, optionally shuffled order of row groups,
resumable at any position."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mortgagellm.cluster.data import rank_rows, row_groups
from mortgagellm.datasets.schemas import PACKED_SCHEMA


def write_rows(path, first, n, group):
    """Rows first .. first+n-1 (input_ids [row]) in row groups of `group` rows."""
    table = pa.table({"input_ids": [[first + i] for i in range(n)],
                      "segment_ids": [[1] for _ in range(n)]}, schema=PACKED_SCHEMA)
    pq.write_table(table, path, row_group_size=group)
    return str(path)


@pytest.fixture
def shards(tmp_path):
    """A 'regulations' shard (rows 0-9, groups of 4) then a 'synthetic' one (10-16, groups of 3)."""
    return [write_rows(tmp_path / "a.parquet", 0, 10, 4),
            write_rows(tmp_path / "b.parquet", 10, 7, 3)]


def rows_of(shards, rank, world, start=0, seed=None):
    return [r["input_ids"][0] for r in rank_rows(shards, rank, world, start, seed)]


def test_without_a_seed_ranks_read_strided_rows_in_file_order(shards):
    assert rows_of(shards, 0, 1) == list(range(17))
    assert rows_of(shards, 1, 3) == [1, 4, 7, 10, 13, 16]


def test_a_seed_mixes_the_shards_by_row_group_the_same_way_every_time(shards):
    groups = row_groups(shards, shuffle_seed=0)
    assert sorted(groups) == sorted(row_groups(shards)) and groups != row_groups(shards)
    order = rows_of(shards, 0, 1, seed=0)
    assert order == rows_of(shards, 0, 1, seed=0) != rows_of(shards, 0, 1, seed=1)
    assert sorted(order) == list(range(17)) and order != list(range(17))
    # Whole row groups move: each group's rows stay together and in order.
    expected = [first + i for shard, g, n in groups
                for first in [(0 if shard.endswith("a.parquet") else 10)
                              + g * (4 if shard.endswith("a.parquet") else 3)]
                for i in range(n)]
    assert order == expected
    # The second shard no longer waits for the whole first one.
    assert min(order.index(r) for r in range(10, 17)) < max(order.index(r) for r in range(10))


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("seed", [None, 7])
def test_ranks_get_every_row_once_and_resume_exactly(shards, world, seed):
    per_rank = [rows_of(shards, rank, world, seed=seed) for rank in range(world)]
    assert sorted(sum(per_rank, [])) == list(range(17))
    assert max(map(len, per_rank)) - min(map(len, per_rank)) <= 1
    for rank in range(world):
        for start in range(len(per_rank[rank]) + 1):
            assert rows_of(shards, rank, world, start, seed) == per_rank[rank][start:]


def test_bad_rank_or_start_is_refused(shards):
    with pytest.raises(ValueError, match="rank 3"):
        next(rank_rows(shards, 3, 3))
    with pytest.raises(ValueError, match="start -1"):
        next(rank_rows(shards, 0, 3, start=-1))
