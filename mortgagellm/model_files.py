"""Hugging Face model directories on disk: fetch from a URI, check every file a load needs, read
tensor headers without loading weights, and compare two models' weights.

Checks read only safetensors headers, so verifying an 8B pair costs seconds and little memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mortgagellm.cluster import storage

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


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
    from safetensors import safe_open

    headers = {}
    for file in weight_files(path):
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                meta = f.get_slice(name)
                headers[name] = (meta.get_dtype(), tuple(meta.get_shape()))
    return headers


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
