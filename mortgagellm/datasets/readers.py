"""Readers for the corpus stage: the synthetic generator, RegML regulations and user corpora
(JSONL, Parquet, folders of plain text) from local paths or any pyarrow filesystem URI (s3://).

Work is cut into *units* (one synthetic shard, or one file) that Ray Data reads in parallel.
`read_unit` turns a unit into batches of RAW_SCHEMA rows. A record that cannot be read is not
skipped: it becomes a row with `reject` set to the reason and `location` saying where it was, so
it reaches the quarantine. Reasons: invalid_json, bad_utf8, wrong_type, missing_field,
oversized, invalid_xml, unreadable_file, unsupported_format.
"""

from __future__ import annotations

import json
import posixpath
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pyarrow as pa
from pyarrow import fs as pafs

from mortgagellm.cluster import storage
from mortgagellm.datasets import mortgage, regml

RAW_SCHEMA = pa.schema([
    pa.field("order", pa.int64()),         # unit << 32 | row: the corpus order dedupe keeps by
    pa.field("source", pa.string()),       # mixture group: synthetic, regulations, user
    pa.field("location", pa.string()),     # where the record came from: file:line, file#label
    pa.field("doc_id", pa.string()),
    pa.field("kind", pa.string()),
    pa.field("text", pa.large_string()),   # "" when rejected
    pa.field("meta", pa.string()),         # JSON: citation labels, noise labels, user fields
    pa.field("reject", pa.string()),       # "" or why the record cannot be used
    pa.field("snippet", pa.string()),      # start of a rejected record, for the quarantine
])
"""A record as read, before any cleaning."""

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet",
           ".txt": "text", ".text": "text", ".md": "text", ".xml": "regml"}
"""File extension -> reader; files with any other extension are quarantined as unsupported."""

BATCH_ROWS = 1000
_LAST_ROW = (1 << 32) - 1
_SNIPPET = 300
_CHUNK = 1 << 20


def list_files(uri: str) -> list[str]:
    """Every non-hidden file at a path or URI (a file, or a directory searched recursively),
    sorted, each as a path or URI that `storage.filesystem` opens again on any worker."""
    filesystem, path = storage.filesystem(uri)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"corpus path {uri} does not exist")
    if info.type == pafs.FileType.File:
        return [uri if "://" in uri else path]
    found = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
    files = sorted(f.path for f in found if f.type == pafs.FileType.File
                   and not any(p.startswith(".") for p in f.path[len(path):].split("/")))
    if "://" not in uri:
        return files
    scheme = uri.split("://", 1)[0]
    return [f"{scheme}://{f}" for f in files]


def plan_units(synthetic_docs: int, synthetic_shards: int, seed: int, regulations: list[str],
               user: list[str], noise: bool = True) -> list[dict]:
    """Read units in corpus order: regulations, then user corpora, then synthetic shards.

    Earlier units win exact and near duplicate ties, so an official text beats a copy of it.
    """
    units = [{"source": "regulations", "uri": f, "format": "regml"}
             for path in regulations for f in list_files(path)]
    units += [{"source": "user", "uri": f,
               "format": FORMATS.get(posixpath.splitext(f)[1].lower(), "unsupported")}
              for path in user for f in list_files(path)]
    sizes = mortgage.shard_sizes(synthetic_docs, synthetic_shards) if synthetic_docs else []
    units += [{"source": "synthetic", "uri": f"synthetic://{seed}/{shard}", "format": "synthetic",
               "shard": shard, "count": count, "seed": seed, "noise": noise}
              for shard, count in enumerate(sizes)]
    return [{"unit": i, "shard": -1, "count": 0, "seed": seed, "noise": noise, **u}
            for i, u in enumerate(units)]


def _row(unit: dict, index: int, location: str, doc_id: str = "", kind: str = "",
         text: str = "", meta: dict | None = None, reject: str = "", snippet: str = "") -> dict:
    return {"order": (unit["unit"] << 32) | index, "source": unit["source"], "location": location,
            "doc_id": doc_id, "kind": kind, "text": text,
            "meta": json.dumps(meta or {}, ensure_ascii=False, sort_keys=True),
            "reject": reject, "snippet": snippet[:_SNIPPET]}


def _batches(rows: Iterator[dict], size: int) -> Iterator[dict]:
    """Rows -> column batches of at most `size` rows."""
    batch: list[dict] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield {k: [r[k] for r in batch] for k in RAW_SCHEMA.names}
            batch = []
    if batch:
        yield {k: [r[k] for r in batch] for k in RAW_SCHEMA.names}


def read_unit(unit: dict, max_chars: int, text_field: str = "text", id_field: str = "id",
              batch_rows: int = BATCH_ROWS) -> Iterator[dict]:
    """RAW_SCHEMA column batches (at most batch_rows rows each) of one unit; an unreadable file
    becomes one rejected row."""
    readers = {"synthetic": _synthetic, "regml": _regml, "jsonl": _jsonl, "parquet": _parquet,
               "text": _text}
    if unit["format"] not in readers:
        yield from _batches(iter([_row(unit, 0, unit["uri"], reject="unsupported_format",
                                       snippet=f"no reader for {unit['uri']}")]), 1)
        return
    rows = readers[unit["format"]](unit, max_chars, text_field, id_field)
    yield from _batches(_until_unreadable(rows, unit), batch_rows)


def _until_unreadable(rows: Iterator[dict], unit: dict) -> Iterator[dict]:
    """The rows, then one unreadable_file reject if reading fails (missing, truncated or
    corrupt file); rows read before the failure are kept."""
    try:
        yield from rows
    except (OSError, pa.ArrowException) as err:
        yield _row(unit, _LAST_ROW, unit["uri"], reject="unreadable_file",
                   snippet=f"{type(err).__name__}: {err}")


def _synthetic(unit: dict, max_chars: int, *_: str) -> Iterator[dict]:
    for i, r in enumerate(mortgage.generate(unit["seed"], unit["shard"], unit["count"],
                                            unit["noise"])):
        truth = r["ground_truth"]
        yield _row(unit, i, f"{unit['uri']}/{i}", r["doc_id"], r["kind"], r["text"],
                   {"noise": truth["noise"], "duplicate_of": truth["duplicate_of"]})


def _read_all(uri: str, limit: int) -> tuple[bytes | None, bytes]:
    """(content, head): content is None when the file is larger than `limit` bytes."""
    filesystem, path = storage.filesystem(uri)
    size = filesystem.get_file_info(path).size
    with filesystem.open_input_stream(path) as stream:
        if size is not None and size > limit:
            return None, stream.read(_SNIPPET * 4)
        data = stream.read()
    return data, data[:_SNIPPET * 4]


def _regml(unit: dict, max_chars: int, *_: str) -> Iterator[dict]:
    data, head = _read_all(unit["uri"], 64 * max_chars)
    if data is None:
        yield _row(unit, 0, unit["uri"], reject="oversized", snippet=head.decode(errors="replace"))
        return
    try:
        docs = regml.parse(data, unit["uri"])
    except (ET.ParseError, ValueError) as err:
        yield _row(unit, 0, unit["uri"], reject="invalid_xml", snippet=str(err))
        return
    for i, d in enumerate(docs):
        yield _row(unit, i, f"{unit['uri']}#{d['meta']['label']}", d["doc_id"], d["kind"],
                   d["text"], d["meta"])


def _text(unit: dict, max_chars: int, *_: str) -> Iterator[dict]:
    data, head = _read_all(unit["uri"], 4 * max_chars)
    name = posixpath.basename(unit["uri"])
    if data is None:
        yield _row(unit, 0, unit["uri"], name, reject="oversized",
                   snippet=head.decode(errors="replace"))
        return
    try:
        yield _row(unit, 0, unit["uri"], name, "user_text", data.decode("utf-8"))
    except UnicodeDecodeError as err:
        yield _row(unit, 0, unit["uri"], name, reject="bad_utf8",
                   snippet=f"{err}: {data[:_SNIPPET].decode(errors='replace')}")


def _lines(uri: str, limit: int) -> Iterator[tuple[int, bytes | None, bytes]]:
    """(line number, line or None if longer than `limit` bytes, head) of a file, streamed in
    1 MiB chunks so a huge line is never held whole."""
    filesystem, path = storage.filesystem(uri)
    number, line, head, too_long = 1, b"", b"", False
    with filesystem.open_input_stream(path) as stream:
        while chunk := stream.read(_CHUNK):
            parts = chunk.split(b"\n")
            for i, part in enumerate(parts):
                if not too_long:
                    line += part
                    if len(line) > limit:
                        too_long, head, line = True, line[:_SNIPPET * 4], b""
                if i < len(parts) - 1:
                    yield number, None if too_long else line, head if too_long else line
                    number, line, head, too_long = number + 1, b"", b"", False
    if line or too_long:
        yield number, None if too_long else line, head if too_long else line


def parse_json_line(raw: bytes, text_field: str, id_field: str
                    ) -> tuple[str, dict | None, str]:
    """(reject reason or "", record, snippet) of one JSONL line."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return "bad_utf8", None, f"{err}: {raw[:_SNIPPET].decode(errors='replace')}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        return "invalid_json", None, f"{err}: {line[:_SNIPPET]}"
    if not isinstance(record, dict):
        return "wrong_type", None, f"a line must be a JSON object, got {line[:_SNIPPET]}"
    if text_field not in record:
        return "missing_field", None, f"no '{text_field}' field: {line[:_SNIPPET]}"
    if not isinstance(record[text_field], str):
        kind = type(record[text_field]).__name__
        return "wrong_type", None, f"'{text_field}' is {kind}, not a string: {line[:_SNIPPET]}"
    return "", record, ""


def _scalars(record: dict, skip: tuple[str, ...]) -> dict:
    return {k: v for k, v in record.items()
            if k not in skip and isinstance(v, (str, int, float, bool)) and len(str(v)) < 200}


def _jsonl(unit: dict, max_chars: int, text_field: str, id_field: str) -> Iterator[dict]:
    name = posixpath.basename(unit["uri"])
    for number, raw, head in _lines(unit["uri"], 4 * max_chars + 4096):
        location = f"{unit['uri']}:{number}"
        if raw is None:
            yield _row(unit, number, location, reject="oversized",
                       snippet=head.decode(errors="replace"))
            continue
        if not raw.strip():
            continue  # a blank line is not a record
        reason, record, snippet = parse_json_line(raw, text_field, id_field)
        if reason:
            yield _row(unit, number, location, reject=reason, snippet=snippet)
            continue
        doc_id = str(record.get(id_field, f"{name}:{number}"))
        kind = record.get("kind") if isinstance(record.get("kind"), str) else "user"
        yield _row(unit, number, location, doc_id, kind, record[text_field],
                   _scalars(record, (text_field, id_field, "kind")))


def _parquet(unit: dict, max_chars: int, text_field: str, id_field: str) -> Iterator[dict]:
    import pyarrow.parquet as pq

    filesystem, path = storage.filesystem(unit["uri"])
    with filesystem.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        names = parquet.schema_arrow.names
        if text_field not in names:
            yield _row(unit, 0, unit["uri"], reject="missing_field",
                       snippet=f"no '{text_field}' column; columns: {', '.join(names)}")
            return
        columns = [text_field] + ([id_field] if id_field in names else [])
        index = 0
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns):
            texts = batch.column(text_field).to_pylist()
            ids = batch.column(id_field).to_pylist() if id_field in names else [None] * len(texts)
            for text, doc_id in zip(texts, ids, strict=True):
                location = f"{unit['uri']}#row={index}"
                if isinstance(text, str):
                    yield _row(unit, index, location, str(doc_id if doc_id is not None else index),
                               "user", text)
                else:
                    reason = "missing_field" if text is None else "wrong_type"
                    yield _row(unit, index, location, reject=reason,
                               snippet=f"'{text_field}' is {text!r:.200}")
                index += 1
