"""router.py's expert calls without Ray (the deployment's class, on a stand-in self): an
answer that times out, or whose client went away, cancels the expert's work."""

import asyncio
from types import SimpleNamespace

import pytest

from mortgagellm.config import ServeConfig
from mortgagellm.serve.errors import ApiError
from mortgagellm.serve.router import Router


class Pending:
    """A DeploymentResponse that never completes; remembers cancel()."""

    def __init__(self):
        self.cancelled = False

    def __await__(self):
        return asyncio.Event().wait().__await__()

    def cancel(self):
        self.cancelled = True


def stand_in(timeout_s):
    sent = []
    handle = SimpleNamespace(complete=SimpleNamespace(
        remote=lambda payload: sent.append(Pending()) or sent[-1]))
    router = SimpleNamespace(cfg=ServeConfig.model_validate(
        {"router": {"expert_timeout_s": timeout_s}}), experts={"structured": handle})
    router._expert_call = lambda awaitable: Router.func_or_class._expert_call(router, awaitable)
    return router, sent


def test_a_timed_out_answer_is_a_504_and_cancels_the_expert():
    router, sent = stand_in(0.05)
    with pytest.raises(ApiError) as err:
        asyncio.run(Router.func_or_class.answer(router, "structured", {}))
    assert err.value.status == 504 and [p.cancelled for p in sent] == [True]


def test_a_client_gone_cancels_the_expert():
    router, sent = stand_in(60)

    async def client_leaves():
        task = asyncio.create_task(Router.func_or_class.answer(router, "structured", {}))
        await asyncio.sleep(0.05)
        task.cancel()  # what Serve does when the HTTP client disconnects
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(client_leaves())
    assert [p.cancelled for p in sent] == [True]


class Refused:
    """A DeploymentResponse refused by the expert's queue: awaiting it raises BackPressureError,
    and so does cancel(), as Ray Serve 2.60's does when the call never reached a replica."""

    def __await__(self):
        raise self.error()
        yield  # a generator, as __await__ must be

    def cancel(self):
        raise self.error()

    @staticmethod
    def error():
        from ray.serve.exceptions import BackPressureError

        return BackPressureError(num_queued_requests=2, max_queued_requests=2)


def test_an_expert_queue_full_is_a_503_overloaded_not_a_500():
    """Found by the fault pass (test_app's overload test failed): cancel() after the refusal
    raised BackPressureError again, out of the handler, which made it a 500 internal_error."""
    router, _ = stand_in(60)
    router.experts["structured"] = SimpleNamespace(
        complete=SimpleNamespace(remote=lambda payload: Refused()))
    with pytest.raises(ApiError) as err:
        asyncio.run(Router.func_or_class.answer(router, "structured", {}))
    assert (err.value.status, err.value.code) == (503, "overloaded")
