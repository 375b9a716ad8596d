"""`mortgagellm serve --demo`: held-out records drawn with the run's seed, answers scored and
counted per expert."""

import random

import pytest

from mortgagellm.config import Recipe
from mortgagellm.datasets.tasks import read_task_set, write_task_sets
from mortgagellm.serve import demo


@pytest.fixture
def recipe(tmp_path):
    return Recipe.model_validate({"run": {"output_dir": str(tmp_path)}})


def test_demo_draws_held_out_records_with_the_run_seed(recipe, tmp_path):
    with pytest.raises(SystemExit, match="eval_decision.parquet.*mortgagellm run"):
        demo.demo_requests(recipe)  # no corpus stage yet: say which file and what to run
    tasks = tmp_path / "corpus" / "tasks"
    write_task_sets(tasks, recipe.corpus.tasks, recipe.run.seed)
    picked = demo.demo_requests(recipe)
    assert [r["route"] for r in picked] == (["structured"] * demo.DEMO_PER_EXPERT
                                            + ["conversational"] * demo.DEMO_PER_EXPERT)
    decisions = read_task_set(tasks / "eval_decision.parquet")
    rng = random.Random(recipe.run.seed)  # the same draw by hand
    expected = rng.sample(decisions, demo.DEMO_PER_EXPERT)
    assert [r["prompt"] for r in picked[:demo.DEMO_PER_EXPERT]] == [r["prompt"] for r in expected]
    assert all(r["expected"] in ("approve", "refer", "deny") for r in picked[:20])
    qa = {r["prompt"]: r["chosen"] for r in read_task_set(tasks / "eval_qa.parquet")}
    assert all(qa[r["prompt"]] == r["expected"] for r in picked[20:])
    assert picked == demo.demo_requests(recipe)  # the same seed, the same requests
    short = demo.demo_requests(recipe, fits=lambda text, tokens: len(text) < 900)
    assert short and all(len(r["prompt"]) < 900 for r in short)  # only what the door admits
    # a label asks for fewer answer tokens than a grounded answer, so long loan files still fit
    budgets = {r["route"]: r["max_tokens"] for r in picked}
    assert budgets == {"structured": 48, "conversational": demo.DEMO_MAX_TOKENS} and 48 < 80
    asked = []
    demo.demo_requests(recipe, fits=lambda text, tokens: asked.append(tokens) or True)
    assert set(asked) == {48, 80}


def answer(route, content):
    return {"choices": [{"message": {"content": content}}],
            "mortgagellm": {"route": route, "confidence": 0.97, "decided_by": "tier1",
                            "expert_version": "ab" * 32}}


def test_tally_counts_right_answers_and_routes_per_expert():
    from mortgagellm.datasets.tasks.format import qa_truth

    decision = {"prompt": "Decide: approve, refer or deny?\nfile...", "expected": "deny",
                "task": "decision", "route": "structured", "truth": {"label": "deny"}}
    apr = {"prompt": "What is the APR?", "expected": "The APR is 6.912%.", "task": "qa",
           "route": "conversational",
           "truth": qa_truth("apr", "What is the APR?", "6.912%", 6.912, "percent")}
    records = [decision, dict(decision, truth={"label": "approve"}), apr, apr]
    answers = [answer("structured", "deny"), answer("conversational", "deny"),
               answer("conversational", "The APR is 6.912%."), answer("structured", "6.5%")]
    lines = demo.tally(records, answers)
    assert lines[1] == ("structured expert: 1/2 held-out decision requests answered right; "
                        "1/2 routed to it")
    assert lines[0].endswith("expected: 'deny'") and "(right)" in lines[0]
    assert lines[4] == ("conversational expert: 1/2 held-out qa requests answered right; "
                        "1/2 routed to it")
    refused = {"status": 400, "error": {"message": "the prompt has 900 tokens; the limit is 448."}}
    lines = demo.tally([decision, decision], [answer("structured", "deny"), refused])
    assert lines[1].endswith("1/2 routed to it; 1 refused (the error is in the audit log)")
    assert "[refused 400]" in demo.describe("x", refused) and "900 tokens" in demo.describe(
        "x", refused)


def test_output_to_sends_fd_level_writes_to_the_file_then_restores(tmp_path, capfd):
    import os
    import subprocess
    import sys

    from mortgagellm.serve.ops import output_to

    log = tmp_path / "shutdown.log"
    with output_to(log):
        os.write(1, b"controller says\n")
        os.write(2, b"graceful_shutdown failed\n")
        subprocess.run([sys.executable, "-c", "print('a child process')"], check=True)
    print("the tally")
    out, err = capfd.readouterr()
    assert out == "the tally\n" and err == ""
    assert log.read_text() == "controller says\ngraceful_shutdown failed\na child process\n"


def test_serve_demo_sends_ray_and_serve_output_to_its_log_and_shows_the_tally(
        recipe, tmp_path, monkeypatch, capfd):
    import os

    from mortgagellm.serve import ops

    def fake_serve(recipe, config, overrides, lines):  # stands in for Ray, Serve and the app
        os.write(1, b"(ServeController pid=1) Deploying new app\n")  # as Ray's C++ side writes
        os.write(2, b"(ProxyActor pid=2) POST /v1/chat/completions 200\n")
        lines += ["structured expert: 17/20 held-out decision requests answered right"]
        return 0

    monkeypatch.setattr(ops, "_serve", fake_serve)
    assert ops.serve(recipe, "cpu-demo.yaml", [], demo=True) == 0
    shown = capfd.readouterr()
    log = (tmp_path / "serve" / "demo.log").read_text()
    assert "ServeController" in log and "ProxyActor" in log
    assert "Serve" not in shown.out.replace("Ray and Serve log to", "") and not shown.err
    assert shown.out.strip().endswith("17/20 held-out decision requests answered right")
