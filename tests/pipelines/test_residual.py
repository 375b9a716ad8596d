"""residual: the merge arithmetic on hand-written tensors, the safety checks, the streaming driver
against an in-memory reference, and the stage on the tiny pair with a stand-in DAPT model (full
fine-tune and LoRA adapter) until the pretrain stage lands."""

import itertools
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from mortgagellm import manifest
from mortgagellm.config import ResidualConfig, load_recipe
from mortgagellm.merge import (
    MergeError,
    MergePlan,
    check_compatible,
    check_vocab,
    merge_state,
    merge_tensor,
)
from mortgagellm.model_files import weight_files
from mortgagellm.modeling import END_HEADER, EOT, START_HEADER
from mortgagellm.pipelines import residual

T = torch.tensor


# --- the maths, on hand-written tensors -------------------------------------------------------

def test_merge_arithmetic_worked_by_hand():
    base = {"model.w": T([1.0, 2.0, 3.0, 4.0]), "lm_head.weight": T([1.0, 1.0]),
            "model.norm.weight": T([1.0, 1.0])}
    instruct = {"model.w": T([2.0, 2.0, 5.0, 0.0]), "lm_head.weight": T([3.0, 0.0]),
                "model.norm.weight": T([4.0, 4.0])}
    dapt = {"model.w": T([10.0, 20.0, 30.0, 40.0]), "lm_head.weight": T([1.0, 1.0]),
            "model.norm.weight": T([0.5, 0.25])}
    plan = MergePlan(scale=0.5, module_scales=(("lm_head.*", 2.0), ("*norm.weight", 0.0)))
    merged = merge_state(dapt, instruct, base, plan)
    # model.w: dapt + 0.5 * (instruct - base) = [10 + 0.5, 20 + 0, 30 + 1, 40 - 2]
    assert merged["model.w"].tolist() == [10.5, 20.0, 31.0, 38.0]
    # lm_head.weight, λ = 2: [1 + 2 * 2, 1 + 2 * -1]
    assert merged["lm_head.weight"].tolist() == [5.0, -1.0]
    # norms, λ = 0: DAPT's own values
    assert merged["model.norm.weight"].tolist() == [0.5, 0.25]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_merge_keeps_the_stored_dtype(dtype):
    # 1.5 + 0.5 * (2 - 1) = 2.0, exact in every dtype
    out = merge_tensor("w", T([1.5], dtype=dtype), T([2.0], dtype=dtype), T([1.0], dtype=dtype),
                       MergePlan(scale=0.5))
    assert out.dtype == dtype and out.tolist() == [2.0]


def test_instruct_rows_are_copied_whatever_lambda():
    base = torch.zeros(4, 2)
    instruct = T([[1.0, 1.0], [7.0, 8.0], [1.0, 1.0], [9.0, -9.0]])
    dapt = torch.full((4, 2), 3.0)
    plan = MergePlan(scale=0.5, instruct_rows={"emb": (1, 3)})
    out = merge_tensor("emb", dapt, instruct, base, plan)
    assert out.tolist() == [[3.5, 3.5], [7.0, 8.0], [3.5, 3.5], [9.0, -9.0]]
    assert merge_tensor("other", dapt, instruct, base, plan)[1].tolist() == [6.5, 7.0]


def test_first_matching_pattern_gives_lambda():
    plan = MergePlan(scale=1.0, module_scales=(("model.layers.0.*", 0.25), ("*.weight", 0.5)))
    assert plan.scale_for("model.layers.0.mlp.up_proj.weight") == 0.25
    assert plan.scale_for("model.layers.1.mlp.up_proj.weight") == 0.5
    assert plan.scale_for("model.layers.1.mlp.up_proj.bias") == 1.0


HEADERS = {"a.weight": ("F32", (4, 2)), "b.weight": ("BF16", (3,))}


@pytest.mark.parametrize("dapt,match", [
    ({**HEADERS, "a.weight": ("F32", (4, 3))}, r"tensor a.weight: shape \(4, 2\) in base, "
                                               r"\(4, 3\) in dapt"),
    ({**HEADERS, "b.weight": ("F16", (3,))}, "tensor b.weight: dtype BF16 in base, F16 in dapt"),
    ({"a.weight": HEADERS["a.weight"]}, "tensor b.weight is in base but missing from dapt"),
    ({**HEADERS, "c.weight": ("F32", (1,))}, "tensor c.weight is in dapt but missing from base"),
])
def test_mismatched_tensors_are_named(dapt, match):
    check_compatible({"base": HEADERS, "instruct": HEADERS, "dapt": HEADERS})
    with pytest.raises(MergeError, match=match):
        check_compatible({"base": HEADERS, "instruct": HEADERS, "dapt": dapt})


def test_vocabulary_mismatches_are_named():
    base = {"a": 0, "b": 1, "<|x|>": 2}
    check_vocab(base, {**base, "<|new|>": 3}, dict(base), rows=4)
    with pytest.raises(MergeError, match="token 'b' is id 1 in base but 2 in instruct"):
        check_vocab(base, {"a": 0, "b": 2, "<|x|>": 1}, None, rows=4)
    with pytest.raises(MergeError, match="token 'b' is id 3 in dapt but 1 in base"):
        check_vocab(base, base, {"a": 0, "b": 3, "<|x|>": 2}, rows=4)
    with pytest.raises(MergeError, match="token id 3 has no row in the 3-row embedding"):
        check_vocab(base, {**base, "<|new|>": 3}, None, rows=3)


def test_selection_rule_and_gate_message():
    refs = {"instruct": {"fidelity": 0.8}, "dapt": {"fidelity": 0.1}}
    table = [{"scale": 0.5, "fidelity": 0.64, "fidelity_ratio": 0.8, "domain_perplexity": 10.0},
             {"scale": 1.0, "fidelity": 0.76, "fidelity_ratio": 0.95, "domain_perplexity": 20.0},
             {"scale": 1.25, "fidelity": 0.8, "fidelity_ratio": 1.0, "domain_perplexity": 30.0}]
    # 0.5 fails the gate; of 1.0 and 1.25 the lower domain perplexity wins
    assert residual.choose(table, 0.9, refs)["scale"] == 1.0
    with pytest.raises(residual.FidelityGateError,
                       match=r"(?s)lambda 1.25: fidelity 0.800 ratio 1.000.*lower the DAPT"):
        residual.choose(table, 1.01, refs)


def test_sweep_accepts_a_comma_list():
    assert ResidualConfig(sweep="0,0.25,1.25").sweep == [0.0, 0.25, 1.25]
    assert ResidualConfig(sweep=[0, 1]).sweep == [0.0, 1.0]
    assert ResidualConfig().sweep == [] and ResidualConfig().min_fidelity_ratio == 0.9


# --- stand-in DAPT models (until the pretrain stage lands) ------------------------------------

def mortgage_batches(tokenizer, seed=0, batch_size=16, seq_len=96):
    """Endless batches of packed mortgage documents from the corpus's seed stream."""
    from mortgagellm.datasets import mortgage, splits
    from mortgagellm.modeling import BOS, EOS

    docs = mortgage.generate(splits.purpose_seed(seed, "corpus"), 0, 200, noise=False)
    ids = tokenizer([BOS + d["text"] + EOS for d in docs], add_special_tokens=False)["input_ids"]
    flat = torch.tensor(list(itertools.chain.from_iterable(ids)))
    blocks = flat[: len(flat) // seq_len * seq_len].view(-1, seq_len)
    generator = torch.Generator().manual_seed(seed)
    while True:
        rows = blocks[torch.randint(len(blocks), (batch_size,), generator=generator)]
        yield {"input_ids": rows, "labels": rows, "attention_mask": torch.ones_like(rows)}


def make_dapt(base, out, lora=False):
    """base fine-tuned on mortgage text: 30 full steps at lr 3e-4 (a modest move from base, the
    regime where the residual transfers, shared/FINDINGS.md), or 20 LoRA steps at lr 1e-3."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mortgagellm.pipelines.bootstrap import train_loop

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.0,
            target_modules=["q_proj", "v_proj", "up_proj", "down_proj"]))
    train_loop(model, mortgage_batches(tokenizer), 20 if lora else 30, 1e-3 if lora else 3e-4,
               "dapt")
    model.save_pretrained(out)
    if not lora:
        tokenizer.save_pretrained(out)
    return out


def make_run(tmp_path, tiny_pair, dapt, **residual_cfg):
    """A run directory with the tiny pair's bootstrap manifest and a pretrain manifest whose
    'model' output is dapt; returns the recipe."""
    run_dir = tmp_path / "run"
    manifest.write(str(run_dir / "bootstrap"), tiny_pair)
    if dapt is not None:
        manifest.write(str(run_dir / "pretrain"), manifest.Manifest(
            stage="pretrain", fingerprint="stand-in", config={},
            outputs={"model": manifest.artifact(dapt)}))
    overrides = {"run.output_dir": str(run_dir)}
    overrides |= {f"residual.{k}": v for k, v in residual_cfg.items()}
    return load_recipe(recipe_file(tmp_path), overrides)


def recipe_file(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("run:\n  seed: 0\nbootstrap:\n  preset: tiny\n  eval_instructions: 30\n")
    return path


def load_dir(path):
    from safetensors.torch import load_file

    return {k: v for f in weight_files(path) for k, v in load_file(f).items()}


def same_bits(a, b):
    return (a.dtype == b.dtype and a.shape == b.shape
            and a.reshape(-1).view(torch.uint8).equal(b.reshape(-1).view(torch.uint8)))


@pytest.fixture(scope="module", autouse=True)
def one_thread(tiny_pair):
    """One torch thread for this module's models: with other jobs on the 2 cores, the stage on
    the tiny pair took 5 s on one thread and 68 s on two. The shared pair is built first, with
    the session's own setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dapt(tiny_pair, tmp_path_factory):
    return make_dapt(tiny_pair.output_path("base"), tmp_path_factory.mktemp("dapt") / "model")


@pytest.fixture(scope="module")
def paths(tiny_pair, dapt):
    return {"base": Path(tiny_pair.output_path("base")),
            "instruct": Path(tiny_pair.output_path("instruct")), "dapt": dapt}


# --- the streaming driver and the checks on real checkpoints -----------------------------------

def test_chat_markers_are_the_rows_base_never_trained(paths):
    rows = residual.check_pair(paths["base"], paths["instruct"], None)
    assert rows["tokens"] == [START_HEADER, END_HEADER, EOT]
    assert rows["tensors"] == ["lm_head.weight", "model.embed_tokens.weight"]
    configured = residual.check_pair(paths["base"], paths["instruct"], [EOT])
    assert configured["tokens"] == [EOT] and configured["ids"] == rows["ids"][-1:]
    with pytest.raises(MergeError, match="not in instruct's vocabulary"):
        residual.check_pair(paths["base"], paths["instruct"], ["<|nope|>"])


def test_tokens_base_lacks_are_instruct_rows_too(paths):
    from transformers import AutoTokenizer

    base = AutoTokenizer.from_pretrained(paths["base"])
    instruct = AutoTokenizer.from_pretrained(paths["instruct"])
    instruct.add_special_tokens({"additional_special_tokens": ["<|python_tag|>"]})
    assert residual.chat_markers(base, instruct) == [START_HEADER, END_HEADER, EOT,
                                                     "<|python_tag|>"]


def test_streamed_model_equals_in_memory_reference_bit_for_bit(paths, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = residual.check_pair(paths["base"], paths["instruct"], None)
    plan = residual.make_plan(ResidualConfig(module_scales={"*norm.weight": 1.0}), 0.5, rows)
    summary = residual.write_merged(paths, plan, tmp_path / "merged", max_shard_mb=0.2)
    assert summary["shards"] > 1 and summary["tensors"] == len(load_dir(paths["base"]))

    dapt, instruct, base = (load_dir(paths[r]) for r in ("dapt", "instruct", "base"))
    reference = merge_state(dapt, instruct, base, plan)
    streamed = load_dir(tmp_path / "merged")
    assert streamed.keys() == reference.keys()
    assert all(same_bits(streamed[n], reference[n]) for n in reference)
    name = "model.layers.0.mlp.up_proj.weight"  # and the reference is the formula
    torch.testing.assert_close(streamed[name], dapt[name] + 0.5 * (instruct[name] - base[name]))

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert all(same_bits(t, reference[n]) for n, t in model.state_dict().items())
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(
        paths["instruct"]).chat_template and tokenizer.eos_token == EOT


def test_special_token_rows_come_from_instruct(paths, tmp_path):
    rows = residual.check_pair(paths["base"], paths["instruct"], None)
    plan = residual.make_plan(ResidualConfig(), 0.5, rows)
    residual.write_merged(paths, plan, tmp_path / "merged", max_shard_mb=1)
    merged, instruct, dapt = (load_dir(p) for p in (tmp_path / "merged", paths["instruct"],
                                                    paths["dapt"]))
    others = [i for i in range(merged["lm_head.weight"].shape[0]) if i not in rows["ids"]]
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert same_bits(merged[name][rows["ids"]], instruct[name][rows["ids"]])
        assert not merged[name][others].equal(instruct[name][others])
    # without the rule, lm_head's marker rows would carry DAPT's drift (their logits pushed down
    # while DAPT never saw them): dapt + 0.5 * (instruct - base) != instruct there
    assert not dapt["lm_head.weight"][rows["ids"]].equal(instruct["lm_head.weight"][rows["ids"]])


def broken_copy(src, dst, name, change):
    """A copy of model dir src whose tensor `name` is replaced by change(tensor)."""
    from safetensors.torch import save_file

    shutil.copytree(src, dst)
    state = load_dir(dst)
    state[name] = change(state[name])
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("change,match", [
    (lambda t: t[:-1], r"model.layers.1.mlp.up_proj.weight: shape \(192, 64\) in base, "
                       r"\(191, 64\) in dapt"),
    (lambda t: t.half(), "model.layers.1.mlp.up_proj.weight: dtype F32 in base, F16 in dapt"),
])
def test_mismatch_stops_before_any_write(paths, tmp_path, change, match):
    bad = broken_copy(paths["dapt"], tmp_path / "bad", "model.layers.1.mlp.up_proj.weight",
                      change)
    with pytest.raises(MergeError, match=match):
        residual.write_merged({**paths, "dapt": bad}, MergePlan(scale=1.0), tmp_path / "out", 1)
    assert not (tmp_path / "out").exists()


def test_architecture_and_pattern_mistakes_are_named(paths, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(paths["dapt"], bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 0.1}))
    with pytest.raises(MergeError, match="config.json rms_norm_eps: 1e-06 in base, 0.1 in dapt"):
        residual.check_architecture({**paths, "dapt": bad})
    plan = MergePlan(scale=1.0, module_scales=(("lm_haed.*", 0.5),))
    with pytest.raises(MergeError, match="pattern 'lm_haed.*' matches no tensor"):
        residual.write_merged(paths, plan, tmp_path / "out", 1)


# --- the stage --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stage(tiny_pair, dapt, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("residual")
    recipe = make_run(tmp, tiny_pair, dapt, sweep="0,0.5,1", eval_instructions=30)
    return recipe, residual.run(recipe)


def test_merged_model_follows_instructions_that_dapt_lost(stage):
    recipe, m = stage
    fid, ppl = m.metrics["fidelity"], m.metrics["domain_perplexity"]
    assert fid["merged"] >= fid["dapt"] + 0.3, m.metrics
    assert m.metrics["fidelity_ratio"] == fid["merged"] / fid["instruct"] >= 0.9
    assert m.metrics["dapt_fidelity_ratio"] == fid["dapt"] / fid["instruct"] < 0.5
    # the paper's comparison: the merged model knows the domain better than instruct does
    assert ppl["dapt"] < ppl["merged"] < ppl["instruct"], ppl
    assert [r["scale"] for r in m.metrics["sweep"]] == [0.0, 0.5, 1.0]
    passing = [r for r in m.metrics["sweep"] if r["fidelity_ratio"] >= 0.9]
    assert m.metrics["scale"] == min(passing, key=lambda r: r["domain_perplexity"])["scale"]


def test_manifest_records_inputs_settings_and_loadable_output(stage, tiny_pair, dapt):
    from transformers import AutoModelForCausalLM

    recipe, m = stage
    stored = json.loads((residual.stage_dir(recipe, "residual") / "manifest.json").read_text())
    assert stored["inputs"]["base"]["sha256"] == tiny_pair.outputs["base"]["sha256"]
    assert stored["inputs"]["dapt"]["sha256"] == manifest.sha256_path(dapt)
    assert stored["config"]["residual"]["sweep"] == [0.0, 0.5, 1.0]
    assert stored["metrics"]["instruct_rows"]["tokens"] == [START_HEADER, END_HEADER, EOT]
    assert manifest.sha256_path(m.output_path("model")) == m.outputs["model"]["sha256"]
    AutoModelForCausalLM.from_pretrained(m.output_path("model"))
    assert not (residual.stage_dir(recipe, "residual") / "candidate").exists()


def test_second_run_skips_via_manifest(stage, caplog):
    recipe, m = stage
    caplog.set_level(logging.INFO)
    again = residual.run(recipe)
    assert "up to date" in caplog.text and again.started_at == m.started_at


def test_gate_fails_with_the_numbers(tiny_pair, dapt, tmp_path):
    recipe = make_run(tmp_path, tiny_pair, dapt, sweep=0, eval_instructions=30)
    with pytest.raises(residual.FidelityGateError,
                       match=r"(?s)under residual.min_fidelity_ratio 0.9.*lambda 0.00: fidelity"):
        residual.run(recipe)
    assert not (tmp_path / "run/residual/manifest.json").exists()


def test_missing_pretrain_manifest_says_which_stage_to_run(tiny_pair, tmp_path):
    with pytest.raises(FileNotFoundError, match="run `mortgagellm pretrain CONFIG` first"):
        residual.run(make_run(tmp_path, tiny_pair, None))


def test_lora_dapt_adapter_is_merged_onto_base_first(tiny_pair, paths, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = make_dapt(paths["base"], tmp_path / "adapter", lora=True)
    assert (adapter / "adapter_config.json").exists()
    recipe = make_run(tmp_path, tiny_pair, adapter, eval_instructions=6, domain_docs=3,
                      min_fidelity_ratio=0)
    m = residual.run(recipe)
    assert m.metrics["dapt_lora"] and m.inputs["dapt"]["uri"] == str(adapter)
    assert not (residual.stage_dir(recipe, "residual") / "dapt-merged").exists()

    dapt = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(paths["base"]),
                                     adapter).merge_and_unload().state_dict()
    base = load_dir(paths["base"])
    assert not dapt["model.layers.0.self_attn.q_proj.weight"].equal(
        base["model.layers.0.self_attn.q_proj.weight"])  # the adapter moved the weights
    plan = residual.make_plan(ResidualConfig(), 1.0, m.metrics["instruct_rows"])
    reference = merge_state({n: dapt[n] for n in base}, load_dir(paths["instruct"]), base, plan)
    merged = load_dir(Path(m.output_path("model")))
    assert all(same_bits(merged[n], reference[n]) for n in reference)
