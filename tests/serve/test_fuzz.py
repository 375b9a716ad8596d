"""Fuzzing the Router's app (http.py) without Ray: schemathesis cases made from the app's own
OpenAPI schema (served for the tests only), and hypothesis-made raw bodies, each sent with a
valid key, a wrong one or none. Whatever arrives, the answer is never a 5xx but an overload 503,
every error is an OpenAI error object, and each request leaves exactly one audit record with its
status, in a log that `mortgagellm audit verify` passes.

The router is FakeRouter (scripted experts) with the real parts a request touches before and
after them: routing.decide over a small tier 1, and Router.record writing through audit.py.
Cases are derandomized and bounded, so a run is the same every time and takes seconds.
"""

import json
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from mortgagellm import routing
from mortgagellm.cli import main
from mortgagellm.config import AuditSettings
from mortgagellm.serve import audit
from mortgagellm.serve.http import build_api
from tests.serve.fake_router import AUTH, FakeRouter

MODELS = [routing.AUTO_MODEL, *routing.MODEL_ROUTES, "gpt-4"]
KEYS = [AUTH, {}, {"Authorization": "Bearer wrong-key"}]
LIMITS = {"max_tokens": 16, "default_max_tokens": 4, "max_body_bytes": 8192,
          "max_prompt_chars": 2000}
"""Small enough that no stream outruns schemathesis's 20-event cut (which would cancel it)."""
BOUNDED = settings(max_examples=150, derandomize=True, deadline=None, database=None,
                   suppress_health_check=list(HealthCheck))
TIER1 = routing.Tier1({"loan": (1.0, 2.0), "escrow": (1.0, 2.0), "rate": (1.0, -2.0)},
                      0.0, 1.5, 120)
"""A hand-made tier 1: sure of some requests, unsure of most (those also go to tier 2)."""


class _Series:
    def inc(self, value: float = 1.0, tags: dict | None = None) -> None:
        assert value >= 0 and all(isinstance(v, str) for v in (tags or {}).values())

    def observe(self, value: float, tags: dict) -> None:
        assert value >= 0


class AuditedRouter(FakeRouter):
    """FakeRouter deciding with routing.decide and recording with the real Router.record, whose
    audit writer is a real AuditLog in a temporary directory."""

    def __init__(self, directory, key_file):
        super().__init__({"limits": LIMITS, "router": {"mode": "hybrid", "threshold": 0.9}})
        settings = AuditSettings(key_file=str(key_file), retention_days=30,
                                 retention_floor_days=30, pii_salt="fuzz")
        self.audit = audit.open_log(settings, directory, "router-fuzz")
        self.metrics = SimpleNamespace(**{name: _Series() for name in (
            "requests", "errors", "tokens", "audit_refused", "generation_ms")})

    def record(self, endpoint, status, started, event):
        from mortgagellm.serve.router import Router

        self.records.append((endpoint, status, event))
        return Router.func_or_class.record(self, endpoint, status, started, event)

    def audit_problem(self):
        return self.audit.problem()

    async def decide(self, text, model):
        async def tier2(request, clip_chars):
            return {"structured": 0.3, "conversational": 0.7}

        self.decided += 1
        return await routing.decide(text, model, self.cfg.router, TIER1, tier2)


@pytest.fixture
def audited(tmp_path):
    """(router, its app with /openapi.json, the log directory, the key file)."""
    key_file = tmp_path / "audit.key"
    key_file.write_text("k" * 40)
    logs = tmp_path / "audit"
    router = AuditedRouter(logs, key_file)
    yield SimpleNamespace(router=router, app=build_api(router, openapi=True), logs=logs,
                          key_file=key_file)
    router.audit.close()


def check_answer(status: int, content_type: str, text: str) -> None:
    """No 5xx but an overload 503; every error an OpenAI error object; every stream ends in
    [DONE], after an error event when it failed."""
    assert status < 500 or status == 503, (status, text)
    if status >= 400:
        assert content_type.startswith("application/json"), (status, content_type, text)
        error = json.loads(text)["error"]
        assert set(error) == {"message", "type", "param", "code"}, text
        assert isinstance(error["message"], str) and error["message"], text
        assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
        assert status != 503 or error["code"] == "overloaded", text
    elif content_type.startswith("text/event-stream"):
        events = [e.removeprefix("data: ") for e in text.split("\n\n") if e]
        assert events[-1] == "[DONE]", text
        assert all("error" not in json.loads(e) for e in events[:-1]), text
    else:
        json.loads(text)


def check_audit(logs, key_file, statuses: list[int]) -> None:
    """`audit verify` passes, and the log holds one request record per status sent."""
    assert main(["audit", "verify", str(logs), "--key-file", str(key_file)]) == 0
    records = [json.loads(line) for f in sorted(logs.glob("*.jsonl"))
               for line in f.read_text().splitlines()]
    assert sorted(r["status"] for r in records if r["type"] == "request") == sorted(statuses)


def steer(case, data) -> None:
    """Half the bodies get a served (or plainly unknown) model and a small max_tokens, so the
    fuzz reaches the experts and streams, not only the 404 of a random model name."""
    if isinstance(case.body, dict) and data.draw(st.booleans(), label="steer"):
        case.body["model"] = data.draw(st.sampled_from(MODELS), label="model")
        case.body.pop("max_completion_tokens", None)
        case.body["max_tokens"] = data.draw(st.integers(1, LIMITS["max_tokens"] + 2))


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schema_fuzz_answers_in_openai_json_and_audits_every_request(audited, mode):
    import schemathesis

    schema = schemathesis.openapi.from_asgi("/openapi.json", audited.app, headers=AUTH)
    assert set(schema) == {"/healthz", "/v1/models", "/v1/chat/completions", "/v1/completions"}
    statuses = []

    @BOUNDED
    @given(case=schema.as_strategy(generation_mode=schemathesis.GenerationMode(mode)),
           key=st.sampled_from(KEYS), data=st.data())
    def fuzz(case, key, data):
        steer(case, data)
        note(case.as_curl_command(headers=key))
        response = case.call(headers=key)
        check_answer(response.status_code, response.headers.get("content-type", [""])[0],
                     response.text)
        if case.path != "/healthz":  # probes are neither counted nor audited
            statuses.append(response.status_code)

    fuzz()
    audited.router.audit.close()
    assert len(statuses) > 100 and (200 if mode == "positive" else 400) in statuses
    check_audit(audited.logs, audited.key_file, statuses)


def text_with_surrogates():
    """Text as JSON can carry it: escapes may encode lone surrogates, which no UTF-8 encoder
    (the audit log's, a tokenizer's) takes."""
    return st.text(max_size=30) | st.text(st.characters() | st.characters(categories=["Cs"]),
                                          max_size=30)


def raw_bodies():
    """Bytes a client may send as a JSON body: well-formed requests with odd text, then bad
    encodings, deep nesting, NaN, and noise."""
    request = st.fixed_dictionaries({
        "model": st.sampled_from(MODELS[:3]),
        "messages": st.lists(st.fixed_dictionaries({
            "role": st.sampled_from(["user", "system", "assistant"]),
            "content": text_with_surrogates()}), min_size=1, max_size=3),
        "prompt": text_with_surrogates(), "max_tokens": st.integers(1, LIMITS["max_tokens"]),
        "stream": st.booleans(), "stop": st.lists(text_with_surrogates(), max_size=2)})
    as_json = request.map(lambda body: json.dumps(body).encode())
    return st.one_of(
        as_json, as_json,
        as_json.map(lambda b: b.replace(b'"max_tokens"', b'"temperature": NaN, "max_tokens"')),
        st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
        st.binary(max_size=64).map(lambda junk: b'{"model": "' + junk + b'"}'),
        st.binary(max_size=64))


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_raw_body_fuzz_answers_in_openai_json_and_audits_every_request(audited, path):
    from fastapi.testclient import TestClient

    statuses = []
    with TestClient(audited.app, raise_server_exceptions=False) as client:

        @BOUNDED
        @given(body=raw_bodies(), key=st.sampled_from(KEYS),
               content_type=st.sampled_from(["application/json"] * 4 + ["text/plain", None]))
        def fuzz(body, key, content_type):
            headers = key | ({"content-type": content_type} if content_type else {})
            note(f"{headers} {body!r}")
            response = client.post(path, content=body, headers=headers)
            check_answer(response.status_code, response.headers.get("content-type", ""),
                         response.text)
            statuses.append(response.status_code)

        fuzz()
    audited.router.audit.close()
    assert 200 in statuses and 400 in statuses and 401 in statuses
    check_audit(audited.logs, audited.key_file, statuses)


def test_production_serves_no_schema():
    """openapi=True is for these tests only: the app a replica serves has no schema or docs."""
    from fastapi.testclient import TestClient

    with TestClient(build_api(FakeRouter()), raise_server_exceptions=False) as client:
        for path in ("/openapi.json", "/docs", "/redoc"):
            assert client.get(path, headers=AUTH).status_code == 404


def latin1(text: str) -> bytes:
    """A header value as ASGI carries it (superscript digits pass str.isdigit())."""
    return text.encode("latin-1")


def test_header_fuzz_answers_in_openai_json_and_audits_every_request(audited):
    """Authorization and Content-Length as any bytes a proxy might pass on (latin-1, as ASGI
    gives them), straight into the ASGI app: no test client cleans them up first."""
    from anyio.from_thread import start_blocking_portal

    statuses = []
    body = json.dumps({"model": "mortgagellm-chat", "max_tokens": 2,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()

    async def send_raw(headers: list[tuple[bytes, bytes]]) -> tuple[int, str, str]:
        sent = []

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "http_version": "1.1", "method": "POST", "scheme": "http",
                 "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
                 "query_string": b"", "root_path": "", "headers": headers,
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        await audited.app(scope, receive, send)
        head = dict(sent[0]["headers"])
        return (sent[0]["status"], head.get(b"content-type", b"").decode(),
                b"".join(m.get("body", b"") for m in sent[1:]).decode())

    with start_blocking_portal() as portal:

        @BOUNDED
        @given(auth=st.sampled_from([b"Bearer good-key", b"bearer  good-key "]) | st.binary(),
               length=st.sampled_from([str(len(body)).encode(), None]) | st.binary(max_size=8)
               | st.text("0123456789\xb2\xb3\xb9 +-", max_size=6).map(latin1))
        def fuzz(auth, length):
            headers = [(b"content-type", b"application/json"), (b"authorization", auth)]
            headers += [(b"content-length", length)] if length is not None else []
            note(repr(headers))
            status, content_type, text = portal.call(send_raw, headers)
            check_answer(status, content_type, text)
            statuses.append(status)

        fuzz()
    audited.router.audit.close()
    assert {200, 400, 401} <= set(statuses)
    check_audit(audited.logs, audited.key_file, statuses)
