"""The OpenAI-compatible wire format: request schemas and response / stream-chunk builders.

Pure data in, JSON-ready dicts out; the Router calls these. Deviations from OpenAI, on purpose:
`temperature` defaults to 0 (greedy: answers in a regulated domain should be reproducible), n is 1,
and every response and chunk carries an extra field `mortgagellm` (ROUTING_FIELD):

    {"route": "structured" | "conversational",
     "confidence": probability of that route under what decided it (1.0 when the client chose),
     "decided_by": "client" | "tier1" | "fewshot" | "hybrid" | "fallback" (tier 2 failed or
                   abstained: serve.router.fallback_route) | "tier1_fallback" (the same, with
                   no fallback_route: tier 1's guess),
     "router_mode": the recipe's serve.router.mode,
     "tier1_confidence": tier 1's own confidence, or null when tier 1 did not run,
     "expert_version": registry version (manifest content hash) of the expert's model
                       (serve.topology adapters: of the route's LoRA adapter),
     "adapter", "base_version": under serve.topology adapters only: the adapter that answered
                       (its route's name) and the version of the base model it runs on,
     "request_id": the id also written to the audit log}

The `openai` client exposes it as `response.model_extra["mortgagellm"]`.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

ROUTING_FIELD = "mortgagellm"
MAX_STOPS = 4
"""Stop sequences per request, as OpenAI and TGI (max_stop_sequences) allow."""
MAX_STOP_CHARS = 64
"""Characters per stop sequence: the decoder checks every stop on every token, so a long one
would slow the whole batch on that replica."""
SEED_RANGE = (-(2**63), 2**63 - 1)
"""A seed is an int64 (OpenAI's type, and what torch.Generator.manual_seed takes)."""


def _unicode(text: str) -> str:
    """Refuse a lone surrogate: JSON's escapes can carry one ("\\ud800" without its pair), but
    it is no Unicode text, and every UTF-8 encoder after the door (a tokenizer, the audit log)
    raises on it."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(f"contains a lone surrogate ({ascii(text[err.start])} at character "
                             f"{err.start}); send valid UTF-8 text") from None
    return text


Text = Annotated[str, AfterValidator(_unicode)]
"""A request string: any Unicode text, checked to be encodable."""


class ChatMessage(BaseModel):
    """One turn of a conversation; content is plain text."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: Text


class _Sampling(BaseModel):
    """Fields shared by chat and text completions (unknown OpenAI fields are ignored)."""

    model_config = ConfigDict(extra="ignore")
    model: Text = Field(description="mortgagellm (route for me), mortgagellm-structured or "
                        "mortgagellm-chat.")
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stop: Text | list[Text] | None = Field(
        None, description=f"Up to {MAX_STOPS} sequences of up to {MAX_STOP_CHARS} characters.")
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="Only one choice per request.")
    user: Text | None = None

    @field_validator("stop")
    @classmethod
    def _bounded_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        """At most MAX_STOPS sequences of at most MAX_STOP_CHARS characters, checked at the
        door (as TGI does) so no request can make the decoder's stop scan expensive."""
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOPS:
            raise ValueError(f"stop has {len(stops)} sequences; at most {MAX_STOPS} are allowed")
        for i, s in enumerate(stops):
            if len(s) > MAX_STOP_CHARS:
                raise ValueError(f"stop[{i}] has {len(s)} characters; at most {MAX_STOP_CHARS} "
                                 "are allowed")
        return stop

    def stops(self) -> list[str]:
        """Stop sequences as a list (a string or up to MAX_STOPS strings)."""
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def wanted_tokens(self, default: int) -> int | None:
        """max_completion_tokens or max_tokens, else the default."""
        return self.max_completion_tokens or self.max_tokens or default


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)

    def routing_text(self) -> str:
        """What the router reads: the last user turn."""
        users = [m.content for m in self.messages if m.role == "user"]
        return users[-1] if users else self.messages[-1].content


class CompletionRequest(_Sampling):
    """POST /v1/completions (one prompt per request)."""

    prompt: Text | list[Text]

    def text(self) -> str:
        """The single prompt."""
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise ValueError(f"prompt is a list of {len(self.prompt)}; send exactly one prompt")
        return self.prompt[0]


def chat_response(request_id: str, model: str, text: str, finish_reason: str,
                  usage: dict[str, int], meta: dict[str, Any]) -> dict[str, Any]:
    """A complete chat.completion object."""
    return {"id": request_id, "object": "chat.completion", "created": int(time.time()),
            "model": model, "usage": usage, ROUTING_FIELD: meta,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish_reason}]}


def chat_chunk(request_id: str, model: str, delta: dict[str, str], finish_reason: str | None,
               meta: dict[str, Any]) -> dict[str, Any]:
    """One chat.completion.chunk of a stream."""
    return {"id": request_id, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, ROUTING_FIELD: meta,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


def completion_response(request_id: str, model: str, text: str, finish_reason: str | None,
                        usage: dict[str, int] | None, meta: dict[str, Any],
                        chunk: bool = False) -> dict[str, Any]:
    """A text_completion object; the same shape is a stream chunk (usage None until the end)."""
    body = {"id": request_id, "object": "text_completion", "created": int(time.time()),
            "model": model, ROUTING_FIELD: meta,
            "choices": [{"index": 0, "text": text, "finish_reason": finish_reason,
                         "logprobs": None}]}
    return body if chunk else body | {"usage": usage}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's usage block."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def model_list(versions: dict[str, str | None]) -> dict[str, Any]:
    """GET /v1/models: the router and both experts, with the experts' versions."""
    from mortgagellm.routing import AUTO_MODEL, MODEL_ROUTES

    rows = [{"id": AUTO_MODEL, "object": "model", "owned_by": "mortgagellm",
             ROUTING_FIELD: {"route": None}}]
    rows += [{"id": name, "object": "model", "owned_by": "mortgagellm",
              ROUTING_FIELD: {"route": route, "expert_version": versions.get(route)}}
             for name, route in MODEL_ROUTES.items()]
    return {"object": "list", "data": rows}


def error_body(message: str, kind: str, code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event; the stream ends with sse('[DONE]')."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"
