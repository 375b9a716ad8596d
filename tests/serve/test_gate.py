"""gate.py: the router's own queue answers overflow with a JSON 503 at once, and lets the
queued requests through as slots free up."""

import asyncio
import json

from mortgagellm.serve.gate import Gate


def test_overflow_beyond_ongoing_plus_queued_is_a_json_503_at_once():
    release = asyncio.Event()
    entered, heard = [], []

    async def inner(scope, receive, send):
        entered.append(scope["n"])
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    gate = Gate(inner, ongoing=1, queued=1, on_reject=lambda *a: heard.append(a))

    async def one(n):
        sent = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "path": "/v1/completions", "n": n,
                 "state": {"key_id": "team"}}
        await gate(scope, None, send)
        return sent

    async def scenario():
        tasks = [asyncio.create_task(one(n)) for n in range(3)]
        await asyncio.sleep(0.05)
        refused = [t for t in tasks if t.done()]
        assert entered == [0] and len(refused) == 1  # one at work, one queued, one refused
        release.set()
        return [await t for t in tasks]

    results = asyncio.run(scenario())
    statuses = [r[0]["status"] for r in results]
    assert sorted(statuses) == [200, 200, 503] and entered == [0, 1]
    refusal = results[statuses.index(503)]
    assert (b"retry-after", b"1") in refusal[0]["headers"]
    error = json.loads(refusal[1]["body"])["error"]
    assert (error["type"], error["code"]) == ("server_error", "overloaded")
    assert heard == [("/v1/completions", 503, "overloaded", "team")]
