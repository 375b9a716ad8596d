"""model_files.tensor_index: safetensors.safe_open's view of a file, byte ranges worked out by hand
and checked against the raw header."""

import json
import struct

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from mortgagellm.model_files import tensor_headers, tensor_index


def test_byte_ranges_are_those_the_header_records(tmp_path):
    tensors = {"b.weight": torch.ones(3, 2, dtype=torch.bfloat16),
               "a.bias": torch.zeros(5, dtype=torch.float32),
               "ids": torch.arange(4, dtype=torch.int64), "flag": torch.ones(3, dtype=torch.bool),
               "empty": torch.zeros(0, 4, dtype=torch.float16)}
    save_file(tensors, tmp_path / "model.safetensors")
    raw = (tmp_path / "model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    index = tensor_index(tmp_path)
    assert set(index) == set(tensors)
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        e = index[name]
        assert (e.dtype, list(e.shape)) == (meta["dtype"], meta["shape"])
        assert (e.start, e.end) == (8 + length + meta["data_offsets"][0],
                                    8 + length + meta["data_offsets"][1])
        # the range holds the tensor's bytes
        assert raw[e.start:e.end] == tensors[name].contiguous().view(torch.uint8).numpy().tobytes()
    # hand count: bf16 3x2 = 12 bytes, f32 5 = 20, i64 4 = 32, bool 3 = 3, f16 0x4 = 0
    assert sorted(e.end - e.start for e in index.values()) == [0, 3, 12, 20, 32]
    assert tensor_headers(tmp_path)["b.weight"] == ("BF16", (3, 2))


def test_a_truncated_file_is_refused_by_safetensors(tmp_path):
    save_file({"w": torch.ones(64)}, tmp_path / "model.safetensors")
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-16])
    with pytest.raises(SafetensorError, match="incomplete metadata"):
        tensor_index(tmp_path)
