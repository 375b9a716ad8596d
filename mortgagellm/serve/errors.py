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


class ApiError(Exception):
    """An error answer: HTTP status, message, OpenAI error code, extra headers; its OpenAI
    `type` is invalid_request_error below 500 and server_error from 500, unless given (a 429
    says "requests" or "tokens", as OpenAI's do)."""

    def __init__(self, status: int, message: str, code: str,
                 headers: dict[str, str] | None = None, kind: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
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
