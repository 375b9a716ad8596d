"""Few-shot prefixes fitted to the model's context, and prompts that cannot fit counted
(evaluation/fewshot.py), on the tiny pair's real tokenizer."""

from __future__ import annotations

import pytest

from mortgagellm.config import Recipe
from mortgagellm.evaluation import fewshot
from mortgagellm.evaluation import sets as es
from mortgagellm.pipelines import report


@pytest.fixture(scope="module")
def tokenizer(tiny_pair):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_pair.output_path("instruct"))


def example(gold, words=300):
    document = " ".join(f"line {i} of a long {gold} document" for i in range(words))
    return (f"Decide this file.\n\n{document}", document, gold)


def test_a_prefix_keeps_the_most_characters_that_fit(tokenizer):
    examples = [example("deny"), example("approve")]
    full = fewshot.prefix_tokens(tokenizer, es.fewshot_prefix(examples, 240))
    prefix, kept = fewshot.fit_prefix(examples, tokenizer, full - 40, 240)
    assert kept["examples"] == 2 and 0 < kept["doc_chars"] < 240
    assert kept["tokens"] == fewshot.prefix_tokens(tokenizer, prefix) <= full - 40
    assert prefix == es.fewshot_prefix(examples, kept["doc_chars"])
    # one more character would not fit: the most that fits, not just some that fits
    longer = es.fewshot_prefix(examples, kept["doc_chars"] + 1)
    assert fewshot.prefix_tokens(tokenizer, longer) > full - 40
    # room enough for everything: nothing is cut beyond fewshot_chars
    assert fewshot.fit_prefix(examples, tokenizer, full, 240)[1]["doc_chars"] == 240


def test_fewer_examples_when_even_empty_documents_do_not_fit_and_none_when_one_does_not(
        tokenizer):
    examples = [example("deny"), example("approve")]
    one_empty = fewshot.prefix_tokens(tokenizer, es.fewshot_prefix(examples[:1], 0))
    two_empty = fewshot.prefix_tokens(tokenizer, es.fewshot_prefix(examples, 0))
    assert one_empty < two_empty
    prefix, kept = fewshot.fit_prefix(examples, tokenizer, two_empty - 1, 240)
    assert kept["examples"] == 1 and "Example 2" not in prefix and "deny" in prefix
    assert fewshot.fit_prefix(examples, tokenizer, one_empty - 1, 240) == (
        "", {"examples": 0, "doc_chars": 0, "tokens": 0})


def test_the_stage_fits_every_task_and_counts_prompts_without_room(tokenizer):
    """The cpu-replica failure: 2 examples of 240-character documents took more than the whole
    prompt; fitted, each prefix takes at most half the room and every question fits."""
    train = [{"task": t, "prompt": p, "document": d, "answer": a, "truth": {"label": a}}
             for t, golds in (("decision", ("deny", "approve")), ("doc_kind", ("rate_sheet",
                              "loan_estimate")), ("intent", ("payoff", "escrow")))
             for p, d, a in (example(g) for g in golds)]
    qa = [{"task": "qa", "prompt": p, "document": d, "chosen": a, "rejected": "no"}
          for p, d, a in (example("The APR is 6.9%."), example("It expires May 5."))]
    cfg = Recipe().evaluate.model_copy(update={"fewshot": 2, "max_seq_len": 512})
    records = {t: [{"prompt": f"Label it.\n\n{d}", "document": d, "answer": "x"}
                   for _, d, _ in [example("q", 100)]] for t in (*es.CLASSIFICATION, es.SUMMARY)}
    records[es.QA] = [{"prompt": f"Q?\n\n{d}", "document": d} for _, d, _ in [example("q", 100)]]
    shown = {t: es.fewshot_examples(train if t != es.QA else qa, t, 2) for t in es.FEWSHOT_TASKS}
    unfitted = {t: es.fewshot_prefix(examples, 240) for t, examples in shown.items()}
    sets = es.EvalSets(records, [], [], [], [], fewshot=unfitted, examples=shown)
    before = fewshot.without_room(sets, cfg, tokenizer)
    assert before["fewshot_qa"] == {"prompts": 1, "without_room": 1}  # as in the replica run

    fitted, kept = fewshot.fit_prefixes(sets, cfg, tokenizer)
    assert set(kept) == set(es.FEWSHOT_TASKS)
    for task, k in kept.items():
        assert k["max_tokens"] == (512 - (cfg.answer_tokens if task == es.QA
                                          else es.LABEL_TOKENS)) // 2
        assert 0 < k["tokens"] <= k["max_tokens"] and k["asked_examples"] == 2
        assert fitted.fewshot[task] == es.fewshot_prefix(
            es.fewshot_examples(train if task != es.QA else qa, task, k["examples"]),
            k["doc_chars"])
    assert fewshot.without_room(fitted, cfg, tokenizer) == {}
    no_document = es.EvalSets({es.DECISION: [{"prompt": "word " * 600, "document": ""}]},
                              [], [], [], [])
    assert fewshot.without_room(no_document, cfg, tokenizer) == {
        es.DECISION: {"prompts": 1, "without_room": 1}}


def test_the_report_says_how_prefixes_were_fitted_and_which_prompts_had_no_room():
    lines = "\n".join(report.fewshot_prompts({
        "fewshot_prompts": {"decision": "Here are solved examples.\n"},
        "fewshot_fit": {"decision": {"examples": 2, "doc_chars": 57, "tokens": 240,
                                     "max_tokens": 244, "asked_examples": 2},
                        "qa": {"examples": 0, "doc_chars": 0, "tokens": 0, "max_tokens": 176,
                               "asked_examples": 2}},
        "prompts_without_room": {"summary": {"prompts": 270, "without_room": 3}}}))
    assert "| decision | 2 (2) | 57 | 240 (244) |" in lines
    assert "**fewshot_qa was not asked**" in lines
    assert "summary 3 of 270" in lines and "answered with nothing" in lines
    assert report.fewshot_prompts({}) == []
