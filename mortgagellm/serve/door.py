"""At the door: API keys and body size, checked from the headers before any body is read.

Keys are bearer tokens. Only their SHA-256 is ever stored (a keys file or an environment
variable of `key_id:sha256:<hex>` entries), and a presented key is hashed and compared with every
stored hash in constant time, so neither a leaked file nor response timing gives a key away.

Make a key:  python -m mortgagellm.serve.door KEY_ID >> api_keys   (prints the key once, on stderr)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

_ENTRY = re.compile(r"^([A-Za-z0-9_.@-]{1,64}):sha256:([0-9a-f]{64})$")
OPEN_PATHS = frozenset({"/healthz"})
"""Paths served without a key: liveness probes carry none."""


def hash_key(key: str) -> str:
    """The stored form of a key: 'sha256:<hex>'."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def new_key(key_id: str) -> tuple[str, str]:
    """(a fresh random key, its keys-file line)."""
    key = "mllm-" + secrets.token_urlsafe(32)
    return key, f"{key_id}:{hash_key(key)}"


def parse_keys(text: str, source: str) -> dict[str, str]:
    """{sha256 hex: key id} from lines or comma-separated entries; '#' starts a comment."""
    keys = {}
    for raw in re.split(r"[,\n]", text):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        match = _ENTRY.match(entry)
        if match is None:
            raise ValueError(f"{source}: entry {entry[:24]!r}... is not key_id:sha256:<64 hex> "
                             "(store hashes, never keys: python -m mortgagellm.serve.door ID)")
        keys[match.group(2)] = match.group(1)
    return keys


def load_keys(path: str | None, env_var: str) -> dict[str, str]:
    """Keys of the file (when it exists) and of the environment variable, merged."""
    keys = {}
    if path and Path(path).is_file():
        keys |= parse_keys(Path(path).read_text(), path)
    if os.environ.get(env_var):
        keys |= parse_keys(os.environ[env_var], f"${env_var}")
    return keys


def key_id(authorization: str | None, keys: Mapping[str, str]) -> str | None:
    """The id of the key in an `Authorization: Bearer <key>` header, None when it is not valid.

    Every stored hash is compared (no early exit) with hmac.compare_digest.
    """
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    presented = hashlib.sha256(token.strip().encode()).hexdigest()
    found = None
    for stored, name in keys.items():
        if hmac.compare_digest(presented, stored):
            found = name
    return found


class Door:
    """ASGI middleware: 401 without a valid key, 413 for a declared body over the limit;
    any scope but HTTP (and the app's lifespan) is refused: a websocket is closed at once.

    A body without Content-Length (chunked) is read here up to the limit and replayed to the
    app, so an oversized one is refused without the app ever buffering it. The key's id is
    left in scope["state"]["key_id"] for the audit log; `on_reject(path, status, code, key id)`
    hears of every refusal (the Router counts and audits them).
    """

    def __init__(self, app: Any, keys: Mapping[str, str], required: bool, max_body_bytes: int,
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
        who = key_id(headers.get("authorization"), self.keys)
        if who is None and self.required:
            return await self.refuse(scope, send, None, 401, "a valid API key is required: send "
                                     "'Authorization: Bearer <key>'", "invalid_api_key",
                                     {"www-authenticate": "Bearer"})
        who = who or "anonymous"
        scope.setdefault("state", {})["key_id"] = who
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
    from mortgagellm.serve.openai_api import error_body

    kind = "invalid_request_error" if status < 500 else "server_error"
    payload = json.dumps(error_body(message, kind, code)).encode()
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
