"""Arrow schemas shared across stages, defined once.

Packed token shards (corpus -> pretrain): each row is one training sequence of exactly
`seq_len` tokens cut from concatenated documents. `segment_ids` numbers the documents inside the
row from 1; 0 marks padding. Training derives from it the attention mask that keeps attention
within a document, the position ids that restart at each document, and the labels (no loss on
padding, none across a document boundary).
"""

import pyarrow as pa

PACKED_SCHEMA = pa.schema(
    [
        pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("segment_ids", pa.list_(pa.int32()), nullable=False),
    ],
    metadata={"segment_ids": "1..k = document within the row, 0 = padding"},
)
PACKED_ROW_GROUP_ROWS = 64
"""Rows per Parquet row group of a packed shard: the unit training's seeded shuffle moves
(cluster/data.py), small enough to mix sources within a short run."""

# Task and eval sets (datasets/tasks/). Text that holds a whole document is large_string;
# each record's ground truth travels as one sorted-key JSON string, decoded by read_task_set.

SFT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("prompt", pa.large_string(), nullable=False),
        pa.field("answer", pa.large_string(), nullable=False),
        pa.field("document", pa.large_string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("doc_kind", pa.string(), nullable=False),
        pa.field("truth_json", pa.large_string(), nullable=False),
    ],
    metadata={"task": "decision | doc_kind | intent | summary (answer formats: tasks_format)"},
)
"""Structured-expert records and the classification / summarisation eval sets."""

DPO_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("topic", pa.string(), nullable=False),
        pa.field("prompt", pa.large_string(), nullable=False),
        pa.field("chosen", pa.large_string(), nullable=False),
        pa.field("rejected", pa.large_string(), nullable=False),
        pa.field("rejection_kind", pa.string(), nullable=False),
        pa.field("document", pa.large_string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("doc_kind", pa.string(), nullable=False),
        pa.field("truth_json", pa.large_string(), nullable=False),
    ],
    metadata={"truth_json": "tasks_format.qa_truth: answer, figure, decimals, mode, ..."},
)
"""Conversational-expert preference pairs and the held-out QA set (chosen = reference answer)."""

ROUTING_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("request", pa.large_string(), nullable=False),
        pa.field("route", pa.string(), nullable=False),
        pa.field("ambiguous", pa.bool_(), nullable=False),
        pa.field("asks", pa.string(), nullable=False),
        pa.field("document", pa.large_string(), nullable=False),
        pa.field("doc_kind", pa.string(), nullable=False),
    ],
    metadata={"route": "structured | conversational (rule: tasks_routing docstring)",
              "document": "empty when the request carries no document"},
)
"""Router requests with their route label."""

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("location", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("snippet", pa.string(), nullable=False),
    ],
    metadata={"reason": "malformed: invalid_json, bad_utf8, wrong_type, missing_field, "
                        "empty_text, oversized, invalid_xml, unreadable_file, "
                        "unsupported_format; filtered: quality:<reason>",
              "snippet": "start of the record, PII-redacted"},
)
"""Corpus records that did not reach the shards, with where they came from and why."""

DUPLICATES_SCHEMA = pa.schema(
    [
        pa.field("location", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("kept_location", pa.string(), nullable=False),
    ],
    metadata={"kind": "exact | near", "kept_location": "the copy that stayed"},
)
"""Corpus documents dropped as duplicates, each with the copy that was kept."""
