"""The routing generator's paraphrase side (issue 20): composed requests follow the routing rule
and carry the variety the issue asks for (terse and wordy, question and imperative, partial
pastes, chit-chat, typos, requests that are neither a label nor a summary); typos are seeded;
the recipe's variety share reaches routing_train and eval_routing, which stay disjoint; and no
hand-written request is ever generated."""

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from mortgagellm.config import TaskSetsConfig
from mortgagellm.datasets.instructions import JSON_KEY, NUMBERED, ONE_WORD
from mortgagellm.datasets.tasks import _documents, build_task_sets, paraphrase, pastes, phrases
from mortgagellm.datasets.tasks.routing import ROUTE_OF_ASK, routing_requests

HANDSET = Path(__file__).resolve().parents[2] / "data" / "routing-handwritten"
TEMPLATE_HEADS = re.compile(r"^(Tag this document|Return only the decision|Categorize the request"
                            r"|TL;DR of this|Pull the key fields|Please — )")


@pytest.fixture(scope="module")
def composed():
    """400 requests all composed by the paraphrase side, 20 % ambiguous."""
    return routing_requests(_documents(5, 0, 1500), 400, 0.2, random.Random(7), variety=1.0)


def test_composed_requests_follow_the_rule_in_every_cell(composed):
    assert all(r["route"] == ROUTE_OF_ASK[r["asks"]] for r in composed)
    cells = Counter((r["route"], r["ambiguous"]) for r in composed)
    assert cells == {("structured", False): 160, ("conversational", False): 160,
                     ("structured", True): 40, ("conversational", True): 40}
    # every ask of the rule occurs, writing / format requests ("instruction") included
    assert set(Counter(r["asks"] for r in composed)) == set(ROUTE_OF_ASK)
    assert not any(TEMPLATE_HEADS.match(r["request"]) for r in composed)


def test_composed_requests_vary_in_length_form_and_paste(composed):
    structured = [r for r in composed if r["route"] == "structured"]
    conversational = [r for r in composed if r["route"] == "conversational"]
    # terse structured asks with a one-line paste, and whole documents pasted
    assert sum(len(r["request"]) < 160 for r in structured) >= 20
    assert sum(bool(r["document"]) and r["document"] in r["request"] for r in structured) >= 30
    # a part of a document: its text is not all there, but some of its lines are
    partial = [r for r in structured if r["document"] and r["document"] not in r["request"]
               and any(line.strip() and line in r["request"]
                       for line in r["document"].splitlines())]
    assert len(partial) >= 20
    # pasted texts that are no generator document: a customer's message, a piece of paperwork
    own = [r for r in structured if not r["document"]]
    assert len(own) >= 20 and all(r["doc_kind"] == "" for r in own)
    assert any(m in r["request"] for r in own for m in pastes.CUSTOMER_MESSAGES)
    questions = [r for r in structured if r["request"].rstrip().endswith("?")]
    assert len(questions) >= 10
    # conversational requests with and without a pasted document, some naming loan products
    assert sum(bool(r["document"]) for r in conversational) >= 20
    assert sum(not r["document"] for r in conversational) >= 100
    products = [r for r in conversational
                if any(p.split(" ", 1)[1].lower() in r["request"].lower()
                       for p in phrases.PRODUCTS)]
    assert len(products) >= 10
    greeted = [r for r in composed if any(r["request"].lower().startswith(g.lower()[:6])
                                          for g in phrases.GREETINGS)]
    assert len(greeted) >= 30


def test_typos_are_seeded_and_hit_about_the_rate_of_letters():
    text = "Please review the loan file and tell me the underwriting decision for it. " * 4
    noisy = paraphrase.typos(text, random.Random(3), 0.05)
    assert noisy == paraphrase.typos(text, random.Random(3), 0.05)
    assert noisy != paraphrase.typos(text, random.Random(4), 0.05)
    assert paraphrase.typos(text, random.Random(3), 0.0) == text
    letters = sum(c.isalpha() for c in text)
    changed = sum(a != b for a, b in zip(noisy, text))  # a shift counts every later position
    assert changed > 0 and abs(len(noisy) - len(text)) <= 0.1 * letters
    assert noisy.count(" ") == text.count(" ")  # only letters are touched


def test_excerpt_file_facts_and_hand_file():
    doc = next(d for d in _documents(5, 0, 1500) if d["kind"] == "loan_application")
    rng = random.Random(1)
    lines = [line for line in doc["text"].splitlines() if line.strip()]
    for _ in range(20):
        part = paraphrase.excerpt(doc["text"], rng).splitlines()
        assert 3 <= len(part) <= 8
        assert "\n".join(part) in "\n".join(lines)  # consecutive lines of the document
    score = int(doc["ground_truth"]["numbers"]["credit_score"])
    assert all(str(score) in paraphrase.file_facts(doc, rng) for _ in range(10))
    files = [paraphrase.hand_file(rng) for _ in range(50)]
    assert len(set(files)) == 50 and all(len(f) < 400 for f in files)


BOOTSTRAP_FORMATS = "|".join(
    re.escape(t).replace(r"\{\{", "{").replace(r"\}\}", "}")
    .replace(r"\{q\}", ".+").replace(r"\{key\}", ".+").replace(r"\{n\}", ".+")
    .replace(r"\{cat\}", ".+") for t in (*ONE_WORD, *JSON_KEY, *NUMBERED))


def test_recipe_variety_reaches_train_and_eval_which_stay_disjoint():
    cfg = TaskSetsConfig(sft_per_task=1, dpo_pairs=1, eval_per_task=1, eval_qa_pairs=1,
                         routing_requests=300, eval_routing=200)
    assert cfg.routing_variety == 0.5
    sets = build_task_sets(cfg, seed=3)
    old = build_task_sets(cfg.model_copy(update={"routing_variety": 0.0}), seed=3)
    for name in ("routing_train", "eval_routing"):
        # without variety, the only instructions are bootstrap's format ones (train split)
        assert {r["asks"] for r in old[name]} <= set(ROUTE_OF_ASK)
        assert all(re.fullmatch(BOOTSTRAP_FORMATS, r["request"]) for r in old[name]
                   if r["asks"] == "instruction")
        assert "instruction" in {r["asks"] for r in sets[name]}
        fresh = {r["request"] for r in sets[name]} - {r["request"] for r in old[name]}
        assert len(fresh) >= 0.3 * len(sets[name])
    assert not ({r["request"] for r in sets["routing_train"]}
                & {r["request"] for r in sets["eval_routing"]})
    with pytest.raises(ValueError, match="variety"):
        routing_requests(_documents(5, 0, 1500), 4, 0.0, random.Random(0), variety=1.5)


def test_no_hand_written_request_is_generated():
    """The hand-written sets stay apart: no generated request of 20+ characters equals one of
    them (shorter ones are greetings anyone writes)."""
    hand = {json.loads(line)["text"].strip().lower()
            for name in ("test", "calibration")
            for line in (HANDSET / f"{name}.jsonl").read_text().splitlines() if line.strip()}
    assert len(hand) == 247
    cfg = TaskSetsConfig(sft_per_task=1, dpo_pairs=1, eval_per_task=1, eval_qa_pairs=1,
                         routing_requests=2000)
    sets = build_task_sets(cfg, seed=0)
    generated = {r["request"].strip().lower() for name in ("routing_train", "eval_routing")
                 for r in sets[name] if len(r["request"]) >= 20}
    assert len(generated) > 2000 and not generated & hand
