"""Feeding train workers: disjoint, equal, ordered rank shards of the packed corpus, resumable at
any position."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mortgagellm.cluster import data
from mortgagellm.datasets.schemas import PACKED_SCHEMA

SEQ = 4


@pytest.fixture
def plan(tmp_path):
    """Three shards of 5, 3 and 4 rows; row g holds the tokens g*10 .. g*10+3."""
    files, first = [], 0
    for i, rows in enumerate((5, 3, 4)):
        ids = [list(range(g * 10, g * 10 + SEQ)) for g in range(first, first + rows)]
        table = pa.table({"input_ids": ids, "segment_ids": [[1] * SEQ] * rows},
                         schema=PACKED_SCHEMA)
        pq.write_table(table, tmp_path / f"shard-{i}.parquet")
        files.append([f"shard-{i}.parquet", rows])
        first += rows
    return {"dir": str(tmp_path), "files": files, "seq_len": SEQ}


def rows_of(plan, rank, world, start=0):
    return [int(ids[0]) // 10 for ids, _ in data.iter_rows(plan, rank, world, start)]


def test_ranks_get_disjoint_equal_strided_rows_in_corpus_order(plan):
    # 12 rows, 5 ranks: 2 rows each, rows 10 and 11 left out so every rank steps the same.
    shards = [rows_of(plan, r, 5) for r in range(5)]
    assert shards == [[0, 5], [1, 6], [2, 7], [3, 8], [4, 9]]
    assert data.rows_per_rank(plan, 5) == 2
    assert rows_of(plan, 1, 3) == [1, 4, 7, 10]
    assert rows_of(plan, 1, 3) == rows_of(plan, 1, 3)  # deterministic


@pytest.mark.parametrize("k", [0, 1, 3, 4])
def test_resume_at_position_k_yields_exactly_the_rows_after_k(plan, k):
    full = rows_of(plan, 0, 3)
    assert rows_of(plan, 0, 3, start=k) == full[k:]


def test_batches_report_the_position_to_resume_from(plan):
    batches = list(data.iter_batches(plan, 0, 2, batch_size=2))
    assert [b["position"] for b in batches] == [2, 4, 6]
    assert batches[1]["input_ids"][:, 0].tolist() == [40, 60]
    assert batches[1]["input_ids"].shape == (2, SEQ) and batches[1]["input_ids"].dtype == np.int32
    resumed = next(data.iter_batches(plan, 0, 2, batch_size=2, start=int(batches[0]["position"])))
    assert (resumed["input_ids"] == batches[1]["input_ids"]).all()


def test_bad_rank_or_start_is_refused(plan):
    with pytest.raises(ValueError, match="rank 3"):
        next(data.iter_rows(plan, 3, 3))
    with pytest.raises(ValueError, match="start 5"):
        next(data.iter_rows(plan, 0, 3, start=5))
