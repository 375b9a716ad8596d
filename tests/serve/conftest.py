"""Serve fixtures: the routing sets and a tier-1 classifier, built once per session."""

import pytest


@pytest.fixture(scope="session")
def routing_sets():
    """routing_train and eval_routing of the default task-set sizes, seed 0."""
    from mortgagellm.config import TaskSetsConfig
    from mortgagellm.datasets.tasks import build_task_sets

    sets = build_task_sets(TaskSetsConfig(), 0)
    return {"train": sets["routing_train"], "eval": sets["eval_routing"]}


@pytest.fixture(scope="session")
def serve_output(tmp_path_factory, routing_sets):
    """run.output_dir shared by the session's serve recipes: a corpus manifest whose 'tier1'
    output is tier 1 as the corpus stage trains it (routing_train of the default sizes, seed
    0), with nothing else, since the app reads only that of the corpus stage."""
    from mortgagellm import manifest, routing, tier1

    out = tmp_path_factory.mktemp("serve-run")
    path = out / "corpus" / routing.TIER1_FILE
    metrics = tier1.write("ngram", routing_sets["train"], routing_sets["eval"], 120, 0, path)
    manifest.write(str(out / "corpus"), manifest.Manifest(
        stage="corpus", fingerprint="serve-tests", config={},
        outputs={"tier1": manifest.artifact(path)}, metrics={"tier1": metrics}))
    return out


@pytest.fixture(scope="session")
def tier1(serve_output):
    """Tier 1 as the corpus stage trains it and build_app reads it."""
    from mortgagellm.config import Recipe
    from mortgagellm.routing import tier1_path
    from mortgagellm.tier1 import load

    recipe = Recipe.model_validate({"run": {"output_dir": str(serve_output)}})
    return load(tier1_path(recipe).read_text())


def chat_model(path, shape):
    """A Llama-3-style chat model of `shape` in seconds, written to `path`: an in-process BPE
    tokenizer and a random Llama (seed 0) whose output layer is scaled up, so greedy decoding has
    clear winners and is stable under batching."""
    import torch

    from mortgagellm.datasets.general import general_documents
    from mortgagellm.datasets.instructions import instructions
    from mortgagellm.modeling import EOT, build_llama, stop_token_ids, train_tokenizer

    texts = list(general_documents(0, 300, 0.1))
    texts += [f"{i.prompt}\n{i.answer}" for i in instructions("train", 0, 300)]
    tokenizer = train_tokenizer(texts, 512)
    model = build_llama(shape, tokenizer, 0)
    with torch.no_grad():
        model.lm_head.weight.mul_(40)
    model.config.eos_token_id = tokenizer.convert_tokens_to_ids(EOT)
    model.generation_config.eos_token_id = stop_token_ids(tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.eos_token = EOT
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def micro_model(tmp_path_factory):
    """The chat model of the serve tests (the tiny bootstrap pair takes minutes on a busy 2-core
    machine): 2 layers, hidden 32."""
    return chat_model(tmp_path_factory.mktemp("micro") / "instruct", {
        "hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 2,
        "max_position_embeddings": 256})


@pytest.fixture(scope="session")
def micro_adapters(micro_model, tmp_path_factory):
    """{route: LoRA adapter directory} on the micro model, as sft and dpo export them with
    method lora: two random adapters (peft's init_lora_weights=False; B is not zero) on every
    projection, scaled up (alpha 32 over r 4), so each changes the greedy answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("adapters")
    for seed, route in enumerate(("structured", "conversational")):
        torch.manual_seed(seed)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(micro_model), LoraConfig(
            r=4, lora_alpha=32, init_lora_weights=False, task_type="CAUSAL_LM",
            target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]))
        model.save_pretrained(out / route)
    return {"structured": out / "structured", "conversational": out / "conversational"}
