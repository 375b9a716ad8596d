"""audit.py: records are redacted, chained and written off the caller's thread; verify names the
first altered, missing or reordered record; retention deletes old day files."""

import datetime as dt
import hashlib
import itertools
import json
import threading

from mortgagellm.cli import main
from mortgagellm.serve import audit

EVENT = {"type": "request", "request_id": "chatcmpl-1", "key_id": "team",
         "prompt": "user: My SSN is 123-45-6789, email jane.doe@gmail.com. Approve?",
         "output": "Call Jane Doe at (415) 555-2671.", "route": "structured",
         "confidence": 0.97, "router_mode": "hybrid", "expert_version": "ab" * 32,
         "latency_ms": 12.5, "prompt_tokens": 20, "completion_tokens": 9}


def write_log(directory, n=5):
    log = audit.AuditLog(directory, "router-x", retention_days=30, salt="s")
    for i in range(n):
        log.append(EVENT | {"request_id": f"chatcmpl-{i}"})
    log.close()
    (path,) = directory.glob("*.jsonl")
    return path


def test_records_are_redacted_hashed_and_chained(tmp_path):
    path = write_log(tmp_path)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["seq"] for r in records] == [0, 1, 2, 3, 4]
    assert records[0]["prev"] == audit.GENESIS
    for before, after in itertools.pairwise(records):
        assert after["prev"] == before["hash"]
    first = records[0]
    assert first["input_sha256"] == hashlib.sha256(EVENT["prompt"].encode()).hexdigest()
    for value in ("123-45-6789", "jane.doe@gmail.com", "555-2671", "Jane Doe"):
        assert value not in path.read_text()
    assert first["route"] == "structured" and first["expert_version"] == "ab" * 32
    body = {k: v for k, v in first.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert first["hash"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert audit.verify(tmp_path) == audit.Report(5)


def test_append_does_not_wait_for_the_writer(tmp_path, monkeypatch):
    """A writer stuck in redaction does not hold up append(): the caller returns at once."""
    gate = threading.Event()
    real = audit.redacted
    monkeypatch.setattr(audit, "redacted", lambda e, s: gate.wait(10) and real(e, s))
    log = audit.AuditLog(tmp_path, "w", 30, "s")
    for _ in range(3):
        log.append(EVENT)  # would block for 10 s each if written inline
    assert not list(tmp_path.glob("*.jsonl"))
    gate.set()
    log.close()
    assert audit.verify(tmp_path).records == 3


def rewrite(path, change):
    lines = path.read_text().splitlines()
    change(lines)
    path.write_text("\n".join(lines) + "\n")


def test_verify_names_an_altered_record(tmp_path):
    path = write_log(tmp_path)
    rewrite(path, lambda lines: lines.__setitem__(2, lines[2].replace("structured", "chat")))
    report = audit.verify(path)
    assert not report.ok and report.records == 2
    assert "line 3: record seq 2 was altered" in report.problem


def test_verify_names_a_rehashed_forgery_at_the_next_record(tmp_path):
    path = write_log(tmp_path)

    def forge(lines):
        record = json.loads(lines[1])
        record["output"] = "approved"
        record["hash"] = audit.record_hash(record)
        lines[1] = json.dumps(record)
    rewrite(path, forge)
    assert "line 3: record seq 2 does not chain to seq 1" in audit.verify(path).problem


def test_verify_names_a_missing_record(tmp_path):
    path = write_log(tmp_path)
    rewrite(path, lambda lines: lines.pop(3))
    report = audit.verify(tmp_path)
    assert "line 4: found record seq 4 where seq 3 was expected" in report.problem


def test_cli_audit_verify_exit_codes(tmp_path, capsys):
    path = write_log(tmp_path)
    assert main(["audit", "verify", str(tmp_path)]) == 0
    assert "5 records" in capsys.readouterr().out
    rewrite(path, lambda lines: lines.pop(0))  # the oldest may be pruned: still intact
    assert main(["audit", "verify", str(tmp_path)]) == 0
    rewrite(path, lambda lines: lines.pop(1))
    assert main(["audit", "verify", str(path)]) == 1
    assert "missing" in capsys.readouterr().out


def test_chain_continues_after_a_restart_and_old_days_are_pruned(tmp_path):
    old = tmp_path / "router-x-20000101.jsonl"
    old.write_text("")
    write_log(tmp_path, n=2)
    assert not old.exists()
    log = audit.AuditLog(tmp_path, "router-x", 30, "s")
    log.append(EVENT)
    log.close()
    assert audit.verify(tmp_path) == audit.Report(3)
    today = dt.date.today()
    assert audit.prune(tmp_path, 1, today + dt.timedelta(days=2)) != []
    assert not list(tmp_path.glob("*.jsonl"))
