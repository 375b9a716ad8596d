"""Hugging Face model directories on disk: fetch from a URI, check every file a load needs, read
tensor headers without loading weights, and compare two models' weights.

Checks read only safetensors headers, so verifying an 8B pair costs seconds and little memory.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any, NamedTuple

from mortgagellm.cluster import storage

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
# Bytes per element of every safetensors dtype, to place tensors in a file (see tensor_index).
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8,
               "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}


class ModelDirError(ValueError):
    """A model directory that cannot be loaded; the message names the file."""


def fetch_model(uri: str, cache_dir: Path) -> Path:
    """A local directory for the model at uri (s3:// is copied into cache_dir once)."""
    if storage.is_remote(uri) and (cache_dir / "config.json").exists():
        return cache_dir
    try:
        path = storage.download_dir(uri, cache_dir)
    except FileNotFoundError as err:
        raise ModelDirError(str(err)) from err
    if not path.is_dir():
        raise ModelDirError(f"{uri}: model directory not found")
    return path


def weight_files(path: Path) -> list[Path]:
    """The safetensors files a load reads: the index's shards, or model.safetensors."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [path / s for s in shards]
    elif (path / "model.safetensors").exists():
        files = [path / "model.safetensors"]
    else:
        raise ModelDirError(f"{path}: no model.safetensors or model.safetensors.index.json")
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise ModelDirError(f"{path}: weight shard(s) listed in the index are missing: "
                            f"{', '.join(missing)}")
    return files


def tensor_headers(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) for every tensor in the model's safetensors files."""
    return {name: (e.dtype, e.shape) for name, e in tensor_index(path).items()}


class Entry(NamedTuple):
    """Where one tensor lies: its file, safetensors dtype, shape and absolute byte range."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def tensor_index(model_dir: Path) -> dict[str, Entry]:
    """Every tensor of a model directory, from the safetensors headers alone.

    safetensors.safe_open parses and validates each header (offsets in bounds, contiguous, no
    overlap, sizes matching shapes) and lists the tensors in file order. It does not expose byte
    offsets, which the merge needs to map and advise pages; since a valid file's data is
    contiguous in that order, each range is the running sum of the sizes after the header."""
    from safetensors import safe_open

    index = {}
    for file in weight_files(model_dir):
        with file.open("rb") as f:
            (offset,) = struct.unpack("<Q", f.read(8))
        offset += 8
        with safe_open(file, framework="pt") as f:
            for name in f.offset_keys():
                view = f.get_slice(name)
                dtype, shape = view.get_dtype(), tuple(view.get_shape())
                if dtype not in DTYPE_BYTES:
                    raise ModelDirError(f"{file}: tensor {name} has dtype {dtype}, which this "
                                        f"reader cannot size ({', '.join(DTYPE_BYTES)})")
                nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
                index[name] = Entry(file, dtype, shape, offset, offset + nbytes)
                offset += nbytes
    return index


def verify_model_dir(path: str | Path) -> dict[str, Any]:
    """Check a model directory loads: config and tokenizer through from_pretrained, and every
    tensor the architecture expects present in the weights with its shape. Returns a summary."""
    path = Path(path)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").exists():
        raise ModelDirError(f"{path}: config.json is missing")
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise ModelDirError(f"{path}: no tokenizer ({' or '.join(TOKENIZER_FILES)}) found")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    with torch.device("meta"):
        expected = AutoModelForCausalLM.from_config(config).state_dict()
    headers = tensor_headers(path)
    for name, tensor in expected.items():
        if name not in headers and not _tied(name, config):
            raise ModelDirError(f"{path}: tensor {name} is missing from the weights")
        if name in headers and headers[name][1] != tuple(tensor.shape):
            raise ModelDirError(f"{path}: tensor {name} has shape {headers[name][1]}, the config "
                                f"implies {tuple(tensor.shape)}")
    return {"model_type": config.model_type, "vocab_size": config.vocab_size,
            "tokenizer_size": len(tokenizer), "tensors": len(headers),
            "has_chat_template": bool(tokenizer.chat_template)}


def _tied(name: str, config: Any) -> bool:
    return name == "lm_head.weight" and bool(getattr(config, "tie_word_embeddings", False))


def verify_pair(base: str | Path, instruct: str | Path) -> dict[str, Any]:
    """Both directories load, and instruct has base's architecture (same tensors and shapes)."""
    base, instruct = Path(base), Path(instruct)
    summary = {"base": verify_model_dir(base), "instruct": verify_model_dir(instruct)}
    base_h, instruct_h = tensor_headers(base), tensor_headers(instruct)
    for name in sorted(set(base_h) | set(instruct_h)):
        if base_h.get(name, (None, None))[1] != instruct_h.get(name, (None, None))[1]:
            raise ModelDirError(f"base and instruct differ at tensor {name}: "
                                f"{base_h.get(name)} vs {instruct_h.get(name)}")
    return summary


def relative_change(reference: dict[str, Any], path: Path) -> float:
    """||W - W_ref|| / ||W_ref|| over all tensors, W read from the saved model at path."""
    from safetensors.torch import load_file

    num = den = 0.0
    for file in weight_files(path):
        for name, tensor in load_file(file).items():
            ref = reference[name].float()
            num += float((tensor.float() - ref).pow(2).sum())
            den += float(ref.pow(2).sum())
    return round((num / den) ** 0.5, 6)
