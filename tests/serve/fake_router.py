"""A stand-in for the Router deployment, so the FastAPI app (http.py) is tested without Ray:
the same attributes and coroutines build_api uses, with scripted expert answers."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from mortgagellm.config import ServeConfig
from mortgagellm.routing import Decision, client_route
from mortgagellm.serve.door import ApiKey, KeyFile
from mortgagellm.serve.ratelimit import Limiter

KEY = "good-key"
KEYS = {hashlib.sha256(KEY.encode()).hexdigest(): ApiKey("tester")}
AUTH = {"Authorization": f"Bearer {KEY}"}


class FakeStream:
    """An expert stream: its items, then optionally an exception instead of the end."""

    def __init__(self, items: list[dict], fail: BaseException | None = None):
        self.items, self.fail, self.cancelled = list(items), fail, False

    def cancel(self) -> None:
        self.cancelled = True


class _Series:
    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def observe(self, value: float, tags: dict) -> None:
        self.seen.append((value, tags))


class _Count:
    def __init__(self) -> None:
        self.value = 0

    def inc(self, value: float = 1, tags: dict | None = None) -> None:
        self.value += value


class FakeMetrics:
    def __init__(self) -> None:
        self.generation_ms = _Series()
        self.keys_reload_failed = _Count()


class FakeRouter:
    """What build_api needs of a Router; `expert` scripts the answer (a list of items, or an
    exception to raise) and `records` collects every record() call. The keys are KEYS, or those
    of `keys_file` re-read as the Router does (serve.auth.reload_s); the limiter counts in
    memory (serve.limits.storage_uri memory://, whatever the settings say).

    `hold`, when set, is an event a non-streamed answer waits for (an expert that is slow to
    answer), and `cancelled` counts the answers cancelled while waiting (the real Router then
    cancels its expert's work: tests/serve/test_router.py); `pace` is the seconds each stream
    item takes (slow, never stalled)."""

    def __init__(self, settings: dict[str, Any] | None = None, expert: Any = None,
                 stream_fail: BaseException | None = None, keys_file: str | None = None):
        self.cfg = ServeConfig.model_validate(settings or {})
        self.metrics = FakeMetrics()
        self.keys = KeyFile(keys_file, {} if keys_file else KEYS, self.cfg.auth.reload_s,
                            on_error=lambda err: self.metrics.keys_reload_failed.inc())
        self.limiter = Limiter("memory://", self.cfg.limits.strategy)
        self.records: list[tuple[str, int, dict]] = []
        self.expert = expert
        self.stream_fail = stream_fail
        self.streams: list[FakeStream] = []
        self.decided = 0
        self.hold: asyncio.Event | None = None
        self.pace = 0.0
        self.cancelled = 0

    def items(self, payload: dict) -> list[dict]:
        n = payload["max_tokens"]
        return [{"prompt_tokens": 3, "version": "v1"}] + [
            {"text": "a", "finish_reason": "length" if i == n - 1 else None,
             "completion_tokens": i + 1} for i in range(n)]

    def record(self, endpoint: str, status: int, started: float, event: dict) -> bool:
        """Kept, as the real Router's record() says when the audit log took the record."""
        self.records.append((endpoint, status, event))
        return True

    def audit_problem(self) -> str | None:
        return None  # the audit log is always writable here (tests/serve/test_audit.py fails it)

    async def versions(self) -> dict[str, str]:
        if isinstance(self.expert, BaseException):
            raise self.expert
        return {"structured": "v1", "conversational": "v2"}

    async def decide(self, text: str, model: str) -> Decision:
        self.decided += 1
        return Decision(client_route(model) or "conversational", 1.0, "client", "hybrid")

    async def answer(self, route: str, payload: dict) -> list[dict]:
        if self.hold is not None:
            try:
                await self.hold.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if isinstance(self.expert, BaseException):
            raise self.expert
        return self.items(payload)

    async def open_stream(self, route: str, payload: dict) -> tuple[dict, FakeStream]:
        if isinstance(self.expert, BaseException):
            raise self.expert
        first, *rest = self.items(payload)
        stream = FakeStream(rest, self.stream_fail)
        self.streams.append(stream)
        return first, stream

    async def next_item(self, stream: FakeStream) -> dict | None:
        await asyncio.sleep(self.pace)
        if stream.items:
            return stream.items.pop(0)
        if stream.fail is not None:
            raise stream.fail
        return None
