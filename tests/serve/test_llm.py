"""Engine vllm without a GPU, Ray Serve LLM or vLLM: the recipe's checks (each bad setting named),
the LLMConfig built from a recipe (exact dicts, accepted by Ray's own LLMConfig model), our
request -> the OpenAI request, the LLMServer's stream -> our items, tier 2's label scores from
prompt log-probabilities, and VllmExpert itself against a fake LLMServer handle."""

import asyncio
import math
import sys
import types
from pathlib import Path

import pytest

from mortgagellm import routing
from mortgagellm.config import ConfigError, load_recipe
from mortgagellm.config.vllm import LLM_CONFIG_EXTRA, LLM_CONFIG_SET
from mortgagellm.serve import app, llm
from mortgagellm.serve.experts import checked_answer

ROOT = Path(__file__).resolve().parents[2]
A100 = ROOT / "configs/llama3-8b-a100.yaml"
VLLM = {"serve.structured.engine": "vllm", "serve.conversational.engine": "vllm"}
ADAPTERS = {"serve.topology": "adapters", "serve.adapters.engine": "vllm",
            "serve.adapters.num_gpus": 1,
            "serve.adapters.vllm.lora.dynamic_lora_loading_path": "s3://b/adapters"}


def ray_llm_config():
    """Ray's LLMConfig model, from the module that does not import vLLM (ray.serve.llm does)."""
    from ray.llm._internal.serve.core.configs.llm_config import LLMConfig

    return LLMConfig


# ---------------------------------------------------------------- the recipe's checks

@pytest.mark.parametrize("overrides, message", [
    ({"serve.structured.num_gpus": 0},
     "serve.structured.num_gpus is 0: engine vllm needs a GPU"),
    ({"serve.conversational.num_gpus": 0.5},
     "serve.conversational.num_gpus 0.5: engine vllm takes whole GPUs"),
    ({"serve.structured.num_gpus": 1,
      "serve.structured.vllm.engine_kwargs": {"tensor_parallel_size": 2}},
     "serve.structured.vllm.engine_kwargs: tensor_parallel_size x pipeline_parallel_size = 2 "
     "GPUs, but serve.structured.num_gpus is 1"),
    ({"serve.structured.vllm.engine_kwargs": {"max_num_seqs": 64}},
     "serve.structured.vllm.engine_kwargs: Value error, engine_kwargs.max_num_seqs is set by "
     "mortgagellm: set serve.<expert>.max_batch_size"),
    ({"serve.structured.vllm.engine_kwargs": {"model": "/x"}},
     "engine_kwargs.model is set by mortgagellm: the model comes from the registry"),
    ({"serve.structured.vllm.llm_config": {"deployment_config": {"num_replicas": 2}}},
     "serve.structured.vllm.llm_config: Value error, llm_config.deployment_config is set by "
     "mortgagellm: set the expert's autoscaling"),
    ({"serve.structured.vllm.llm_config": {"runtime_envv": {}}},
     "llm_config.runtime_envv: not an LLMConfig field this recipe can set"),
    ({"serve.structured.vllm.model_id": "base:x"}, "serve.structured.vllm.model_id: String "
     "should match pattern"),
    (ADAPTERS | {"serve.adapters.num_gpus": 0}, "serve.adapters.num_gpus is 0"),
    ({k: v for k, v in ADAPTERS.items() if "lora" not in k},
     "serve.adapters.vllm.lora.dynamic_lora_loading_path is required"),
    (ADAPTERS | {"serve.adapters.vllm.lora.dynamic_lora_loading_path": "/mnt/adapters"},
     "serve.adapters.vllm.lora.dynamic_lora_loading_path: Value error, "
     "dynamic_lora_loading_path '/mnt/adapters': Ray Serve LLM loads LoRA adapters from remote "
     "storage only"),
    (ADAPTERS | {"serve.adapters.vllm.engine_kwargs": {"max_loras": 4}},
     "engine_kwargs.max_loras is set by mortgagellm: set "
     "serve.adapters.vllm.lora.max_num_adapters_per_replica"),
])
def test_each_bad_vllm_setting_is_refused_naming_its_field(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_recipe(A100, VLLM | overrides)
    assert message in str(err.value)


def test_settings_vllm_does_not_use_are_checked_only_where_used():
    """The experts' settings are not read under topology adapters, nor the vllm section by the
    other engines; a fraction of a GPU is fine with a placement group that says so."""
    load_recipe(A100, VLLM | ADAPTERS | {"serve.structured.num_gpus": 0})
    load_recipe(A100, {"serve.structured.engine": "continuous", "serve.structured.num_gpus": 0})
    placed = load_recipe(A100, VLLM | {"serve.structured.num_gpus": 0.5,
                                       "serve.structured.vllm.llm_config": {
                                           "placement_group_config": {
                                               "bundle_per_worker": {"GPU": 0.5}}}})
    assert placed.serve.structured.num_gpus == 0.5


def test_the_llm_config_fields_we_name_are_ray_llm_configs():
    fields = set(ray_llm_config().model_fields)
    assert set(LLM_CONFIG_SET) | set(LLM_CONFIG_EXTRA) <= fields


# ---------------------------------------------------------------- LLMConfig from a recipe

def test_the_production_recipe_gives_each_expert_this_llm_config():
    recipe = load_recipe(A100, VLLM | {"serve.structured.accelerator_type": "A100"})
    options = app.deployment_options(recipe)
    config = llm.llm_config(recipe.serve.structured, "mortgagellm-structured", "/models/sft",
                            options["StructuredLLM"])
    autoscaling = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8.0,
                   "upscale_delay_s": 30.0, "downscale_delay_s": 600.0,
                   "metrics_interval_s": 10.0, "look_back_period_s": 30.0}
    assert config == {
        "model_loading_config": {"model_id": "mortgagellm-structured",
                                 "model_source": "/models/sft"},
        "engine_kwargs": {"max_model_len": 8192, "gpu_memory_utilization": 0.9,
                          "dtype": "bfloat16", "enable_prefix_caching": True,
                          "tensor_parallel_size": 1, "max_num_seqs": 16},
        "deployment_config": {"autoscaling_config": autoscaling, "max_ongoing_requests": 32,
                              "max_queued_requests": 64, "health_check_period_s": 10.0,
                              "health_check_timeout_s": 30.0,
                              "ray_actor_options": {"num_cpus": 4.0}},
        "accelerator_type": "A100"}
    assert ray_llm_config()(**config).accelerator_type == "A100"  # Ray's own model takes it
    # The expert deployment in front: the same scaling and queue, a quarter CPU, no GPU.
    assert options["StructuredExpert"]["ray_actor_options"] == {"num_cpus": 0.25,
                                                                "accelerator_type": "A100"}
    assert options["StructuredExpert"]["autoscaling_config"] == autoscaling
    assert "ray_actor_options" not in options["StructuredLLM"]


def test_adapters_get_multi_lora_and_the_other_llm_config_fields_pass_through():
    recipe = load_recipe(A100, ADAPTERS | {
        "serve.adapters.num_gpus": 2,
        "serve.adapters.vllm.engine_kwargs": {"max_lora_rank": 16},
        "serve.adapters.vllm.llm_config": {"runtime_env": {"env_vars": {"A": "1"}},
                                           "log_engine_metrics": False}})
    s = recipe.serve.adapters
    config = llm.llm_config(s, llm.model_id(s, None), "s3://b/merged", {"max_ongoing_requests": 8},
                            s.vllm.lora.model_dump())
    assert config["model_loading_config"] == {"model_id": "mortgagellm-base",
                                              "model_source": "s3://b/merged"}
    assert config["engine_kwargs"] == {"max_lora_rank": 16, "tensor_parallel_size": 2,
                                       "max_num_seqs": 4, "enable_lora": True, "max_loras": 2}
    assert config["lora_config"] == {"dynamic_lora_loading_path": "s3://b/adapters",
                                     "max_num_adapters_per_replica": 2}
    assert config["deployment_config"] == {"max_ongoing_requests": 8,
                                           "ray_actor_options": {"num_cpus": 1.0}}
    assert (config["runtime_env"], config["log_engine_metrics"]) == ({"env_vars": {"A": "1"}},
                                                                     False)
    parsed = ray_llm_config()(**config)
    assert parsed.lora_config.dynamic_lora_loading_path == "s3://b/adapters"


def test_a_version_switch_changes_the_apps_args_only_for_engine_vllm(monkeypatch):
    """vLLM loads weights when its engine starts: the served versions go into the build args,
    so Serve rebuilds the app, where the other engines reconfigure in place."""
    monkeypatch.setattr(app, "user_config", lambda recipe, expert: {
        "model": f"/registry/{expert}", "version": f"v-{expert}"})
    mixed = load_recipe(A100, {"serve.structured.engine": "vllm"})
    config = app.serve_config(mixed, {"config": "x.yaml"})
    application = config["applications"][0]
    assert application["args"] == {"config": "x.yaml",
                                   app.SERVED_ARG: {"structured": "v-structured"}}
    users = {d["name"]: d.get("user_config") for d in application["deployments"]}
    assert users["StructuredExpert"] == {"model": "/registry/structured",
                                         "version": "v-structured"}
    assert users["StructuredLLM"] is None and "ConversationalLLM" not in users
    assert app.load({"config": str(A100), app.SERVED_ARG: {"structured": "v"}})  # not an override
    plain = app.serve_config(load_recipe(A100), {"config": "x.yaml"})
    assert plain["applications"][0]["args"] == {"config": "x.yaml"}


def test_the_cpu_path_never_imports_ray_serve_llm():
    """Rendering and the recipe's checks run without vLLM: ray.serve.llm (which imports it) is
    imported only when an LLMServer is built or called. (A fresh process: another test may have
    imported it where vLLM is installed.)"""
    import subprocess

    code = ("import sys; from mortgagellm.config import load_recipe; "
            "from mortgagellm.serve import app, llm; "
            f"app.deployment_options(load_recipe({str(A100)!r}, {VLLM!r})); "
            "assert 'ray.serve.llm' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ---------------------------------------------------------------- requests and streams

PAYLOAD = {"messages": [{"role": "user", "content": "Loan amount $200,000. What is it?"}],
           "max_tokens": 16, "temperature": 0.5, "top_p": 0.9, "seed": 7, "stop": ["\n\n"]}


def test_our_payload_becomes_a_streamed_openai_request_with_usage_on_every_chunk():
    assert llm.openai_request(PAYLOAD, "mortgagellm-chat") == {
        "model": "mortgagellm-chat",
        "messages": [{"role": "user", "content": "Loan amount $200,000. What is it?"}],
        "max_tokens": 16, "temperature": 0.5, "top_p": 0.9, "seed": 7, "stop": ["\n\n"],
        "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    completion = {k: v for k, v in PAYLOAD.items() if k != "messages"} | {"prompt": "APR is"}
    request = llm.openai_request(completion, "m")
    assert request["prompt"] == "APR is" and "messages" not in request


def test_target_names_the_model_or_the_adapter_version():
    plain = {"model_id": "mortgagellm-structured", "version": "v1", "model": "/m"}
    assert llm.target(plain, None) == ("mortgagellm-structured", {"version": "v1"})
    base = {"model_id": "mortgagellm-base", "version": "b1", "model": "/base",
            "adapters": {"structured": {"version": "a1", "model": "/a"}}}
    assert llm.target(base, "structured") == (
        "mortgagellm-base:a1", {"version": "a1", "adapter": "structured", "base_version": "b1"})
    with pytest.raises(ValueError, match="adapter 'conversational'; this replica serves "
                                         r"\['structured'\]"):
        llm.target(base, "conversational")
    with pytest.raises(ValueError, match="adapter 'structured'; this replica serves no adapters"):
        llm.target(plain, "structured")


def sse(chunk):
    import json

    return f"data: {json.dumps(chunk)}\n\n"


def chat_chunk(content, finish=None, prompt=12, completion=0, role=False):
    delta = {"role": "assistant", "content": content} if role else {"content": content}
    return {"object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": delta, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion}}


CHAT_STREAM = [chat_chunk("", role=True), chat_chunk("Escrow", completion=1),
               chat_chunk(" holds", completion=2), chat_chunk(" funds.", "stop", completion=3),
               {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 3}}]


def test_stream_events_reads_sse_batches_done_and_error_dicts():
    text = sse(CHAT_STREAM[1]) + sse(CHAT_STREAM[2]) + "data: [DONE]\n\n"
    assert llm.stream_events(text) == CHAT_STREAM[1:3]
    error = {"error": {"message": "too long", "code": 400}}
    assert llm.stream_events(error) == [error]


async def chunks_of(items):
    for item in items:
        yield item


def items(chunks, served=None, max_prompt_tokens=100, context=None, flag=True):
    async def collect():
        return [i async for i in llm.answer_items(chunks_of(chunks), served or {"version": "v1"},
                                                  max_prompt_tokens, context, flag)]
    return asyncio.run(collect())


def test_a_chat_stream_becomes_our_items():
    assert items(CHAT_STREAM) == [
        {"prompt_tokens": 12, "version": "v1"},
        {"text": "Escrow", "finish_reason": None, "completion_tokens": 1},
        {"text": " holds", "finish_reason": None, "completion_tokens": 2},
        {"text": " funds.", "finish_reason": "stop", "completion_tokens": 3}]


def test_a_completion_stream_and_an_empty_last_delta_that_finishes():
    stream = [{"choices": [{"index": 0, "text": "7.1", "finish_reason": None}],
               "usage": {"prompt_tokens": 5, "completion_tokens": 1}},
              {"choices": [{"index": 0, "text": "", "finish_reason": "length"}],
               "usage": {"prompt_tokens": 5, "completion_tokens": 2}}]
    served = {"version": "a1", "adapter": "structured", "base_version": "b1"}
    assert items(stream, served) == [
        {"prompt_tokens": 5, "version": "a1", "adapter": "structured", "base_version": "b1"},
        {"text": "7.1", "finish_reason": None, "completion_tokens": 1},
        {"text": "", "finish_reason": "length", "completion_tokens": 2}]


def test_a_grounded_chat_is_sent_whole_once_checked():
    context = "Loan amount $200,000."
    answer = 'Source: “Loan amount $200,000.” The loan is $250,000.'
    stream = [chat_chunk("", role=True), chat_chunk(answer[:20], completion=1),
              chat_chunk(answer[20:], "stop", completion=2)]
    text, checked = checked_answer(answer, context, True)
    assert "Not found in your document: $250,000" in text  # the figure it made up is named
    assert items(stream, context=context)[1:] == [
        {"text": text, "finish_reason": "stop", "completion_tokens": 2, "grounding": checked}]


def test_too_long_prompts_and_refused_requests_are_the_clients_400():
    assert items(CHAT_STREAM, max_prompt_tokens=11) == [
        {"error": "the prompt has 12 tokens; the limit is 11. Shorten it.",
         "code": "context_length_exceeded"}]
    refused = {"error": {"message": "maximum context length is 512 tokens", "code": 400}}
    assert items([refused]) == [{"error": "the model refused the request: maximum context "
                                          "length is 512 tokens", "code": "invalid_request"}]


def test_engine_failures_raise():
    with pytest.raises(RuntimeError, match=r"the vLLM engine failed \(500\): boom"):
        items([{"error": {"message": "boom", "code": 500}}])
    with pytest.raises(RuntimeError, match="the vLLM stream failed: gone"):
        items(CHAT_STREAM[:2] + [{"error": {"message": "gone", "code": 500}}])
    with pytest.raises(RuntimeError, match="continuous_usage_stats"):
        items([{"choices": [{"index": 0, "text": "x", "finish_reason": None}]}])


# ---------------------------------------------------------------- tier 2's label scores

def test_label_request_closes_the_assistant_turn_with_the_label():
    messages = routing.fewshot_messages("What is escrow?", 120)
    assert llm.label_request(messages, "structured", "m") == {
        "model": "m", "messages": [*messages, {"role": "assistant", "content": "structured"}],
        "add_generation_prompt": False, "prompt_logprobs": 0, "max_tokens": 1,
        "temperature": 0.0, "stream": False}


def entries(*pairs):
    return [None] + [{token: {"logprob": lp, "rank": 1, "decoded_token": "?"}}
                     for token, lp in pairs]


def test_label_scores_sum_from_where_the_labels_prompts_part():
    """Prompt tokens 1 2 3 shared, then each label's tokens and the end of turn (9): the shared
    part is left out (it is the same in both), the rest summed."""
    shared = [(1, -0.5), (2, -1.0), (3, -0.25)]
    scores = llm.label_scores({
        "structured": entries(*shared, (40, -2.0), (9, -0.1)),
        "conversational": entries(*shared, (50, -1.0), (51, -0.5), (9, -0.2))})
    assert scores == {"structured": -2.1, "conversational": pytest.approx(-1.7)}
    # as probabilities: softmax of the scores (no prior)
    probs = routing.fewshot_probabilities(scores)
    assert probs["conversational"] == pytest.approx(1 / (1 + math.exp(-2.1 + 1.7)))


def test_label_scores_refuse_top_k_entries():
    two = [None, {1: {"logprob": -1.0}, 2: {"logprob": -2.0}}]
    with pytest.raises(ValueError, match="ask prompt_logprobs 0"):
        llm.label_scores({"structured": two, "conversational": two})


# ---------------------------------------------------------------- VllmExpert on a fake server

class Response(dict):
    """A response object as the LLMServer yields one (pydantic: model_dump)."""

    def model_dump(self):
        return dict(self)


class FakeCall:
    """A DeploymentResponseGenerator: async-iterable, cancellable."""

    def __init__(self, items):
        self.items, self.cancelled = items, False

    def __aiter__(self):
        return self._gen()

    async def _gen(self):
        for item in self.items:
            yield item

    def cancel(self):
        self.cancelled = True


class FakeMethod:
    def __init__(self, server, name):
        self.server, self.name = server, name

    def remote(self, request):
        call = FakeCall(self.server.answer(self.name, request))
        self.server.calls.append((self.name, request, dict(self.server.opts), call))
        return call


class FakeServer:
    """The LLMServer's handle: .options(...).chat / .completions.remote(request)."""

    def __init__(self, answer):
        self.answer, self.calls, self.opts = answer, [], {}

    def options(self, **kw):
        clone = FakeServer(self.answer)
        clone.calls, clone.opts = self.calls, self.opts | kw
        return clone

    def __getattr__(self, name):
        return FakeMethod(self, name)


@pytest.fixture
def openai_models(monkeypatch):
    """ray.serve.llm's request types, as plain records (the real ones need vLLM)."""
    module = types.ModuleType("ray.serve.llm.openai_api_models")
    module.ChatCompletionRequest = module.CompletionRequest = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "ray.serve.llm", types.ModuleType("ray.serve.llm"))
    monkeypatch.setitem(sys.modules, "ray.serve.llm.openai_api_models", module)


def replica(server, ground=False):
    expert = llm.VllmExpert.func_or_class(server, "conversational", "mortgagellm-base",
                                          {"model": "/base", "version": "b1"}, 100, 512,
                                          {"structured": False, "conversational": ground}, True)
    expert.reconfigure({"model": "/base", "version": "b1",
                        "adapters": {"conversational": {"model": "/a", "version": "a2"}}})
    return expert


def test_the_replica_streams_through_the_adapters_multiplexed_id(openai_models):
    server = FakeServer(lambda name, request: [[sse(c) for c in CHAT_STREAM[:3]],
                                               [sse(CHAT_STREAM[3]), "data: [DONE]\n\n"]])
    expert = replica(server)

    async def first_two():  # the caller stops early: the LLMServer's call is cancelled
        stream = expert.generate(PAYLOAD | {"adapter": "conversational"})
        got = [await stream.__anext__(), await stream.__anext__()]
        await stream.aclose()
        return got

    assert asyncio.run(first_two()) == [
        {"prompt_tokens": 12, "version": "a2", "adapter": "conversational", "base_version": "b1"},
        {"text": "Escrow", "finish_reason": None, "completion_tokens": 1}]
    ((method, request, options, call),) = server.calls
    assert (method, request["model"], options) == (
        "chat", "mortgagellm-base:a2",
        {"stream": True, "multiplexed_model_id": "mortgagellm-base:a2"})
    assert call.cancelled
    answer = asyncio.run(expert.complete(PAYLOAD | {"adapter": "conversational"}))
    assert "".join(i.get("text", "") for i in answer) == "Escrow holds funds."
    assert expert.info()["adapters"] == {"conversational": "a2"}


def test_the_replica_refuses_a_new_model_version_but_takes_new_adapters():
    expert = replica(FakeServer(None))
    with pytest.raises(ValueError, match="LLMServer loaded b1 when the app was built"):
        expert.reconfigure({"model": "/other", "version": "b2", "adapters": {}})


def test_the_replica_classifies_with_a_content_free_prior_asked_once(openai_models):
    shared = [(1, -0.5), (2, -1.0)]
    logprobs = {  # (request, label) -> the label's tokens' log-probabilities
        ("N/A", "structured"): [(40, -1.0)], ("N/A", "conversational"): [(50, -2.0)],
        ("escrow?", "structured"): [(40, -3.0)], ("escrow?", "conversational"): [(50, -1.0)]}

    def answer(name, request):
        label = request["messages"][-1]["content"]
        asked = "N/A" if "Request: N/A" in request["messages"][0]["content"] else "escrow?"
        return [Response(prompt_logprobs=entries(*shared, *logprobs[asked, label]))]

    server = FakeServer(answer)
    expert = replica(server)
    probs = asyncio.run(expert.classify("escrow?", 120, "conversational"))
    # scores minus the prior: structured -3 - (-1) = -2, conversational -1 - (-2) = 1
    assert probs["conversational"] == pytest.approx(1 / (1 + math.exp(-3)))
    asyncio.run(expert.classify("escrow?", 120, "conversational"))
    assert len(server.calls) == 6  # 2 for the prior, once; 2 per request
    assert {options["multiplexed_model_id"] for _, _, options, _ in server.calls} == {
        "mortgagellm-base:a2"}


def test_vllm_is_an_opt_in_extra_on_the_same_ray():
    """`pip install .[gpu]` brings Ray Serve LLM and vLLM on the Ray pinned for everything else;
    `make install` (.[dev]) never does."""
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (ray,) = [d for d in project["dependencies"] if d.startswith("ray[")]
    extras = project["optional-dependencies"]
    assert extras["gpu"] == [f"ray[llm]=={ray.split('==')[1]}", "vllm==0.29.0"]
    assert not any("vllm" in d or "llm]" in d for d in extras["dev"])
    installs = re.findall(r'-e "\.\[(\w+)\]"', (ROOT / "Makefile").read_text())
    assert installs == ["dev"]
