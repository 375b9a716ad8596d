"""engine.py on a micro Llama-3-style model: batched KV-cache decoding against transformers'
generate, stop sequences, max_tokens, seeds, and label scoring against a hand loop."""

import pytest

from mortgagellm import modeling
from mortgagellm.serve.engine import Decoder, GenRequest, visible
from mortgagellm.serve.experts import length_error

PROMPTS = ["Answer with one word: what colour is the sky?",
           "List three fruits as a numbered list.",
           "Reply in JSON with the key 'city': where is the Eiffel Tower?"]


@pytest.fixture(scope="module")
def instruct(micro_model):
    return modeling.load_for_inference(str(micro_model), threads=1)


def run(model, tokenizer, requests):
    """Decode to the end; (text from the deltas, last delta) per request."""
    decoder = Decoder(model, tokenizer, requests)
    texts, last = [""] * len(requests), [None] * len(requests)
    while not decoder.done:
        for i, delta in enumerate(decoder.step()):
            if delta is not None:
                texts[i] += delta.text
                last[i] = delta
    return list(zip(texts, last))


def chat(tokenizer, prompt, **kw):
    ids = modeling.chat_ids(tokenizer, [{"role": "user", "content": prompt}])
    return GenRequest(tuple(ids), **({"max_tokens": 40} | kw))


def test_visible_cuts_at_stops_and_holds_back_partial_ones():
    assert visible("hello world", ["wor"]) == ("hello ", True)
    assert visible("hello wo", ["world"]) == ("hello ", False)  # "wo" may become "world"
    assert visible("abcab", ["ca", "zzz"]) == ("ab", True)  # first occurrence wins
    assert visible("abcab", ["bx", "abq"]) == ("abc", False)  # "ab" may become "abq"
    assert visible("caf\ufffd", []) == ("caf", False)
    assert visible("plain", []) == ("plain", False)


def test_visible_scans_only_what_was_not_sent():
    """The stop search starts at the sent text's end, so a token costs O(new text): a stop
    inside text already sent (which the decoder never lets happen) is not searched for."""
    assert visible("xSTOPyy", ["STOP"], sent=5) == ("xSTOPyy", False)
    assert visible("xSTOPyy", ["STOP"], sent=1) == ("x", True)
    assert visible("abcST", ["STOP"], sent=3) == ("abc", False)  # "ST" held back


def test_batched_greedy_decoding_matches_reference_generate(instruct):
    from mortgagellm.modeling import chat_generate

    model, tokenizer = instruct
    reference = chat_generate(model, tokenizer, PROMPTS, max_new_tokens=40)
    ours = run(model, tokenizer, [chat(tokenizer, p) for p in PROMPTS])
    for (text, last), (ref_text, ref_stopped) in zip(ours, reference):
        assert text == ref_text
        assert last.finish_reason == ("stop" if ref_stopped else "length")


def test_a_row_decodes_the_same_alone_and_in_a_batch(instruct):
    model, tokenizer = instruct
    batch = run(model, tokenizer, [chat(tokenizer, p) for p in PROMPTS])
    alone = [run(model, tokenizer, [chat(tokenizer, p)])[0] for p in PROMPTS]
    assert [t for t, _ in batch] == [t for t, _ in alone]


def test_max_tokens_ends_with_length(instruct):
    from mortgagellm.modeling import chat_generate

    model, tokenizer = instruct
    ((text, last),) = run(model, tokenizer, [chat(tokenizer, PROMPTS[1], max_tokens=3)])
    assert last.finish_reason == "length" and last.completion_tokens == 3
    assert text == chat_generate(model, tokenizer, PROMPTS[1:2], max_new_tokens=3)[0][0]


def test_stop_sequence_cuts_the_answer(instruct):
    model, tokenizer = instruct
    ((full, _),) = run(model, tokenizer, [chat(tokenizer, PROMPTS[1])])
    stop = full[4:7]
    assert len(stop) == 3 and full.find(stop) == 4
    ((text, last),) = run(model, tokenizer, [chat(tokenizer, PROMPTS[1], stop=(stop,))])
    assert text == full[:4] and last.finish_reason == "stop"


def test_sampling_is_reproducible_by_seed(instruct):
    model, tokenizer = instruct
    request = {"temperature": 1.0, "top_p": 0.95, "max_tokens": 20}
    first = run(model, tokenizer, [chat(tokenizer, PROMPTS[1], seed=7, **request)])
    again = run(model, tokenizer, [chat(tokenizer, PROMPTS[1], seed=7, **request)])
    assert first[0][0] == again[0][0]
    others = {run(model, tokenizer, [chat(tokenizer, PROMPTS[1], seed=s, **request)])[0][0]
              for s in range(4)}
    assert len(others) > 1


def test_label_logprobs_equal_a_hand_loop(instruct):
    import torch

    from mortgagellm.modeling import EOT

    model, tokenizer = instruct
    messages = [{"role": "user", "content": "Route: What is PMI?"}]
    scores = modeling.label_logprobs(model, tokenizer, messages, ["structured", "conversational"])
    prompt = modeling.chat_ids(tokenizer, messages)
    for label, score in scores.items():
        answer = tokenizer(label + EOT, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0], -1)
        expected = sum(float(logp[len(prompt) - 1 + k, t]) for k, t in enumerate(answer))
        assert score == pytest.approx(expected, abs=1e-4)


def test_label_logprobs_fit_a_long_prompt_into_the_context(instruct):
    model, tokenizer = instruct
    long = [{"role": "user", "content": "escrow " * 2000}]
    scores = modeling.label_logprobs(model, tokenizer, long, ["structured", "conversational"])
    assert all(s < 0 for s in scores.values())


def test_length_error_names_the_numbers():
    assert length_error(10, 20, 100, 256) is None
    assert "has 101 tokens; the limit is 100" in length_error(101, 1, 100, 256)
    assert "context is 256 tokens" in length_error(200, 57, 1000, 256)
    assert length_error(200, 56, 1000, 256) is None
