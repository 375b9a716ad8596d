"""serve.topology adapters without Ray: both experts as LoRA adapters on one model. A static
batch that mixes the adapters gives each request its own adapter's greedy answer; the
AdapterExperts replica names the adapter and its version in what it answers; the build refuses
a full-parameter expert, an adapter trained on another base and the continuous engine, each
naming the fix."""

import asyncio
import shutil

import pytest

from mortgagellm import manifest, modeling, registry
from mortgagellm.config import Recipe
from mortgagellm.manifest import sha256_path
from mortgagellm.serve import app, engine
from mortgagellm.serve.experts import Expert

ROUTES = ("structured", "conversational")
PROMPTS = ["What is escrow?", "Classify this loan file: income 90k, DTI 52%.",
           "Summarise the closing disclosure in one line.", "Hello"]


def answer(model, tokenizer, requests):
    """Greedy texts of `requests` decoded as one static batch."""
    decoder = engine.Decoder(model, tokenizer, requests)
    texts = [""] * len(requests)
    while not decoder.done:
        for i, delta in enumerate(decoder.step()):
            texts[i] += delta.text if delta else ""
    return texts


def request(tokenizer, prompt, adapter, max_tokens=12):
    ids = modeling.chat_ids(tokenizer, [{"role": "user", "content": prompt}])
    return engine.GenRequest(tuple(ids), max_tokens, adapter=adapter)


def test_a_batch_mixing_adapters_answers_each_request_as_its_adapter_alone(
        micro_model, micro_adapters):
    model, tokenizer = modeling.load_adapters(
        str(micro_model), {r: str(d) for r, d in micro_adapters.items()}, threads=1)
    # Prompts of different lengths (left padding), the adapters interleaved in one batch.
    batch = [request(tokenizer, p, ROUTES[i % 2]) for i, p in enumerate(PROMPTS)]
    mixed = answer(model, tokenizer, batch)
    alone = [answer(model, tokenizer, [r])[0] for r in batch]
    assert mixed == alone
    base, _ = modeling.load_for_inference(str(micro_model), threads=1)
    plain = answer(base, tokenizer, [request(tokenizer, p, None) for p in PROMPTS])
    assert all(m != p for m, p in zip(mixed, plain)), "an adapter left an answer unchanged"
    other = answer(model, tokenizer, [request(tokenizer, p, ROUTES[1 - i % 2])
                                      for i, p in enumerate(PROMPTS)])
    assert all(m != o for m, o in zip(mixed, other)), "the two adapters answer alike"


def test_label_scores_go_through_the_named_adapter(micro_model, micro_adapters):
    model, tokenizer = modeling.load_adapters(
        str(micro_model), {r: str(d) for r, d in micro_adapters.items()}, threads=1)
    messages = [{"role": "user", "content": "What is escrow?"}]
    scores = {r: modeling.label_logprobs(model, tokenizer, messages, ROUTES, r) for r in ROUTES}
    with model.disable_adapter():
        plain = modeling.label_logprobs(model, tokenizer, messages, ROUTES)
    merged = modeling.load_for_inference(str(micro_model), 1)[0]
    assert plain == pytest.approx(modeling.label_logprobs(merged, tokenizer, messages, ROUTES))
    assert scores["structured"] != pytest.approx(scores["conversational"])
    assert scores["structured"] != pytest.approx(plain)


@pytest.fixture
def replica(micro_model, micro_adapters, monkeypatch):
    """An AdapterExperts replica object (static engine), loaded as reconfigure does."""
    from ray.serve import batching

    monkeypatch.setattr(batching._BatchQueue,
                        "_warn_if_max_batch_size_exceeds_max_ongoing_requests", lambda self: None)
    expert = Expert.func_or_class("adapters", 1, 4, 0.05, 200, 30.0, "static", {},
                                  {"structured": False, "conversational": False})
    expert.reconfigure({"model": str(micro_model), "version": sha256_path(micro_model),
                        "adapters": {r: {"model": str(d), "version": sha256_path(d)}
                                     for r, d in micro_adapters.items()}})
    yield expert
    # As tests/serve/test_experts.py: the batch queue this test's loop built is dropped.
    for cell in Expert.func_or_class._decode.__closure__ or ():
        for inner in getattr(cell.cell_contents, "__closure__", None) or ():
            if isinstance(inner.cell_contents, batching._LazyBatchQueueWrapper):
                inner.cell_contents._queue = None


def payload(prompt, adapter):
    return {"messages": [{"role": "user", "content": prompt}], "max_tokens": 8,
            "temperature": 0.0, "top_p": 1.0, "seed": None, "stop": [], "adapter": adapter}


def test_the_replica_answers_each_request_with_its_adapter_and_names_it(
        replica, micro_model, micro_adapters):
    async def run():
        batched = await asyncio.gather(*(replica.complete(payload(p, ROUTES[i % 2]))
                                         for i, p in enumerate(PROMPTS)))
        alone = [await replica.complete(payload(p, ROUTES[i % 2]))
                 for i, p in enumerate(PROMPTS)]
        return batched, alone

    batched, alone = asyncio.run(run())
    assert [[i["text"] for i in items[1:]] for items in batched] == \
        [[i["text"] for i in items[1:]] for items in alone]
    for i, items in enumerate(batched):
        route = ROUTES[i % 2]
        assert items[0] == {"prompt_tokens": items[0]["prompt_tokens"], "adapter": route,
                            "version": sha256_path(micro_adapters[route]),
                            "base_version": sha256_path(micro_model)}
    assert replica.info()["adapters"] == {r: sha256_path(d) for r, d in micro_adapters.items()}
    with pytest.raises(ValueError, match="adapter 'other'; this replica serves"):
        asyncio.run(replica.complete(payload("Hi", "other")))
    tier2 = asyncio.run(replica.classify("What is escrow?", 120, "structured"))
    assert set(tier2) == set(ROUTES) and sum(tier2.values()) == pytest.approx(1)


# ---- the build: what topology adapters serves, and what it refuses --------------------------

def stage(run, name, outputs, metrics=None):
    manifest.write(str(run / name), manifest.Manifest(
        stage=name, fingerprint=name, config={}, outputs=outputs, metrics=metrics or {}))


@pytest.fixture
def adapter_run(tmp_path, micro_model, micro_adapters, serve_output):
    """A run whose residual model is the micro model and whose sft and dpo stages trained the
    micro adapters on it (method lora); the corpus stage's tier 1 beside them."""
    run = tmp_path / "run"
    shutil.copytree(serve_output / "corpus", run / "corpus")
    shutil.copytree(micro_model, run / "residual" / "merged")
    base = manifest.artifact(run / "residual" / "merged")
    stage(run, "residual", {"model": base})
    for route, name in registry.EXPERT_STAGES.items():
        shutil.copytree(micro_adapters[route], run / name / "adapter")
        stage(run, name, {"model": manifest.artifact(run / name / "adapter"),
                          "adapter": manifest.artifact(run / name / "adapter")},
              {"adapter_base": base["sha256"], "export": "adapter"})
    config = tmp_path / "recipe.yaml"
    config.write_text(f"run: {{output_dir: {run}}}\nserve: {{topology: adapters}}\n")
    return run, config, base


def test_the_build_serves_both_adapters_on_the_residual_model(adapter_run):
    run, config, base = adapter_run
    recipe = app.load({"config": str(config)})
    assert registry.registry_path(recipe).name == "registry.adapters.json"
    options = app.serve_config(recipe, {"config": str(config)})["applications"][0]
    names = [d["name"] for d in options["deployments"]]
    assert names == ["Router", "AdapterExperts", "RateLimits"]
    assert options["deployments"][1]["user_config"] == {
        "model": base["uri"], "version": base["sha256"], "adapters": {
            route: {"model": str(run / name / "adapter"),
                    "version": sha256_path(run / name / "adapter")}
            for route, name in registry.EXPERT_STAGES.items()}}
    assert type(app.build_app({"config": str(config)})).__name__ == "Application"


def test_a_full_parameter_expert_fails_the_build_naming_the_expert_and_the_fix(adapter_run):
    run, config, _ = adapter_run
    shutil.rmtree(run / "sft")
    shutil.copytree(run / "residual" / "merged", run / "sft" / "model")
    stage(run, "sft", {"model": manifest.artifact(run / "sft" / "model")}, {"export": "merged"})
    with pytest.raises(ValueError, match=r"the structured expert \(sft\) was trained "
                       r"full-parameter.*Set sft.method: lora and rerun `mortgagellm sft`"):
        app.build_app({"config": str(config)})


def test_a_full_model_deployed_as_an_adapter_fails_the_build(adapter_run, micro_model):
    _, config, _ = adapter_run
    recipe = app.load({"config": str(config)})
    path = registry.registry_path(recipe)
    registry.deploy(path, "conversational", registry.register(path, str(micro_model), "test"))
    with pytest.raises(ValueError, match=r"conversational expert's version .* is a full model, "
                       "not a LoRA adapter"):
        app.build_app({"config": str(config)})


def test_an_adapter_trained_on_another_model_fails_the_build(adapter_run):
    run, config, _ = adapter_run
    entry = manifest.artifact(run / "dpo" / "adapter")
    stage(run, "dpo", {"model": entry, "adapter": entry}, {"adapter_base": "ab" * 32})
    with pytest.raises(ValueError, match=r"conversational adapter .* was trained on model "
                       r"abababababab, not on the base served here.*dpo.sft.epochs"):
        app.build_app({"config": str(config)})


def test_adapters_refuse_the_continuous_engine_and_a_deployment_wide_ground():
    with pytest.raises(ValueError, match="continuous batching takes no per-request adapter"):
        Recipe.model_validate({"serve": {"topology": "adapters",
                                         "adapters": {"engine": "continuous"}}})
    with pytest.raises(ValueError, match="set serve.<expert>.ground"):
        Recipe.model_validate({"serve": {"adapters": {"ground": True}}})
    assert Recipe.model_validate({}).serve.topology == "separate"
