"""The audit log: one record per request (and per deploy / rollback), append-only, hash-chained.

Verify: mortgagellm audit verify runs/cpu-demo/serve/audit

Each writer (a router replica, or the deploy command) appends JSON lines to
<dir>/<writer>-<YYYYMMDD>.jsonl. Every record carries `seq`, the previous record's hash `prev`
and its own `hash` = sha256 of its canonical JSON without `hash`; the chain runs on across a
writer's day files. Changing, removing or reordering any record breaks the chain at that record,
which `verify` reports. Dropping the newest records of a file cannot be seen from the chain alone.

Records are queued and written by a background thread, so PII redaction (datasets/pii.py) and
disk I/O never hold up a response. Retention: day files older than `retention_days` are deleted
when a writer starts and when it rolls over to a new day.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import queue
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mortgagellm.datasets.pii import redact_text

GENESIS = "0" * 64
_FILE = re.compile(r"^(?P<writer>.+)-(?P<day>\d{8})\.jsonl$")


def record_hash(record: dict[str, Any]) -> str:
    """sha256 of the record's canonical JSON (sorted keys, no spaces), `hash` left out."""
    body = {k: v for k, v in record.items() if k != "hash"}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def seal(record: dict[str, Any], seq: int, prev: str) -> dict[str, Any]:
    """The record as written: with its sequence number, the previous hash and its own hash."""
    sealed = {**record, "seq": seq, "prev": prev}
    return sealed | {"hash": record_hash(sealed)}


def redacted(event: dict[str, Any], salt: str) -> dict[str, Any]:
    """A request event as logged: prompt and output PII-redacted, the raw prompt only hashed.

    `input_sha256` lets an auditor holding the original request prove it is this one.
    """
    if "prompt" not in event:
        return dict(event)
    out = {k: v for k, v in event.items() if k not in ("prompt", "output")}
    out["input_sha256"] = hashlib.sha256(event["prompt"].encode()).hexdigest()
    out["prompt"] = redact_text(event["prompt"], salt)[0]
    out["output"] = redact_text(event.get("output") or "", salt)[0]
    return out


def day_files(directory: Path) -> dict[str, list[Path]]:
    """{writer: its day files, oldest first}."""
    writers: dict[str, list[Path]] = {}
    for path in sorted(directory.glob("*.jsonl")):
        match = _FILE.match(path.name)
        if match:
            writers.setdefault(match["writer"], []).append(path)
    return writers


def prune(directory: Path, retention_days: int, today: dt.date) -> list[Path]:
    """Delete day files older than the retention period; returns what was deleted."""
    oldest = today - dt.timedelta(days=retention_days)
    removed = []
    for files in day_files(directory).values():
        for path in files:
            if dt.datetime.strptime(_FILE.match(path.name)["day"], "%Y%m%d").date() < oldest:
                path.unlink()
                removed.append(path)
    return removed


def last_record(files: list[Path]) -> dict[str, Any] | None:
    """The newest record among a writer's files (to continue its chain after a restart)."""
    for path in reversed(files):
        lines = path.read_text(encoding="utf-8").splitlines()
        if lines:
            return json.loads(lines[-1])
    return None


class AuditLog:
    """A writer: `append` queues an event and returns at once; a thread seals and writes it."""

    def __init__(self, directory: str | Path, writer: str, retention_days: int, salt: str):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.writer = re.sub(r"[^A-Za-z0-9_.]", "_", writer)
        self.retention_days, self.salt = retention_days, salt
        prune(self.directory, retention_days, dt.date.today())
        last = last_record(day_files(self.directory).get(self.writer, []))
        self.seq, self.prev = (last["seq"] + 1, last["hash"]) if last else (0, GENESIS)
        self.day = dt.date.today()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def append(self, event: dict[str, Any]) -> None:
        """Queue one event (never blocks the caller)."""
        self._queue.put(event)

    def close(self, timeout: float = 10.0) -> None:
        """Write everything queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (event := self._queue.get()) is not None:
            today = dt.date.today()
            if today != self.day:
                self.day = today
                prune(self.directory, self.retention_days, today)
            record = seal(redacted(event, self.salt), self.seq, self.prev)
            path = self.directory / f"{self.writer}-{today:%Y%m%d}.jsonl"
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
            self.seq, self.prev = self.seq + 1, record["hash"]


@dataclass(frozen=True)
class Report:
    """Outcome of verify: records checked, and the first problem (None when intact)."""

    records: int
    problem: str | None = None

    @property
    def ok(self) -> bool:
        """True when every chain is intact."""
        return self.problem is None


def verify(path: str | Path) -> Report:
    """Check every writer's chain in a log directory (or one file) and name the first break.

    A writer's oldest surviving record may point to a pruned predecessor; every later record
    must follow the one before it.
    """
    path = Path(path)
    if path.is_file():
        groups = {path.name: [path]}
    elif path.is_dir():
        groups = day_files(path)
    else:
        return Report(0, f"{path}: no such file or directory")
    total = 0
    for files in groups.values():
        prev = seq = None
        for file in files:
            for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
                where = f"{file.name} line {number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    return Report(total, f"{where}: not a JSON record (altered or truncated)")
                if record.get("hash") != record_hash(record):
                    return Report(total, f"{where}: record seq {record.get('seq')} was altered "
                                  "(its content no longer matches its hash)")
                if prev is not None and record.get("seq") != seq:
                    return Report(total, f"{where}: found record seq {record.get('seq')} where "
                                  f"seq {seq} was expected: a record is missing or out of order")
                if prev is not None and record.get("prev") != prev:
                    return Report(total, f"{where}: record seq {seq} does not chain to seq "
                                  f"{seq - 1}: seq {seq - 1} (the line above) was altered")
                prev, seq, total = record["hash"], record["seq"] + 1, total + 1
    return Report(total)
