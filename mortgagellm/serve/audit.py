"""The audit log: one record per request (and per deploy / rollback), append-only, HMAC-chained.

Verify: mortgagellm audit verify runs/cpu-demo/serve/audit --key-file runs/cpu-demo/serve/audit.key

Each writer (a router replica, or the deploy command) appends JSON lines to
<dir>/<writer>-<YYYYMMDD>.jsonl. Every record carries `seq`, the previous record's `prev` and its
own `mac` = HMAC-SHA256 of its canonical JSON without `mac`, under a key kept outside the log
directory (serve.audit.key_file or $MORTGAGELLM_AUDIT_KEY); the chain runs on across a writer's
day files. Without the key nobody can write a record that verifies, so a rewritten suffix shows.

The chain alone cannot show what was cut off its ends, so each writer also keeps a signed head
checkpoint, <dir>/<writer>.head.json: its last seq and mac, and the seqs it saw in the other
writers' checkpoints. verify then sees newest records, a newest file or a whole writer deleted.
Retention pruning (of day files older than `retention_days`, when a writer starts and rolls over
to a new day) is itself recorded, as `prune` records naming the last seq and mac deleted, so a
chain may start after a prune and nowhere else.

Records are queued (boundedly) and written by a background thread, so PII redaction
(datasets/pii.py) and disk I/O never hold up a response. A write error is retried until it
succeeds; meanwhile, and while the queue is full, `append` raises AuditUnavailable and the router
answers 503 (fail closed: no answer goes out that cannot be traced).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mortgagellm.datasets.pii import redact_text

if TYPE_CHECKING:
    from mortgagellm.config import AuditSettings

log = logging.getLogger(__name__)
GENESIS = "0" * 64
HEAD = ".head.json"
_FILE = re.compile(r"^(?P<writer>.+)-(?P<day>\d{8})\.jsonl$")
_IDLE = object()
_ONE_LINE = {c: f"\\u{c:04x}" for c in (0x85, 0x2028, 0x2029)}
"""Line breaks to str.splitlines() that json.dumps leaves raw: escaped, a record is one line."""
RETRY_S = 1.0
"""Seconds between attempts to write a record after a write error."""


class AuditUnavailable(RuntimeError):
    """The log cannot take a record now (write error, or queue full): refuse the request."""


def load_key(settings: AuditSettings, directory: str | Path) -> bytes:
    """The HMAC key: $<key_env> when set, else the contents of key_file, which must lie outside
    the log directory (who can rewrite the log must not find the key next to it)."""
    if value := os.environ.get(settings.key_env, "").strip():
        key = value.encode()
    elif settings.key_file and Path(settings.key_file).is_file():
        path = Path(settings.key_file).resolve()
        if path.is_relative_to(Path(directory).resolve()):
            raise ValueError(f"audit key {path} lies inside the audit log directory {directory}; "
                             "keep it elsewhere (serve.audit.key_file)")
        key = path.read_bytes().strip()
    else:
        raise FileNotFoundError(
            f"no audit key: set ${settings.key_env} or write 32+ random characters to "
            f"{settings.key_file} (python -c 'import secrets; print(secrets.token_hex(32))'), "
            "or set serve.audit.create_key for a local demo")
    if len(key) < 32:
        raise ValueError(f"the audit key has {len(key)} characters; use 32 or more")
    return key


def subkey(key: bytes, purpose: str) -> bytes:
    """A key per use (chain, checkpoints, prompt join key), so no MAC of one use is another's."""
    return hmac.new(key, purpose.encode(), hashlib.sha256).digest()


def mac(body: dict[str, Any], key: bytes, field: str = "mac") -> str:
    """HMAC-SHA256 of the canonical JSON (sorted keys, no spaces) of `body` without `field`."""
    blob = json.dumps({k: v for k, v in body.items() if k != field}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False)
    return hmac.new(subkey(key, field), blob.encode(), hashlib.sha256).hexdigest()


def seal(record: dict[str, Any], seq: int, prev: str, key: bytes) -> dict[str, Any]:
    """The record as written: with its sequence number, the previous MAC and its own MAC."""
    sealed = {**record, "seq": seq, "prev": prev}
    return sealed | {"mac": mac(sealed, key)}


def redacted(event: dict[str, Any], salt: str, key: bytes) -> dict[str, Any]:
    """A request event as logged: prompt and output PII-redacted.

    `input_hmac` (keyed, unlike a plain hash an SSN inside could be brute-forced from) lets an
    auditor holding the key and the original request prove it is this one.
    """
    if "prompt" not in event:
        return dict(event)
    out = {k: v for k, v in event.items() if k not in ("prompt", "output")}
    out["input_hmac"] = hmac.new(subkey(key, "input"), event["prompt"].encode(),
                                 hashlib.sha256).hexdigest()
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


def last_record(files: list[Path]) -> dict[str, Any] | None:
    """The newest complete record among a writer's files (to continue its chain, or to name
    what a prune deleted)."""
    for path in reversed(files):
        for line in reversed(path.read_text(encoding="utf-8").splitlines()):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def prune(directory: Path, retention_days: int, today: dt.date) -> list[dict[str, Any]]:
    """Delete day files older than the retention period; returns one `prune` event per writer
    touched, naming the files and the last seq and mac they held (to be audited)."""
    oldest = today - dt.timedelta(days=retention_days)
    events = []
    for writer, files in day_files(directory).items():
        old = [p for p in files
               if dt.datetime.strptime(_FILE.match(p.name)["day"], "%Y%m%d").date() < oldest]
        try:
            last = last_record(old)
        except FileNotFoundError:  # another writer pruned them first; it audits that
            continue
        for path in old:
            path.unlink(missing_ok=True)
        if old:
            events.append({"type": "prune", "writer": writer, "files": [p.name for p in old],
                           "through_seq": last["seq"] if last else None,
                           "through_mac": last["mac"] if last else None,
                           "retention_days": retention_days})
    return events


def read_head(path: Path, key: bytes) -> dict[str, Any]:
    """A writer's head checkpoint; ValueError when its signature does not verify."""
    head = json.loads(path.read_text(encoding="utf-8"))
    if not hmac.compare_digest(str(head.get("sig")), mac(head, key, "sig")):
        raise ValueError(f"{path.name}: signature does not match (a forged or altered "
                         "checkpoint, or another key)")
    return head


class AuditLog:
    """A writer: `append` queues an event and returns at once; a thread seals and writes it."""

    def __init__(self, directory: str | Path, writer: str, retention_days: int, salt: str,
                 key: bytes, *, floor_days: int | None = None, queue_size: int = 10_000,
                 checkpoint_s: float = 10.0):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.writer = re.sub(r"[^A-Za-z0-9_.]", "_", writer)
        self.retention_days, self.salt, self.key = retention_days, salt, key
        self.checkpoint_s, self.error, self.closed = checkpoint_s, None, False
        self.head_path = self.directory / f"{self.writer}{HEAD}"
        self.seq, self.prev = self._resume()
        self.day = dt.date.today()
        if floor_days is not None and retention_days < floor_days:
            self._write({"type": "retention_below_floor", "retention_days": retention_days,
                         "floor_days": floor_days, "time": _now()})
        for event in prune(self.directory, retention_days, self.day):
            self._write(event | {"time": _now()})
        self.checkpoint()
        self._queue: queue.Queue = queue.Queue(queue_size)
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def _resume(self) -> tuple[int, str]:
        """(next seq, prev mac): after the newest record, or after the checkpoint when records
        it vouches for are gone (so the gap stays visible instead of being written over)."""
        last = last_record(day_files(self.directory).get(self.writer, []))
        seq, prev = (last["seq"] + 1, last["mac"]) if last else (0, GENESIS)
        if self.head_path.is_file():
            head = read_head(self.head_path, self.key)
            if head["seq"] >= seq:
                log.error("audit writer %s: checkpoint at seq %d but the log ends before it; "
                          "continuing after the checkpoint", self.writer, head["seq"])
                seq, prev = head["seq"] + 1, head["mac"]
        return seq, prev

    def problem(self) -> str | None:
        """Why the log cannot take records now, None when it can."""
        if self.error:
            return f"the audit log cannot be written ({self.error})"
        if self._queue.full():
            return f"the audit queue is full ({self._queue.maxsize} records waiting)"
        return "the audit log is closed" if self.closed else None

    def append(self, event: dict[str, Any]) -> None:
        """Queue one event; never blocks. AuditUnavailable when it cannot be taken."""
        if reason := self.problem():
            raise AuditUnavailable(reason)
        try:
            self._queue.put_nowait(event)
        except queue.Full as err:
            raise AuditUnavailable(self.problem()) from err

    def close(self, timeout: float = 10.0) -> None:
        """Write everything queued and a last checkpoint, then stop the thread."""
        if not self.closed:
            self.closed = True
            self._queue.put(None)
        self._thread.join(timeout)

    def checkpoint(self) -> None:
        """Sign and write the head: this writer's last seq and mac, and the other writers'
        seqs as their checkpoints say (so deleting a whole writer, checkpoint too, shows)."""
        seen = {}
        for path in self.directory.glob(f"*{HEAD}"):
            if path != self.head_path:
                try:
                    seen[path.name[:-len(HEAD)]] = read_head(path, self.key)["seq"]
                except (ValueError, OSError, json.JSONDecodeError, KeyError):
                    continue  # verify reports a bad checkpoint; a writer does not stop for it
        head = {"writer": self.writer, "seq": self.seq - 1, "mac": self.prev, "time": _now(),
                "witnessed": seen}
        tmp = self.head_path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(head | {"sig": mac(head, self.key, "sig")}, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.head_path)

    def _run(self) -> None:
        last_checkpoint, dirty = time.monotonic(), False
        while True:
            try:
                event = self._queue.get(timeout=self.checkpoint_s)
            except queue.Empty:
                event = _IDLE
            if event is None:
                break
            if event is not _IDLE:
                self._write_retrying(event)
                dirty = True
            if dirty and time.monotonic() - last_checkpoint >= self.checkpoint_s:
                self._checkpoint_retrying()
                last_checkpoint, dirty = time.monotonic(), False
        self._checkpoint_retrying()

    def _write_retrying(self, event: dict[str, Any]) -> None:
        """Write one event, retrying until the disk takes it (the record is never dropped);
        while it fails, `problem` says so and appends are refused."""
        while True:
            try:
                self._write(event)
                self.error = None
                return
            except OSError as err:
                if self.error is None:
                    log.error("audit writer %s: %s; refusing requests until it can write",
                              self.writer, err)
                self.error = f"{type(err).__name__}: {err}"
                time.sleep(RETRY_S)
            except Exception as err:  # noqa: BLE001 - no retry writes it; the thread must live
                log.exception("audit writer %s: record cannot be written", self.writer)
                event = {"type": "unwritable", "request_id": event.get("request_id"),
                         "error": ascii(err), "time": _now()}

    def _checkpoint_retrying(self) -> None:
        try:
            self.checkpoint()
        except OSError as err:
            log.error("audit writer %s: checkpoint failed: %s", self.writer, err)

    def _write(self, event: dict[str, Any]) -> None:
        """Seal and append one event; a failed write is cut back, leaving no partial line."""
        today = dt.date.today()
        if today != self.day:
            self.day = today
            for pruned in prune(self.directory, self.retention_days, today):
                self._write(pruned | {"time": _now()})
        record = seal(redacted(event, self.salt, self.key), self.seq, self.prev, self.key)
        line = json.dumps(record, ensure_ascii=False, sort_keys=True).translate(_ONE_LINE)
        line = (line + "\n").encode()
        with (self.directory / f"{self.writer}-{today:%Y%m%d}.jsonl").open("ab") as f:
            end = f.seek(0, os.SEEK_END)
            try:
                f.write(line)
                f.flush()
            except OSError:
                f.truncate(end)
                raise
        self.seq, self.prev = self.seq + 1, record["mac"]


def open_log(settings: AuditSettings, directory: str | Path, writer: str) -> AuditLog:
    """The writer a recipe's serve.audit section describes (its key loaded, its floor kept)."""
    return AuditLog(directory, writer, settings.retention_days, settings.pii_salt,
                    load_key(settings, directory), floor_days=settings.retention_floor_days,
                    queue_size=settings.queue_size, checkpoint_s=settings.checkpoint_s)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class Report:
    """Outcome of verify: records checked, and the first problem (None when intact)."""

    records: int
    problem: str | None = None

    @property
    def ok(self) -> bool:
        """True when every chain is intact."""
        return self.problem is None


@dataclass
class _Chain:
    """What verify learned of one writer's records."""

    first: tuple[int, str] | None = None  # (seq, prev) of its oldest record
    last: int = -1
    last_mac: str = GENESIS
    records: int = 0
    macs: dict[int, str] = field(default_factory=dict)  # mac at the seqs a checkpoint names


def _check_file(file: Path, key: bytes, chain: _Chain, wanted: set[int]) -> str | None:
    """Walk one day file on from `chain`; the first problem, None when it follows on."""
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        where = f"{file.name} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            return f"{where}: not a JSON record (altered or truncated)"
        seq = record.get("seq")
        if not hmac.compare_digest(str(record.get("mac")), mac(record, key)):
            return (f"{where}: record seq {seq} does not carry a valid MAC (altered, rewritten "
                    "without the key, or another key)")
        if chain.first is None:
            chain.first = (seq, record["prev"])
        elif seq != chain.last + 1:
            return (f"{where}: found record seq {seq} where seq {chain.last + 1} was expected: "
                    "a record is missing or out of order")
        elif record["prev"] != chain.last_mac:
            return f"{where}: record seq {seq} does not chain to seq {seq - 1}"
        chain.last, chain.last_mac, chain.records = seq, record["mac"], chain.records + 1
        if seq in wanted:
            chain.macs[seq] = record["mac"]
    return None


def _prunes(groups: dict[str, list[Path]]) -> dict[str, dict[int, str]]:
    """{writer: {through_seq: through_mac}} of every prune record in the log (MACs are checked
    by the chain walk that follows)."""
    out: dict[str, dict[int, str]] = {}
    for files in groups.values():
        for file in files:
            for line in file.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line) if '"prune"' in line else {}
                except json.JSONDecodeError:
                    continue  # the chain walk reports it
                if record.get("type") == "prune" and record["through_seq"] is not None:
                    out.setdefault(record["writer"], {})[record["through_seq"]] = \
                        record["through_mac"]
    return out


def verify(path: str | Path, key: bytes) -> Report:
    """Check a log directory (or one file) and name the first problem: an altered record, a
    missing one, a chain that starts where no prune says it may, a checkpoint the records do
    not reach (newest records, a newest file or a whole writer deleted), a bad checkpoint."""
    path = Path(path)
    if path.is_file():
        groups, heads = {path.name: [path]}, {}
    elif path.is_dir():
        groups = day_files(path)
        try:
            heads = {p.name[:-len(HEAD)]: read_head(p, key) for p in path.glob(f"*{HEAD}")}
        except ValueError as err:
            return Report(0, str(err))
    else:
        return Report(0, f"{path}: no such file or directory")
    whole = path.is_dir()  # a whole log: its ends, checkpoints and prunes are checked too
    prunes, total, chains = _prunes(groups) if whole else {}, 0, {}
    for writer, files in groups.items():
        chain = chains[writer] = _Chain()
        wanted = {heads[writer]["seq"]} if writer in heads else set()
        for file in files:
            if problem := _check_file(file, key, chain, wanted):
                return Report(total + chain.records, problem)
        total += chain.records
        if whole and chain.first and chain.first != (0, GENESIS) and \
                prunes.get(writer, {}).get(chain.first[0] - 1) != chain.first[1]:
            return Report(total, f"writer {writer}: its oldest record is seq {chain.first[0]}, "
                          f"and no prune of seq {chain.first[0] - 1} is recorded: records at "
                          "the start of its log were deleted")
    if whole and (problem := _check_heads(heads, chains, prunes)):
        return Report(total, problem)
    return Report(total)


def _check_heads(heads: dict[str, dict], chains: dict[str, _Chain],
                 prunes: dict[str, dict[int, str]]) -> str | None:
    """Every checkpoint reached by its writer's records; every witnessed writer present; every
    writer with records has a checkpoint (each writes one when it starts)."""
    if orphans := sorted(set(chains) - set(heads)):
        return (f"writer {orphans[0]}: records but no checkpoint: its {orphans[0]}{HEAD} was "
                "deleted, which hides records deleted from its end")
    for writer, head in sorted(heads.items()):
        chain = chains.get(writer, _Chain())
        pruned = max(prunes.get(writer, {}), default=-1)
        if head["seq"] <= pruned and chain.first is None:
            continue  # all of it aged out, as its prune records say
        if chain.last < head["seq"]:
            return (f"writer {writer}: its checkpoint of {head['time']} vouches for seq "
                    f"{head['seq']}, but " + (f"its log ends at seq {chain.last}: the newest "
                    "records or files were deleted" if chain.first else "none of its files are "
                    "there: its files were deleted"))
        if head["seq"] >= 0 and chain.macs.get(head["seq"], head["mac"]) != head["mac"]:
            return f"writer {writer}: record seq {head['seq']} is not the one its checkpoint signed"
        for other, seq in head["witnessed"].items():
            if other not in heads:
                return (f"writer {other}: no checkpoint, but {writer}'s saw it at seq {seq}: "
                        "its files and checkpoint were deleted")
            if heads[other]["seq"] < seq:
                return (f"writer {other}: its checkpoint says seq {heads[other]['seq']}, but "
                        f"{writer}'s saw it at seq {seq}: an older checkpoint was put back")
    return None
