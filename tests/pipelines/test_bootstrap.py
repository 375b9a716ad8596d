"""bootstrap: the tiny preset builds a loadable, measured base/instruct pair; re-runs skip; given
model directories are verified file by file."""

import json
import logging
import shutil

import pytest

from mortgagellm import cli, manifest
from mortgagellm.config import BootstrapConfig, load_recipe
from mortgagellm.datasets.instructions import instructions
from mortgagellm.model_files import ModelDirError, verify_pair
from mortgagellm.pipelines import bootstrap


def load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_pair_loads_with_from_pretrained_and_shares_architecture(tiny_pair):
    base, base_tok = load(tiny_pair.output_path("base"))
    instruct, instruct_tok = load(tiny_pair.output_path("instruct"))
    assert base_tok.get_vocab() == instruct_tok.get_vocab()
    assert instruct_tok.chat_template and "<|start_header_id|>" in instruct_tok.chat_template
    # Like Llama-3: base ends documents with <|end_of_text|>, instruct ends turns with <|eot_id|>.
    assert base_tok.eos_token == "<|end_of_text|>" and instruct_tok.eos_token == "<|eot_id|>"
    assert base.state_dict().keys() == instruct.state_dict().keys()


def test_instruct_weights_differ_from_base(tiny_pair):
    base, _ = load(tiny_pair.output_path("base"))
    instruct, _ = load(tiny_pair.output_path("instruct"))
    changed = [name for name, w in base.state_dict().items()
               if not w.equal(instruct.state_dict()[name])]
    assert len(changed) > len(base.state_dict()) // 2
    assert tiny_pair.metrics["weight_change"] > 0.01


def test_instruct_follows_held_out_format_instructions_better_than_base(tiny_pair):
    from mortgagellm.modeling import fidelity

    m = tiny_pair.metrics
    assert m["instruct"]["fidelity"] >= m["base"]["fidelity"] + 0.3, m
    assert m["base"]["n"] == m["instruct"]["n"] == 30
    # The saved model is the measured one: re-measuring after from_pretrained agrees.
    model, tok = load(tiny_pair.output_path("instruct"))
    again = fidelity(model, tok, list(instructions("eval", 0, 30)))
    assert again["fidelity"] == pytest.approx(m["instruct"]["fidelity"])
    assert m["base"]["final_loss"] < 3.0  # base learned its general text


def test_second_run_skips_via_manifest(tiny_pair, tiny_recipe_path, caplog, capsys):
    caplog.set_level(logging.INFO)
    assert cli.main(["run", str(tiny_recipe_path), "--to", "bootstrap"]) == 0
    assert "up to date" in caplog.text and "skipping" in caplog.text
    printed = capsys.readouterr().out
    assert tiny_pair.output_path("instruct") in printed
    assert "[bootstrap] up to date, skipped: instruction fidelity base" in printed
    stored = json.loads((tiny_recipe_path.parent / "run/bootstrap/manifest.json").read_text())
    assert stored["fingerprint"] == tiny_pair.fingerprint
    assert stored["started_at"] == tiny_pair.started_at  # not rewritten


def test_a_code_change_rebuilds_bit_identically(tiny_pair, tiny_recipe_path, package_copy,
                                                 caplog):
    """An edit to a module bootstrap runs re-runs it (and says why); the rebuild is identical.
    The session's manifest is put back after, so later tests see the real code's."""
    manifest_file = tiny_recipe_path.parent / "run/bootstrap/manifest.json"
    kept = manifest_file.read_bytes()
    caplog.set_level(logging.INFO)
    with (package_copy / "pipelines" / "bootstrap.py").open("a") as f:
        f.write("\n# an edit\n")
    try:
        rebuilt = bootstrap.run(load_recipe(tiny_recipe_path))
        assert "bootstrap: running (code changed)" in caplog.text
        assert rebuilt.started_at != tiny_pair.started_at and rebuilt.code != tiny_pair.code
        assert {k: v["sha256"] for k, v in rebuilt.outputs.items()} == {
            k: v["sha256"] for k, v in tiny_pair.outputs.items()}
        assert rebuilt.metrics["instruct"]["fidelity"] == tiny_pair.metrics["instruct"]["fidelity"]
    finally:
        manifest_file.write_bytes(kept)


def test_given_models_are_verified_and_hashed(tiny_pair, tmp_path):
    recipe = load_recipe(
        tiny_pair_recipe(tmp_path, tiny_pair.output_path("base"),
                         tiny_pair.output_path("instruct")))
    m = bootstrap.run(recipe)
    assert m.inputs["base"]["sha256"] == tiny_pair.outputs["base"]["sha256"]
    assert m.metrics["instruct"]["model_type"] == "llama"
    assert m.metrics["instruct"]["has_chat_template"]
    assert m.output_path("instruct") == tiny_pair.output_path("instruct")


def tiny_pair_recipe(tmp_path, base, instruct):
    path = tmp_path / "given.yaml"
    path.write_text(f"run:\n  output_dir: {tmp_path / 'out'}\n"
                    f"bootstrap:\n  base_model: {base}\n  instruct_model: {instruct}\n")
    return path


@pytest.mark.parametrize("remove,match", [
    ("model.safetensors", "no model.safetensors"),
    ("config.json", "config.json is missing"),
    ("tokenizer.json", "no tokenizer"),
])
def test_broken_model_directory_is_named(tiny_pair, tmp_path, remove, match):
    broken = tmp_path / "base"
    shutil.copytree(tiny_pair.output_path("base"), broken)
    (broken / remove).unlink()
    with pytest.raises(ModelDirError, match=match):
        verify_pair(broken, tiny_pair.output_path("instruct"))


def test_missing_shard_listed_in_index_is_named(tiny_pair, tmp_path):
    broken = tmp_path / "base"
    shutil.copytree(tiny_pair.output_path("base"), broken)
    (broken / "model.safetensors").rename(broken / "model-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                            "b": "model-00002-of-00002.safetensors"}}
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelDirError, match="model-00002-of-00002.safetensors"):
        verify_pair(broken, tiny_pair.output_path("instruct"))


def test_pair_with_different_architectures_is_refused(tiny_pair, tmp_path):
    from mortgagellm.modeling import build_llama

    model, tok = load(tiny_pair.output_path("instruct"))
    shape = {"hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 4,
             "max_position_embeddings": 256}
    build_llama(shape, tok, seed=1).save_pretrained(tmp_path / "other")
    tok.save_pretrained(tmp_path / "other")
    with pytest.raises(ModelDirError, match="differ at tensor"):
        verify_pair(tiny_pair.output_path("base"), tmp_path / "other")


def test_plan_takes_recipe_overrides_and_rejects_impossible_shapes():
    plan = bootstrap.resolve_plan(BootstrapConfig(preset="tiny", base_steps=7,
                                                  shape={"hidden_size": 96}))
    assert plan.base_steps == 7 and plan.hidden_size == 96
    assert plan.num_layers == bootstrap.PRESETS["tiny"].num_layers
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        bootstrap.resolve_plan(BootstrapConfig(preset="tiny", shape={"hidden_size": 66}))
    with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
        bootstrap.resolve_plan(BootstrapConfig(preset="tiny", seq_len=512))


def test_manifest_records_resolved_plan(tiny_pair):
    assert tiny_pair.config["plan"]["hidden_size"] == bootstrap.PRESETS["tiny"].hidden_size
    base = tiny_pair.output_path("base")
    assert manifest.sha256_path(base) == tiny_pair.outputs["base"]["sha256"]


def test_base_sees_domain_documents_but_never_corpus_or_eval_ones():
    from mortgagellm.datasets import mortgage
    from mortgagellm.datasets.splits import heldout_domain_texts, purpose_seed

    seen = bootstrap.domain_documents(0, 40)
    assert seen == bootstrap.domain_documents(0, 40) and len(set(seen)) == 40
    assert any("Loan" in t or "loan" in t for t in seen)
    corpus = {r["text"] for r in mortgage.generate(purpose_seed(0, "corpus"), 0, 40)}
    assert not set(seen) & (corpus | set(heldout_domain_texts(0, 40)))
    assert bootstrap.domain_documents(1, 5) != bootstrap.domain_documents(0, 5)
