"""audit.py: records are redacted, HMAC-chained and written off the caller's thread; signed head
checkpoints and prune records let verify see what was cut from either end; the writer fails
closed (bounded queue, write errors refuse appends) and keeps the retention floor."""

import datetime as dt
import hashlib
import hmac
import itertools
import json
import threading

import pytest

from mortgagellm.cli import main
from mortgagellm.config import AuditSettings
from mortgagellm.serve import audit

KEY = b"k" * 32
EVENT = {"type": "request", "request_id": "chatcmpl-1", "key_id": "team",
         "prompt": "user: My SSN is 123-45-6789, email jane.doe@gmail.com. Approve?",
         "output": "Call Jane Doe at (415) 555-2671.", "route": "structured",
         "confidence": 0.97, "router_mode": "hybrid", "expert_version": "ab" * 32,
         "latency_ms": 12.5, "prompt_tokens": 20, "completion_tokens": 9}


def write_log(directory, n=5, writer="router_x", **kw):
    log = audit.AuditLog(directory, writer, 30, "s", KEY, **kw)
    for i in range(n):
        log.append(EVENT | {"request_id": f"chatcmpl-{i}"})
    log.close()
    return directory / f"{writer}-{dt.date.today():%Y%m%d}.jsonl"


def rewrite(path, change):
    lines = path.read_text().splitlines()
    change(lines)
    path.write_text("".join(line + "\n" for line in lines))


def problem(directory):
    report = audit.verify(directory, KEY)
    assert not report.ok
    return report.problem


def test_records_are_redacted_maced_and_chained(tmp_path):
    path = write_log(tmp_path)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["seq"] for r in records] == [0, 1, 2, 3, 4]
    assert records[0]["prev"] == audit.GENESIS
    for before, after in itertools.pairwise(records):
        assert after["prev"] == before["mac"]
    first = records[0]
    assert "input_sha256" not in first  # an unkeyed hash of the prompt could be brute-forced
    assert hashlib.sha256(EVENT["prompt"].encode()).hexdigest() not in path.read_text()
    join_key = hmac.new(KEY, b"input", hashlib.sha256).digest()
    assert first["input_hmac"] == hmac.new(join_key, EVENT["prompt"].encode(),
                                           hashlib.sha256).hexdigest()
    for value in ("123-45-6789", "jane.doe@gmail.com", "555-2671", "Jane Doe"):
        assert value not in path.read_text()
    assert first["route"] == "structured" and first["expert_version"] == "ab" * 32
    body = {k: v for k, v in first.items() if k != "mac"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    chain_key = hmac.new(KEY, b"mac", hashlib.sha256).digest()
    assert first["mac"] == hmac.new(chain_key, canonical.encode(), hashlib.sha256).hexdigest()
    head = json.loads((tmp_path / "router_x.head.json").read_text())
    assert (head["seq"], head["mac"]) == (4, records[-1]["mac"])
    assert audit.verify(tmp_path, KEY) == audit.Report(5)  # an untouched log verifies


def test_append_does_not_wait_for_the_writer(tmp_path, monkeypatch):
    """A writer stuck in redaction does not hold up append(): the caller returns at once."""
    gate = threading.Event()
    real = audit.redacted
    monkeypatch.setattr(audit, "redacted", lambda e, s, k: gate.wait(10) and real(e, s, k))
    log = audit.AuditLog(tmp_path, "w", 30, "s", KEY)
    for _ in range(3):
        log.append(EVENT)  # would block for 10 s each if written inline
    assert not list(tmp_path.glob("*.jsonl"))
    gate.set()
    log.close()
    assert audit.verify(tmp_path, KEY).records == 3


def test_verify_names_an_altered_record(tmp_path):
    path = write_log(tmp_path)
    rewrite(path, lambda lines: lines.__setitem__(2, lines[2].replace("structured", "chat")))
    report = audit.verify(path, KEY)
    assert not report.ok and report.records == 2
    assert "line 3: record seq 2 does not carry a valid MAC" in report.problem


def test_verify_sees_a_suffix_rewritten_without_the_key(tmp_path):
    """Records 2.. rewritten and re-chained consistently, but with a key the forger guessed."""
    path = write_log(tmp_path)

    def forge(lines):
        prev = json.loads(lines[1])["mac"]
        for i in range(2, len(lines)):
            record = json.loads(lines[i]) | {"output": "approved", "prev": prev}
            lines[i] = json.dumps(audit.seal(record, record["seq"], prev, b"x" * 32))
            prev = json.loads(lines[i])["mac"]
    rewrite(path, forge)
    assert "line 3: record seq 2 does not carry a valid MAC" in problem(tmp_path)


def test_verify_names_a_missing_record(tmp_path):
    path = write_log(tmp_path)
    rewrite(path, lambda lines: lines.pop(3))
    assert "line 4: found record seq 4 where seq 3 was expected" in problem(tmp_path)


def test_verify_sees_the_newest_records_deleted(tmp_path):
    path = write_log(tmp_path)
    rewrite(path, lambda lines: lines.__delitem__(slice(3, None)))
    assert "vouches for seq 4, but its log ends at seq 2" in problem(tmp_path)


def test_verify_sees_a_truncated_tail(tmp_path):
    path = write_log(tmp_path)
    path.write_bytes(path.read_bytes()[:-40])  # cut inside the last record
    assert "line 5: not a JSON record (altered or truncated)" in problem(tmp_path)


def test_verify_sees_the_oldest_records_deleted_but_not_a_recorded_prune(tmp_path):
    path = write_log(tmp_path)
    rewrite(path, lambda lines: lines.__delitem__(slice(0, 2)))
    assert "oldest record is seq 2, and no prune of seq 1 is recorded" in problem(tmp_path)


def test_retention_prune_is_recorded_and_verifies(tmp_path):
    write_log(tmp_path, n=3)
    today = f"{dt.date.today():%Y%m%d}"
    (tmp_path / f"router_x-{today}.jsonl").rename(tmp_path / "router_x-20000101.jsonl")
    log = audit.AuditLog(tmp_path, "router_x", 30, "s", KEY)  # starts: prunes its old day
    log.append(EVENT)
    log.close()
    assert not (tmp_path / "router_x-20000101.jsonl").exists()
    records = [json.loads(line) for line in (tmp_path / f"router_x-{today}.jsonl").open()]
    assert [(r["type"], r["seq"]) for r in records] == [("prune", 3), ("request", 4)]
    assert records[0]["through_seq"] == 2 and records[0]["files"] == ["router_x-20000101.jsonl"]
    assert audit.verify(tmp_path, KEY) == audit.Report(2)


def test_verify_sees_the_newest_file_deleted(tmp_path):
    write_log(tmp_path, n=2)
    today = f"{dt.date.today():%Y%m%d}"
    yesterday = f"{dt.date.today() - dt.timedelta(days=1):%Y%m%d}"
    (tmp_path / f"router_x-{today}.jsonl").rename(tmp_path / f"router_x-{yesterday}.jsonl")
    write_log(tmp_path, n=2)  # a later day's file: seq 2, 3
    assert audit.verify(tmp_path, KEY) == audit.Report(4)
    (tmp_path / f"router_x-{today}.jsonl").unlink()
    assert "vouches for seq 3, but its log ends at seq 1" in problem(tmp_path)


def test_verify_sees_a_whole_writer_deleted(tmp_path):
    write_log(tmp_path, writer="router_a")
    write_log(tmp_path, writer="router_b")  # its checkpoint witnesses router_a at seq 4
    assert audit.verify(tmp_path, KEY) == audit.Report(10)
    for path in tmp_path.glob("router_a*"):
        path.unlink()
    assert "writer router_a: no checkpoint, but router_b's saw it at seq 4" in problem(tmp_path)


def test_verify_sees_a_deleted_checkpoint(tmp_path):
    write_log(tmp_path, writer="router_a")
    write_log(tmp_path, writer="router_b")
    (tmp_path / "router_b.head.json").unlink()  # router_a's checkpoint predates router_b
    assert "writer router_b: records but no checkpoint" in problem(tmp_path)
    (tmp_path / "router_a.head.json").unlink()  # no checkpoint left at all
    assert "writer router_a: records but no checkpoint" in problem(tmp_path)


def test_verify_sees_files_deleted_under_a_kept_checkpoint(tmp_path):
    path = write_log(tmp_path)
    path.unlink()
    assert "none of its files are there: its files were deleted" in problem(tmp_path)


def test_a_restart_after_deleted_records_keeps_the_gap_visible(tmp_path):
    path = write_log(tmp_path)
    rewrite(path, lambda lines: lines.__delitem__(slice(3, None)))
    write_log(tmp_path, n=1)  # continues after the checkpoint (seq 5), not over the gap
    assert "found record seq 5 where seq 3 was expected" in problem(tmp_path)


def test_a_forged_checkpoint_is_refused(tmp_path):
    write_log(tmp_path)
    head = tmp_path / "router_x.head.json"
    head.write_text(head.read_text().replace('"seq": 4', '"seq": 2'))
    assert "router_x.head.json: signature does not match" in problem(tmp_path)


def test_the_key_must_live_outside_the_log(tmp_path, monkeypatch):
    monkeypatch.delenv("MORTGAGELLM_AUDIT_KEY", raising=False)
    logs = tmp_path / "audit"
    logs.mkdir()
    (logs / "key").write_text("k" * 40)
    with pytest.raises(ValueError, match="inside the audit log directory"):
        audit.load_key(AuditSettings(key_file=str(logs / "key")), logs)
    with pytest.raises(FileNotFoundError, match="no audit key: set \\$MORTGAGELLM_AUDIT_KEY"):
        audit.load_key(AuditSettings(key_file=str(tmp_path / "none")), logs)
    (tmp_path / "short").write_text("abc")
    with pytest.raises(ValueError, match="3 characters; use 32 or more"):
        audit.load_key(AuditSettings(key_file=str(tmp_path / "short")), logs)
    monkeypatch.setenv("MORTGAGELLM_AUDIT_KEY", "e" * 32)
    assert audit.load_key(AuditSettings(key_file=str(logs / "key")), logs) == b"e" * 32


def test_cli_audit_verify_exit_codes(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MORTGAGELLM_AUDIT_KEY", raising=False)
    logs = tmp_path / "audit"
    path = write_log(logs)
    assert main(["audit", "verify", str(logs)]) == 2  # no key beside the log
    assert "no audit key" in capsys.readouterr().err
    (tmp_path / "audit.key").write_bytes(KEY)  # the default: <log dir>/../audit.key
    assert main(["audit", "verify", str(logs)]) == 0
    assert "5 records" in capsys.readouterr().out
    rewrite(path, lambda lines: lines.pop(1))
    assert main(["audit", "verify", str(path), "--key-file", str(tmp_path / "audit.key")]) == 1
    assert "missing" in capsys.readouterr().out


def test_a_full_queue_refuses_instead_of_growing(tmp_path, monkeypatch):
    gate = threading.Event()
    real = audit.redacted
    monkeypatch.setattr(audit, "redacted", lambda e, s, k: gate.wait(10) and real(e, s, k))
    log = audit.AuditLog(tmp_path, "w", 30, "s", KEY, queue_size=2)
    log.append(EVENT)  # taken by the thread, which then waits at the gate
    threading.Event().wait(0.2)
    log.append(EVENT)
    log.append(EVENT)
    assert log.problem() == "the audit queue is full (2 records waiting)"
    with pytest.raises(audit.AuditUnavailable, match="queue is full"):
        log.append(EVENT)
    gate.set()
    log.close()
    assert audit.verify(tmp_path, KEY) == audit.Report(3)


def test_a_write_error_refuses_appends_until_the_disk_recovers(tmp_path, monkeypatch):
    """Fail closed: while writes fail, problem() says why and append raises; the failed record
    is retried, not dropped."""
    monkeypatch.setattr(audit, "RETRY_S", 0.05)
    log = audit.AuditLog(tmp_path, "w", 30, "s", KEY)
    broken = threading.Event()
    broken.set()
    real_write = audit.AuditLog._write

    def flaky(self, event):
        if broken.is_set():
            raise OSError(28, "No space left on device")
        return real_write(self, event)
    monkeypatch.setattr(audit.AuditLog, "_write", flaky)
    log.append(EVENT)
    for _ in range(100):
        if log.problem():
            break
        threading.Event().wait(0.02)
    assert log.problem() == "the audit log cannot be written (OSError: [Errno 28] No space " \
                            "left on device)"
    with pytest.raises(audit.AuditUnavailable, match="No space left"):
        log.append(EVENT)
    broken.clear()
    log.close()
    assert log.error is None
    assert audit.verify(tmp_path, KEY) == audit.Report(1)


def test_retention_defaults_to_five_years_and_lowering_it_is_explicit_and_audited(tmp_path):
    assert AuditSettings().retention_days == 1826
    with pytest.raises(ValueError, match="below the floor of 1826 days; set "
                       "audit.allow_short_retention"):
        AuditSettings(retention_days=30)
    settings = AuditSettings(retention_days=30, allow_short_retention=True,
                             key_file=str(tmp_path / "key"))
    (tmp_path / "key").write_bytes(KEY)
    log = audit.open_log(settings, tmp_path / "audit", "router_x")
    log.close()
    (record,) = [json.loads(line) for f in (tmp_path / "audit").glob("*.jsonl") for line in
                 f.read_text().splitlines()]
    assert (record["type"], record["retention_days"], record["floor_days"]) == (
        "retention_below_floor", 30, 1826)


def test_router_shutdown_flushes_and_checkpoints(tmp_path, monkeypatch):
    """Serve calls __del__ on shutdown and scale-down: queued records are written and the head
    checkpoint names the last one."""
    from mortgagellm.serve.router import Router

    gate = threading.Event()
    real = audit.redacted
    monkeypatch.setattr(audit, "redacted", lambda e, s, k: gate.wait(0.3) or real(e, s, k))
    # Serve's ingress wrapper (func_or_class) awaits the user class's __del__ on shutdown;
    # that class is the next one in its MRO.
    user_class = Router.func_or_class.__mro__[1]
    replica = object.__new__(user_class)
    replica.audit = audit.AuditLog(tmp_path, "router_r", 30, "s", KEY, checkpoint_s=3600)
    for _ in range(3):
        replica.audit.append(EVENT)
    assert json.loads((tmp_path / "router_r.head.json").read_text())["seq"] == -1
    user_class.__del__(replica)
    assert json.loads((tmp_path / "router_r.head.json").read_text())["seq"] == 2
    assert audit.verify(tmp_path, KEY) == audit.Report(3)


class FakeRouter:
    """What http.complete uses of the Router: an expert that answers "ok", and an audit log
    that is down (`problem`) or refuses the answer's record (`accepts`)."""

    def __init__(self, problem=None, accepts=True):
        from types import SimpleNamespace

        from mortgagellm.config import ServeConfig

        self.cfg, self.problem, self.accepts, self.recorded = ServeConfig(), problem, accepts, []
        self.metrics = SimpleNamespace(generation_ms=SimpleNamespace(observe=lambda *a, **k: 0))
        self.limiter = None  # never asked: the default limits are unlimited

    def audit_problem(self):
        return self.problem

    async def decide(self, text, model):
        from mortgagellm.routing import Decision

        return Decision("conversational", 1.0, "client", "hybrid")

    async def answer(self, route, payload):
        return [{"prompt_tokens": 3, "version": "v"},
                {"text": "ok", "finish_reason": "stop", "completion_tokens": 1}]

    def record(self, endpoint, status, started, event):
        self.recorded.append((status, event.get("error_code")))
        return self.accepts


@pytest.mark.parametrize("router, recorded", [
    (FakeRouter(problem="the audit log cannot be written (OSError: disk full)"),
     [(503, "audit_unavailable")]),
    (FakeRouter(accepts=False), [(200, None)]),  # answered, but its record was refused
])
def test_the_router_fails_closed_when_the_audit_log_cannot_take_a_record(router, recorded):
    import asyncio

    from mortgagellm.serve import http
    from mortgagellm.serve import openai_api as oa
    from mortgagellm.serve.door import ApiKey

    body = oa.ChatCompletionRequest(model="mortgagellm-chat",
                                    messages=[{"role": "user", "content": "hi"}])
    response = asyncio.run(http.complete(router, "chat", body, ApiKey("team")))
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert json.loads(response.body)["error"]["code"] == "audit_unavailable"
    assert router.recorded == recorded


def test_unicode_line_separators_in_a_prompt_keep_a_record_on_one_line(tmp_path):
    """Found by fuzzing: json.dumps leaves U+0085, U+2028 and U+2029 unescaped, and every
    splitlines() (verify's, a reader's) breaks a line at them: one client prompt made the whole
    log fail verification. They are written escaped, so each record stays one line."""
    log = audit.AuditLog(tmp_path, "w", 30, "s", KEY)
    for separator in ("\x85", "\u2028", "\u2029"):
        log.append(EVENT | {"prompt": f"user: first{separator}second"})
    log.close()
    (path,) = tmp_path.glob("*.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and [json.loads(line)["seq"] for line in lines] == [0, 1, 2]
    assert json.loads(lines[1])["prompt"] == "user: first\u2028second"  # kept, only escaped
    assert audit.verify(tmp_path, KEY) == audit.Report(3)


def test_a_record_that_cannot_be_encoded_is_replaced_and_the_writer_goes_on(tmp_path):
    """Found by fuzzing: a lone surrogate (JSON "\\ud800") cannot be UTF-8 encoded; the writer
    thread died on it, silently, and every later request was answered but never audited. The
    writer now logs an `unwritable` record naming the request in its place and goes on."""
    log = audit.AuditLog(tmp_path, "w", 30, "s", KEY)
    log.append(EVENT | {"request_id": "chatcmpl-bad", "prompt": "user: a\ud800b"})
    log.append(EVENT | {"request_id": "chatcmpl-next"})
    log.close()
    assert log.problem() == "the audit log is closed"  # not an error: the writer went on
    records = [json.loads(line) for f in tmp_path.glob("*.jsonl") for line in f.open()]
    assert [(r["type"], r["request_id"]) for r in records] == [
        ("unwritable", "chatcmpl-bad"), ("request", "chatcmpl-next")]
    assert "UnicodeEncodeError" in records[0]["error"]
    assert audit.verify(tmp_path, KEY) == audit.Report(2)
