"""Arrow tables <-> the column dicts every batch transform takes.

Ray Data hands the corpus stage's UDFs Arrow tables; the transforms want plain columns: strings
as Python lists (regexes need str), token and signature lists as lists of numpy arrays (no Python
ints), numbers as numpy arrays. Going back, the output schema is given, so types never depend on
what a batch happened to contain.
"""

import numpy as np
import pyarrow as pa


def to_columns(table: pa.Table) -> dict:
    """Arrow table -> dict: strings as lists, int lists as lists of numpy arrays, numbers as
    numpy arrays (the batch form every transform takes)."""
    out: dict = {}
    for name in table.column_names:
        col = table[name].combine_chunks()
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            values, offsets = col.flatten().to_numpy(), col.offsets.to_numpy()
            out[name] = [values[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
        elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            out[name] = col.to_pylist()
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out


def to_arrow(batch: dict, schema: pa.Schema) -> pa.Table:
    """Column dict -> Arrow table with exactly `schema`'s columns and types."""
    arrays = []
    for field in schema:
        values = batch[field.name]
        if pa.types.is_list(field.type):
            lengths = np.fromiter((len(v) for v in values), np.int64, len(values))
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
            flat = np.concatenate(values) if len(values) else np.zeros(0)
            arrays.append(pa.ListArray.from_arrays(
                pa.array(offsets), pa.array(flat.astype(field.type.value_type.to_pandas_dtype()))))
        else:
            arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)
