"""experts.py without Ray (the deployment's class, called directly): a request whose seed
cannot seed the sampler fails alone instead of failing its whole @serve.batch, prompts are
tokenized off the replica's event loop, and the health check decodes a token: a stuck or broken
decode fails it."""

import asyncio
import threading

import pytest

from mortgagellm.serve import engine
from mortgagellm.serve.experts import Expert, seed_error
from mortgagellm.manifest import sha256_path as VERSION  # the registry checks a version is the hash


@pytest.fixture
def expert(micro_model, monkeypatch):
    """A replica object, its model loaded as reconfigure does."""
    from ray.serve import batching

    # Outside a replica there is no deployment config to compare max_batch_size with.
    monkeypatch.setattr(batching._BatchQueue,
                        "_warn_if_max_batch_size_exceeds_max_ongoing_requests", lambda self: None)
    replica = Expert.func_or_class("conversational", 1, 4, 0.05, 200, 30.0)
    replica.reconfigure({"model": str(micro_model), "version": VERSION(micro_model)})
    yield replica
    # The batch queue built by this test's loop lives in the decorator's closure, shared by
    # the class: drop it, or the deployment no longer pickles for the integration tests.
    for cell in Expert.func_or_class._decode.__closure__ or ():
        for inner in getattr(cell.cell_contents, "__closure__", None) or ():
            if isinstance(inner.cell_contents, batching._LazyBatchQueueWrapper):
                inner.cell_contents._queue = None


def request(seed=None, **kw):
    return {"messages": [{"role": "user", "content": "What is escrow?"}], "max_tokens": 4,
            "temperature": 1.0, "top_p": 1.0, "seed": seed, "stop": []} | kw


def test_seed_error_names_the_seed():
    assert seed_error(None) is None and seed_error(2**63 - 1) is None
    assert "seed 1180591620717411303424 cannot seed" in seed_error(2**70)


def test_one_bad_seed_fails_alone_in_a_batch_and_prompts_tokenize_off_the_loop(
        expert, monkeypatch):
    """Three requests batched together, the middle one with a seed torch refuses: it gets its
    error, the other two their answers. (One event loop for the whole test: @serve.batch's
    queue stays bound to the loop of its first call.)"""
    threads = []
    real = expert.prompt_ids
    monkeypatch.setattr(expert, "prompt_ids",
                        lambda r: threads.append(threading.current_thread()) or real(r))

    async def both():
        return await asyncio.gather(expert.complete(request(seed=7)),
                                    expert.complete(request(seed=2**70)),
                                    expert.complete(request(seed=8)))

    good, bad, other = asyncio.run(both())
    assert bad == [{"error": bad[0]["error"], "code": "invalid_value"}]
    for items in (good, other):
        assert items[0] == {"prompt_tokens": items[0]["prompt_tokens"], "version": expert.version}
        assert items[-1]["completion_tokens"] == 4 and items[-1]["finish_reason"] == "length"
    assert len(threads) == 3 and threading.main_thread() not in threads


def patch_step(monkeypatch, around):
    """Route every Decoder.step through `around(decoder, real_step)`."""
    real = engine.Decoder.step
    monkeypatch.setattr(engine.Decoder, "step", lambda decoder: around(decoder, real))


def test_the_health_check_decodes_one_greedy_token(expert, monkeypatch):
    batches = []
    patch_step(monkeypatch, lambda d, real: batches.append(
        [(r.request.max_tokens, r.request.temperature) for r in d.rows]) or real(d))
    assert expert.probe_timeout_s == 15  # half of Serve's health_check_timeout_s
    asyncio.run(expert.check_health())
    assert batches == [[(1, 0.0)]]


def test_a_decode_that_raises_fails_the_health_check(expert, monkeypatch):
    def broken(decoder, real):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    patch_step(monkeypatch, broken)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        asyncio.run(expert.check_health())


@pytest.mark.timeout(120)
def test_a_stuck_decode_fails_the_health_check_without_a_second_probe(expert, monkeypatch):
    """The probe's step never returns: each check fails at probe_timeout_s instead of waiting,
    and the second one waits on the same stuck probe rather than starting another."""
    release, probes = threading.Event(), []
    patch_step(monkeypatch, lambda d, real: probes.append(d) or release.wait(60))
    expert.probe_timeout_s = 0.2  # half of Serve's health_check_timeout_s in a replica

    async def two_checks():
        try:
            for _ in range(2):
                with pytest.raises(RuntimeError, match="decode did not finish within 0.2 s"):
                    await expert.check_health()
        finally:
            release.set()

    asyncio.run(asyncio.wait_for(two_checks(), 60))
    assert len(probes) == 1


@pytest.mark.timeout(120)
def test_a_batch_stuck_in_a_decode_step_fails_the_health_check(expert, monkeypatch):
    """A request's batch hangs in a step while a fresh probe still decodes: unhealthy all the
    same. Once the step returns, the request is answered and the replica is healthy again."""
    entered, release = threading.Event(), threading.Event()

    def step(decoder, real):
        if decoder.rows[0].request.max_tokens != 1:  # the request's batch, not the probe
            entered.set()
            release.wait(60)
        return real(decoder)

    patch_step(monkeypatch, step)
    expert.probe_timeout_s = 0.2

    async def stuck_then_released():
        answer = asyncio.create_task(expert.complete(request(seed=7)))
        try:
            assert await asyncio.to_thread(entered.wait, 60)
            await asyncio.sleep(0.3)  # the step has now run longer than probe_timeout_s
            with pytest.raises(RuntimeError, match="a decode step has run for"):
                await expert.check_health()
        finally:
            release.set()
        items = await answer
        await expert.check_health()
        return items

    items = asyncio.run(asyncio.wait_for(stuck_then_released(), 60))
    assert items[-1]["completion_tokens"] == 4
