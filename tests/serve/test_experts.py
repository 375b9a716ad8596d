"""experts.py without Ray (the deployment's class, called directly), with each engine: a request
whose seed cannot seed the sampler fails alone, prompts are tokenized off the replica's event
loop, streamed items keep their shape, a cancelled call leaves the continuous engine's batch, and
the health check decodes a token: a stuck or broken decode fails it."""

import asyncio
import threading

import pytest

from mortgagellm.serve import engine
from mortgagellm.serve.experts import Expert, seed_error
from mortgagellm.manifest import sha256_path as VERSION  # the registry checks a version is the hash

KV_CACHE = {"num_blocks": 64, "max_batch_tokens": 256, "page_size": 32}


@pytest.fixture(params=["continuous", "static"])
def expert(request, micro_model, monkeypatch):
    """A replica object of either engine, its model loaded as reconfigure does."""
    from ray.serve import batching

    # Outside a replica there is no deployment config to compare max_batch_size with.
    monkeypatch.setattr(batching._BatchQueue,
                        "_warn_if_max_batch_size_exceeds_max_ongoing_requests", lambda self: None)
    replica = Expert.func_or_class("conversational", 1, 4, 0.05, 200, 30.0, request.param,
                                   KV_CACHE)
    replica.reconfigure({"model": str(micro_model), "version": VERSION(micro_model)})
    yield replica
    if replica.engine is not None:
        replica.engine.close(timeout=60)
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
        assert [set(i) for i in items[1:]] == [{"text", "finish_reason", "completion_tokens"}] * 4
        assert [i["completion_tokens"] for i in items[1:]] == [1, 2, 3, 4]
        assert items[-1]["finish_reason"] == "length"
        assert [i["finish_reason"] for i in items[1:-1]] == [None] * 3
    assert len(threads) == 3 and threading.main_thread() not in threads


@pytest.mark.parametrize("expert", ["continuous"], indirect=True)  # static: decodes to its end
def test_a_cancelled_call_leaves_the_batch(expert):
    """Serve cancels the replica's task when the router gives up on a call (timeout, deadline,
    client gone): the continuous engine drops the request, its slot and pages, at once."""

    async def cancel_after_first_token():
        started = asyncio.Event()

        async def call():
            async for item in expert.generate(request(max_tokens=200, temperature=0.0)):
                if "text" in item:
                    started.set()

        task = asyncio.create_task(call())
        await asyncio.wait_for(started.wait(), 60)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return expert.engine.in_flight()

    assert asyncio.run(cancel_after_first_token()) == 0
    scheduler = expert.engine.manager.batch_processor.scheduler
    for _ in range(500):  # the manager drops it before its next step
        if not scheduler.active_requests and not scheduler.waiting_requests:
            break
        threading.Event().wait(0.02)
    assert not scheduler.active_requests and not scheduler.waiting_requests


def patch_forward(expert, monkeypatch, around):
    """Route every forward pass of the expert's model through `around(input_ids, real)`."""
    real = expert.model.forward
    monkeypatch.setattr(expert.model, "forward",
                        lambda *a, **kw: around(kw["input_ids"], lambda: real(*a, **kw)))


def test_the_health_check_decodes_one_greedy_token(expert, monkeypatch):
    """One request of one token at temperature 0, through the engine the requests use."""
    probes = []
    if expert.engine is not None:
        real = expert.engine.submit
        monkeypatch.setattr(expert.engine, "submit", lambda r, *a: probes.append(
            [(r.max_tokens, r.temperature)]) or real(r, *a))
    else:
        real = engine.Decoder.step
        monkeypatch.setattr(engine.Decoder, "step", lambda d: probes.append(
            [(r.request.max_tokens, r.request.temperature) for r in d.rows]) or real(d))
    assert expert.probe_timeout_s == 15  # half of Serve's health_check_timeout_s
    asyncio.run(expert.check_health())
    assert probes == [[(1, 0.0)]]


def test_a_decode_that_raises_fails_the_health_check(expert, monkeypatch):
    def broken(input_ids, real):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    patch_forward(expert, monkeypatch, broken)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        asyncio.run(expert.check_health())
    if expert.engine is not None:  # its loop died of it: the next check says so at once
        with pytest.raises(RuntimeError, match="decode loop stopped .*illegal memory access"):
            asyncio.run(expert.check_health())


@pytest.mark.timeout(120)
def test_a_stuck_decode_fails_the_health_check_without_a_second_probe(expert, monkeypatch):
    """The probe's forward pass never returns: each check fails at probe_timeout_s (or at
    once, when the continuous loop has given no token for longer) instead of waiting, and the
    second one waits on the same stuck probe rather than starting another."""
    release, probes = threading.Event(), []
    patch_forward(expert, monkeypatch, lambda ids, real: release.wait(60) and real())
    real_probe = expert.decode_one_token
    monkeypatch.setattr(expert, "decode_one_token", lambda: probes.append(1) or real_probe())
    expert.probe_timeout_s = 0.2  # half of Serve's health_check_timeout_s in a replica

    async def two_checks():
        try:
            with pytest.raises(RuntimeError, match="decode did not finish within 0.2 s"):
                await expert.check_health()
            await asyncio.sleep(0.1)
            with pytest.raises(RuntimeError, match="the decode is stuck"):
                await expert.check_health()
        finally:
            release.set()

    asyncio.run(asyncio.wait_for(two_checks(), 60))
    assert len(probes) == 1


@pytest.mark.timeout(120)
def test_a_batch_stuck_in_a_decode_step_fails_the_health_check(expert, monkeypatch):
    """A request's forward pass hangs: unhealthy at once, whether a fresh probe would still
    decode (static) or not (continuous: one loop). Once it returns, the request is answered
    and the replica is healthy again."""
    entered, release = threading.Event(), threading.Event()

    def forward(input_ids, real):
        if input_ids.shape[-1] > 8 and not entered.is_set():  # the request's prompt
            entered.set()
            release.wait(60)
        return real()

    patch_forward(expert, monkeypatch, forward)
    expert.probe_timeout_s = 0.2

    async def stuck_then_released():
        answer = asyncio.create_task(expert.complete(request(seed=7)))
        try:
            assert await asyncio.to_thread(entered.wait, 60)
            await asyncio.sleep(0.3)  # the step has now run longer than probe_timeout_s
            with pytest.raises(RuntimeError, match="a decode step has run for|given no token"):
                await expert.check_health()
        finally:
            release.set()
        items = await answer
        await expert.check_health()
        return items

    items = asyncio.run(asyncio.wait_for(stuck_then_released(), 60))
    assert items[-1]["completion_tokens"] == 4


@pytest.mark.parametrize("expert", ["continuous"], indirect=True)
def test_a_grounded_expert_sends_the_answer_once_its_source_is_checked(expert, monkeypatch):
    """serve.<expert>.ground: the miscopied figure of a 'Source:' answer is replaced by the
    user's document's own before anything is sent; the check's outcome rides on the item the
    router audits. A completion request (no chat) is streamed as decoded."""
    document = "| Monthly principal & interest | $2,702.68 |\n| Loan amount | $476,000 |"
    pieces = ["Source: “Monthly principal & interest: $2,70", "9.68”\nIt is $2,709.68."]

    async def stream(job):
        for i, text in enumerate(pieces):
            yield engine.Delta(text, "stop" if i == len(pieces) - 1 else None, i + 1)

    monkeypatch.setattr(expert.engine, "stream", stream)
    expert.ground = True
    chat = request(messages=[{"role": "user", "content": f"What is my P&I?\n\n{document}"}])
    items = asyncio.run(expert.complete(chat))
    assert items[1:] == [{
        "text": "Source: “Monthly principal & interest: $2,702.68”\nIt is $2,702.68.",
        "finish_reason": "stop", "completion_tokens": 2,
        "grounding": {"source": True, "verbatim": False, "resolved": True, "changed": True,
                      "unsupported": []}}]
    # a figure the document neither states nor derives is audited, and named when flagged
    pieces[1] = "9.68”\nIt is $2,709.68 on a $480,000 loan."
    expert.flag_unsupported = True
    items = asyncio.run(expert.complete(chat))
    assert items[1]["text"].endswith("It is $2,702.68 on a $480,000 loan.\n\n"
                                     "Not found in your document: $480,000.")
    assert items[1]["grounding"]["unsupported"] == ["$480,000"]
    plain = asyncio.run(expert.complete({k: v for k, v in chat.items() if k != "messages"}
                                        | {"prompt": document}))
    assert [i["text"] for i in plain[1:]] == pieces
