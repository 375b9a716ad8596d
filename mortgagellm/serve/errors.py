"""What can go wrong answering a request, shared by the Router (router.py) and its FastAPI app
(http.py) without either importing the other: the error answer, and the Ray errors that mean
"retry once" or "overloaded".
"""

from __future__ import annotations

import uuid

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

RETRIED = (RayActorError,)
"""A replica that died or became unreachable mid-call: the call is made once more."""
OVERLOADED = (BackPressureError, DeploymentUnavailableError)
"""An expert's queue is full, or it has no replica: 503 with Retry-After."""


class ApiError(Exception):
    """An error answer: HTTP status, message, OpenAI error code."""

    def __init__(self, status: int, message: str, code: str):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def new_request_id(prefix: str) -> str:
    """OpenAI-style id, also the audit record's request id."""
    return f"{prefix}-{uuid.uuid4().hex}"
