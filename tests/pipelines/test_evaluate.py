"""evaluate: every model on the held-out sets. Unit tier: each task's metrics against hand
computations, the manifest's shape with stand-in scorers, request de-duplication, the table and
the registry entry. Integration tier: one model through Ray Data (judge on a loopback stub,
results into the registry), and the whole stage over every variant, routed included."""

import json
import math
import shutil
from pathlib import Path

import pytest

from mortgagellm import manifest, registry, routing
from mortgagellm.config import load_recipe
from mortgagellm.datasets.instructions import instructions
from mortgagellm.datasets.tasks import build_task_sets
from mortgagellm.datasets.tasks.format import format_summary, qa_truth
from mortgagellm.evaluation import scoring
from mortgagellm.evaluation import sets as es
from mortgagellm.metrics import wilson
from mortgagellm.pipelines import evaluate as ev
from mortgagellm.tier1 import write as write_tier1

HANDSET = Path(__file__).resolve().parents[2] / "data/routing-handwritten/test.jsonl"
SETS = ["corpus.tasks.sft_per_task=4", "corpus.tasks.dpo_pairs=4",
        "corpus.tasks.routing_requests=40", "corpus.tasks.eval_per_task=6",
        "corpus.tasks.eval_qa_pairs=4", "corpus.tasks.eval_routing=10"]
# A few records per task, short answers, one thread: the tiny model answers all in seconds.
SMALL = ["evaluate.per_task=3", "evaluate.qa_pairs=3", "evaluate.fairness_files=3",
         "evaluate.eval_instructions=5", "evaluate.domain_docs=3", "evaluate.routing_requests=10",
         "evaluate.summary_tokens=16", "evaluate.answer_tokens=16", "evaluate.max_seq_len=256",
         "evaluate.resamples=100", "evaluate.threads=1", "evaluate.batch_size=16"]


def label(task, gold, **extra):
    return {"task": task, "prompt": f"Label it.\n\ndoc {gold}", "document": f"doc {gold}",
            "answer": gold, "truth": {"label": gold}, **extra}


def as_json(metrics):
    return json.dumps(metrics, sort_keys=True)


# ---- unit: metrics per task ----------------------------------------------------------------------

def test_classification_counts_unparseable_answers_wrong():
    records = [label("decision", g) for g in ("approve", "approve", "refer", "deny")]
    texts = ["approve", "Refer.", "refer", "maybe later"]  # parsed: approve, refer, refer, None
    m = scoring.classification_metrics("decision", records, texts, 100, 0)
    assert m[scoring.ACCURACY]["value"] == 0.5 and m[scoring.ACCURACY]["n"] == 4
    assert m[scoring.ACCURACY]["ci95"] == pytest.approx(list(wilson(2, 4)), abs=1e-6)
    # approve: 1TP 1FN -> 2/3; refer: 1TP 1FP -> 2/3; deny: 1FN -> 0
    assert m[scoring.MACRO_F1]["value"] == pytest.approx(4 / 9, abs=1e-6)
    assert m[scoring.UNPARSEABLE]["value"] == 0.25


class FixedBert:
    """Stand-in for BERTScore: 0.5 for every non-empty answer."""

    def f1(self, candidates, references):
        return [0.5 if c else 0.0 for c in candidates]


def test_summary_rouge_and_field_accuracy_by_hand():
    fields = {"borrower": "Ann Lee", "loan_amount": "$200,000"}
    answer = format_summary(fields, "Ann Lee asked for $200,000.")
    record = {"prompt": "Summarise.", "document": "d", "answer": answer,
              "truth": {"summary_fields": fields, "reference_summary": "Ann Lee asked for "
                                                                      "$200,000."}}
    text = "borrower: Ann Lee\nloan_amount: $250,000"
    m = scoring.summary_metrics([record], [text], FixedBert(), 100, 0)
    # output: borrower ann lee loan amount 250 000 (7 tokens); reference: borrower ann lee loan
    # amount 200 000 summary ann lee asked for 200 000 (14); LCS borrower ann lee loan amount
    # 000 (6) -> P = 6/7, R = 6/14, F = 2 * 6 / (7 + 14)
    assert m[scoring.ROUGE_L]["value"] == pytest.approx(12 / 21, abs=1e-6)
    assert m[scoring.FIELD_ACCURACY]["value"] == 0.5  # borrower right, loan amount wrong
    assert m[scoring.BERTSCORE_F1] == {"value": 0.5, "n": 1, "ci95": [0.5, 0.5]}


def test_qa_numeric_counts_only_questions_with_a_figure():
    money = qa_truth("apr", "What is the payment?", "$1,842.10", 1842.1, "USD")
    text = qa_truth("program", "Which program?", "FHA", None, None)
    records = [{"prompt": "q1", "document": "d", "chosen": "The payment is $1,842.10.",
                "truth": money},
               {"prompt": "q2", "document": "d", "chosen": "It is an FHA loan.", "truth": text}]
    m = scoring.qa_metrics(records, ["Your payment is $1,842.10 a month.", "Conventional."],
                      FixedBert(), 100, 0)
    assert (m[scoring.NUMERIC]["value"], m[scoring.NUMERIC]["n"]) == (1.0, 1)
    assert m[scoring.NUMERIC]["ci95"] == pytest.approx(list(wilson(1, 1)), abs=1e-6)
    assert m[scoring.NUMERIC_GROUNDED]["value"] == 1.0  # no source line: read as written
    grounded = {**records[0], "prompt": "What is the P&I?\n| Monthly principal & interest | "
                "$1,842.10 |"}
    miscopied = "Source: “Monthly principal & interest: $1,942.10”\nIt is $1,942.10."
    m2 = scoring.qa_metrics([grounded], [miscopied], FixedBert(), 100, 0)
    assert (m2[scoring.NUMERIC]["value"], m2[scoring.NUMERIC_GROUNDED]["value"]) == (0.0, 1.0)
    closed = {**records[0], "prompt": "What is the P&I?", "document": ""}  # asked with no context
    m3 = scoring.qa_metrics([closed, closed], ["It is $1,842.10.", "No idea."], FixedBert(), 100, 0)
    assert (m3[scoring.KNOWLEDGE]["value"], m3[scoring.KNOWLEDGE]["n"]) == (0.5, 2)
    assert m3[scoring.NUMERIC]["n"] == 0  # figures read from a context only
    # after the source is resolved, $1,942.10 reads $1,842.10, which the context states; an
    # explanation's made-up figure is not supported; the closed-book questions are not counted
    made_up = "Source: “Monthly principal & interest: $1,842.10”\nIt is $1,842.10 on $9.00."
    # an answer that states no figure makes nothing up but is not counted as supported either
    m4 = scoring.qa_metrics([grounded, grounded, closed, grounded],
                            [miscopied, made_up, "$5.00", "I cannot say."], FixedBert(), 100, 0)
    assert (m4[scoring.SUPPORTED]["value"], m4[scoring.SUPPORTED]["n"]) == (0.5, 2)
    # q1: [your payment is 184210 month] vs [payment is 184210]: 3 shared -> 2*3/(5+3) = 0.75;
    # q2: nothing shared -> 0
    assert m[scoring.TOKEN_F1]["value"] == pytest.approx((0.75 + 0.0) / 2)


def test_fidelity_is_modeling_fidelity_with_a_wilson_interval():
    instrs = list(instructions("eval", 0, 5))
    answers = [(i.answer if i.format == "one_word" else "not json", True) for i in instrs]
    answers[0] = (answers[0][0], False)  # ran out of tokens: never counts
    hits = sum(i.format == "one_word" for i in instrs[1:])
    m = scoring.fidelity_metric(instrs, answers)[scoring.FIDELITY]
    assert m["value"] == pytest.approx(hits / 5) and m["n"] == 5
    assert m["ci95"] == pytest.approx(list(wilson(hits, 5)), abs=1e-6)


def test_perplexity_flips_and_routing_by_hand():
    ppl = scoring.perplexity_metric([(2.0, 2), (4.0, 2)], 100, 0)[scoring.PERPLEXITY]
    assert ppl["value"] == pytest.approx(math.exp(6 / 4)) and ppl["n"] == 2
    assert math.exp(1) <= ppl["ci95"][0] <= ppl["ci95"][1] <= math.exp(2) + 1e-9
    fair = scoring.flip_metric(["approve", "deny", "huh", "refer"],
                               ["approve", "approve", "what", ""])
    flips, unparseable = fair[scoring.FLIP_RATE], fair[scoring.UNPARSEABLE]
    assert flips["value"] == 0.5 and flips["n"] == 2  # of the 2 pairs that parse, deny->approve
    assert unparseable["value"] == 0.5 and unparseable["n"] == 4  # huh/what, refer/""
    never = scoring.flip_metric(["huh"] * 3, ["what"] * 3)
    assert never[scoring.FLIP_RATE]["n"] == 0 and math.isnan(never[scoring.FLIP_RATE]["value"])
    assert never[scoring.UNPARSEABLE]["value"] == 1.0
    routes = [{"route": "structured"}, {"route": "conversational"}] * 2
    m = scoring.routing_metrics(
        routes, ["structured", "structured", "structured", "conversational"],
        [1.0, 2.0, 3.0, 4.0], 100, 0)
    assert m[scoring.ACCURACY]["value"] == 0.75
    assert m[scoring.P50_MS]["value"] == 2.5 and m[scoring.P99_MS]["value"] == pytest.approx(3.97)


def test_tier1_accuracy_confident_mistakes_ece_and_confusion_by_hand():
    records = [{"route": r} for r in ("structured", "conversational", "conversational",
                                      "conversational")]
    ps = [0.95, 0.92, 0.3, 0.6]  # right (0.95), wrong (0.92), right (0.7), wrong (0.6)
    m = scoring.tier1_metrics(records, ps, 200, 0)
    assert m[scoring.ACCURACY]["value"] == 0.5 and m[scoring.ACCURACY]["n"] == 4
    assert m[scoring.CONFIDENT_MISTAKES]["value"] == 0.25  # only the 0.92 one is >= 0.9
    # ten 0.05-wide bins of [0.5, 1], one request in each used: |confidence - correct|
    assert m[scoring.ECE]["value"] == pytest.approx((0.05 + 0.92 + 0.3 + 0.6) / 4)
    assert 0 <= m[scoring.ECE]["ci95"][0] <= m[scoring.ECE]["ci95"][1] <= 1
    assert scoring.confusion(records, ps) == {
        "structured": {"structured": 1, "conversational": 0},
        "conversational": {"structured": 2, "conversational": 1}}


def test_read_routing_set_takes_text_or_request_and_names_a_bad_line(tmp_path):
    path = tmp_path / "hand.jsonl"
    path.write_text('{"id": "a", "text": "decision? FICO 700", "route": "structured"}\n\n'
                    '{"request": "what is PMI?", "route": "conversational"}\n')
    assert es.read_routing_set(path) == [
        {"request": "decision? FICO 700", "route": "structured"},
        {"request": "what is PMI?", "route": "conversational"}]
    path.write_text('{"text": "hi", "route": "structured"}\n{"text": "yo", "route": "chat"}\n')
    with pytest.raises(ValueError, match=r"hand.jsonl:2: .*'route' of structured"):
        es.read_routing_set(path)
    path.write_text('{"text": "hi", "route": "structured"}\nnot json\n')
    with pytest.raises(ValueError, match=r"hand.jsonl:2: not a JSON object"):
        es.read_routing_set(path)
    with pytest.raises(FileNotFoundError, match="evaluate.routing_test_set"):
        es.read_routing_set(tmp_path / "nope.jsonl")


class FixedTier1:
    """Stand-in tier 1: a fixed P(structured) per request and a fitted threshold of 0.8."""

    threshold = 0.8

    def __init__(self, ps):
        self.ps = ps

    def probabilities(self, requests):
        return [self.ps[r] for r in requests]


def test_tier1_report_measures_both_sets_at_the_threshold_in_use():
    from mortgagellm.config import Recipe
    from mortgagellm.evaluation import routed

    sets = hand_sets()
    sets.routing = [{"request": "a", "route": "structured"},
                    {"request": "b", "route": "conversational"}]
    sets.routing_hand = [{"request": "c", "route": "structured"},
                         {"request": "d", "route": "conversational"},
                         {"request": "e", "route": "conversational"}]
    model = FixedTier1({"a": 0.99, "b": 0.1, "c": 0.3, "d": 0.95, "e": 0.25})
    scorer = scoring.Scorer(100, 0, None, None, 1)
    tasks, info = routed.tier1_report(Recipe(), model, sets, scorer)
    assert tasks[es.ROUTING_TIER1][scoring.ACCURACY]["value"] == 1.0
    hand = tasks[es.ROUTING_HAND]
    assert hand[scoring.ACCURACY]["value"] == pytest.approx(1 / 3)  # e right; c, d wrong
    assert hand[scoring.CONFIDENT_MISTAKES]["value"] == pytest.approx(1 / 3)  # d at 0.95
    assert info["kind"] == "ngram" and info["threshold"] == info["threshold_in_use"] == 0.8
    assert info["threshold_fitted_on"] == "20% of routing_train"
    # below 0.8: c (0.7, wrong) and e (0.75, right); d is a mistake tier 2 never sees
    assert info["to_tier2"] == {es.ROUTING_TIER1: 0.0, es.ROUTING_HAND: pytest.approx(2 / 3)}
    assert info["mistakes_to_tier2"] == {es.ROUTING_TIER1: None, es.ROUTING_HAND: 0.5}
    assert info["confusion"][es.ROUTING_HAND]["conversational"] == {"structured": 1,
                                                                     "conversational": 1}
    sets.routing_hand = []
    recipe = Recipe.model_validate({"serve": {"router": {"mode": "tier1"}}})
    tasks, info = routed.tier1_report(recipe, model, sets, scorer)
    assert set(tasks) == {es.ROUTING_TIER1} and info["threshold_in_use"] is None
    assert info["to_tier2"] == {} and info["threshold"] == 0.8


# ---- unit: the shape of a variant's results ------------------------------------------------------

class GradingJudge:
    """Stand-in judge: 4 for an answer equal to the reference, else an unparseable verdict."""

    def grade(self, task, prompt, reference, answer):
        return 4 if answer == reference else None


def hand_sets():
    qa = qa_truth("apr", "What is the APR?", "6.912%", 6.912, "%")
    records = {t: [label(t, g) for g in gold] for t, gold in
               (("decision", ("approve", "deny")), ("doc_kind", ("rate_sheet",)),
                ("intent", ("payoff", "escrow")))}
    records["summary"] = [{"prompt": "Sum.", "document": "", "answer": "borrower: A\nsummary: s",
                           "truth": {"summary_fields": {"borrower": "A"}}}]
    records["qa"] = [{"prompt": "APR?\n\nAPR 6.912%", "document": "APR 6.912%", "chosen": "6.912%",
                      "truth": qa}]
    fair = (label("decision", "approve"), label("decision", "approve", prompt="swapped"))
    fewshot = {task: f"Example: ... Answer: {task}\n\n" for task in es.FEWSHOT_TASKS}
    return es.EvalSets(records, list(instructions("eval", 0, 5)), ["a text"], [fair],
                       [{"request": "r", "route": "structured"}], fewshot)


def answered(sets):
    """Every probe answered with its reference (labels right, the fairness pair stable)."""
    answers = {}
    for name, items in es.probes(sets, load_recipe_defaults().evaluate).items():
        answers[name] = [("approve" if name.startswith("fairness") else "x", True)] * len(items)
    for task, records in sets.records.items():
        answers[task] = [(scoring.reference(task, r), True) for r in records]
    return {"answers": answers, "nlls": [(3.0, 3)]}


def load_recipe_defaults():
    from mortgagellm.config import Recipe

    return Recipe()


def test_every_task_and_metric_is_reported_with_value_n_and_interval():
    sets = hand_sets()
    scorer = scoring.Scorer(100, 0, FixedBert(), GradingJudge(), judge_items=1)
    tasks = scoring.score_variant(sets, answered(sets), scorer)
    judged = set(scoring.JUDGE_METRICS)
    expected = {t: set(m) | (judged if t in scoring.JUDGED else set())
                for t, m in scoring.TASK_METRICS.items() if t not in scoring.ROUTER_TASKS}
    assert {t: set(m) for t, m in tasks.items()} == expected
    sizes = scoring.sample_sizes(sets)
    for task, metrics in tasks.items():
        for name, m in metrics.items():
            assert set(m) == {"value", "n", "ci95"} and len(m["ci95"]) == 2
            if name.startswith("judge"):
                assert m["n"] == 1  # judge.max_items of the task's records
            elif task.endswith(es.QA) and name in (scoring.NUMERIC, scoring.NUMERIC_GROUNDED):
                assert m["n"] == 1
            elif task.endswith(es.QA) and name == scoring.SUPPORTED:
                assert m["n"] <= 1  # only an answer that states a figure
            elif task.endswith(es.QA) and name == scoring.KNOWLEDGE:
                assert m["n"] == 0  # no closed-book question among the hand sets
            else:
                assert m["n"] == sizes[task], (task, name)
    assert tasks["decision"][scoring.ACCURACY]["value"] == 1.0
    assert tasks["decision"][scoring.JUDGE]["value"] == 4.0
    assert tasks[es.FAIRNESS][scoring.FLIP_RATE]["value"] == 0.0
    assert tasks[es.DOMAIN][scoring.PERPLEXITY]["value"] == pytest.approx(math.e)
    without_judge = scoring.score_variant(sets, answered(sets),
                                          scoring.Scorer(100, 0, FixedBert(), None, 1))
    assert scoring.JUDGE not in without_judge["decision"]


def test_fewshot_examples_cover_labels_in_order_and_cut_their_documents():
    train = [label("decision", g, prompt=f"Decide.\n\n{d}") | {"document": d}
             for g, d in (("deny", "D1 " * 200), ("deny", "D2"), ("approve", "A1"),
                          ("refer", "R1"))]
    examples = es.fewshot_examples(train, "decision", 2)
    assert [a for _, _, a in examples] == ["deny", "approve"]
    prefix = es.fewshot_prefix(examples, 40)
    assert prefix.startswith("Here are solved examples of this task.\n\nExample 1:\nDecide.")
    assert ("D1 " * 200)[:40] + " …\nAnswer: deny" in prefix  # 40 characters, then the mark
    assert prefix.endswith("Example 2:\nDecide.\n\nA1\nAnswer: approve\n\nNow this one:\n")
    sets = hand_sets()
    asked = es.probes(sets, load_recipe_defaults().evaluate)
    assert asked["fewshot_decision"][0][0] == sets.fewshot["decision"] + asked["decision"][0][0]
    assert "fewshot_summary" not in asked


def test_requests_ask_each_prompt_once():
    sets = hand_sets()
    sets.fairness = [(sets.records["decision"][0], {**sets.records["decision"][0],
                                                    "prompt": "swapped"})]
    rows = es.requests(sets, load_recipe_defaults().evaluate)
    chat = [r for r in rows if r["kind"] == es.CHAT]
    # 7 labelled/summary/qa records + 5 instructions + 1 swapped prompt: the fairness original
    # is the first decision record's prompt, asked once; + the 6 classification and QA records
    # asked again after their few-shot prefix
    assert len(chat) == 7 + 5 + 1 + 6
    assert [r["kind"] for r in rows].count(es.NLL) == 1
    assert len({r["key"] for r in rows}) == len(rows)


def test_table_lists_task_metric_value_interval_and_n():
    text = ev.table({"decision": {"accuracy": {"value": 0.5, "n": 4, "ci95": [0.15, 0.85]}}})
    header, row = text.splitlines()
    assert header.split() == ["task", "metric", "value", "95%", "CI", "n"]
    assert row.split() == ["decision", "accuracy", "0.5000", "[0.1500,", "0.8500]", "4"]


def test_set_metrics_adds_to_a_registered_version(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    reg = tmp_path / "registry.json"
    version = registry.register(reg, str(model), "test", {"fidelity": 0.9})
    registry.set_metrics(reg, version, {"evaluate": {"tasks": {}}})
    assert registry.read(reg)["versions"][version]["metrics"] == {"fidelity": 0.9,
                                                                   "evaluate": {"tasks": {}}}
    with pytest.raises(ValueError, match="not registered"):
        registry.set_metrics(reg, "0" * 64, {})


def test_missing_bootstrap_names_the_stage_to_run(tmp_path):
    recipe = load_recipe_path(tmp_path)
    with pytest.raises(FileNotFoundError, match="run `mortgagellm bootstrap` first"):
        ev.run(recipe)


def load_recipe_path(tmp_path, extra=()):
    path = tmp_path / "recipe.yaml"
    path.write_text(f"run:\n  output_dir: {tmp_path / 'run'}\n")
    return load_recipe(path, [*SETS, *SMALL, *extra])


# ---- integration ---------------------------------------------------------------------------------

def fake_run(tmp_path, tiny_pair, stages, extra=()):
    """A run directory whose later stages' models are all the tiny instruct model (each stage is
    tested on its own; here only the manifests' contract matters)."""
    run = tmp_path / "run"
    shutil.copytree(tiny_pair.output_path("instruct"), run / "bootstrap" / "instruct")
    manifest.write(str(run / "bootstrap"), manifest.Manifest(
        stage="bootstrap", fingerprint="test", config={},
        outputs={"instruct": manifest.artifact(run / "bootstrap" / "instruct")}))
    for stage in stages:
        shutil.copytree(tiny_pair.output_path("instruct"), run / stage / "model")
        manifest.write(str(run / stage), manifest.Manifest(
            stage=stage, fingerprint="test", config={},
            outputs={"model": manifest.artifact(run / stage / "model")}))
    recipe = load_recipe_path(tmp_path, extra)
    sets = build_task_sets(recipe.corpus.tasks, recipe.run.seed)  # tier 1, as corpus writes it
    tier1 = run / "corpus" / routing.TIER1_FILE
    write_tier1("ngram", sets["routing_train"], sets["eval_routing"],
                recipe.serve.router.clip_chars, recipe.run.seed, tier1)
    manifest.write(str(run / "corpus"), manifest.Manifest(
        stage="corpus", fingerprint="test", config={},
        outputs={"tier1": manifest.artifact(tier1)}))
    return recipe


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_one_model_through_ray_data_into_its_registry_entry(ray_cluster, tiny_pair, tmp_path,
                                                             monkeypatch):
    server = start_stub()
    try:
        recipe = fake_run(tmp_path, tiny_pair, (), [
            f"evaluate.judge.base_url=http://127.0.0.1:{server.server_port}/v1",
            "evaluate.judge.model=grader", "evaluate.judge.api_key_env=null",
            "evaluate.judge.max_items=2", "evaluate.judge.max_retries=0", "evaluate.fewshot=1"])
        model = str(tmp_path / "run" / "bootstrap" / "instruct")
        result = ev.evaluate_registered(recipe, model)
    finally:
        stop_stub(server)
    sizes = result["sample_sizes"]
    # The tiny pair's 256 positions hold no solved example in half a prompt's room: no
    # fewshot_<task> set is asked (none answered with nothing), and the result says why.
    assert sizes == {"decision": 3, "doc_kind": 3, "intent": 3, "summary": 3, "qa": 3,
                     "instruction": 5, "domain": 3, "fairness": 3, "routing": 10,
                     "routing_tier1": 10, "routing_hand": 0}
    fit = result["fewshot_fit"]
    assert set(fit) == set(es.FEWSHOT_TASKS) and all(f["examples"] == 0 for f in fit.values())
    assert fit["decision"]["max_tokens"] == (256 - es.LABEL_TOKENS) // 2
    assert result["prompts_without_room"] == {}
    tasks = result["tasks"]
    for task, names in scoring.TASK_METRICS.items():
        if task in scoring.ROUTER_TASKS or task not in sizes:  # not asked: no fewshot_<task>
            assert task not in tasks
            continue
        judged = {scoring.JUDGE, scoring.JUDGE_UNPARSEABLE} if task in scoring.JUDGED else set()
        assert set(tasks[task]) == set(names) | judged, task
        for name in names:
            if name in (scoring.NUMERIC, scoring.NUMERIC_GROUNDED, scoring.SUPPORTED,
                        scoring.KNOWLEDGE, scoring.FLIP_RATE):
                # figures with a context; closed-book questions; pairs whose decisions parse
                assert tasks[task][name]["n"] <= sizes[task], (task, name)
            else:
                assert tasks[task][name]["n"] == sizes[task], (task, name)
        if judged:
            assert tasks[task][scoring.JUDGE_UNPARSEABLE]["n"] == 2
    assert 0 < tasks[es.QA][scoring.NUMERIC]["n"] <= 3
    assert tasks[es.DOMAIN][scoring.PERPLEXITY]["value"] > 1.0
    assert len(server.seen) > 0 and server.seen[0]["model"] == "grader"
    reg = registry.read(tmp_path / "run" / "serve" / "registry.json")
    (version, entry), = reg["versions"].items()
    assert version == result["version"] == manifest.sha256_path(model)
    stored = entry["metrics"]["evaluate"]["tasks"]  # NaN (no parseable judgement) != NaN
    assert json.dumps(stored, sort_keys=True) == json.dumps(tasks, sort_keys=True)
    # a registry version (a prefix will do) names the same model
    monkeypatch.setattr(ev, "evaluate_model", lambda recipe, model_dir, name, version: {
        "model": model_dir, "version": version, "tasks": {}})
    assert ev.evaluate_registered(recipe, version[:10]) == {
        "model": entry["path"], "version": version, "tasks": {}}
    assert registry.read(tmp_path / "run" / "serve" / "registry.json")["versions"][version][
        "metrics"]["evaluate"]["tasks"] == {}


def start_stub():
    """tests/test_judge.py's stub judge on a free loopback port, served from a thread."""
    import threading
    from http.server import ThreadingHTTPServer

    from tests.test_judge import StubJudge

    server = ThreadingHTTPServer(("127.0.0.1", 0), StubJudge)
    server.seen = []
    server.thread = threading.Thread(target=server.serve_forever,
                                     kwargs={"poll_interval": 0.05}, daemon=True)
    server.thread.start()
    return server


def stop_stub(server):
    server.shutdown()
    server.server_close()
    server.thread.join(timeout=5)


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_stage_evaluates_every_variant_and_the_routed_system(ray_cluster, tiny_pair, tmp_path,
                                                            caplog):
    recipe = fake_run(tmp_path, tiny_pair, ("pretrain", "residual", "sft", "dpo"),
                      ["serve.router.mode=hybrid", "serve.router.threshold=0.99",
                       f"evaluate.routing_test_set={HANDSET}"])
    m = ev.run(recipe)
    variants = m.metrics["variants"]
    assert set(variants) == {*scoring.VARIANTS, scoring.ROUTED}
    assert m.metrics["judge"] is None and m.metrics["sample_sizes"]["routing"] == 10
    same = variants["instruct"]["tasks"]
    for name in ("dapt", "merged", "structured", "conversational"):
        # one model, generated once, scored alike (as JSON: a flip rate of no pairs is NaN)
        assert as_json(variants[name]["tasks"]) == as_json(same)
        assert variants[name]["version"] == m.inputs[name]["sha256"]
    routed = variants[scoring.ROUTED]["tasks"]
    fewshot = {es.fewshot_task(t) for t in es.FEWSHOT_TASKS}  # evaluate.fewshot is 0 here
    assert set(routed) == set(scoring.TASK_METRICS) - {es.DOMAIN} - fewshot
    # both experts are the same model, so routing changes no answer
    assert as_json(routed[es.QA]) == as_json(same[es.QA])
    assert as_json(routed[es.FAIRNESS]) == as_json(same[es.FAIRNESS])
    assert routed[es.ROUTING][scoring.ACCURACY]["n"] == 10
    # tier 1 alone on the generated and the hand-written sets, at the threshold in use
    assert routed[es.ROUTING_TIER1][scoring.ACCURACY]["n"] == 10
    assert routed[es.ROUTING_HAND][scoring.ECE]["n"] == 187
    router = variants[scoring.ROUTED]["router"]
    assert router["threshold_in_use"] == 0.99 and 0.5 <= router["threshold"] <= 1.0
    assert sum(n for row in router["confusion"][es.ROUTING_HAND].values()
               for n in row.values()) == 187
    assert m.inputs["routing_test_set"]["sha256"] == manifest.sha256_path(HANDSET)
    latency = routed[es.ROUTING]
    assert 0 < latency[scoring.P50_MS]["value"] <= latency[scoring.P99_MS]["value"]
    lines = manifest.Path(m.output_path("predictions")).read_text().splitlines()
    assert len(lines) == 5 * sum(len(v) for v in es.probes(
        es.eval_sets(recipe, manifest.Path(recipe.run.output_dir) / "evaluate" / "tasks"),
        recipe.evaluate).values())
    caplog.set_level("INFO")
    assert ev.run(recipe).started_at == m.started_at
    assert "up to date" in caplog.text


def test_cli_evaluates_one_model_and_prints_the_table(tmp_path, monkeypatch, capsys):
    from mortgagellm import cli

    asked = []
    result = {"tasks": {"qa": {"token_f1": {"value": 0.25, "n": 3, "ci95": [0.0, 0.5]}}}}
    monkeypatch.setattr(ev, "evaluate_registered",
                        lambda recipe, ref: asked.append((recipe.evaluate.per_task, ref)) or result)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"run:\n  output_dir: {tmp_path / 'run'}\n")
    assert cli.main(["evaluate", str(recipe), "--model", "abcdef0123", "--evaluate.per_task",
                     "7"]) == 0
    assert asked == [(7, "abcdef0123")]
    assert capsys.readouterr().out.splitlines()[1].split() == [
        "qa", "token_f1", "0.2500", "[0.0000,", "0.5000]", "3"]


def test_a_batch_mixing_two_models_answers_each_row_with_its_own_model(tiny_pair):
    """The shared pipeline's actors get batches that straddle two models: each row is answered
    by its own model, as a batch of that model alone answers it."""
    from mortgagellm.evaluation.generate import Generator

    base, instruct = (str(tiny_pair.output_path(n)) for n in ("base", "instruct"))

    def rows(model, texts):
        return [{"model": model, "key": f"{model}:{t}", "kind": es.CHAT, "prompt": t,
                 "document": "", "budget": 12} for t in texts]

    def batch(rows):
        return {k: [r[k] for r in rows] for k in rows[0]}

    texts = ["What is escrow?", "Define APR in one line."]
    where = ({base: "b", instruct: "i"}, {"output_dir": base, "cache_dir": None})
    alone = {m: Generator(256, 1, *where)(batch(rows(m, texts))) for m in (base, instruct)}
    a, b = rows(base, texts), rows(instruct, texts)
    generator = Generator(256, 1, *where)
    mixed = generator(batch([a[0], b[0], a[1], b[1]]))
    assert mixed["model"] == [base, instruct, base, instruct]
    assert mixed["text"] == [alone[base]["text"][0], alone[instruct]["text"][0],
                             alone[base]["text"][1], alone[instruct]["text"][1]]
    assert alone[base]["text"] != alone[instruct]["text"]
    assert generator.path == instruct  # one model held at a time: the last one asked for


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_all_models_share_one_pipeline_and_each_gets_its_own_answers(ray_cluster, tiny_pair,
                                                                      tmp_path):
    from mortgagellm.evaluation.generate import generate, generate_models

    recipe = fake_run(tmp_path, tiny_pair, (), ["evaluate.batch_size=1"])
    base, instruct = (str(tiny_pair.output_path(n)) for n in ("base", "instruct"))
    sets, _, _ = ev.prepare(recipe, tmp_path / "run" / "evaluate", instruct)
    together = generate_models(recipe, {"base": {"uri": base, "sha256": "b"},
                                        "instruct": {"uri": instruct, "sha256": "i"},
                                        "same": {"uri": instruct, "sha256": "i"}}, sets)
    assert together["base"] == generate(recipe, base, sets)
    assert together["instruct"] == together["same"] == generate(recipe, instruct, sets)
    assert together["base"]["answers"] != together["instruct"]["answers"]
