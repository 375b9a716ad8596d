"""door.py: hashed keys, constant-time lookup, and the ASGI door's 401 / 413 decided from the
headers alone (the test's receive() records whether the body was ever read)."""

import asyncio
import hashlib
import json

import pytest

from mortgagellm.serve import door
from mortgagellm.serve.door import ApiKey, Door, find_key, hash_key, load_keys, parse_keys


def test_keys_are_stored_as_sha256_and_looked_up_by_hash(tmp_path, monkeypatch):
    secret, line = door.new_key("team-a")
    assert secret not in line
    assert line == "team-a:sha256:" + hashlib.sha256(secret.encode()).hexdigest()
    (tmp_path / "keys").write_text(f"# comment\n{line}\n\n")
    monkeypatch.setenv("MLLM_TEST_KEYS", f"ops:{hash_key('s3cret')},ci:{hash_key('other')}")
    keys = load_keys(str(tmp_path / "keys"), "MLLM_TEST_KEYS")
    assert sorted(k.id for k in keys.values()) == ["ci", "ops", "team-a"]
    assert find_key(f"Bearer {secret}", keys) == ApiKey("team-a")
    assert find_key("bearer s3cret", keys).id == "ops"
    assert find_key("Bearer wrong", keys) is None
    assert find_key("Basic s3cret", keys) is None
    assert find_key(None, keys) is None


def test_a_plain_key_in_the_keys_file_is_refused_with_advice():
    with pytest.raises(ValueError, match="store hashes, never keys"):
        parse_keys("team-a:mllm-plaintextkey", "keys")


def test_compare_runs_over_every_stored_hash(monkeypatch):
    """No early exit: the number of comparisons does not depend on where the key sits."""
    calls = []
    real = door.hmac.compare_digest
    monkeypatch.setattr(door.hmac, "compare_digest",
                        lambda a, b: calls.append(1) or real(a, b))
    keys = {hashlib.sha256(f"k{i}".encode()).hexdigest(): ApiKey(f"id{i}") for i in range(5)}
    for presented in ("k0", "k4", "nope"):
        calls.clear()
        find_key(f"Bearer {presented}", keys)
        assert len(calls) == 5


def call(app, headers, chunks=(b"",), path="/v1/completions"):
    """Run the ASGI door once; returns (status, JSON body or None, receive() calls, scope)."""
    scope = {"type": "http", "path": path,
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                for i, c in enumerate(chunks)]
    reads, sent = [], []

    async def receive():
        reads.append(1)
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    if not sent:
        return None, None, len(reads), scope
    return sent[0]["status"], json.loads(sent[1]["body"]), len(reads), scope


async def inner(scope, receive, send):
    """The app behind the door: reads the whole body and reports its length."""
    body, more = b"", True
    while more:
        message = await receive()
        body, more = body + message["body"], message.get("more_body", False)
    payload = json.dumps({"length": len(body)}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": payload})


KEYS = {hashlib.sha256(b"good").hexdigest(): ApiKey("team")}


def test_no_or_bad_key_is_401_and_the_body_is_never_read():
    heard = []
    app = Door(inner, lambda: KEYS, required=True, max_body_bytes=100,
               on_reject=lambda *args: heard.append(args))
    for headers in ({}, {"authorization": "Bearer bad", "content-length": "5"}):
        status, body, reads, _ = call(app, headers)
        assert (status, reads) == (401, 0)
        assert body["error"]["code"] == "invalid_api_key"
    assert heard == [("/v1/completions", 401, "invalid_api_key", None)] * 2


def test_declared_oversized_body_is_413_before_reading():
    app = Door(inner, lambda: KEYS, required=True, max_body_bytes=100)
    status, body, reads, _ = call(app, {"authorization": "Bearer good",
                                        "content-length": "101"})
    assert (status, reads) == (413, 0)
    assert "101 bytes exceeds the limit of 100" in body["error"]["message"]


def test_chunked_body_is_cut_off_at_the_limit():
    app = Door(inner, lambda: KEYS, required=True, max_body_bytes=100)
    status, _, reads, _ = call(app, {"authorization": "Bearer good"},
                               [b"x" * 60, b"x" * 60, b"x" * 60])
    assert (status, reads) == (413, 2)  # stopped after 120 bytes, the third chunk never read


def test_good_requests_pass_with_their_key_id():
    app = Door(inner, lambda: KEYS, required=True, max_body_bytes=100)
    status, body, _, scope = call(app, {"authorization": "Bearer good", "content-length": "10"},
                                  [b"0123456789"])
    assert (status, body, scope["state"]["key_id"]) == (200, {"length": 10}, "team")
    status, body, _, _ = call(app, {"authorization": "Bearer good"}, [b"x" * 50, b"y" * 50])
    assert (status, body) == (200, {"length": 100})  # chunked, replayed to the app


def test_healthz_needs_no_key_and_auth_can_be_off():
    status, body, _, _ = call(Door(inner, lambda: KEYS, True, 100), {}, path="/healthz")
    assert (status, body) == (200, {"length": 0})
    app = Door(inner, lambda: KEYS, required=False, max_body_bytes=100)
    status, _, _, scope = call(app, {})
    assert status == 200 and scope["state"]["key_id"] == "anonymous"


def test_websockets_are_refused_and_never_reach_the_app():
    heard, reached, sent = [], [], []

    async def app(scope, receive, send):
        reached.append(scope)

    async def send(message):
        sent.append(message)

    door_app = Door(app, lambda: KEYS, required=True, max_body_bytes=100,
                    on_reject=lambda *a: heard.append(a))
    asyncio.run(door_app({"type": "websocket", "path": "/v1/chat/completions", "headers": []},
                         None, send))
    assert reached == [] and sent == [{"type": "websocket.close", "code": 1008,
                                       "reason": "only HTTP is served"}]
    assert heard == [("/v1/chat/completions", 403, "unsupported_protocol", None)]
    asyncio.run(door_app({"type": "lifespan"}, None, send))
    assert reached == [{"type": "lifespan"}]  # the app's start-up and shutdown still run


@pytest.mark.parametrize("length", [b"\xb2", b"\xb9\xb3", b"-1", b" 10", b"1e3"])
def test_a_content_length_that_is_not_ascii_digits_is_400(length):
    """Found by fuzzing: '\\xb2' (superscript two, as latin-1) passed str.isdigit() and then
    int() raised, a 500 from the door itself."""
    scope = {"type": "http", "path": "/v1/completions",
             "headers": [(b"authorization", b"Bearer good"), (b"content-length", length)]}
    sent = []

    async def send(message):
        sent.append(message)

    asyncio.run(Door(inner, lambda: KEYS, required=True, max_body_bytes=100)(scope, None, send))
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"]["code"] == "bad_request"
