"""The router's own queue: at most `ongoing` requests at work in a replica and `queued` more
waiting, the rest refused at once with an OpenAI-style JSON 503.

Why not Serve's max_queued_requests alone: a request over Serve's router queue is refused by
the proxy with a plain-text 503 that no OpenAI client can parse. build_app therefore lets
ongoing + queued requests into each replica (Serve's max_ongoing_requests) and this gate keeps
the queue; Serve's own limit stays behind it as a backstop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from mortgagellm.serve.door import OPEN_PATHS, reject


class Gate:
    """ASGI middleware: a semaphore of `ongoing` slots and a bounded count of waiters.

    `on_reject(path, status, code, key id)` hears of every refusal, as the Door's does.
    """

    def __init__(self, app: Any, ongoing: int, queued: int,
                 on_reject: Callable[[str, int, str, str | None], None] | None = None):
        self.app, self.queued, self.on_reject = app, queued, on_reject
        self.slots = asyncio.Semaphore(ongoing)
        self.waiting = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        if self.slots.locked() and self.waiting >= self.queued:
            if self.on_reject is not None:
                self.on_reject(scope["path"], 503, "overloaded",
                               scope.get("state", {}).get("key_id"))
            return await reject(send, 503, f"the router is overloaded ({self.waiting} requests "
                                "waiting); retry shortly", "overloaded", {"retry-after": "1"})
        self.waiting += 1
        try:
            await self.slots.acquire()
        finally:
            self.waiting -= 1
        try:
            return await self.app(scope, receive, send)
        finally:
            self.slots.release()
