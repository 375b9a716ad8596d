"""The Router: the app's ingress. It checks the door, routes (routing.py), calls an expert over
its handle, answers in OpenAI's format (openai_api.py), counts (Prometheus) and audits.

Endpoints: POST /v1/chat/completions, POST /v1/completions (both with `stream`), GET /v1/models,
GET /healthz. Errors are OpenAI error objects (the table in the README's serving section): 400
malformed JSON, schema or bad value, 401 no/bad key, 404 unknown model or path, 413 body too
large, 429 over the key's rate limit (ratelimit.py), 500 an expert or the router failed, 503
overloaded or unavailable, 504 too slow: one expert call past serve.router.expert_timeout_s
(`expert_timeout`) or the whole request past its deadline serve.router.request_timeout_s
(`request_timeout`, http.py's Deadline).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from ray import serve

from mortgagellm import routing, tier1
from mortgagellm.config import ServeConfig
from mortgagellm.serve import audit, door, ratelimit
from mortgagellm.serve.errors import OVERLOADED, RETRIED, ApiError

log = logging.getLogger(__name__)


class Metrics:
    """The Prometheus series of the router (exported on Ray's metrics port)."""

    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Histogram

        ms = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]
        self.requests = Counter("mortgagellm_requests", "Requests by route and status.",
                                tag_keys=("endpoint", "route", "status"))
        self.routing_ms = Histogram("mortgagellm_routing_latency_ms", "Time to decide a route.",
                                    boundaries=ms, tag_keys=("decided_by",))
        self.generation_ms = Histogram("mortgagellm_generation_latency_ms",
                                       "Expert time of a whole answer.", boundaries=ms,
                                       tag_keys=("route",))
        self.tokens = Counter("mortgagellm_tokens", "Prompt and completion tokens.",
                              tag_keys=("route", "kind"))
        self.errors = Counter("mortgagellm_errors", "Error answers by code.", tag_keys=("code",))
        self.audit_refused = Counter("mortgagellm_audit_refused",
                                     "Records the audit log could not take (the alarm).")
        self.keys_reload_failed = Counter(
            "mortgagellm_keys_reload_failed",
            "Changed keys files that could not be used (the last good keys still serve).")


def abandon(response: Any, err: BaseException) -> None:
    """Cancel an expert call the router stopped waiting for: it timed out, the request's deadline
    passed or its client went away (CancelledError). The expert's work is cancelled, not left
    decoding for nobody. A call that failed (overloaded, replica died, the expert raised) has
    nothing left to cancel, and Ray 2.60's cancel() would raise its error again."""
    timed_out = isinstance(err, ApiError) and err.code == "expert_timeout"
    if timed_out or isinstance(err, asyncio.CancelledError):
        response.cancel()


def adapter_of(cfg: ServeConfig, route: str) -> str | None:
    """The LoRA adapter an expert call for `route` names: the route itself under
    serve.topology adapters (one AdapterExperts deployment serves both routes), else None."""
    return route if cfg.topology == "adapters" else None


def with_adapter(cfg: ServeConfig, route: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The payload of an expert call: naming the route's adapter under topology adapters."""
    adapter = adapter_of(cfg, route)
    return payload if adapter is None else payload | {"adapter": adapter}


@serve.deployment
@serve.ingress()
class Router:
    """Ingress: holds the two experts' handles, the tier-1 classifier, the keys (re-read when
    their file changes), the rate limiter and the audit writer. With serve.topology adapters
    both handles are AdapterExperts', and each call names its route's adapter.

    `rate_limits` is the RateLimits deployment's handle, or None when serve.limits.storage_uri
    names a `limits` storage this replica talks to itself. `env_keys` are the environment
    variable's entries as build_app read them.
    """

    def __init__(self, structured: Any, conversational: Any, rate_limits: Any,
                 settings: dict[str, Any], tier1_path: str, keys_file: str,
                 env_keys: dict[str, door.ApiKey], audit_dir: str):
        self.cfg = ServeConfig.model_validate(settings)
        self.experts = {"structured": structured, "conversational": conversational}
        self.tier1 = tier1.load(Path(tier1_path).read_text())
        if self.cfg.router.mode == "hybrid":  # `auto` with no fitted threshold fails at start
            routing.threshold_of(self.cfg.router, self.tier1)
        self.metrics = Metrics()
        self.keys = door.KeyFile(keys_file, env_keys, self.cfg.auth.reload_s,
                                 on_error=lambda err: self.metrics.keys_reload_failed.inc())
        limits = self.cfg.limits
        self.limiter = (ratelimit.Shared(rate_limits) if rate_limits is not None else
                        ratelimit.Limiter(str(limits.storage_uri), limits.strategy))
        writer = serve.get_replica_context().replica_id.unique_id
        self.audit = (audit.open_log(self.cfg.audit, audit_dir, f"router-{writer}")
                      if self.cfg.audit.enabled else None)

    def __del__(self) -> None:
        """Serve's shutdown hook (also on scale-down): write what is queued and a checkpoint."""
        if getattr(self, "audit", None) is not None:  # __init__ may have failed before it
            self.audit.close()

    def check_health(self) -> None:
        """Serve's health check: a replica whose audit log cannot be written is unhealthy."""
        if self.audit is not None and (problem := self.audit.problem()):
            raise RuntimeError(problem)

    def audit_problem(self) -> str | None:
        """Why requests cannot be audited now (then they are refused, 503), None when they can."""
        return self.audit.problem() if self.audit is not None else None

    def __serve_build_asgi_app__(self) -> Any:
        """The FastAPI app, built per replica so the door uses this recipe's keys and limits."""
        from mortgagellm.serve.http import build_api

        return build_api(self)

    async def versions(self) -> dict[str, str]:
        """{route: model version (adapters: the route's adapter version)} as the experts
        report it."""
        infos = await asyncio.gather(*(h.info.remote() for h in self.experts.values()))
        return {route: info["adapters"][route] if adapter_of(self.cfg, route) else
                info["version"] for route, info in zip(self.experts, infos)}

    async def decide(self, text: str, model: str) -> routing.Decision:
        """Route a request (routing.decide); the structured expert is asked for tier 2 only
        when tier 1 is unsure."""
        started = time.perf_counter()

        async def tier2(request: str, clip_chars: int) -> dict[str, float]:
            response = self.experts["structured"].classify.remote(
                request, clip_chars, adapter_of(self.cfg, "structured"))
            try:
                return await self._expert_call(response)
            except BaseException as err:
                abandon(response, err)
                raise

        decision = await routing.decide(text, model, self.cfg.router, self.tier1, tier2)
        self.metrics.routing_ms.observe((time.perf_counter() - started) * 1e3,
                                        tags={"decided_by": decision.decided_by})
        return decision

    async def answer(self, route: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
        """All items of an expert's answer in one reply; asked once more if a replica dies."""
        for attempt in (0, 1):
            response = self.experts[route].complete.remote(with_adapter(self.cfg, route, payload))
            try:
                return await self._expert_call(response)
            except BaseException as err:
                abandon(response, err)
                if not isinstance(err, RETRIED):
                    raise
                if attempt:
                    raise ApiError(503, f"the {route} expert failed twice: {err}",
                                   "expert_unavailable") from err
                log.warning("%s expert replica lost (%s); retrying once", route, err)
        raise AssertionError("unreachable")

    async def open_stream(self, route: str, payload: dict[str, Any]) -> tuple[dict, Any]:
        """(first item, the rest) of a streamed answer; retried once until the first item."""
        for attempt in (0, 1):
            stream = self.experts[route].options(stream=True).generate.remote(
                with_adapter(self.cfg, route, payload))
            try:
                return await self._expert_call(stream.__anext__()), stream
            except BaseException as err:
                abandon(stream, err)
                if not isinstance(err, RETRIED):
                    raise
                if attempt:
                    raise ApiError(503, f"the {route} expert failed twice: {err}",
                                   "expert_unavailable") from err
                log.warning("%s expert replica lost (%s); retrying once", route, err)
        raise AssertionError("unreachable")

    async def next_item(self, stream: Any) -> dict[str, Any] | None:
        """The next item of an open expert stream, None at its end; a stall is a 504, never a
        hang."""
        try:
            return await self._expert_call(stream.__anext__())
        except StopAsyncIteration:
            return None

    async def _expert_call(self, awaitable: Any) -> Any:
        """Await an expert with the recipe's timeout; overload becomes 503, slowness 504."""
        try:
            return await asyncio.wait_for(awaitable, self.cfg.router.expert_timeout_s)
        except OVERLOADED as err:
            raise ApiError(503, f"the experts are overloaded, retry shortly ({type(err).__name__})",
                           "overloaded") from err
        except asyncio.TimeoutError as err:
            raise ApiError(504, f"no answer from the expert within "
                           f"{self.cfg.router.expert_timeout_s} s", "expert_timeout") from err

    def record(self, endpoint: str, status: int, started: float, event: dict[str, Any]) -> bool:
        """Count the request and queue its audit record (never blocks); False when the log
        could not take it (counted in mortgagellm_audit_refused: the caller answers 503)."""
        route = event.get("route") or "none"
        self.metrics.requests.inc(tags={"endpoint": endpoint, "route": route,
                                        "status": str(status)})
        if status >= 400:
            self.metrics.errors.inc(tags={"code": str(event.get("error_code"))})
        for kind in ("prompt_tokens", "completion_tokens"):
            if event.get(kind):
                self.metrics.tokens.inc(event[kind], tags={"route": route, "kind": kind})
        if self.audit is None:
            return True
        try:
            self.audit.append(event | {"type": "request", "endpoint": endpoint, "status": status,
                                       "time": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                             time.gmtime()),
                                       "latency_ms": round((time.perf_counter() - started) * 1e3,
                                                           2)})
        except audit.AuditUnavailable as err:
            log.error("request %s not audited: %s", event.get("request_id"), err)
            self.metrics.audit_refused.inc()
            return False
        return True
