"""Engine vllm end to end on a GPU: the app with both experts served by Ray Serve LLM LLMServers
(vLLM) on one GPU, asked through our API (door, router, audit), on a tiny chat model built here
from a seed (nothing downloaded). Skipped without CUDA (conftest) or without vLLM (`pip install
.[gpu]`).

Written without a GPU at hand: reviewed, never run yet. What it checks is what the CPU tests
(test_llm.py) cannot: that vLLM answers as the model does (greedy, token for token against
transformers), that streamed and whole answers agree, that prompts over the limit get our 400,
and that tier 2's label scores from vLLM's prompt log-probabilities equal modeling's.
"""

import socket
from types import SimpleNamespace

import pytest

from mortgagellm import modeling, registry, routing
from mortgagellm.datasets.tasks.format import ROUTES
from mortgagellm.registry import registry_path
from mortgagellm.serve import door, engine, ops
from tests.serve.conftest import chat_model

pytestmark = [pytest.mark.gpu, pytest.mark.integration]
pytest.importorskip("vllm", reason="engine vllm needs vLLM: pip install .[gpu]")
QUESTION = "Can you explain escrow in plain English?"

RECIPE = """\
run: {{output_dir: {output}}}
serve:
  port: {port}
  registry: {work}/registry.json
  audit: {{dir: {work}/audit, key_file: {work}/audit.key, create_key: true, pii_salt: test}}
  auth: {{keys_file: {work}/keys}}
  router: {{mode: tier1, num_cpus: 0.1, expert_timeout_s: 120}}
  structured: &expert
    model: {model}
    engine: vllm
    num_cpus: 0.5
    num_gpus: 0.45
    vllm:
      proxy_num_cpus: 0.1
      engine_kwargs: {{max_model_len: 512, gpu_memory_utilization: 0.3, dtype: float32,
                      enforce_eager: true}}
      llm_config: {{placement_group_config: {{bundle_per_worker: {{GPU: 0.45}}}}}}
  conversational: *expert
  limits: {{max_prompt_tokens: 200, max_tokens: 64, default_max_tokens: 16}}
"""


@pytest.fixture(scope="module")
def gpu_model(tmp_path_factory):
    """A chat model vLLM's attention kernels take: head size 64 (the micro model's is 16)."""
    return chat_model(tmp_path_factory.mktemp("gpu-model") / "instruct", {
        "hidden_size": 128, "intermediate_size": 256, "num_layers": 2, "num_heads": 2,
        "max_position_embeddings": 512})


@pytest.fixture(scope="module")
def app(ray_cluster, gpu_model, serve_output, tmp_path_factory):
    """The app with both experts on vLLM, a fraction of the one GPU each; deleted at the end."""
    from ray import serve

    from mortgagellm.config import load_recipe

    work = tmp_path_factory.mktemp("served-vllm")
    key, line = door.new_key("tester")
    (work / "keys").write_text(line + "\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = work / "recipe.yaml"
    config.write_text(RECIPE.format(output=serve_output, port=port, work=work, model=gpu_model))
    recipe = load_recipe(config)
    url = ops.start(ops.app_args(str(config), []), timeout_s=600)  # vLLM starts in minutes
    yield SimpleNamespace(url=url, key=key, recipe=recipe, model=gpu_model)
    serve.delete(recipe.serve.app_name)
    serve.shutdown()


def fp32(model_dir):
    """The model in transformers, in vLLM's dtype here (float32), on the GPU."""
    model, tokenizer = modeling.load_for_inference(str(model_dir), threads=1)
    return model.float(), tokenizer


def greedy(model_dir, text, max_tokens):
    """What the expert must answer at temperature 0: the static engine on the same weights."""
    model, tokenizer = fp32(model_dir)
    ids = modeling.chat_ids(tokenizer, [{"role": "user", "content": text}])
    decoder = engine.Decoder(model, tokenizer, [engine.GenRequest(tuple(ids), max_tokens)])
    out = ""
    while not decoder.done:
        out += decoder.step()[0].text
    return out


@pytest.fixture(scope="module")
def client(app):
    import openai

    return openai.OpenAI(base_url=f"{app.url}/v1", api_key=app.key, max_retries=0)


def test_a_chat_answer_through_our_api_is_the_models_greedy_answer(app, client):
    answer = client.chat.completions.create(
        model="mortgagellm-chat", messages=[{"role": "user", "content": QUESTION}], max_tokens=8)
    meta = answer.model_extra["mortgagellm"]
    assert (meta["route"], meta["decided_by"]) == ("conversational", "client")
    assert meta["expert_version"] == registry.current(registry_path(app.recipe),
                                                      "conversational")[0]
    assert answer.choices[0].message.content == greedy(app.model, QUESTION, 8)
    assert (answer.choices[0].finish_reason, answer.usage.completion_tokens) == ("length", 8)
    chunks = list(client.chat.completions.create(
        model="mortgagellm-chat", messages=[{"role": "user", "content": QUESTION}],
        max_tokens=8, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == \
        answer.choices[0].message.content


def test_a_prompt_over_the_limit_is_our_400(app, client):
    """Over max_prompt_tokens (200) but within vLLM's max_model_len (512): our check, on the
    prompt length vLLM reports, gives the other engines' error."""
    import openai

    _, tokenizer = fp32(app.model)
    text = "escrow"
    while len(modeling.chat_ids(tokenizer, [{"role": "user", "content": text}])) <= 250:
        text += " escrow"
    with pytest.raises(openai.BadRequestError, match="the limit is 200"):
        client.chat.completions.create(model="mortgagellm-structured", max_tokens=4,
                                       messages=[{"role": "user", "content": text}])


def test_tier2_scores_from_vllm_equal_modelings(app):
    """VllmExpert.classify (prompt log-probabilities of each label, calibrated by the
    content-free prompt) against modeling.label_logprobs on the same weights in transformers."""
    from ray import serve

    handle = serve.get_deployment_handle("StructuredExpert", app.recipe.serve.app_name)
    got = handle.classify.remote(QUESTION, 120, None).result(timeout_s=120)
    model, tokenizer = fp32(app.model)
    asked, prior = (modeling.label_logprobs(model, tokenizer, routing.fewshot_messages(text, n),
                                            ROUTES)
                    for text, n in ((QUESTION, 120), (routing.CONTENT_FREE, 16)))
    assert got == pytest.approx(routing.fewshot_probabilities(asked, prior), abs=1e-3)
