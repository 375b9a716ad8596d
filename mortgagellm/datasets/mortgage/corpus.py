"""The generator: the record stream of one shard or of all shards, and its Arrow form."""

import hashlib
import json
import random
from collections.abc import Iterable, Iterator
from itertools import accumulate

import pyarrow as pa

from mortgagellm.datasets.mortgage.applications import _loan_application, _underwriting_note
from mortgagellm.datasets.mortgage.appraisal import _appraisal_summary
from mortgagellm.datasets.mortgage.disclosures import (
    _closing_disclosure,
    _loan_estimate,
    _rate_sheet,
)
from mortgagellm.datasets.mortgage.emails import _customer_email, _servicing_email
from mortgagellm.datasets.mortgage.noise import _applies, _draw_noise, _noisy
from mortgagellm.datasets.mortgage.regulations import _regulatory_explanation

DOC_KINDS = (
    "loan_application", "underwriting_note", "rate_sheet", "loan_estimate", "closing_disclosure",
    "appraisal_summary", "servicing_email", "customer_email", "regulatory_explanation",
)
_KIND_CUM_WEIGHTS = list(accumulate((15, 12, 6, 8, 8, 8, 15, 18, 10)))

RECORD_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        # large_string: a batch holding oversized documents can pass the 2 GiB int32 offsets.
        pa.field("text", pa.large_string(), nullable=False),
        pa.field("ground_truth_json", pa.large_string(), nullable=False),
    ],
    metadata={"ground_truth_json": "json.dumps(ground_truth, sort_keys=True)"},
)
"""Arrow form of a record; ground_truth travels as one sorted-key JSON string."""


def _rng(seed: int, stream: str) -> random.Random:
    """A private generator for one stream; sha256 rather than hash(), which is salted per run."""
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


_RENDERERS = {
    "loan_application": _loan_application, "underwriting_note": _underwriting_note,
    "rate_sheet": _rate_sheet, "loan_estimate": _loan_estimate,
    "closing_disclosure": _closing_disclosure, "appraisal_summary": _appraisal_summary,
    "servicing_email": _servicing_email, "customer_email": _customer_email,
    "regulatory_explanation": _regulatory_explanation,
}


def generate(seed: int, shard: int, num_docs: int, noise: bool = True) -> Iterator[dict]:
    """Yield ``num_docs`` records of one shard; identical arguments give identical records.

    Content comes from the stream sha256(f"{seed}:{shard}") and noise from a separate stream,
    so record i is the same clean document with or without noise unless noise replaced it.
    Duplicates copy one of the last 256 clean records of the same shard (so the shard's first
    record is always clean); ASCII-only texts escape mojibake.
    """
    content, noise_rng = _rng(seed, str(shard)), _rng(seed, f"{shard}:noise")
    recent: list[dict] = []
    for i in range(num_docs):
        kind = content.choices(DOC_KINDS, cum_weights=_KIND_CUM_WEIGHTS)[0]
        text, truth = _RENDERERS[kind](content)
        record = {"doc_id": f"syn-{seed}-{shard}-{i}", "source": "synthetic", "kind": kind,
                  "text": text, "ground_truth": truth}
        label = _draw_noise(noise_rng) if noise else None
        if _applies(label, record, recent):
            yield _noisy(noise_rng, record, label, recent)
        else:
            recent = recent[-255:] + [record]
            yield record


def shard_sizes(num_docs: int, num_shards: int) -> list[int]:
    """Docs per shard: equal shares, the first ``num_docs % num_shards`` shards one larger."""
    base, extra = divmod(num_docs, num_shards)
    return [base + (s < extra) for s in range(num_shards)]


def generate_sharded(seed: int, num_docs: int, num_shards: int,
                     noise: bool = True) -> Iterator[dict]:
    """All shards in order: ``generate(seed, s, shard_sizes(num_docs, num_shards)[s])``.

    Shard s numbers its records from 0 (doc_id syn-{seed}-{s}-{i}), so a Ray task per shard
    produces exactly these records and a parallel corpus can be checked against a serial one.
    """
    for shard, size in enumerate(shard_sizes(num_docs, num_shards)):
        yield from generate(seed, shard, size, noise)


def to_arrow(records: Iterable[dict]) -> pa.Table:
    """Records -> ``RECORD_SCHEMA`` table, ground truth as sorted-key JSON."""
    columns: dict[str, list] = {name: [] for name in RECORD_SCHEMA.names}
    for r in records:
        for name in ("doc_id", "source", "kind", "text"):
            columns[name].append(r[name])
        columns["ground_truth_json"].append(
            json.dumps(r["ground_truth"], sort_keys=True, ensure_ascii=False))
    return pa.table(columns, schema=RECORD_SCHEMA)


def from_arrow(table: pa.Table) -> list[dict]:
    """``RECORD_SCHEMA`` table -> records; the inverse of ``to_arrow``."""
    return [{"doc_id": r["doc_id"], "source": r["source"], "kind": r["kind"], "text": r["text"],
             "ground_truth": json.loads(r["ground_truth_json"])}
            for r in table.select(RECORD_SCHEMA.names).to_pylist()]
