"""What can go wrong answering a request, shared by the Router (router.py) and its FastAPI app
(http.py) without either importing the other: the error answer, the Ray errors that mean
"retry once" or "overloaded", and the one map from any exception to an answer.
"""

from __future__ import annotations

import logging
import uuid

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from mortgagellm.routing import UnknownModel

log = logging.getLogger(__name__)
RETRIED = (RayActorError,)
"""A replica that died or became unreachable mid-call: the call is made once more."""
OVERLOADED = (BackPressureError, DeploymentUnavailableError)
"""An expert's queue is full, or it has no replica: 503 with Retry-After."""


CODES: dict[str, frozenset[int]] = {code: frozenset(statuses) for code, statuses in {
    "invalid_request": {400}, "bad_request": {400}, "context_length_exceeded": {400},
    "max_tokens_too_large": {400}, "invalid_value": {400},
    "invalid_api_key": {401}, "unsupported_protocol": {403},
    "model_not_found": {404}, "unknown_endpoint": {404, 405}, "request_too_large": {413},
    "rate_limit_exceeded": {429},
    "expert_error": {500}, "internal_error": {500},
    "overloaded": {503}, "expert_unavailable": {503}, "audit_unavailable": {503},
    "rate_limits_unavailable": {503},
    "expert_timeout": {504}, "request_timeout": {504},
}.items()}
"""Every error code the app answers with, and its HTTP statuses: the README's table of limits and
error codes lists exactly these (tests/serve/test_errors.py), and an answer with a code or
status not here is refused where it is made, so the table cannot fall behind the code."""


def checked_code(status: int, code: str) -> str:
    """`code`, when CODES gives it this status; a ValueError naming both otherwise."""
    if status not in CODES.get(code, ()):
        raise ValueError(f"error code {code!r} with status {status} is not in serve.errors.CODES;"
                         " add it there and to the README's table of error codes")
    return code


class ApiError(Exception):
    """An error answer: HTTP status, message, OpenAI error code, extra headers; its OpenAI
    `type` is invalid_request_error below 500 and server_error from 500, unless given (a 429
    says "requests" or "tokens", as OpenAI's do)."""

    def __init__(self, status: int, message: str, code: str,
                 headers: dict[str, str] | None = None, kind: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, checked_code(status, code)
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or ({"retry-after": "1"} if status == 503 else {})


def as_api_error(err: BaseException, request_id: str) -> ApiError:
    """The answer to an exception raised while serving a request.

    A RayTaskError is checked before ValueError on purpose: Ray makes a remote ValueError an
    instance of both, and an expert's failure is the server's fault, not the client's; its
    remote traceback goes to the log, never to the client.
    """
    if isinstance(err, ApiError):
        return err
    if isinstance(err, UnknownModel):
        return ApiError(404, str(err), "model_not_found")
    if isinstance(err, RETRIED):
        return ApiError(503, "an expert replica failed; retry shortly", "expert_unavailable")
    if isinstance(err, RayTaskError):
        log.error("request %s: expert failed: %s", request_id, err)
        return ApiError(500, f"the expert failed ({type(err.cause).__name__}); the error is "
                        f"logged under request id {request_id}", "expert_error")
    if isinstance(err, ValueError):
        return ApiError(400, str(err), "invalid_value")
    log.error("request %s failed", request_id, exc_info=err)
    return ApiError(500, f"internal error; logged under request id {request_id}",
                    "internal_error")


def new_request_id(prefix: str) -> str:
    """OpenAI-style id, also the audit record's request id."""
    return f"{prefix}-{uuid.uuid4().hex}"
