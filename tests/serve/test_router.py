"""router.py's expert calls without Ray (the deployment's class, on a stand-in self): an
answer, a stream's first item or a tier-2 score that times out, or whose request was cancelled
(its client went away, or http.py's deadline passed), cancels the expert's work."""

import asyncio
from types import SimpleNamespace

import pytest

from mortgagellm.config import ServeConfig
from mortgagellm.serve.errors import ApiError
from mortgagellm.serve.router import Router


class Pending:
    """A DeploymentResponse (or response generator) that never answers; remembers cancel()."""

    def __init__(self):
        self.cancelled = False

    def __await__(self):
        return asyncio.Event().wait().__await__()

    async def __anext__(self):
        await self

    def cancel(self):
        self.cancelled = True


def stand_in(timeout_s, mode="hybrid"):
    """A Router's `self` whose structured expert never answers: complete, generate (streamed)
    and classify each return a Pending, collected in `sent`."""
    sent = []

    def call(*args):
        sent.append(Pending())
        return sent[-1]

    method = SimpleNamespace(remote=call)
    handle = SimpleNamespace(complete=method, generate=method, classify=method,
                             options=lambda stream: SimpleNamespace(generate=method))
    router = SimpleNamespace(cfg=ServeConfig.model_validate(
        {"router": {"expert_timeout_s": timeout_s, "mode": mode}}),
        experts={"structured": handle}, tier1=None)  # fewshot mode never reads tier 1
    router._expert_call = lambda awaitable: Router.func_or_class._expert_call(router, awaitable)
    return router, sent


def cancelled_midway(call):
    """Run `call`, then cancel it as Serve does when the client leaves (and as http.py's
    deadline does)."""
    async def run():
        task = asyncio.create_task(call)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())


def test_a_timed_out_answer_is_a_504_and_cancels_the_expert():
    router, sent = stand_in(0.05)
    with pytest.raises(ApiError) as err:
        asyncio.run(Router.func_or_class.answer(router, "structured", {}))
    assert err.value.status == 504 and [p.cancelled for p in sent] == [True]


def test_a_client_gone_cancels_the_expert():
    router, sent = stand_in(60)
    cancelled_midway(Router.func_or_class.answer(router, "structured", {}))
    assert [p.cancelled for p in sent] == [True]


def test_a_stream_cancelled_before_its_first_item_cancels_the_expert():
    router, sent = stand_in(60)
    cancelled_midway(Router.func_or_class.open_stream(router, "structured", {}))
    assert [p.cancelled for p in sent] == [True]


def test_a_cancelled_tier2_call_cancels_the_expert_and_is_not_a_fallback():
    """The request is over (client gone, deadline passed): tier 2's scoring stops, and no
    tier-1 fallback answers for nobody."""
    router, sent = stand_in(60, mode="fewshot")
    cancelled_midway(Router.func_or_class.decide(router, "What is escrow?", "mortgagellm"))
    assert [p.cancelled for p in sent] == [True]


class Refused:
    """A call the replica never took (Serve's back-pressure): awaiting it raises, and so does
    cancel(), as Ray 2.60's DeploymentResponse.cancel() re-raises the assignment's error."""

    def __init__(self):
        from ray.serve.exceptions import BackPressureError

        self.error = BackPressureError(num_queued_requests=2, max_queued_requests=2)

    def __await__(self):
        raise self.error
        yield  # noqa: B901 - a generator, so that it is awaitable

    def cancel(self):
        raise self.error


def test_an_overloaded_expert_is_a_503_not_an_error_raised_by_cancel():
    router, _ = stand_in(5.0)
    refused = SimpleNamespace(remote=lambda *args: Refused())
    router.experts["structured"] = SimpleNamespace(complete=refused)
    with pytest.raises(ApiError) as err:
        asyncio.run(Router.func_or_class.answer(router, "structured", {}))
    assert (err.value.status, err.value.code) == (503, "overloaded")


def test_a_failed_tier2_routes_to_the_fallback_and_is_counted():
    """Tier 2's expert refuses (overloaded): the request goes to serve.router.fallback_route
    (conversational by default) and the routing-latency histogram counts it under
    decided_by=fallback. In fewshot mode tier 1 is not read (it is None here)."""
    router, _ = stand_in(5.0, mode="fewshot")
    refused = SimpleNamespace(remote=lambda *args: Refused())
    router.experts["structured"] = SimpleNamespace(classify=refused)
    observed = []
    router.metrics = SimpleNamespace(routing_ms=SimpleNamespace(
        observe=lambda value, tags: observed.append(tags)))
    decision = asyncio.run(Router.func_or_class.decide(router, "What is escrow?", "mortgagellm"))
    assert (decision.route, decision.decided_by, decision.confidence) == (
        "conversational", "fallback", 0.0)
    assert observed == [{"decided_by": "fallback"}]
