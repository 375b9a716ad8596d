"""Task and eval sets for the two experts and the router, built from the synthetic generator and
split so that nothing held out is ever trained on.

Called by the corpus stage: ``write_task_sets(out_dir, recipe.corpus.tasks, recipe.run.seed)``.

Sets and their Arrow schemas (``schemas.py``):
- ``sft_train`` (SFT_SCHEMA): decision, doc_kind, intent and summary records (``tasks.sft``);
- ``dpo_train`` (DPO_SCHEMA): preference pairs (``tasks.dpo`` on ``tasks.qa``'s questions);
- ``routing_train`` (ROUTING_SCHEMA): router requests (``tasks.routing``);
- ``eval_decision``, ``eval_doc_kind``, ``eval_intent``, ``eval_summary`` (SFT_SCHEMA),
  ``eval_qa`` (DPO_SCHEMA; chosen is the reference answer), ``eval_routing`` (ROUTING_SCHEMA).

Answers are parsed and scored with ``parse_answer`` / ``score`` (from ``tasks.format``,
importable from here). Splits: each training set draws documents from its own purpose stream
(``purpose_seed(seed, "sft" | "dpo" | "routing")``), each eval set from a shard of its own in
the "eval" stream (shard 0 stays ``heldout_domain_texts``'). Distinct streams can still produce
the same text — a regulatory explainer has few variants, a greeting fewer — so the training
builders also skip every document and prompt an eval set holds: disjoint by content, not only
by seed.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mortgagellm.config import TaskSetsConfig
from mortgagellm.datasets import mortgage
from mortgagellm.datasets.schemas import DPO_SCHEMA, ROUTING_SCHEMA, SFT_SCHEMA
from mortgagellm.datasets.splits import purpose_seed
from mortgagellm.datasets.tasks.dpo import dpo_pairs
from mortgagellm.datasets.tasks.qa import KNOWLEDGE_SHARE
from mortgagellm.datasets.tasks.format import (
    LABELS,
    SFT_TASKS,
    TASKS,
    invented_citations,
    parse_answer,
    score,
)
from mortgagellm.datasets.tasks.routing import routing_requests
from mortgagellm.datasets.tasks.sft import sft_records

__all__ = [
    "LABELS", "SCHEMAS", "SFT_TASKS", "TASKS", "build_task_sets", "held_out_texts",
    "invented_citations", "parse_answer", "read_task_set", "score", "to_table", "write_task_sets",
]

SCHEMAS: dict[str, pa.Schema] = {
    "sft_train": SFT_SCHEMA, "dpo_train": DPO_SCHEMA, "routing_train": ROUTING_SCHEMA,
    "eval_decision": SFT_SCHEMA, "eval_doc_kind": SFT_SCHEMA, "eval_intent": SFT_SCHEMA,
    "eval_summary": SFT_SCHEMA, "eval_qa": DPO_SCHEMA, "eval_routing": ROUTING_SCHEMA,
}
"""Every set by name, in the order they are written, with its schema."""

EVAL_SHARDS = {"eval_decision": 1, "eval_doc_kind": 2, "eval_intent": 3, "eval_summary": 4,
               "eval_qa": 5, "eval_routing": 6}
"""Shard of the "eval" purpose stream each eval set draws its documents from."""

_STREAM_LIMIT = 5_000_000
"""Upper bound of a document stream; ``generate`` is lazy and the builders stop once filled."""


def _rng(seed: int, stream: str) -> random.Random:
    """The phrasing / sampling generator of one set; sha256, not the salted hash()."""
    digest = hashlib.sha256(f"tasks:{seed}:{stream}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _documents(seed: int, shard: int, max_chars: int,
               exclude: frozenset[str] = frozenset()) -> Iterator[dict]:
    """Clean documents of one stream, at most ``max_chars`` long, none of them in ``exclude``."""
    for doc in mortgage.generate(seed, shard, _STREAM_LIMIT, noise=False):
        if len(doc["text"]) <= max_chars and doc["text"] not in exclude:
            yield doc


def held_out_texts(sets: dict[str, list[dict]]) -> frozenset[str]:
    """Every document, prompt and request of the eval sets among ``sets``."""
    return frozenset(
        text for name, records in sets.items() if name.startswith("eval_") for r in records
        for text in (r["document"], r.get("prompt") or r["request"]) if text)


def build_task_sets(cfg: TaskSetsConfig, seed: int) -> dict[str, list[dict]]:
    """Every set of ``SCHEMAS`` as records with ids ``<set>-00000``..; deterministic in
    (cfg, seed). Eval sets are built first so the training sets can leave their texts out."""
    eval_seed, max_chars, sets = purpose_seed(seed, "eval"), cfg.max_doc_chars, {}
    for task in SFT_TASKS:
        name = f"eval_{task}"
        docs = _documents(eval_seed, EVAL_SHARDS[name], max_chars)
        sets[name] = sft_records(docs, (task,), cfg.eval_per_task, _rng(seed, name))
    sets["eval_qa"] = dpo_pairs(_documents(eval_seed, EVAL_SHARDS["eval_qa"], max_chars),
                                cfg.eval_qa_pairs, _rng(seed, "eval_qa"), KNOWLEDGE_SHARE)
    sets["eval_routing"] = routing_requests(
        _documents(eval_seed, EVAL_SHARDS["eval_routing"], max_chars), cfg.eval_routing,
        cfg.ambiguous_fraction, _rng(seed, "eval_routing"), variety=cfg.routing_variety)
    held = held_out_texts(sets)
    sets["sft_train"] = sft_records(
        _documents(purpose_seed(seed, "sft"), 0, max_chars, held), SFT_TASKS, cfg.sft_per_task,
        _rng(seed, "sft_train"))
    sets["dpo_train"] = dpo_pairs(_documents(purpose_seed(seed, "dpo"), 0, max_chars, held),
                                  cfg.dpo_pairs, _rng(seed, "dpo_train"))
    sets["routing_train"] = routing_requests(
        _documents(purpose_seed(seed, "routing"), 0, max_chars, held), cfg.routing_requests,
        cfg.ambiguous_fraction, _rng(seed, "routing_train"), exclude=held,
        variety=cfg.routing_variety)
    return {name: [{"id": f"{name}-{i:05d}", **r} for i, r in enumerate(sets[name])]
            for name in SCHEMAS}


def to_table(name: str, records: list[dict]) -> pa.Table:
    """Records of set ``name`` -> an Arrow table of its schema, truth as sorted-key JSON."""
    schema = SCHEMAS[name]
    columns = {field: [] for field in schema.names}
    for r in records:
        for field in schema.names:
            columns[field].append(json.dumps(r["truth"], sort_keys=True, ensure_ascii=False)
                                  if field == "truth_json" else r[field])
    return pa.table(columns, schema=schema)


def _decoded(row: dict) -> dict:
    if "truth_json" in row:
        row["truth"] = json.loads(row.pop("truth_json"))
    return row


def write_task_sets(out_dir: Path, cfg: TaskSetsConfig, seed: int) -> dict[str, Path]:
    """Write every set as ``<out_dir>/<set>.parquet`` and, for people to read, a ``.jsonl``
    twin beside it; return {set name: Parquet path}. Same (cfg, seed) -> same bytes."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, records in build_task_sets(cfg, seed).items():
        path = out_dir / f"{name}.parquet"
        pq.write_table(to_table(name, records), path, compression="zstd")
        lines = (json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records)
        path.with_suffix(".jsonl").write_text("".join(lines), encoding="utf-8")
        paths[name] = path
    return paths


def read_task_set(path: Path) -> list[dict]:
    """Records of one set from its ``.parquet`` or ``.jsonl`` file, truth decoded to a dict."""
    path = Path(path)
    if path.suffix == ".parquet":
        return [_decoded(row) for row in pq.read_table(path).to_pylist()]
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    raise ValueError(f"{path}: a task set is a .parquet or .jsonl file")
