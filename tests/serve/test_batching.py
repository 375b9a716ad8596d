"""batching.py (the continuous engine) on the micro Llama-3-style model, without Ray: greedy output
equals model.generate token for token, requests join a running batch, seeds, temperature and top_p,
stop sequences, max_tokens, and cancellation that frees the request in transformers' manager."""

import asyncio
import time

import pytest

from mortgagellm import modeling
from mortgagellm.serve import engine
from mortgagellm.serve.batching import ContinuousEngine
from mortgagellm.serve.engine import Decoder, GenRequest, TextStream

PROMPTS = ["Hi",
           "List three fruits as a numbered list.",
           "Reply in JSON with the key 'city': where is the Eiffel Tower? Answer briefly, "
           "in one line, and say nothing else about Paris or France."]
SAMPLED = {"temperature": 1.0, "top_p": 0.95, "max_tokens": 20}


@pytest.fixture(scope="module")
def instruct(micro_model):
    return modeling.load_for_inference(str(micro_model), threads=1)


@pytest.fixture(scope="module")
def cb(instruct):
    """One engine for the module, sized as a small recipe would size it."""
    model, tokenizer = instruct
    running = ContinuousEngine(model, tokenizer, num_blocks=64, max_batch_tokens=256,
                               page_size=32, max_requests=8)
    yield running
    running.close(timeout=60)


@pytest.fixture
def fed(monkeypatch):
    """{prompt ids: the tokens fed to that request's TextStream}, stop token included."""
    seen, real = {}, TextStream.advance

    def advance(stream, token):
        seen.setdefault(stream.request.prompt_ids, []).append(token)
        return real(stream, token)

    monkeypatch.setattr(TextStream, "advance", advance)
    return seen


def chat(tokenizer, prompt, **kw):
    ids = modeling.chat_ids(tokenizer, [{"role": "user", "content": prompt}])
    return GenRequest(tuple(ids), **({"max_tokens": 40} | kw))


def run_all(cb, requests):
    """Decode the requests together (submitted at once); (text, last delta) per request."""
    async def one(request):
        deltas = [d async for d in cb.stream(request)]
        return "".join(d.text for d in deltas), deltas[-1]

    async def together():
        return await asyncio.gather(*(one(r) for r in requests))

    return asyncio.run(together())


def wait_until(condition, seconds=30.0):
    """Poll a condition the engine's threads make true (bounded)."""
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def held(cb):
    """Request ids transformers' manager still holds (running or waiting)."""
    scheduler = cb.manager.batch_processor.scheduler
    return set(scheduler.active_requests) | set(scheduler.waiting_requests)


def test_greedy_equals_generate_token_for_token(cb, instruct, fed):
    """Three prompts of different lengths in one batch; each equals model.generate run alone
    (no padding): the same tokens, up to and with the end-of-turn token, and the same text."""
    import torch

    model, tokenizer = instruct
    requests = [chat(tokenizer, p) for p in PROMPTS]
    assert len({len(r.prompt_ids) for r in requests}) == 3
    ours = run_all(cb, requests)
    stops = set(modeling.stop_token_ids(tokenizer))
    for request, (text, last) in zip(requests, ours):
        out = model.generate(torch.tensor([request.prompt_ids]), max_new_tokens=40,
                             do_sample=False, eos_token_id=sorted(stops),
                             pad_token_id=tokenizer.pad_token_id)
        expected = out[0, len(request.prompt_ids):].tolist()
        assert fed[request.prompt_ids] == expected
        answer = [t for t in expected if t not in stops]
        assert text == tokenizer.decode(answer, skip_special_tokens=True)
        assert last.finish_reason == ("stop" if expected[-1] in stops else "length")
        assert last.completion_tokens == len(answer)


def test_a_request_joins_a_running_batch_and_decodes_as_alone(cb, instruct, fed):
    """Two long requests run; a third joins once they have tokens, ends first, and gets what
    it gets alone; the two keep their own answers."""
    model, tokenizer = instruct
    long = [chat(tokenizer, p, max_tokens=150) for p in PROMPTS[1:]]
    late = chat(tokenizer, PROMPTS[0], max_tokens=5)
    alone = run_all(cb, [late])[0][0]
    long_alone = [t for t, _ in run_all(cb, long)]
    fed.clear()

    async def joined():
        first = [asyncio.ensure_future(collect(cb, r)) for r in long]
        await wait_async(lambda: all(len(fed.get(r.prompt_ids, [])) >= 3 for r in long))
        text = await collect(cb, late)
        assert not any(task.done() for task in first)  # it joined while they ran
        return text, [await task for task in first]

    text, long_texts = asyncio.run(joined())
    assert text == alone and long_texts == long_alone


async def collect(cb, request):
    return "".join([d.text async for d in cb.stream(request)])


async def wait_async(condition, seconds=30.0):
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.01)


def test_seeds_reproduce_within_a_batch_and_as_the_static_engine_draws(cb, instruct):
    model, tokenizer = instruct
    batch = [chat(tokenizer, PROMPTS[1], seed=s, **SAMPLED) for s in (7, 7, 8, 9, 10)]
    texts = [t for t, _ in run_all(cb, batch + [chat(tokenizer, PROMPTS[2])])]
    assert texts[0] == texts[1]
    assert len(set(texts[1:5])) > 1  # other seeds, other answers
    assert run_all(cb, [batch[0]])[0][0] == texts[0]  # alone as in the batch
    static = Decoder(model, tokenizer, [batch[0]])
    text = ""
    while not static.done:
        text += static.step()[0].text
    assert text == texts[0]


def test_temperature_and_top_p_are_honoured(cb, instruct):
    """top_p near 0 keeps only the likeliest token: the greedy answer whatever the seed; the
    same seeds at top_p 1 and a high temperature give other answers."""
    _, tokenizer = instruct
    greedy = run_all(cb, [chat(tokenizer, PROMPTS[1], max_tokens=20)])[0][0]
    narrow = run_all(cb, [chat(tokenizer, PROMPTS[1], seed=s, temperature=1.0, top_p=1e-6,
                               max_tokens=20) for s in range(4)])
    assert [t for t, _ in narrow] == [greedy] * 4
    hot = run_all(cb, [chat(tokenizer, PROMPTS[1], seed=s, temperature=5.0, top_p=1.0,
                            max_tokens=20) for s in range(4)])
    assert all(t != greedy for t, _ in hot)


def test_max_tokens_ends_with_length(cb, instruct):
    model, tokenizer = instruct
    ((text, last),) = run_all(cb, [chat(tokenizer, PROMPTS[1], max_tokens=3)])
    assert last.finish_reason == "length" and last.completion_tokens == 3
    assert text == modeling.chat_generate(model, tokenizer, PROMPTS[1:2], max_new_tokens=3)[0][0]


def test_a_stop_sequence_cuts_the_answer_and_frees_the_request(cb, instruct, monkeypatch):
    """The manager knows no stop strings: the engine cancels the request there, rather than
    let it decode on to its end."""
    _, tokenizer = instruct
    ((full, _),) = run_all(cb, [chat(tokenizer, PROMPTS[1])])
    stop = full[4:7]
    assert len(stop) == 3 and full.find(stop) == 4
    cancelled, real = [], cb.manager.cancel_request
    monkeypatch.setattr(cb.manager, "cancel_request",
                        lambda rid: cancelled.append(rid) or real(rid))
    ((text, last),) = run_all(cb, [chat(tokenizer, PROMPTS[1], stop=(stop,), max_tokens=200)])
    assert text == full[:4] and last.finish_reason == "stop"
    assert len(cancelled) == 1
    wait_until(lambda: not held(cb))


def test_cancelling_frees_the_request_and_later_ones_still_run(cb, instruct):
    """A stream left after its first delta (as Serve cancels a call whose client went): the
    manager drops the request and its pages, and the next request is answered in full."""
    _, tokenizer = instruct
    wait_until(lambda: not held(cb))
    idle = cb.manager.batch_processor.cache.compute_free_capacity()
    busy = []

    async def leave_early():
        stream = cb.stream(chat(tokenizer, PROMPTS[2], max_tokens=200))
        first = await anext(stream)
        busy.append(cb.manager.batch_processor.cache.compute_free_capacity())
        await stream.aclose()
        return first

    assert asyncio.run(leave_early()).finish_reason is None
    assert cb.in_flight() == 0
    wait_until(lambda: not held(cb))
    assert busy[0] < cb.manager.batch_processor.cache.compute_free_capacity() == idle
    ((text, last),) = run_all(cb, [chat(tokenizer, PROMPTS[1], max_tokens=5)])
    assert last.finish_reason == "length" and last.completion_tokens == 5 and text


def test_a_deadline_cancels_the_request(cb, instruct):
    """complete() past its timeout raises and the request leaves the batch."""
    _, tokenizer = instruct
    assert len(cb.complete(chat(tokenizer, PROMPTS[1], max_tokens=3), timeout=30)) == 3
    gate = []
    real = cb._take  # the output thread stops taking outputs: no delta within the timeout
    cb._take = lambda output, sends: gate.append(output)
    try:
        with pytest.raises(TimeoutError, match="no token for 0.2 s"):
            cb.complete(chat(tokenizer, PROMPTS[2], max_tokens=200), timeout=0.2)
    finally:
        cb._take = real
    assert cb.in_flight() == 0
    wait_until(lambda: not held(cb))


def test_the_cache_must_hold_one_request_of_the_whole_context(instruct):
    model, tokenizer = instruct
    with pytest.raises(ValueError, match="holds num_blocks x page_size = 4 x 32 tokens"):
        ContinuousEngine(model, tokenizer, num_blocks=4, max_batch_tokens=64, page_size=32,
                         max_requests=2)


def test_incremental_text_equals_one_decode(instruct):
    """Token by token, multi-byte characters split across tokens included, the deltas add up
    to one decode of all the ids, and none carries half a character."""
    _, tokenizer = instruct
    text = "Caf\u00e9 cr\u00e8me \u20ac12, \u00fcber \U0001F3E0 ok \u4f4f\u5b85 loan"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text.split())  # characters split over several tokens
    stream = TextStream(tokenizer, GenRequest((), max_tokens=len(ids)), set())
    deltas = [stream.advance(t) for t in ids]
    assert "".join(d.text for d in deltas) == tokenizer.decode(ids) == text
    assert not any("\ufffd" in d.text for d in deltas)
    assert deltas[-1].finish_reason == "length"
    assert engine.visible(stream.text, ()) == (text, False)
