"""The Router's FastAPI app: the door middleware, the four endpoints and the request flow
(parse -> route -> expert -> OpenAI answer -> metrics + audit), one function per step.

Every failure, whatever raised it, is answered with an OpenAI error object and is counted and
audited under a fixed endpoint name (ENDPOINTS, or `other`), never the raw path. A request has
one deadline (serve.router.request_timeout_s) across routing, the expert and its whole stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from mortgagellm.routing import ROUTE_MODELS
from mortgagellm.serve import openai_api as oa
from mortgagellm.serve import ratelimit
from mortgagellm.serve.door import ApiKey, Door
from mortgagellm.serve.gate import Gate
from mortgagellm.serve.errors import ApiError, as_api_error, new_request_id

log = logging.getLogger(__name__)
ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions",
             "/v1/models": "models", "/healthz": "healthz"}
"""Endpoint names of the metrics and audit records; any other path is `other`."""
T = TypeVar("T")


def endpoint_of(path: str) -> str:
    """The fixed name a path is counted and audited under (bounded label cardinality)."""
    return ENDPOINTS.get(path, "other")


def build_api(router: Any, openapi: bool = False) -> FastAPI:
    """The app one Router replica serves. openapi=True serves /openapi.json, for the tests'
    fuzzing only: production serves no schema."""
    cfg = router.cfg
    app = FastAPI(title="mortgagellm", docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json" if openapi else None)

    def refused(path: str, status: int, code: str, key_id: str | None) -> None:
        router.record(endpoint_of(path), status, time.perf_counter(), {
            "request_id": new_request_id("refused"), "key_id": key_id, "error_code": code})

    # The last added runs first: the door (key, body size), then the router's queue.
    app.add_middleware(Gate, ongoing=cfg.router.max_ongoing_requests,
                       queued=cfg.router.max_queued_requests, on_reject=refused)
    app.add_middleware(Door, keys=router.keys.current, required=cfg.auth.required,
                       max_body_bytes=cfg.limits.max_body_bytes, on_reject=refused)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}"
                             for e in err.errors())
        error = ApiError(400, f"malformed request: {problems}", "invalid_request")
        event = {"request_id": new_request_id("invalid"), "key_id": request.state.key_id}
        return failed(router, endpoint_of(request.url.path), time.perf_counter(), event, error)

    @app.exception_handler(404)
    @app.exception_handler(405)
    async def no_route(request: Request, err: Exception) -> JSONResponse:
        status = getattr(err, "status_code", 404)
        error = ApiError(status, f"{request.method} {endpoint_of(request.url.path)}: no such "
                         "endpoint; see /v1/chat/completions, /v1/completions, /v1/models",
                         "unknown_endpoint")
        event = {"request_id": new_request_id("invalid"),
                 "key_id": request.scope.get("state", {}).get("key_id")}
        return failed(router, endpoint_of(request.url.path), time.perf_counter(), event, error)

    @app.exception_handler(HTTPException)
    async def refused_by_fastapi(request: Request, err: HTTPException) -> JSONResponse:
        """FastAPI's own refusals, e.g. a body it cannot parse at all (not UTF-8, nested past
        the parser's depth) that its validation handler never sees."""
        error = ApiError(err.status_code, f"malformed request: {err.detail}; send one JSON "
                         "object in UTF-8", "invalid_request")
        event = {"request_id": new_request_id("invalid"),
                 "key_id": request.scope.get("state", {}).get("key_id")}
        return failed(router, endpoint_of(request.url.path), time.perf_counter(), event, error)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        """Last resort for a failure outside a handler's own try (Starlette re-raises it after
        this answer, so it is logged too)."""
        rid = new_request_id("failed")
        event = {"request_id": rid, "key_id": request.scope.get("state", {}).get("key_id")}
        return failed(router, endpoint_of(request.url.path), time.perf_counter(), event,
                      as_api_error(err, rid))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        started, rid = time.perf_counter(), new_request_id("models")
        event = {"request_id": rid, "key_id": request.state.key_id}
        try:
            result = oa.model_list(await router.versions())
        except Exception as err:  # noqa: BLE001 - every failure is answered in JSON
            return failed(router, "models", started, event, as_api_error(err, rid))
        if not router.record("models", 200, started, event):  # a key's use is traced too
            return error_response(ApiError(503, "the request could not be audited; retry "
                                           "shortly", "audit_unavailable"))
        return result

    @app.post("/v1/chat/completions")
    async def chat(body: oa.ChatCompletionRequest, request: Request) -> Any:
        return await complete(router, "chat", body, request.state.api_key)

    @app.post("/v1/completions")
    async def completions(body: oa.CompletionRequest, request: Request) -> Any:
        return await complete(router, "completions", body, request.state.api_key)

    return app


class Deadline:
    """A request's total time (serve.router.request_timeout_s) from when the router takes it up.

    The Router bounds each expert call by expert_timeout_s; a routed, streamed answer makes many
    such calls, so only this deadline bounds the whole: every await of the flow runs within
    what is left of it.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    async def within(self, awaitable: Awaitable[T]) -> T:
        """`awaitable`'s result, or 504 `request_timeout` once the deadline has passed. The
        awaitable is cancelled then, and with it the expert's work (Router.answer, open_stream
        and tier 2 cancel their call on the way out; a stream is cancelled when it ends)."""
        try:
            return await asyncio.wait_for(awaitable, max(self.at - time.monotonic(), 0.0))
        except asyncio.TimeoutError as err:
            raise ApiError(504, f"the request did not finish within this server's deadline of "
                           f"{self.seconds:g} s; ask for fewer tokens (max_tokens) or retry",
                           "request_timeout") from err


def error_response(err: ApiError) -> JSONResponse:
    """An OpenAI error object with the error's status and headers (503s say when to retry)."""
    return JSONResponse(oa.error_body(err.message, err.kind, err.code), err.status,
                        headers=err.headers)


def prompt_text(body: Any) -> str:
    """The prompt as the audit log keeps it: a completion's text, or `role: content` lines."""
    if isinstance(body, oa.ChatCompletionRequest):
        return "\n".join(f"{m.role}: {m.content}" for m in body.messages)
    return body.text()


def expert_payload(body: Any, max_tokens: int) -> dict[str, Any]:
    """What the expert's `generate` takes."""
    source = ({"messages": [m.model_dump() for m in body.messages]}
              if isinstance(body, oa.ChatCompletionRequest) else {"prompt": body.text()})
    return source | {"max_tokens": max_tokens, "temperature": body.temperature,
                     "top_p": body.top_p, "seed": body.seed, "stop": body.stops()}


async def complete(router: Any, endpoint: str, body: Any, key: ApiKey) -> Any:
    """One chat or text completion, streamed or not; every outcome is counted and audited.
    The key's rate limits are charged after the cheap checks and before any routing."""
    started, deadline = time.perf_counter(), Deadline(router.cfg.router.request_timeout_s)
    request_id = new_request_id("chatcmpl" if endpoint == "chat" else "cmpl")
    event: dict[str, Any] = {"request_id": request_id, "key_id": key.id, "model": body.model}
    if problem := router.audit_problem():  # fail closed: no answer that cannot be traced
        return failed(router, endpoint, started, event, ApiError(503, problem, "audit_unavailable"))
    try:
        event["prompt"] = prompt_text(body)
        checked_chars(event["prompt"], router.cfg.limits)
        payload = expert_payload(body, checked_max_tokens(body, router.cfg.limits))
        limited = await ratelimit.admit(router.limiter, key, router.cfg.limits, event["prompt"],
                                        payload["max_tokens"])
        text = (body.routing_text() if endpoint == "chat" else body.text())
        decision = await deadline.within(router.decide(text, body.model))
        event |= {"route": decision.route, "confidence": round(decision.confidence, 4),
                  "decided_by": decision.decided_by, "router_mode": decision.mode,
                  "tier1_confidence": decision.tier1_confidence}
        meta = {k: event[k] for k in ("route", "confidence", "decided_by", "tier1_confidence")}
        meta |= {"router_mode": decision.mode, "request_id": request_id}
        if body.stream:
            first, stream = await deadline.within(router.open_stream(decision.route, payload))
            meta |= served_by(first)
            return StreamingResponse(
                stream_events(router, endpoint, stream, first, meta, event, started, deadline),
                media_type="text/event-stream", headers=limited)
        items = await deadline.within(router.answer(decision.route, payload))
        meta |= served_by(items[0])
    except Exception as err:  # noqa: BLE001 - every failure is answered in JSON and audited
        return failed(router, endpoint, started, event, as_api_error(err, request_id))
    answer = "".join(i["text"] for i in items[1:])
    last = items[-1]
    usage = oa.usage(items[0]["prompt_tokens"], last["completion_tokens"])
    model = ROUTE_MODELS[meta["route"]]
    result = (oa.chat_response(request_id, model, answer, last["finish_reason"], usage, meta)
              if endpoint == "chat" else
              oa.completion_response(request_id, model, answer, last["finish_reason"], usage,
                                     meta))
    router.metrics.generation_ms.observe((time.perf_counter() - started) * 1e3,
                                         tags={"route": meta["route"]})
    if not router.record(endpoint, 200, started, event | grounding(last) | {
            "output": answer, **served_fields(meta),
            "finish_reason": last["finish_reason"], **usage}):
        return error_response(ApiError(503, "the answer could not be audited; retry shortly",
                                       "audit_unavailable"))
    return JSONResponse(jsonable_encoder(result), headers=limited)  # as FastAPI sends a dict


def checked_chars(prompt: str, limits: Any) -> None:
    """Refuse a prompt over the character cap before anything tokenizes or routes it: a
    1 MiB prompt must cost a len(), not a tokenizer pass."""
    if len(prompt) > limits.max_prompt_chars:
        raise ApiError(400, f"the prompt has {len(prompt)} characters; the limit is "
                       f"{limits.max_prompt_chars}. Shorten it.", "context_length_exceeded")


def checked_max_tokens(body: Any, limits: Any) -> int:
    """The request's max_tokens (or the default), refused above the recipe's cap."""
    wanted = body.wanted_tokens(limits.default_max_tokens)
    if wanted > limits.max_tokens:
        raise ApiError(400, f"max_tokens {wanted} exceeds this server's limit of "
                       f"{limits.max_tokens}", "max_tokens_too_large")
    return wanted


def expert_version(first: dict[str, Any]) -> str:
    """The model version from an expert's first item; its error becomes a 400."""
    if "error" in first:
        raise ApiError(400, first["error"], first["code"])
    return first["version"]


SERVED = ("expert_version", "adapter", "base_version")
"""What served an answer, in its `mortgagellm` field and its audit record: the expert's model
version; under serve.topology adapters that is the adapter's version, with the adapter's name
and the base model's version."""


def served_by(first: dict[str, Any]) -> dict[str, str]:
    """The SERVED fields of an expert's first item; its error becomes a 400."""
    version = expert_version(first)
    return {"expert_version": version} | {k: first[k] for k in SERVED[1:] if k in first}


def served_fields(meta: dict[str, Any]) -> dict[str, str]:
    """The SERVED fields of a response's meta, for its audit record."""
    return {k: meta[k] for k in SERVED if k in meta}


def grounding(last: dict[str, Any]) -> dict[str, Any]:
    """The audit fields of an expert's grounding check (serve.<expert>.ground), if it ran:
    whether the answer named a source, was verbatim, was resolved, and was changed, and the
    figures it states that the request does not (unsupported)."""
    return {"grounding": last["grounding"]} if "grounding" in last else {}


def failed(router: Any, endpoint: str, started: float, event: dict[str, Any],
           err: ApiError) -> JSONResponse:
    """Count and audit an error answer, then send it."""
    router.record(endpoint, err.status, started, event | {"error_code": err.code,
                                                          "error": err.message})
    return error_response(err)


async def stream_events(router: Any, endpoint: str, stream: Any, first: dict,
                        meta: dict[str, Any], event: dict[str, Any], started: float,
                        deadline: Deadline) -> AsyncIterator[str]:
    """SSE chunks of one answer, ending in [DONE]; audited when it ends, however it ends.

    A failure mid-way (the replica died, it stalled, it raised, the request's deadline passed)
    ends the stream with an error event and then [DONE], and is audited with its status. A
    client that goes away cancels this generator: the record then says 499. Either way the
    expert's stream is cancelled. Only the awaits of expert items run under the deadline, never
    a `yield`: a timeout there would cancel Starlette's sending, not this generator.
    """
    model, rid = ROUTE_MODELS[meta["route"]], meta["request_id"]
    texts, last, status = [], {"completion_tokens": 0, "finish_reason": None}, 499
    error: dict[str, str] = {}
    try:
        if endpoint == "chat":
            yield oa.sse(oa.chat_chunk(rid, model, {"role": "assistant", "content": ""}, None,
                                       meta))
        while (item := await deadline.within(router.next_item(stream))) is not None:
            texts.append(item["text"])
            last = item
            yield oa.sse(oa.chat_chunk(rid, model, {"content": item["text"]},
                                       item["finish_reason"], meta) if endpoint == "chat" else
                         oa.completion_response(rid, model, item["text"], item["finish_reason"],
                                                None, meta, chunk=True))
        status = 200
        yield oa.sse("[DONE]")
    except Exception as err:  # noqa: BLE001 - the client gets an error event, never a cut
        failure = as_api_error(err, rid)
        status, error = failure.status, {"error_code": failure.code, "error": failure.message}
        log.warning("stream %s failed mid-answer: %s", rid, err)
        yield oa.sse(oa.error_body(failure.message, failure.kind, failure.code))
        yield oa.sse("[DONE]")
    finally:
        stream.cancel()
        router.record(endpoint, status, started, event | error | grounding(last) | {
            "output": "".join(texts), **served_fields(meta),
            "finish_reason": last["finish_reason"],
            **oa.usage(first["prompt_tokens"], last["completion_tokens"])})
