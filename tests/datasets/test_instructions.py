"""Format instructions and their checkers, worked out by hand; the train/eval split is disjoint."""

import json

import pytest

from mortgagellm.datasets.general import general_documents
from mortgagellm.datasets.instructions import (
    Instruction,
    correct,
    follows,
    instructions,
    preference_pairs,
)

WORD = Instruction("one_word", "In one word: What color is a lime?", "green")
JSON = Instruction("json", 'Answer in JSON with the key "color". ...', '{"color": "green"}',
                   {"key": "color"})
LIST = Instruction("numbered_list", "List 3 fruits as a numbered list.", "1. a\n2. b\n3. c",
                   {"n": 3})


@pytest.mark.parametrize("instruction,output,expected", [
    (WORD, "green", True), (WORD, " Green. ", True), (WORD, "light green", False),
    (WORD, "", False), (WORD, '{"color": "green"}', False),
    (JSON, '{"color": "green"}', True), (JSON, '{"colour": "green"}', False),
    (JSON, '{"color": "green", "x": 1}', False), (JSON, '{"color": ""}', False),
    (JSON, "green", False), (JSON, '["color"]', False),
    (LIST, "1. apple\n2. pear\n3. plum", True), (LIST, "1. apple\n2. pear", False),
    (LIST, "1. apple\n3. pear\n2. plum", False), (LIST, "- apple\n- pear\n- plum", False),
    (LIST, "1. apple\n2. pear\n3. plum\n4. kiwi", False),
])
def test_follows(instruction, output, expected):
    assert follows(instruction, output) is expected


def test_correct_ignores_case_and_space_only():
    assert correct(WORD, " GREEN ") and not correct(WORD, "red")


def test_reference_answers_follow_their_own_format():
    for split in ("train", "eval"):
        for instruction in instructions(split, seed=3, n=300):
            assert follows(instruction, instruction.answer), instruction


def test_eval_questions_never_appear_in_training():
    def question(i):
        return i.prompt if i.format == "numbered_list" else i.answer + "|" + i.prompt.split("?")[0]

    train = list(instructions("train", 0, 3000))
    evals = list(instructions("eval", 0, 300))
    train_facts = {json.dumps(sorted(i.spec.items())) + i.answer for i in train}
    train_prompts = {i.prompt for i in train}
    assert not any(i.prompt in train_prompts for i in evals)
    assert {i.format for i in evals} == {"one_word", "json", "numbered_list"}
    assert train_facts  # the sets are non-trivial
    assert len({question(i) for i in evals}) > 30


def test_same_seed_same_instructions_and_documents():
    assert list(instructions("train", 5, 50)) == list(instructions("train", 5, 50))
    assert list(instructions("train", 5, 50)) != list(instructions("train", 6, 50))
    assert list(general_documents(1, 20)) == list(general_documents(1, 20))


def test_domain_fraction_controls_home_finance_share():
    docs = list(general_documents(0, 2000, domain_fraction=0.2))
    share = sum("loan" in d or "mortgage" in d or "down payment" in d for d in docs) / len(docs)
    assert 0.15 < share < 0.25
    assert not any("mortgage" in d for d in general_documents(0, 500, domain_fraction=0.0))


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="split must be"):
        next(instructions("test", 0, 1))


def test_format_pairs_set_the_reference_against_a_violation_of_its_format():
    pairs = preference_pairs("train", seed=3, n=300)
    assert len(pairs) == 300
    kinds = {}
    for pair, instruction in zip(pairs, instructions("train", seed=3, n=300)):
        assert (pair["prompt"], pair["chosen"]) == (instruction.prompt, instruction.answer)
        assert pair["document"] == ""
        assert follows(instruction, pair["chosen"]) and not follows(instruction, pair["rejected"])
        kinds.setdefault(instruction.format, set()).add(pair["rejected"].split(" ")[0][:2])
    # every format gets more than one kind of violation
    assert all(len(v) > 1 for v in kinds.values()) and len(kinds) == 3
    assert preference_pairs("train", seed=3, n=300) == pairs  # seeded
    # the content is kept: the word, the key's value, the items
    word = next(p for p in pairs if p["format"] == "one_word")
    assert word["chosen"].lower() in word["rejected"].lower()
    listed = next(p for p in pairs if p["format"] == "numbered_list")
    first = listed["chosen"].split("\n")[0].split(". ", 1)[1]
    assert first in listed["rejected"]
    # held-out instructions are never trained on
    held = {i.prompt for i in instructions("eval", seed=3, n=300)}
    assert not held & {p["prompt"] for p in pairs if p["format"] != "numbered_list"}
