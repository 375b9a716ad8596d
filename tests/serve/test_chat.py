"""`mortgagellm chat` against the real FastAPI app over a scripted router (no Ray): it streams
the answer, shows who answered, keeps the conversation, and reports refusals and mid-stream
failures as errors without ending the session."""

import io

import openai
import pytest
from fastapi.testclient import TestClient
from ray.exceptions import RayActorError

from mortgagellm import cli
from mortgagellm.serve import chat
from mortgagellm.serve.http import build_api
from tests.serve.fake_router import KEY, FakeRouter


def client_of(router, key=KEY):
    """The openai client the chat command builds, but over the app in-process."""
    transport = TestClient(build_api(router), raise_server_exceptions=False)
    return openai.OpenAI(base_url="http://testserver/v1", api_key=key, max_retries=0,
                         http_client=transport)


class SeenMessages(FakeRouter):
    """Remembers what each request asked, to check the conversation is carried along."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.payloads = []

    async def open_stream(self, route, payload):
        self.payloads.append(payload)
        return await super().open_stream(route, payload)


def test_answers_stream_with_the_route_confidence_and_version():
    router = SeenMessages()
    out, err = io.StringIO(), io.StringIO()
    failures = chat.converse(client_of(router), "mortgagellm-chat",
                             ["What is escrow?\n", "\n", "And the APR?\n"], 3, out, err)
    assert failures == 0 and err.getvalue() == ""
    # the fake expert answers "a" per token: 3 tokens, then the trace line, twice
    lines = out.getvalue().splitlines()
    assert lines[0] == "aaa" and lines[2] == "aaa"
    for line in (lines[1], lines[3]):
        assert line.startswith("[conversational expert · confidence 1.00 (client) · version v1")
        assert "chatcmpl-" in line  # the request id: what the audit log is searched by
    # the second request carries the first question and its answer
    assert [m["content"] for m in router.payloads[1]["messages"]] == [
        "What is escrow?", "aaa", "And the APR?"]
    assert len(router.records) == 2 and {r[1] for r in router.records} == {200}


def test_reset_forgets_the_conversation_and_quit_stops_reading():
    router = SeenMessages()
    out = io.StringIO()
    chat.converse(client_of(router), "mortgagellm", ["one", "/reset", "two", "/quit", "three"],
                  2, out, io.StringIO())
    assert [len(p["messages"]) for p in router.payloads] == [1, 1]  # "three" never sent
    assert "(conversation cleared)" in out.getvalue()


def test_a_refusal_is_reported_and_the_session_goes_on():
    router = SeenMessages()
    err = io.StringIO()
    failures = chat.converse(client_of(router, key="wrong"), "mortgagellm", ["hello"], 2,
                             io.StringIO(), err)
    assert failures == 1
    assert "401 invalid_api_key" in err.getvalue()


def test_a_stream_cut_by_a_dead_replica_is_an_error_not_a_short_answer():
    router = SeenMessages(stream_fail=RayActorError())
    err = io.StringIO()
    failures = chat.converse(client_of(router), "mortgagellm", ["first", "second"], 3,
                             io.StringIO(), err)
    assert failures == 2
    assert "expert_unavailable" in err.getvalue()
    # a failed turn is left out of the conversation: the second request holds only itself
    assert [m["content"] for m in router.payloads[1]["messages"]] == ["second"]


def test_the_command_needs_a_key_and_says_where_the_demo_keeps_one(monkeypatch, capsys):
    monkeypatch.delenv("MORTGAGELLM_API_KEY", raising=False)
    assert cli.main(["chat", "-m", "hi"]) == 2
    assert "api_keys.secret" in capsys.readouterr().err


def test_an_unreachable_server_is_named(monkeypatch, capsys):
    monkeypatch.setenv("MORTGAGELLM_API_KEY", "k")
    with socket_free_port() as port:
        code = cli.main(["chat", "--url", f"http://127.0.0.1:{port}/v1", "-m", "hi"])
    assert code == 1
    assert f"cannot reach http://127.0.0.1:{port}/v1" in capsys.readouterr().err


def test_unknown_arguments_are_refused():
    with pytest.raises(SystemExit, match="unrecognised arguments --temperature"):
        cli.main(["chat", "--temperature", "0.5"])


class socket_free_port:
    """A loopback port nothing listens on (bound, not listening, while the test runs)."""

    def __enter__(self):
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc):
        self.sock.close()
