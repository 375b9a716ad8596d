"""openai_api.py: request schemas and the response shapes the openai client reads."""

import pytest
from pydantic import ValidationError

from mortgagellm.serve import openai_api as oa

META = {"route": "structured", "confidence": 0.99}


def test_chat_request_defaults_and_routing_text():
    body = oa.ChatCompletionRequest.model_validate({
        "model": "mortgagellm", "stream_options": {"include_usage": True},  # ignored
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
                     {"role": "user", "content": "second"}]})
    assert (body.temperature, body.top_p, body.stream, body.stops()) == (0.0, 1.0, False, [])
    assert body.routing_text() == "second"
    assert body.wanted_tokens(64) == 64
    assert oa.ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5,
         "max_completion_tokens": 7, "stop": "END"}).wanted_tokens(64) == 7


@pytest.mark.parametrize("bad", [
    {"model": "m", "messages": []},
    {"model": "m", "messages": [{"role": "tool", "content": "x"}]},
    {"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2},
    {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 3},
    {"messages": [{"role": "user", "content": "x"}]},
])
def test_malformed_chat_requests_fail_validation(bad):
    with pytest.raises(ValidationError):
        oa.ChatCompletionRequest.model_validate(bad)


def test_values_checked_where_used():
    body = oa.CompletionRequest.model_validate({"model": "m", "prompt": ["a", "b"],
                                                "stop": ["1", "2", "3", "4"]})
    with pytest.raises(ValueError, match="send exactly one prompt"):
        body.text()
    assert body.stops() == ["1", "2", "3", "4"]
    with pytest.raises(ValidationError, match="stop has 5 sequences; at most 4"):
        oa.CompletionRequest.model_validate({"model": "m", "prompt": "a",
                                             "stop": ["1", "2", "3", "4", "5"]})


def test_response_shapes():
    usage = oa.usage(10, 3)
    assert usage == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
    chat = oa.chat_response("id1", "mortgagellm-structured", "approve", "stop", usage, META)
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": "approve"}
    assert chat["object"] == "chat.completion" and chat[oa.ROUTING_FIELD] == META
    chunk = oa.completion_response("id2", "m", "x", None, None, META, chunk=True)
    assert "usage" not in chunk and chunk["choices"][0]["text"] == "x"
    assert oa.sse("[DONE]") == "data: [DONE]\n\n"
    assert oa.sse({"a": 1}) == 'data: {"a": 1}\n\n'
    models = oa.model_list({"structured": "v1", "conversational": "v2"})
    assert [m["id"] for m in models["data"]] == ["mortgagellm", "mortgagellm-structured",
                                                 "mortgagellm-chat"]
    assert models["data"][2][oa.ROUTING_FIELD]["expert_version"] == "v2"
