"""Per-key rate limits: requests and tokens per minute, counted with the `limits` library and
refused as OpenAI does (429 `rate_limit_exceeded`, type "requests" or "tokens", Retry-After and
the x-ratelimit-* headers, which every limited answer carries).

A key's limits are its keys-file entry's `rpm=` / `tpm=` (door.py), else the recipe's
serve.limits.rpm / tpm; 0 is unlimited. Chat and text completions count; /v1/models and
/healthz do not. Tokens are charged at admission, as OpenAI counts them: the prompt estimated
at ceil(characters / CHARS_PER_TOKEN) of its audited text (no tokenizer runs in the router)
plus the request's max_tokens (or the recipe's default), never refunded. A request is admitted
only when both its request and its tokens fit, and only then charged: a refused one costs
nothing.

Where the counts live (serve.limits.storage_uri) is what makes them hold across router
replicas. By default they live in the app's RateLimits deployment: one replica holding a
`limits` MemoryStorage, which every router replica asks (one handle call per limited request)
and which admits one request at a time, so all router replicas together admit exactly a key's
limit, however many the autoscaler runs. A per-replica share (limit / replicas) would be wrong
whenever the replica count changes and for keys whose requests land unevenly. Its counts are
lost when that one replica restarts (each key then starts a fresh minute). redis:// or
memcached:// instead keep them in `limits`' own shared stores, asked by each router replica
(requests tested at the same instant on two replicas may then overshoot by those in flight);
memory:// keeps them in the router replica itself, so config refuses it with more than one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any, NamedTuple

from ray import serve

from mortgagellm.serve.door import ApiKey
from mortgagellm.serve.errors import ApiError

log = logging.getLogger(__name__)
CHARS_PER_TOKEN = 4
"""The prompt's token estimate: characters / 4, the usual rate for English BPE text (the
mortgage tokenizers give 3-5); it only decides what a request is charged, never the model's
context check, which the expert makes on the real tokens."""
LABELS = {"requests": "RPM", "tokens": "TPM"}


class Verdict(NamedTuple):
    """A limiter's answer: the kind refused ("requests" or "tokens") or None, OpenAI's message
    for a refusal, the x-ratelimit-* headers and the seconds until the refused limit resets."""

    refused: str | None
    message: str
    headers: dict[str, str]
    retry_after_s: int


def charge(prompt: str, max_tokens: int) -> int:
    """Tokens a request is charged: its prompt's estimate plus the completion it may ask for."""
    return math.ceil(len(prompt) / CHARS_PER_TOKEN) + max_tokens


def quota(key: ApiKey, limits: Any) -> tuple[int, int]:
    """(rpm, tpm) of a key: its own, else the recipe's serve.limits defaults; 0 = unlimited."""
    return (limits.rpm if key.rpm is None else key.rpm,
            limits.tpm if key.tpm is None else key.tpm)


def duration(seconds: float) -> str:
    """A reset time as OpenAI writes it: 20ms, 1s, 6m0s."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


class Limiter:
    """Requests and tokens per minute per key id on a `limits` storage and strategy."""

    def __init__(self, storage_uri: str, strategy: str):
        from limits.aio.strategies import STRATEGIES
        from limits.storage import storage_from_string

        uri = storage_uri if storage_uri.startswith("async+") else f"async+{storage_uri}"
        self.strategy = STRATEGIES[strategy](storage_from_string(uri))

    async def admit(self, key_id: str, rpm: int, tpm: int, tokens: int) -> Verdict:
        """Charge one request of `tokens` tokens to the key when both fit its limits (0 is
        unlimited), else nothing; the verdict has the headers either way."""
        from limits import RateLimitItemPerMinute

        wanted = [(kind, RateLimitItemPerMinute(amount), cost) for kind, amount, cost in
                  (("requests", rpm, 1), ("tokens", tpm, tokens)) if amount]
        refused = None
        for kind, item, cost in wanted:
            if not await self.strategy.test(item, key_id, kind, cost=cost):
                refused = kind
                break
        if refused is None:
            for kind, item, cost in wanted:  # a hit refused here lost a race with another
                if not await self.strategy.hit(item, key_id, kind, cost=cost):
                    refused = kind
                    break
        headers, message, wait, now = {}, "", 0, time.time()
        for kind, item, cost in wanted:
            reset, remaining = await self.strategy.get_window_stats(item, key_id, kind)
            headers |= {f"x-ratelimit-limit-{kind}": str(item.amount),
                        f"x-ratelimit-remaining-{kind}": str(max(0, remaining)),
                        f"x-ratelimit-reset-{kind}": duration(reset - now)}
            if kind == refused:
                wait = max(1, math.ceil(reset - now))
                message = (f"Rate limit reached for key {key_id!r} on {kind} per min "
                           f"({LABELS[kind]}): Limit {item.amount}, Used "
                           f"{item.amount - max(0, remaining)}, Requested {cost}. Please try "
                           f"again in {duration(reset - now)}.")
                if cost > item.amount:
                    message += (" This request alone exceeds the limit: lower max_tokens or "
                                "shorten the prompt.")
        return Verdict(refused, message, headers, wait)


@serve.deployment
class RateLimits:
    """The app's shared counts (storage_uri None): one replica every router replica asks. It
    admits one request at a time, so a test and its charge are never split by another's."""

    def __init__(self, strategy: str):
        self.limiter = Limiter("memory://", strategy)
        self.lock = asyncio.Lock()

    async def admit(self, key_id: str, rpm: int, tpm: int, tokens: int) -> Verdict:
        """Limiter.admit, one at a time."""
        async with self.lock:
            return await self.limiter.admit(key_id, rpm, tpm, tokens)


class Shared:
    """The RateLimits deployment's handle, asked as a Limiter is."""

    def __init__(self, handle: Any):
        self.handle = handle

    async def admit(self, key_id: str, rpm: int, tpm: int, tokens: int) -> Verdict:
        """RateLimits.admit over the handle."""
        return await self.handle.admit.remote(key_id, rpm, tpm, tokens)


async def admit(limiter: Limiter | Shared, key: ApiKey, limits: Any, prompt: str,
                max_tokens: int) -> dict[str, str]:
    """The x-ratelimit-* headers of an admitted request (none for an unlimited key); a refused
    one raises a 429 with them and Retry-After. A store that cannot answer is a 503: no request
    passes uncounted (fail closed, as the audit log does)."""
    rpm, tpm = quota(key, limits)
    if not (rpm or tpm):
        return {}
    try:
        verdict = await limiter.admit(key.id, rpm, tpm, charge(prompt, max_tokens))
    except Exception as err:  # noqa: BLE001 - whatever broke, the store did not answer
        log.error("rate limits of key %s not checked: %s", key.id, err)
        raise ApiError(503, f"the rate-limit store is unavailable ({type(err).__name__}); retry "
                       "shortly", "rate_limits_unavailable") from err
    if verdict.refused:
        raise ApiError(429, verdict.message, "rate_limit_exceeded",
                       verdict.headers | {"retry-after": str(verdict.retry_after_s)},
                       kind=verdict.refused)
    return verdict.headers
