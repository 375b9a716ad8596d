"""`mortgagellm chat`: a terminal client of a served endpoint. It streams each answer as it is
decoded and shows which expert answered (route, router confidence and how it was decided, the
expert's model version), the trace a reviewer needs to find the request in the audit log.

Run: export MORTGAGELLM_API_KEY=$(cat runs/cpu-demo/serve/api_keys.secret)
     mortgagellm chat                       # talks to http://127.0.0.1:8000/v1
     mortgagellm chat -m "What is the APR on this loan? ..."   # one question, then exit

Lines starting with `/` are commands: /reset forgets the conversation, /quit leaves.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, TextIO

from mortgagellm.serve.openai_api import ROUTING_FIELD

DEFAULT_URL = "http://127.0.0.1:8000/v1"
KEY_ENV = "MORTGAGELLM_API_KEY"
PROMPT = "you> "


class ChatError(Exception):
    """A failure the user can act on (no key, server unreachable, refused request)."""


def api_key(env_var: str = KEY_ENV) -> str:
    """The API key from the environment; the error says where the demo keeps one."""
    key = os.environ.get(env_var, "").strip()
    if not key:
        raise ChatError(f"set ${env_var} to an API key of the endpoint (for `mortgagellm serve "
                        "configs/cpu-demo.yaml` it is in runs/cpu-demo/serve/api_keys.secret)")
    return key


def trace(meta: dict[str, Any] | None) -> str:
    """One line naming who answered: route, confidence (and the tier that decided), version."""
    if not meta:
        return "[no routing information in the response]"
    version = str(meta.get("expert_version") or "?")[:12]
    return (f"[{meta.get('route', '?')} expert · confidence {meta.get('confidence', 0):.2f} "
            f"({meta.get('decided_by', '?')}) · version {version} · {meta.get('request_id')}]")


def stream_answer(client: Any, model: str, messages: list[dict[str, str]], max_tokens: int,
                  out: TextIO) -> tuple[str, dict[str, Any] | None]:
    """Send the conversation, write the answer to `out` as it streams; (answer, routing meta)."""
    import openai

    pieces, meta = [], None
    try:
        for chunk in client.chat.completions.create(model=model, messages=messages,
                                                    max_tokens=max_tokens, stream=True):
            meta = meta or (chunk.model_extra or {}).get(ROUTING_FIELD)
            for choice in chunk.choices:
                if choice.delta.content:
                    pieces.append(choice.delta.content)
                    out.write(choice.delta.content)
                    out.flush()
    except openai.APIConnectionError as err:
        raise ChatError(f"cannot reach {client.base_url}: {err} (is `mortgagellm serve` "
                        "running, and is --url right?)") from err
    except openai.APIError as err:  # a refusal, or an error event that ended the stream
        body = err.body if isinstance(err.body, dict) else {}
        code = body.get("code") or getattr(err, "code", None)
        status = getattr(err, "status_code", None)
        raise ChatError(f"{status or 'stream'} {code or ''}: {body.get('message') or err}"
                        ) from err
    return "".join(pieces), meta


def converse(client: Any, model: str, lines: Iterable[str], max_tokens: int, out: TextIO,
             err: TextIO) -> int:
    """The chat loop over input lines; returns the number of requests that failed. A failed
    request is reported and left out of the conversation, so the user can rephrase."""
    messages: list[dict[str, str]] = []
    failures = 0
    for line in lines:
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            break
        if text == "/reset":
            messages.clear()
            out.write("(conversation cleared)\n")
            continue
        messages.append({"role": "user", "content": text})
        try:
            answer, meta = stream_answer(client, model, messages, max_tokens, out)
        except ChatError as failure:
            messages.pop()
            failures += 1
            err.write(f"\nerror: {failure}\n")
            continue
        messages.append({"role": "assistant", "content": answer})
        out.write(f"\n{trace(meta)}\n")
    return failures


def prompts(stdin: TextIO, out: TextIO) -> Iterable[str]:
    """Lines typed at a prompt (the prompt is shown only on a terminal)."""
    while True:
        if stdin.isatty():
            out.write(PROMPT)
            out.flush()
        line = stdin.readline()
        if not line:
            return
        yield line


def main(url: str, model: str, max_tokens: int, message: str | None, key_env: str,
         stdin: TextIO, out: TextIO, err: TextIO) -> int:
    """`mortgagellm chat`: exit 0 when every request was answered, 1 otherwise, 2 without a
    key."""
    import openai

    try:
        key = api_key(key_env)
    except ChatError as failure:
        err.write(f"mortgagellm: {failure}\n")
        return 2
    client = openai.OpenAI(base_url=url, api_key=key, max_retries=0)
    lines = [message] if message is not None else prompts(stdin, out)
    return 1 if converse(client, model, lines, max_tokens, out, err) else 0
