"""Task and eval sets: determinism, coverage, reference answers that score, DPO pairs that teach
the right thing, the routing rule, train/eval disjointness and the Arrow round trip."""

import re
from collections import Counter

import pyarrow.parquet as pq
import pytest

from mortgagellm.config import TaskSetsConfig
from mortgagellm.datasets.mortgage import DOC_KINDS
from mortgagellm.datasets.tasks import (
    LABELS,
    SCHEMAS,
    SFT_TASKS,
    build_task_sets,
    held_out_texts,
    invented_citations,
    parse_answer,
    read_task_set,
    score,
    write_task_sets,
)
from mortgagellm.datasets.tasks.dpo import REJECTION_KINDS, WRONG_ANSWER_KINDS
from mortgagellm.datasets.tasks.format import figures, rounds_to
from mortgagellm.datasets.tasks.grounding import support
from mortgagellm.datasets.tasks.routing import ROUTE_OF_ASK
from mortgagellm.datasets.tasks.sft import PROMPTS

CFG = TaskSetsConfig(sft_per_task=45, dpo_pairs=240, routing_requests=200, eval_per_task=45,
                     eval_qa_pairs=120, eval_routing=100, ambiguous_fraction=0.2,
                     max_doc_chars=1500)
SFT_SETS = ("sft_train", "eval_decision", "eval_doc_kind", "eval_intent", "eval_summary")


@pytest.fixture(scope="module")
def sets() -> dict[str, list[dict]]:
    return build_task_sets(CFG, seed=3)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict:
    return write_task_sets(tmp_path_factory.mktemp("tasks"), CFG, seed=3)


def test_sizes_ids_and_document_length(sets):
    sizes = {"sft_train": 4 * 45, "dpo_train": 240, "routing_train": 200, "eval_qa": 120,
             "eval_routing": 100} | {f"eval_{t}": 45 for t in SFT_TASKS}
    assert {name: len(records) for name, records in sets.items()} == sizes
    assert list(sets) == list(SCHEMAS)
    ids = [r["id"] for records in sets.values() for r in records]
    assert len(set(ids)) == len(ids) and sets["eval_qa"][7]["id"] == "eval_qa-00007"
    assert max(len(r["document"]) for rs in sets.values() for r in rs) <= CFG.max_doc_chars


def test_same_inputs_give_identical_bytes_and_another_seed_differs(written, tmp_path):
    again = write_task_sets(tmp_path / "again", CFG, seed=3)
    for name, path in written.items():
        for suffix in (".parquet", ".jsonl"):
            assert path.with_suffix(suffix).read_bytes() == \
                again[name].with_suffix(suffix).read_bytes(), name
    other = build_task_sets(CFG, seed=4)
    assert [r["prompt"] for r in other["sft_train"]] != \
        [r["prompt"] for r in read_task_set(written["sft_train"])]


def test_every_task_and_label_is_represented_and_balanced(sets):
    train = Counter((r["task"], r["truth"].get("label", r["doc_kind"])) for r in sets["sft_train"])
    for task in SFT_TASKS:
        labels = DOC_KINDS if task == "summary" else LABELS[task]
        counts = [train[(task, label)] for label in labels]
        assert min(counts) >= 45 // len(labels) and max(counts) - min(counts) <= 1, task
        held = Counter(r["truth"].get("label", r["doc_kind"]) for r in sets[f"eval_{task}"])
        assert set(held) == set(labels), task
    assert {r["task"] for r in sets["eval_decision"]} == {"decision"}


def test_reference_answers_parse_back_and_score_full(sets):
    for name in SFT_SETS:
        for r in sets[name]:
            parsed = parse_answer(r["task"], r["answer"])
            assert parsed is not None and score(r["task"], parsed, r["truth"]) == 1.0, r
            assert r["document"] in r["prompt"]
    for r in sets["eval_summary"]:
        assert r["answer"].splitlines()[-1] == "summary: " + r["truth"]["reference_summary"]
        assert parse_answer("summary", r["answer"])["fields"] == r["truth"]["summary_fields"]


def test_sft_phrasings_vary(sets):
    used = Counter(next(i for i, p in enumerate(PROMPTS[r["task"]])
                        if p.replace("{doc}", r["document"]) == r["prompt"])
                   for r in sets["sft_train"] if r["task"] == "decision")
    assert len(used) == len(PROMPTS["decision"])


def test_decision_truth_follows_the_rules_stated_in_the_document(sets):
    for r in sets["eval_decision"]:
        assert r["doc_kind"] in ("loan_application", "underwriting_note")
        assert (r["truth"]["label"] == "approve") == (r["truth"]["reasons"] == [])


def test_dpo_pairs_chosen_scores_rejected_differs(sets):
    for r in sets["dpo_train"] + sets["eval_qa"]:
        assert r["chosen"] != r["rejected"]
        assert score("qa", parse_answer("qa", r["chosen"]), r["truth"]) == 1.0, r
        assert invented_citations(r["chosen"], r["document"]) == []
        # Grounded: the document prints the answer (a payment increase is the difference of
        # the two printed payments, and a decision follows from the printed ratios); a held-out
        # knowledge question carries no document at all.
        if r["topic"] not in ("decision", "payment_increase") and r["document"]:
            assert r["truth"]["answer"] in r["document"], r
        if r["document"]:
            assert r["document"] in r["prompt"]
        else:
            assert r["topic"] == "regulation" and r["id"].startswith("eval_qa"), r
        if r["rejection_kind"] in WRONG_ANSWER_KINDS:
            assert score("qa", parse_answer("qa", r["rejected"]), r["truth"]) == 0.0, r
    knowledge = [r for r in sets["eval_qa"] if not r["document"]]
    regulation = [r for r in sets["eval_qa"] if r["topic"] == "regulation"]
    assert 0 < len(knowledge) < len(regulation)


def test_every_rejection_kind_and_key_topic_is_present(sets):
    pairs = sets["dpo_train"] + sets["eval_qa"]
    assert set(Counter(r["rejection_kind"] for r in sets["dpo_train"])) == set(REJECTION_KINDS)
    topics = {r["topic"] for r in pairs}
    assert {"payment", "housing", "dti", "ltv", "apr", "cash", "escrow", "decision",
            "regulation"} <= topics


def test_wrong_numbers_really_differ_from_the_truth(sets):
    wrong = [r for r in sets["dpo_train"] if r["rejection_kind"] == "wrong_number"]
    assert len(wrong) >= 20
    for r in wrong:
        t = r["truth"]
        got = next(v for kind, v, _, _ in figures(r["rejected"]) if kind == t["mode"])
        assert not rounds_to(got, t["figure"], t["decimals"]), r
        assert r["rejected"].split(" ")[0] == r["chosen"].split(" ")[0]  # same sentence


def test_other_rejections_carry_their_fault(sets):
    by_kind = {}
    for r in sets["dpo_train"]:
        by_kind.setdefault(r["rejection_kind"], []).append(r)
    for r in by_kind["invented_citation"]:
        assert invented_citations(r["rejected"], r["document"]), r["rejected"]
    for kind in ("steering", "approval_promise", "income_misstatement"):
        assert all(r["rejected"].startswith(r["chosen"] + " ") for r in by_kind[kind]), kind
    for r in by_kind["refusal"]:
        assert r["truth"]["answer"] not in r["rejected"]


def test_routing_labels_follow_the_rule(sets):
    for name in ("routing_train", "eval_routing"):
        records = sets[name]
        assert all(r["route"] == ROUTE_OF_ASK[r["asks"]] for r in records)
        cells = Counter((r["route"], r["ambiguous"]) for r in records)
        assert len(cells) == 4 and sum(n for (_, a), n in cells.items() if a) == \
            round(len(records) * CFG.ambiguous_fraction)
        assert cells[("structured", False)] + cells[("structured", True)] == len(records) // 2


def test_routing_rule_on_hand_picked_requests():
    # the fixed templates' requests (tasks.paraphrase's follow the rule in test_paraphrase.py)
    # 600 requests: each template's first line is drawn at random, and at 200 a rarer one
    # can be missing from one seed's sample (it was when excerpt's draws changed)
    sets = build_task_sets(CFG.model_copy(update={"routing_variety": 0.0,
                                                  "routing_requests": 600}), seed=3)
    expected = {  # worked out from the rule: what is asked for, not the words used
        r"Extract the (DTI|LTV|APR|monthly payment|cash to close|loan amount) from .*":
            "conversational",  # one figure, though "extract" sounds structured
        r"Extract the key fields of the document below .*": "structured",
        r"Summarize what .* means\.": "conversational",  # a definition, not a summary
        r"Give me the decision label for this file and explain why\.": "conversational",
        r"Give me the gist of this\.": "structured",
        r"What is this document\?": "structured",
        r"What is (?!this document).*\?": "conversational",
        r"Tag this document with its type\.": "structured",
    }
    records = sets["routing_train"] + sets["eval_routing"]
    for pattern, route in expected.items():
        hits = [r for r in records if re.fullmatch(pattern, r["request"].split("\n")[0], re.I)]
        assert hits and {r["route"] for r in hits} == {route}, pattern
    sft_prompts = {r["prompt"] for r in sets["sft_train"]}
    assert not any(r["request"] in sft_prompts and r["route"] != "structured" for r in records)


def test_no_eval_prompt_or_document_is_in_any_training_set(sets):
    held = held_out_texts(sets)
    assert len(held) > 500
    for name in ("sft_train", "dpo_train", "routing_train"):
        for r in sets[name]:
            assert r["document"] not in held and r.get("prompt", r.get("request")) not in held
    docless = {r["request"] for r in sets["eval_routing"] if not r["document"]}
    assert docless  # small talk repeats across streams: the exclusion has work to do


def test_parquet_and_jsonl_round_trip_with_the_declared_schema(sets, written):
    for name, path in written.items():
        assert pq.read_schema(path).equals(SCHEMAS[name], check_metadata=False), name
        assert read_task_set(path) == sets[name]
        assert read_task_set(path.with_suffix(".jsonl")) == sets[name]
    with pytest.raises(ValueError, match="parquet or .jsonl"):
        read_task_set(path.with_suffix(".csv"))


def test_reference_answers_state_only_figures_their_request_carries(sets):
    # decisions are left out: they cite the program's limits, which no loan file prints
    records = [r for r in sets["eval_qa"] + sets["dpo_train"]
               if r["document"] and r["topic"] != "decision"]
    checked = [support(r["chosen"], r["document"]) for r in records]
    assert sum(c["figures"] for c in checked) > 2 * len(records)  # explanations, not bare figures
    # an excerpt may leave out the sections a derived figure (a sum of fees) is summed from
    unsupported = [c["unsupported"] for c in checked if c["unsupported"]]
    assert len(unsupported) <= 0.02 * len(records), unsupported
