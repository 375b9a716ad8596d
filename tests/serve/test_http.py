"""http.py without Ray: the FastAPI app over a scripted router (fake_router.py). Every failure
is an OpenAI error object, counted and audited under a fixed endpoint name; the door's bounds
(stop sequences, seed, prompt characters) hold before any routing or model work."""

import asyncio
import json

import pytest
from fastapi.testclient import TestClient
from ray.exceptions import RayActorError, RayTaskError

from mortgagellm.serve.http import build_api
from tests.serve.fake_router import AUTH, FakeRouter

JSON = {"content-type": "application/json"}
CHAT = {"model": "mortgagellm-chat", "max_tokens": 3,
        "messages": [{"role": "user", "content": "What is escrow?"}]}


def client(router):
    return TestClient(build_api(router), raise_server_exceptions=False)


def openai_error(response, status, kind, code=None):
    """Assert an OpenAI error object with this status, type (and code); returns its message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == kind
    if code is not None:
        assert error["code"] == code
    return error["message"]


def test_malformed_json_and_schema_errors_are_400_invalid_request_error():
    router = FakeRouter()
    with client(router) as c:
        bad_json = c.post("/v1/chat/completions", content=b"{not json",
                          headers=AUTH | {"content-type": "application/json"})
        no_messages = c.post("/v1/chat/completions", json=CHAT | {"messages": []}, headers=AUTH)
    openai_error(bad_json, 400, "invalid_request_error", "invalid_request")
    assert "messages" in openai_error(no_messages, 400, "invalid_request_error")
    assert [(e, s) for e, s, _ in router.records] == [("chat", 400), ("chat", 400)]


def test_an_unexpected_expert_error_is_a_json_500_and_audited():
    router = FakeRouter(expert=RuntimeError("secret internal detail"))
    with client(router) as c:
        response = c.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    message = openai_error(response, 500, "server_error", "internal_error")
    assert "secret internal detail" not in message
    ((endpoint, status, event),) = router.records
    assert (endpoint, status, event["error_code"]) == ("chat", 500, "internal_error")
    assert event["request_id"] in message


def test_a_remote_value_error_is_a_500_without_its_traceback():
    """Ray makes a remote ValueError an instance of ValueError too: it is still the expert's
    failure (500), and the remote traceback stays in the log."""
    remote = RayTaskError("generate", "Traceback (most recent call last):\n  secret.py line 1",
                          ValueError("bad tensor")).as_instanceof_cause()
    assert isinstance(remote, ValueError)
    router = FakeRouter(expert=remote)
    with client(router) as c:
        response = c.post("/v1/completions", headers=AUTH,
                          json={"model": "mortgagellm", "prompt": "x", "max_tokens": 2})
    message = openai_error(response, 500, "server_error", "expert_error")
    assert "Traceback" not in response.text and "secret.py" not in response.text
    assert "ValueError" in message
    assert router.records[0][1] == 500


def test_models_failure_is_json_too():
    router = FakeRouter(expert=RuntimeError("down"))
    with client(router) as c:
        openai_error(c.get("/v1/models", headers=AUTH), 500, "server_error", "internal_error")
    assert router.records[0][:2] == ("models", 500)


def sse_events(response):
    return [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]


@pytest.mark.parametrize("fail, status, code", [
    (RuntimeError("decode thread crashed"), 500, "internal_error"),
    (RayActorError(), 503, "expert_unavailable"),  # the replica died mid-stream
])
def test_a_stream_that_fails_ends_with_an_error_event_then_done(fail, status, code):
    router = FakeRouter(stream_fail=fail)
    with client(router) as c:
        response = c.post("/v1/chat/completions", json=CHAT | {"stream": True}, headers=AUTH)
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert (error["type"], error["code"]) == ("server_error", code)
    assert len(events) == 1 + 3 + 2  # role chunk, three tokens, error, [DONE]
    ((endpoint, recorded, event),) = router.records
    assert (endpoint, recorded, event["error_code"]) == ("chat", status, code)
    assert event["output"] == "aaa" and router.streams[0].cancelled


def test_a_finished_stream_is_audited_as_200():
    router = FakeRouter()
    with client(router) as c:
        events = sse_events(c.post("/v1/chat/completions", json=CHAT | {"stream": True},
                                   headers=AUTH))
    assert events[-1] == "[DONE]" and all("error" not in e for e in events)
    assert router.records[0][1] == 200


@pytest.mark.parametrize("stop, what", [
    (["a", "b", "c", "d", "e"], "stop has 5 sequences; at most 4"),
    ("x" * 65, "stop[0] has 65 characters; at most 64"),
    (["ok", "y" * 200_000], "stop[1] has 200000 characters; at most 64"),
])
def test_stop_sequences_are_bounded_at_the_door(stop, what):
    router = FakeRouter()
    with client(router) as c:
        response = c.post("/v1/chat/completions", json=CHAT | {"stop": stop}, headers=AUTH)
    assert what in openai_error(response, 400, "invalid_request_error")
    assert router.decided == 0


@pytest.mark.parametrize("seed", [2**70, -(2**63) - 1, 2**63])
def test_seeds_outside_int64_are_400_at_the_door(seed):
    router = FakeRouter()
    with client(router) as c:
        response = c.post("/v1/chat/completions", json=CHAT | {"seed": seed}, headers=AUTH)
    assert "seed" in openai_error(response, 400, "invalid_request_error")
    assert router.decided == 0
    with client(router) as c:
        ok = c.post("/v1/chat/completions", json=CHAT | {"seed": 2**63 - 1}, headers=AUTH)
    assert ok.status_code == 200


def test_unknown_paths_are_counted_as_other_never_by_their_path():
    router = FakeRouter()
    hostile = "/v1/" + "x" * 300
    with client(router) as c:
        unknown = c.get(hostile, headers=AUTH)
        no_key = c.get("/admin/" + "y" * 50)
        wrong_method = c.get("/v1/chat/completions", headers=AUTH)
    openai_error(unknown, 404, "invalid_request_error", "unknown_endpoint")
    openai_error(no_key, 401, "invalid_request_error", "invalid_api_key")
    openai_error(wrong_method, 405, "invalid_request_error", "unknown_endpoint")
    assert [(e, s) for e, s, _ in router.records] == [("other", 404), ("other", 401),
                                                      ("chat", 405)]
    assert "xxxx" not in json.dumps(router.records) and "yyyy" not in unknown.text


def test_an_overlong_prompt_is_refused_by_its_length_before_routing():
    router = FakeRouter({"limits": {"max_prompt_chars": 1000}})
    long = CHAT | {"messages": [{"role": "user", "content": "e" * 1000}]}
    with client(router) as c:
        response = c.post("/v1/chat/completions", json=long, headers=AUTH)
        fits = c.post("/v1/chat/completions", headers=AUTH,
                      json=CHAT | {"messages": [{"role": "user", "content": "e" * 990}]})
    message = openai_error(response, 400, "invalid_request_error", "context_length_exceeded")
    assert "1006 characters; the limit is 1000" in message  # "user: " + 1000
    assert router.decided == 1 and fits.status_code == 200  # only the one that fits


def test_a_failure_outside_the_handlers_try_is_still_json(monkeypatch):
    router = FakeRouter()
    monkeypatch.delattr(router.metrics, "generation_ms")  # fails after the expert answered
    with client(router) as c:
        response = c.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    openai_error(response, 500, "server_error", "internal_error")
    assert router.records[-1][:2] == ("chat", 500)


@pytest.mark.timeout(60)  # without a deadline the held answer never comes: the test would hang
def test_an_answer_past_the_request_deadline_is_a_json_504_and_the_expert_call_cancelled():
    router = FakeRouter({"router": {"request_timeout_s": 1.0}})  # ample to reach the expert
    router.hold = asyncio.Event()  # the expert never answers; its per-call timeout is 120 s
    with client(router) as c:
        response = c.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert "deadline of 1 s" in openai_error(response, 504, "server_error", "request_timeout")
    ((endpoint, status, event),) = router.records
    assert (endpoint, status, event["error_code"]) == ("chat", 504, "request_timeout")
    assert router.cancelled == 1


@pytest.mark.timeout(60)
def test_a_stream_past_the_request_deadline_ends_with_an_error_event_then_done():
    """Every item comes well within any per-call timeout, but 100 of them take 10 s: the
    request's deadline (1 s) ends the stream, and the expert's stream is cancelled."""
    router = FakeRouter({"router": {"request_timeout_s": 1.0}})
    router.pace = 0.1
    with client(router) as c:
        response = c.post("/v1/chat/completions", headers=AUTH,
                          json=CHAT | {"stream": True, "max_tokens": 100})
    events = sse_events(response)
    assert response.status_code == 200 and events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert (error["type"], error["code"]) == ("server_error", "request_timeout")
    ((endpoint, status, event),) = router.records
    assert (endpoint, status, event["error_code"]) == ("chat", 504, "request_timeout")
    assert event["output"] == "a" * (len(events) - 3) != "a" * 100  # role, error, [DONE]
    assert router.streams[0].cancelled


@pytest.mark.parametrize("body", [
    b'{"model": "\xff\xfe"}',  # not UTF-8
    b"[" * 5000 + b"]" * 5000,  # deeper than the JSON parser goes
])
def test_a_body_fastapi_cannot_parse_is_an_openai_400_and_audited(body):
    """Found by fuzzing: FastAPI answered these {"detail": ...}, outside the OpenAI format,
    and nothing was counted or audited."""
    router = FakeRouter()
    with client(router) as c:
        response = c.post("/v1/chat/completions", content=body, headers=AUTH | JSON)
    assert "malformed request" in openai_error(response, 400, "invalid_request_error",
                                               "invalid_request")
    ((endpoint, status, event),) = router.records
    assert (endpoint, status, event["key_id"]) == ("chat", 400, "tester")


def test_a_model_list_is_audited_like_every_request():
    """Found by fuzzing: GET /v1/models answered 200 without a record (its failures had one)."""
    router = FakeRouter()
    with client(router) as c:
        assert c.get("/v1/models", headers=AUTH).status_code == 200
    ((endpoint, status, event),) = router.records
    assert (endpoint, status, event["key_id"]) == ("models", 200, "tester")


@pytest.mark.parametrize("field, value", [
    ("messages", [{"role": "user", "content": "a\ud800b"}]),
    ("model", "mortgagellm\udfff"),
    ("stop", ["ok", "\ud83d"]),
    ("user", "\udc00"),
])
def test_lone_surrogates_are_400_at_the_door(field, value):
    """Found by fuzzing: JSON escapes may carry a lone surrogate ("\\ud800"), which no UTF-8
    encoder after the door takes (the audit writer died on it; a tokenizer raises). Refused
    before routing, naming the field."""
    router = FakeRouter()
    with client(router) as c:
        response = c.post("/v1/chat/completions", headers=AUTH | JSON,
                          content=json.dumps(CHAT | {field: value}).encode())
    message = openai_error(response, 400, "invalid_request_error", "invalid_request")
    assert field in message and "lone surrogate" in message
    assert router.decided == 0
    with client(router) as c:  # a pair is one character, and fine
        ok = c.post("/v1/chat/completions", headers=AUTH | JSON, content=json.dumps(
            CHAT | {"messages": [{"role": "user", "content": "\U0001F3E0"}]}).encode())
    assert ok.status_code == 200
