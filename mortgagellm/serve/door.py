"""At the door: API keys and body size, checked from the headers before any body is read.

Keys are bearer tokens. Only their SHA-256 is ever stored (a keys file or an environment
variable of `key_id:sha256:<hex>` entries), and a presented key is hashed and compared with every
stored hash in constant time, so neither a leaked file nor response timing gives a key away.
An entry may end in its own rate limits, `rpm=<n>` and/or `tpm=<n>` (requests and tokens per
minute, 0 = unlimited; serve/ratelimit.py), separated by spaces:

    team-a:sha256:<64 hex> rpm=60 tpm=40000

The Router re-reads the keys file when it changes (KeyFile), so a key is revoked without a
redeploy.

Make a key:  python -m mortgagellm.serve.door KEY_ID >> api_keys   (prints the key once, on stderr)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

log = logging.getLogger(__name__)
_ENTRY = re.compile(r"^([A-Za-z0-9_.@-]{1,64}):sha256:([0-9a-f]{64})((?:\s+\S+)*)$")
_QUOTA = re.compile(r"^(rpm|tpm)=([0-9]{1,12})$")
OPEN_PATHS = frozenset({"/healthz"})
"""Paths served without a key: liveness probes carry none."""


class ApiKey(NamedTuple):
    """What a stored key stands for: its id (audit log, limits) and its own per-minute limits,
    None where its entry gives none (then the recipe's serve.limits.rpm / tpm apply)."""

    id: str
    rpm: int | None = None
    tpm: int | None = None


def hash_key(key: str) -> str:
    """The stored form of a key: 'sha256:<hex>'."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def new_key(key_id: str) -> tuple[str, str]:
    """(a fresh random key, its keys-file line)."""
    key = "mllm-" + secrets.token_urlsafe(32)
    return key, f"{key_id}:{hash_key(key)}"


def parse_entry(entry: str, where: str) -> tuple[str, ApiKey]:
    """(sha256 hex, ApiKey) of one `key_id:sha256:<hex> [rpm=<n>] [tpm=<n>]` entry."""
    match = _ENTRY.match(entry)
    if match is None:
        raise ValueError(f"{where}: entry {entry[:24]!r}... is not key_id:sha256:<64 hex> "
                         "[rpm=<n>] [tpm=<n>] (store hashes, never keys: python -m "
                         "mortgagellm.serve.door ID)")
    quotas: dict[str, int] = {}
    for field in match.group(3).split():
        found = _QUOTA.match(field)
        if found is None or found.group(1) in quotas:
            raise ValueError(f"{where}: {field!r} after key {match.group(1)!r} is not rpm=<n> "
                             "or tpm=<n> given once (whole requests or tokens per minute; "
                             "0 = unlimited)")
        quotas[found.group(1)] = int(found.group(2))
    return match.group(2), ApiKey(match.group(1), **quotas)


def parse_keys(text: str, source: str) -> dict[str, ApiKey]:
    """{sha256 hex: ApiKey} from lines or comma-separated entries; '#' starts a comment.

    Errors name the source and line. Every entry of one key id must give the same limits: the
    id's requests are counted together, so two differing limits would be ambiguous.
    """
    keys: dict[str, ApiKey] = {}
    first: dict[str, tuple[ApiKey, int]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        for raw in line.split("#", 1)[0].split(","):
            if not raw.strip():
                continue
            digest, key = parse_entry(raw.strip(), f"{source}, line {number}")
            seen, at = first.setdefault(key.id, (key, number))
            if seen != key:
                raise ValueError(f"{source}, line {number}: key id {key.id!r} has other limits "
                                 f"than on line {at} ({limits_text(key)} vs "
                                 f"{limits_text(seen)}); give its limits the same on every line")
            keys[digest] = key
    return keys


def limits_text(key: ApiKey) -> str:
    """A key's own limits as its entry writes them ('no limits of its own' when none)."""
    given = [f"{name}={value}" for name, value in (("rpm", key.rpm), ("tpm", key.tpm))
             if value is not None]
    return " ".join(given) or "no limits of its own"


def load_keys(path: str | None, env_var: str) -> dict[str, ApiKey]:
    """Keys of the file (when it exists) and of the environment variable, merged."""
    keys = {}
    if path and Path(path).is_file():
        keys |= parse_keys(Path(path).read_text(), path)
    return keys | env_keys(env_var)


def env_keys(env_var: str) -> dict[str, ApiKey]:
    """Keys of the environment variable (entries separated by commas or newlines)."""
    return parse_keys(os.environ[env_var], f"${env_var}") if os.environ.get(env_var) else {}


def find_key(authorization: str | None, keys: Mapping[str, ApiKey]) -> ApiKey | None:
    """The key in an `Authorization: Bearer <key>` header, None when it is not valid.

    Every stored hash is compared (no early exit) with hmac.compare_digest.
    """
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    presented = hashlib.sha256(token.strip().encode()).hexdigest()
    found = None
    for stored, key in keys.items():
        if hmac.compare_digest(presented, stored):
            found = key
    return found


class KeyFile:
    """The keys a Router checks: its keys file, re-read when the file changes (mtime, size or
    inode; looked at no more than every `every_s` seconds, one stat), plus fixed entries (the
    environment variable's, read once by build_app).

    A changed file that is missing, unreadable or invalid keeps the last good keys -- a typo
    must not lock every client out -- and is logged with the file and line and reported to
    `on_error` (the Router counts it in mortgagellm_keys_reload_failed); it is read again at its
    next change. An empty file is valid and revokes every key it held.
    """

    def __init__(self, path: str | None, fixed: Mapping[str, ApiKey], every_s: float,
                 on_error: Callable[[Exception], None] | None = None):
        self.path, self.fixed, self.every_s, self.on_error = path, dict(fixed), every_s, on_error
        self.stamp = _stamp(path)
        self.keys = self._read() if self.stamp is not None else dict(self.fixed)
        self.checked = time.monotonic()

    def _read(self) -> dict[str, ApiKey]:
        return parse_keys(Path(str(self.path)).read_text(), str(self.path)) | self.fixed

    def current(self) -> Mapping[str, ApiKey]:
        """The keys now, re-read first when the file changed since it was last read."""
        now = time.monotonic()
        if self.path is None or now - self.checked < self.every_s:
            return self.keys
        self.checked, stamp = now, _stamp(self.path)
        if stamp != self.stamp:
            self.stamp = stamp
            try:
                self.keys = self._read()
                log.info("keys file %s changed: %d keys now", self.path, len(self.keys))
            except (OSError, ValueError) as err:
                log.error("keys file %s changed but cannot be used (%s); still serving the %d "
                          "keys read before", self.path, err, len(self.keys))
                if self.on_error is not None:
                    self.on_error(err)
        return self.keys


def _stamp(path: str | None) -> tuple[int, int, int] | None:
    """(mtime ns, size, inode) of a file (a symlink followed: a Kubernetes Secret volume swaps
    one in), None when it does not exist."""
    try:
        st = os.stat(path) if path else None
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino) if st else None


class Door:
    """ASGI middleware: 401 without a valid key, 413 for a declared body over the limit;
    any scope but HTTP (and the app's lifespan) is refused: a websocket is closed at once.

    A body without Content-Length (chunked) is read here up to the limit and replayed to the
    app, so an oversized one is refused without the app ever buffering it. `keys()` gives the
    keys at this moment (KeyFile.current: they change when the keys file does). The key is
    left in scope["state"]: "key_id" for the audit log, "api_key" for its rate limits;
    `on_reject(path, status, code, key id)` hears of every refusal (the Router counts and
    audits them).
    """

    def __init__(self, app: Any, keys: Callable[[], Mapping[str, ApiKey]], required: bool,
                 max_body_bytes: int,
                 on_reject: Callable[[str, int, str, str | None], None] | None = None):
        self.app, self.keys, self.required, self.max_body = app, keys, required, max_body_bytes
        self.on_reject = on_reject

    async def refuse(self, scope: dict, send: Any, who: str | None, status: int, message: str,
                     code: str, headers: Mapping[str, str] | None = None) -> None:
        """Report a refusal, then send it."""
        if self.on_reject is not None:
            self.on_reject(scope["path"], status, code, who)
        await reject(send, status, message, code, headers)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "lifespan" or (kind == "http" and scope["path"] in OPEN_PATHS):
            return await self.app(scope, receive, send)
        if kind != "http":  # websockets: this API has none, and they skip the door
            if self.on_reject is not None:
                self.on_reject(scope.get("path", ""), 403, "unsupported_protocol", None)
            return await send({"type": "websocket.close", "code": 1008,
                               "reason": "only HTTP is served"})
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = find_key(headers.get("authorization"), self.keys())
        if key is None and self.required:
            return await self.refuse(scope, send, None, 401, "a valid API key is required: send "
                                     "'Authorization: Bearer <key>'", "invalid_api_key",
                                     {"www-authenticate": "Bearer"})
        key = key or ApiKey("anonymous")
        who = key.id
        scope.setdefault("state", {}).update(key_id=who, api_key=key)
        length = headers.get("content-length")
        if length is not None:
            if not (length.isascii() and length.isdigit()):  # '²'.isdigit() too
                return await self.refuse(scope, send, who, 400, "Content-Length is not a number",
                                         "bad_request")
            if int(length) > self.max_body:
                return await self.refuse(scope, send, who, 413, f"request body of {length} bytes "
                                         f"exceeds the limit of {self.max_body} bytes",
                                         "request_too_large")
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                return await self.refuse(scope, send, who, 413, f"request body exceeds the limit "
                                         f"of {self.max_body} bytes", "request_too_large")
        return await self.app(scope, _replay(body, receive), send)


def _replay(body: bytes, receive: Any) -> Any:
    """An ASGI receive that yields the buffered body once, then defers to the real one."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> dict:
        return pending.pop() if pending else await receive()

    return replay


async def reject(send: Any, status: int, message: str, code: str,
                 headers: Mapping[str, str] | None = None) -> None:
    """Send an OpenAI-style JSON error and close the response."""
    from mortgagellm.serve.errors import checked_code
    from mortgagellm.serve.openai_api import error_body

    kind = "invalid_request_error" if status < 500 else "server_error"
    payload = json.dumps(error_body(message, kind, checked_code(status, code))).encode()
    head = [(b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode())]
    head += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": payload})


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m mortgagellm.serve.door KEY_ID >> <keys file>")
    secret, line = new_key(sys.argv[1])
    print(f"API key for {sys.argv[1]} (shown once, store it now): {secret}", file=sys.stderr)
    print(line)
