"""sft: the structured expert. Unit tier: record checks, prompt fitting, batches and epoch order on
hand-made inputs. Integration tier: the stage on the shared Ray cluster from the tiny instruct
model (loss falls, weights change, the export loads, answers parse), and in one process with
LoRA (adapter export == merged export on a fixed input)."""

import shutil

import pytest
import torch

from mortgagellm import manifest
from mortgagellm.config import load_recipe
from mortgagellm.datasets.tasks import SFT_TASKS
from mortgagellm.pipelines import sft
from mortgagellm.training import chat, export, objectives, worker
from mortgagellm.training import inputs as training_inputs

SETS = ["corpus.tasks.sft_per_task=48", "corpus.tasks.dpo_pairs=32",
        "corpus.tasks.routing_requests=2", "corpus.tasks.eval_per_task=8",
        "corpus.tasks.eval_qa_pairs=8", "corpus.tasks.eval_routing=2"]
# One thread per process: tiny models on 2 shared cores train and generate ~10x faster than on 2.
SFT_SMALL = ["sft.max_seq_len=256", "sft.epochs=12", "sft.deepspeed.micro_batch_size=8",
             "sft.deepspeed.lr=3e-3", "sft.log_every=10", "sft.checkpoint_every=100",
             "sft.eval_per_task=8", "sft.max_new_tokens=48", "sft.threads=1",
             "sft.scaling.threads_per_worker=1"]


def make_run(tmp_path, tiny_pair, extra=()):
    """A run directory whose residual 'merged model' is the tiny instruct model (the residual
    stage is tested on its own; here only its manifest contract matters)."""
    run = tmp_path / "run"
    for name in ("base", "instruct"):
        shutil.copytree(tiny_pair.output_path(name), run / "bootstrap" / name)
    manifest.write(str(run / "bootstrap"), manifest.Manifest(
        stage="bootstrap", fingerprint="test", config={},
        outputs={n: manifest.artifact(run / "bootstrap" / n) for n in ("base", "instruct")}))
    shutil.copytree(tiny_pair.output_path("instruct"), run / "residual" / "merged")
    manifest.write(str(run / "residual"), manifest.Manifest(
        stage="residual", fingerprint="test", config={},
        outputs={"model": manifest.artifact(run / "residual" / "merged")}))
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(f"run:\n  output_dir: {run}\n")
    return load_recipe(recipe_path, [*SETS, *extra])


def weights(model_dir):
    from safetensors.torch import load_file

    return load_file(str(manifest.Path(model_dir) / "model.safetensors"))


@pytest.fixture(scope="module")
def tokenizer(tiny_pair):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_pair.output_path("instruct"))


# ---- unit ----------------------------------------------------------------------------------------

def record(task="decision", answer="approve", **change):
    doc = "Loan file 7. Credit score 720, LTV 80%, DTI 31%."
    base = {"task": task, "prompt": f"Decide: approve, refer or deny.\n\n{doc}", "answer": answer,
            "document": doc, "truth": {"label": answer}}
    return {k: v for k, v in (base | change).items() if v is not ...}


def test_bad_records_are_rejected_with_counts_and_not_trained_on(tokenizer):
    long_summary = "\n".join(f"field_{c}: value {c}" for c in "abcdefghijklmnopqrstuvwxyz")
    records = [record(), record(answer="deny"), record(answer=None), record(truth=...),
               record(answer="   "), record(answer="maybe"), record(task="poetry"),
               record(prompt=" "), record(task="summary", answer=long_summary)]
    rows, counts = sft.sft_rows(records, tokenizer, 128)
    assert counts["kept"] == 2 and len(rows) == 2
    assert counts["rejected"] == {"missing_field": 2, "empty_answer": 1, "unparseable_answer": 1,
                                  "unknown_task": 1, "empty_prompt": 1, "too_long": 1}
    answers = [tokenizer.decode(r["input_ids"][r["prompt_len"]:]) for r in rows]
    assert answers == ["approve<|eot_id|>", "deny<|eot_id|>"]  # only the good ones, whole


PERSONAL = "Borrower: Maria Kowalski. Sex: Female. Age: 47. Marital status: Married."


def test_counterfactual_augmentation_adds_each_decision_with_its_attributes_swapped():
    doc = f"{PERSONAL} Credit score 720, LTV 80%, DTI 31%."
    personal = record(answer="deny", document=doc, prompt=f"Decide.\n\n{doc}")
    records = [record(), personal, record(task="intent", answer="payoff_request",
                                          document=doc, prompt=f"Route.\n\n{doc}")]
    out = sft.counterfactuals(records)
    assert out[:3] == records and len(out) == 4  # only the decision a swap changes
    added = out[3]
    assert "Sex: Male" in added["document"] and "Age: 17" not in added["document"]
    assert "Age: 77" in added["prompt"] and "James Kowalski" in added["prompt"]
    assert added["answer"] == "deny" and added["truth"] == personal["truth"]
    assert added["document"] in added["prompt"]  # the prompt still holds its document


def test_fairness_pairs_are_the_held_out_decisions_a_swap_changes(tokenizer):
    doc = f"{PERSONAL} Credit score 640."
    pairs = sft.fairness_prompts([record(), record(document=doc, prompt=f"Decide.\n\n{doc}")],
                                 tokenizer, 256)
    assert len(pairs) == 1
    original, swapped = pairs[0]
    assert "Sex: Female" in original and "Sex: Male" in swapped
    assert original.replace("Female", "Male").replace("Married", "Unmarried").replace(
        "47", "77").replace("Maria", "James") == swapped


def test_fit_prompt_cuts_only_the_document_and_counts_it(tokenizer):
    doc = " ".join(f"line {i} of the loan file." for i in range(60))
    user = f"Classify this document.\n\n{doc}"
    text, ids, cut = chat.fit_prompt(tokenizer, user, doc, 10_000)
    assert (text, cut) == (user, False)
    text, ids, cut = chat.fit_prompt(tokenizer, user, doc, 64)
    assert cut and len(ids) <= 64 and len(ids) >= 60  # cut at a token boundary, no slack
    assert text.startswith("Classify this document.\n\nline 0 of the loan file.")
    assert doc.startswith(text.removeprefix("Classify this document.\n\n"))
    assert ids == chat.encode(tokenizer, chat.render(tokenizer, text)["prompt"])
    assert chat.fit_prompt(tokenizer, user, doc, 12) is None  # the instruction alone is too long


def test_chat_rendering_ends_prompt_at_assistant_header_and_answer_at_eot(tokenizer):
    texts = chat.render(tokenizer, "Decide.", completion="deny")
    assert texts["prompt"].endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert texts["prompt"].startswith("<|begin_of_text|><|start_header_id|>user")
    assert texts["completion"] == "deny<|eot_id|>"


def test_sft_batch_puts_loss_on_answer_tokens_only():
    rows = [{"input_ids": [5, 6, 7, 8], "prompt_len": 3},
            {"input_ids": [9, 10, 11], "prompt_len": 1}]
    batch = objectives.sft_batch(rows, "cpu")
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 11, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, -100, -100, 8], [-100, 10, 11, -100]]


def test_epoch_order_shuffles_each_epoch_and_keeps_whole_global_batches():
    order = worker.epoch_order(10, 3, 4, seed=0)
    assert len(order) == 28  # 30 rows cut to 7 global batches of 4
    assert sorted(order[:10]) == list(range(10)) and sorted(order[10:20]) == list(range(10))
    assert order[:10] != order[10:20]
    assert order == worker.epoch_order(10, 3, 4, seed=0)


def test_adapter_export_needs_lora(tiny_pair, tmp_path):
    from mortgagellm.config import ConfigError

    with pytest.raises(ConfigError, match="export 'adapter' needs method 'lora'"):
        make_run(tmp_path, tiny_pair, ["sft.export=adapter"])


def test_missing_residual_output_names_the_stage_to_run(tiny_pair, tmp_path):
    recipe = make_run(tmp_path, tiny_pair)
    (manifest.Path(recipe.run.output_dir) / "residual" / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="run `mortgagellm residual` first"):
        sft.run(recipe)


def test_task_sets_come_from_the_corpus_manifest_or_are_built_here(tiny_pair, tmp_path):
    recipe = make_run(tmp_path, tiny_pair)
    run = manifest.Path(recipe.run.output_dir)
    # identified by the sizes and the seed
    config, inputs = training_inputs.task_source(recipe, "build")
    assert inputs == {} and config["tasks"]["sft_per_task"] == 48
    manifest.write(str(run / "corpus"), manifest.Manifest(stage="corpus", fingerprint="t",
                                                          config={}))
    with pytest.raises(FileNotFoundError, match="no 'tasks' output; set task_source: build"):
        training_inputs.task_source(recipe, "corpus")
    (run / "corpus" / "tasks").mkdir()
    (run / "corpus" / "tasks" / "sft_train.parquet").write_bytes(b"stand-in")
    manifest.write(str(run / "corpus"), manifest.Manifest(
        stage="corpus", fingerprint="t", config={},
        outputs={"tasks": manifest.artifact(run / "corpus" / "tasks")}))
    config, inputs = training_inputs.task_source(recipe, "corpus")  # identified by the files' hash
    assert config == {} and inputs["tasks"]["uri"] == str(run / "corpus" / "tasks")
    assert training_inputs.task_dir(recipe, "corpus", run / "sft") == run / "corpus" / "tasks"


# ---- integration ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(ray_cluster, tiny_pair, tmp_path_factory):
    recipe = make_run(tmp_path_factory.mktemp("sft"), tiny_pair, SFT_SMALL)
    return recipe, sft.run(recipe)


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_sft_on_ray_lowers_loss_changes_weights_and_exports(trained, tiny_pair):
    from transformers import AutoModelForCausalLM

    recipe, m = trained
    history = m.metrics["history"]
    assert history[-1]["step"] == m.metrics["records"]["steps"] > 200
    assert sum(h["loss"] for h in history[-3:]) < 0.25 * sum(h["loss"] for h in history[:3])
    records = m.metrics["records"]
    assert records["kept"] + sum(records["rejected"].values()) == 4 * 48
    assert set(records["documents_cut"]) <= set(SFT_TASKS)
    AutoModelForCausalLM.from_pretrained(m.output_path("model"))
    start, expert = weights(tiny_pair.output_path("instruct")), weights(m.output_path("model"))
    assert start.keys() == expert.keys()
    assert all(not torch.equal(start[k], expert[k]) for k in start if k.endswith("proj.weight"))
    assert [p["node_id"] for p in m.metrics["placement"]]


@pytest.mark.integration
def test_structured_expert_answers_parse(trained):
    """The tiny model (2 layers, width 64, 640-token BPE, pretrained on 96-token rows) learns
    the formats only partly in 253 steps at 256 tokens. Parse rates on 8 held-out records per
    task, with the tiny pair bootstrap builds under the training loop's schedule: decision 1.0,
    doc_kind 0.25, intent 0.375, summary 0.0 (every summary document is cut to fit, and the
    expert answers it with a label); under bootstrap's former own schedule they were 1.0, 0.25,
    0.75 and 0.375. The summary layout is the one this size learns or not by the pair's luck, so
    it is not asserted here (the demo measures it: 1.0 parsed, 60 records). The start model's:
    0.0 on every task. Asserted: every classification parses at least once, decisions always, at
    least 30 % over the four tasks, the start model's answers never."""
    _, m = trained
    start, expert = m.metrics["heldout"]["start"], m.metrics["heldout"]["expert"]
    for task in SFT_TASKS:
        assert start[task]["parsed"] == 0.0, (task, start[task])
        if task != "summary":
            assert expert[task]["parsed"] >= 1 / 8, (task, expert[task])
    assert sum(expert[task]["parsed"] for task in SFT_TASKS) / len(SFT_TASKS) >= 0.3
    assert expert["decision"]["parsed"] == 1.0
    # the fairness row: flips over the pairs whose two answers parse, their n beside it
    fairness = expert["fairness"]
    assert 1 <= fairness["unparseable"]["n"] <= 8 and fairness["flip_rate"]["n"] <= \
        fairness["unparseable"]["n"]
    assert m.metrics["records"]["counterfactual"] == 0  # sft.counterfactual is off here


@pytest.mark.integration
def test_rerun_is_skipped(trained, caplog):
    recipe, m = trained
    caplog.set_level("INFO")
    assert sft.run(recipe).started_at == m.started_at
    assert "up to date" in caplog.text


@pytest.mark.timeout(900)
@pytest.mark.parametrize("zero", [2, 0])  # 0: the CPU recipes' stage
def test_lora_adapter_export_equals_merged_export_and_resumes(tiny_pair, tmp_path, zero):
    """In one process (no Ray), LoRA with the adapter exported; the same checkpoint exported
    merged gives the same logits, only q/v projections change; a run that failed at step 3
    continues from its step-2 checkpoint. At ZeRO 2 and at ZeRO 0 (the export reads ZeRO 0's
    module state as saved, ZeRO 2's through zero_to_fp32)."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    lora = ["sft.method=lora", "sft.export=adapter", "sft.epochs=1", "sft.checkpoint_every=2",
            "sft.deepspeed.micro_batch_size=2",
            "sft.log_every=2", "sft.eval_per_task=1", "sft.max_new_tokens=8",
            "corpus.tasks.sft_per_task=6", "sft.lora.dropout=0.0",
            f"sft.deepspeed.zero_stage={zero}"]
    recipe = make_run(tmp_path / "a", tiny_pair, [*SFT_SMALL, *lora])
    with pytest.raises(RuntimeError, match="injected failure at step 3"):
        sft.run(recipe, on_ray=False, fail_at_step=3)
    m = sft.run(recipe, on_ray=False)
    assert m.metrics["history"][-1]["start_step"] == 2
    adapter_dir = manifest.Path(m.output_path("model"))
    assert (adapter_dir / "adapter_config.json").exists()
    # serve.topology adapters reads the 'adapter' output and the model it was trained on.
    assert m.outputs["adapter"] == m.outputs["model"]
    assert m.metrics["adapter_base"] == m.inputs["start"]["sha256"]
    out = manifest.Path(recipe.run.output_dir) / "sft"
    checkpoint = sorted((out / "checkpoints").glob("*/step_*"))[-1]
    start_dir = out.parent / "residual" / "merged"
    merged_dir = export.export_model(checkpoint, start_dir, tmp_path / "merged", "lora",
                                  recipe.sft.lora.model_dump(), zero, merge=True,
                                  adapter_out=tmp_path / "kept")
    kept = tmp_path / "kept" / "adapter_model.safetensors"  # the merged export keeps the adapter
    assert kept.read_bytes() == (adapter_dir / "adapter_model.safetensors").read_bytes()
    ids = torch.tensor([[1, 40, 41, 300, 12, 7, 99, 5]])
    with torch.no_grad():
        a = AutoPeftModelForCausalLM.from_pretrained(adapter_dir).eval()(input_ids=ids).logits
        b = AutoModelForCausalLM.from_pretrained(merged_dir).eval()(input_ids=ids).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    start = weights(tiny_pair.output_path("instruct"))
    changed = {k for k, v in weights(merged_dir).items() if not torch.equal(v, start[k])}
    assert changed and all("q_proj" in k or "v_proj" in k for k in changed)
