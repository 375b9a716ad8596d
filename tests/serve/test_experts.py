"""experts.py without Ray (the deployment's class, called directly): a request whose seed
cannot seed the sampler fails alone instead of failing its whole @serve.batch, and prompts are
tokenized off the replica's event loop."""

import asyncio
import threading

import pytest

from mortgagellm.serve.experts import Expert, seed_error
from mortgagellm.manifest import sha256_path as VERSION  # the registry checks a version is the hash


@pytest.fixture
def expert(micro_model, monkeypatch):
    """A replica object, its model loaded as reconfigure does."""
    from ray.serve import batching

    # Outside a replica there is no deployment config to compare max_batch_size with.
    monkeypatch.setattr(batching._BatchQueue,
                        "_warn_if_max_batch_size_exceeds_max_ongoing_requests", lambda self: None)
    replica = Expert.func_or_class("conversational", 1, 4, 0.05, 200)
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
