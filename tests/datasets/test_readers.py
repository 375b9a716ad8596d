"""Readers: every kind of bad record becomes a rejected row with its reason and location; good
records come through with ids, kinds and metadata; files are listed from paths and URIs."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mortgagellm.datasets import mortgage, readers
from mortgagellm.datasets.regml import parse

MAX_CHARS = 1000


def read_all(unit: dict) -> list[dict]:
    rows = []
    for batch in readers.read_unit(unit, MAX_CHARS):
        rows += [dict(zip(batch, values, strict=True)) for values in zip(*batch.values())]
    return rows


def user_unit(path, fmt, unit=3) -> dict:
    return {"unit": unit, "source": "user", "uri": str(path), "format": fmt, "shard": -1,
            "count": 0, "seed": 0, "noise": False}


def test_list_files_walks_directories_skips_hidden_files_and_keeps_uris(tmp_path):
    for name in ("b/2.jsonl", "a.txt", "b/.hidden/x.txt", ".secret.txt", "b/1.parquet"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert readers.list_files(str(tmp_path)) == [
        str(tmp_path / "a.txt"), str(tmp_path / "b/1.parquet"), str(tmp_path / "b/2.jsonl")]
    uris = readers.list_files(f"file://{tmp_path}/b")
    assert uris == [f"file://{tmp_path}/b/1.parquet", f"file://{tmp_path}/b/2.jsonl"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        readers.list_files(str(tmp_path / "missing"))


def write_bad_jsonl(path):
    """One good record, one of each bad kind, a blank line, one good record without an id."""
    lines = [
        json.dumps({"id": "d1", "text": "Escrow question", "kind": "email", "lang": "en"}).encode(),
        b'{"text": "unterminated',
        b'{"text": "caf\xe9"}',                             # latin-1 byte, not UTF-8
        json.dumps({"text": 42}).encode(),
        json.dumps(["a", "list"]).encode(),
        json.dumps({"body": "no text field"}).encode(),
        b"",                                                # a blank line is not a record
        # Longer than any max_chars-character text can be: refused before it is held whole.
        json.dumps({"text": "x" * (10 * MAX_CHARS)}).encode(),
        json.dumps({"text": "no id here"}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_jsonl_bad_records_become_rejects_with_reason_and_line(tmp_path):
    path = tmp_path / "c.jsonl"
    write_bad_jsonl(path)
    rows = read_all(user_unit(path, "jsonl"))
    assert [(r["location"].rsplit(":", 1)[1], r["reject"]) for r in rows] == [
        ("1", ""), ("2", "invalid_json"), ("3", "bad_utf8"), ("4", "wrong_type"),
        ("5", "wrong_type"), ("6", "missing_field"), ("8", "oversized"), ("9", "")]
    good = rows[0]
    assert (good["doc_id"], good["kind"], good["text"]) == ("d1", "email", "Escrow question")
    assert json.loads(good["meta"]) == {"lang": "en"} and good["source"] == "user"
    assert rows[-1]["doc_id"] == "c.jsonl:9"
    assert "is int, not a string" in rows[3]["snippet"]
    assert all(r["text"] == "" for r in rows[1:-1])
    assert [r["order"] for r in rows][:2] == [(3 << 32) | 1, (3 << 32) | 2]


def test_jsonl_lines_split_across_read_chunks_read_the_same(tmp_path, monkeypatch):
    write_bad_jsonl(tmp_path / "c.jsonl")
    whole = read_all(user_unit(tmp_path / "c.jsonl", "jsonl"))
    monkeypatch.setattr(readers, "_CHUNK", 7)  # every line, and the long one, spans chunks
    assert read_all(user_unit(tmp_path / "c.jsonl", "jsonl")) == whole


def test_parquet_rows_with_wrong_types_and_files_without_the_column(tmp_path):
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3], "text": ["Rate lock", None, "Payoff"]}), good)
    rows = read_all(user_unit(good, "parquet"))
    assert [(r["doc_id"], r["text"], r["reject"]) for r in rows] == [
        ("1", "Rate lock", ""), ("", "", "missing_field"), ("3", "Payoff", "")]
    assert rows[1]["location"] == f"{good}#row=1"
    numbers = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"text": [1.5, 2.5]}), numbers)
    assert [r["reject"] for r in read_all(user_unit(numbers, "parquet"))] == ["wrong_type"] * 2
    no_text = tmp_path / "no_text.parquet"
    pq.write_table(pa.table({"body": ["x"]}), no_text)
    (row,) = read_all(user_unit(no_text, "parquet"))
    assert row["reject"] == "missing_field" and "columns: body" in row["snippet"]


def test_unreadable_and_unsupported_files_are_one_reject_each(tmp_path):
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    (row,) = read_all(user_unit(corrupt, "parquet"))
    assert row["reject"] == "unreadable_file" and row["location"] == str(corrupt)
    (row,) = read_all(user_unit(tmp_path / "sheet.xlsx", "unsupported"))
    assert row["reject"] == "unsupported_format"


def test_a_file_failing_midway_keeps_the_rows_read_before(tmp_path, monkeypatch):
    path = tmp_path / "c.jsonl"
    write_bad_jsonl(path)
    lines = readers._lines

    def failing(*args):
        yield from list(lines(*args))[:3]
        raise OSError("connection reset")

    monkeypatch.setattr(readers, "_lines", failing)
    rows = read_all(user_unit(path, "jsonl"))
    assert [r["reject"] for r in rows] == ["", "invalid_json", "bad_utf8", "unreadable_file"]
    assert "connection reset" in rows[-1]["snippet"]


def test_text_files_one_document_each(tmp_path):
    (tmp_path / "ok.txt").write_text("A borrower’s note.")
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 au lait")
    (tmp_path / "big.txt").write_text("y" * (4 * MAX_CHARS + 1))
    results = {p: read_all(user_unit(tmp_path / p, "text"))[0]
               for p in ("ok.txt", "bad.txt", "big.txt")}
    assert (results["ok.txt"]["doc_id"], results["ok.txt"]["text"]) == ("ok.txt",
                                                                         "A borrower’s note.")
    assert results["bad.txt"]["reject"] == "bad_utf8"
    assert results["big.txt"]["reject"] == "oversized" and results["big.txt"]["text"] == ""


def test_regml_files_read_as_documents_or_one_invalid_xml_reject(tmp_path):
    from tests.datasets.test_regml import SNIPPET

    (tmp_path / "q.xml").write_bytes(SNIPPET)
    unit = {**user_unit(tmp_path / "q.xml", "regml"), "source": "regulations"}
    rows = read_all(unit)
    assert [r["doc_id"] for r in rows] == [d["doc_id"] for d in parse(SNIPPET, "x")]
    assert rows[0]["location"] == f"{tmp_path / 'q.xml'}#1099-1"
    assert json.loads(rows[0]["meta"])["citation"] == "12 CFR 1099.1"
    (tmp_path / "broken.xml").write_bytes(SNIPPET[:200])
    (row,) = read_all({**unit, "uri": str(tmp_path / "broken.xml")})
    assert row["reject"] == "invalid_xml"


def test_synthetic_unit_yields_the_generators_records_in_order():
    (unit,) = readers.plan_units(50, 1, seed=5, regulations=[], user=[])
    rows = read_all(unit)
    records = list(mortgage.generate(5, 0, 50))
    assert [r["text"] for r in rows] == [r["text"] for r in records]
    assert [r["doc_id"] for r in rows] == [r["doc_id"] for r in records]
    assert rows[7]["location"] == "synthetic://5/0/7" and rows[7]["order"] == 7


def test_plan_units_orders_regulations_then_user_then_synthetic(tmp_path):
    (tmp_path / "reg.xml").write_bytes(b"<regulation/>")
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "a.jsonl").write_text("{}")
    (tmp_path / "u" / "b.csv").write_text("x")
    units = readers.plan_units(10, 3, 0, [str(tmp_path / "reg.xml")], [str(tmp_path / "u")])
    assert [(u["unit"], u["source"], u["format"]) for u in units] == [
        (0, "regulations", "regml"), (1, "user", "jsonl"), (2, "user", "unsupported"),
        (3, "synthetic", "synthetic"), (4, "synthetic", "synthetic"),
        (5, "synthetic", "synthetic")]
    assert [u["count"] for u in units[3:]] == [4, 3, 3]
