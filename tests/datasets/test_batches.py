"""Arrow tables <-> column dicts: types come from the schema, lists become numpy arrays."""

import numpy as np
import pyarrow as pa

from mortgagellm.datasets import batches
from mortgagellm.datasets.schemas import PACKED_SCHEMA


def test_round_trip_keeps_schema_and_values():
    batch = {"input_ids": [np.array([1, 2], np.int32), np.array([], np.int32)],
             "segment_ids": [np.array([1, 1], np.int32), np.array([], np.int32)]}
    table = batches.to_arrow(batch, PACKED_SCHEMA)
    assert table.schema == PACKED_SCHEMA
    back = batches.to_columns(table)
    assert [a.tolist() for a in back["input_ids"]] == [[1, 2], []]
    assert back["input_ids"][0].dtype == np.int32


def test_strings_become_lists_and_numbers_numpy():
    schema = pa.schema([("text", pa.large_string()), ("order", pa.int64()),
                        ("sig", pa.list_(pa.uint16()))])
    table = batches.to_arrow({"text": ["a", "b"], "order": [3, 4],
                              "sig": [np.array([1, 2]), np.array([3, 4])]}, schema)
    assert table.schema == schema  # int64 values stored as the schema's uint16
    cols = batches.to_columns(table)
    assert cols["text"] == ["a", "b"] and cols["order"].tolist() == [3, 4]
    assert cols["sig"][1].dtype == np.uint16 and cols["sig"][1].tolist() == [3, 4]
