"""The requests `mortgagellm serve --demo` sends: held-out records when the corpus wrote them."""

from mortgagellm.config import Recipe
from mortgagellm.datasets.tasks import read_task_set, write_task_sets
from mortgagellm.serve import ops


def test_demo_uses_held_out_records_with_their_answers(tmp_path):
    recipe = Recipe.model_validate({"run": {"output_dir": str(tmp_path)}})
    assert ops.demo_requests(recipe) == list(ops.DEMO_REQUESTS)  # no corpus stage yet

    tasks = tmp_path / "corpus" / "tasks"
    write_task_sets(tasks, recipe.corpus.tasks, recipe.run.seed)
    (decision, label), (question, answer) = ops.demo_requests(recipe)
    records = read_task_set(tasks / "eval_decision.parquet")[:20]
    shortest = min(records, key=lambda r: len(r["prompt"]))
    assert (decision, label) == (shortest["prompt"], shortest["answer"])
    assert label in ("approve", "refer", "deny")
    qa = {r["prompt"]: r["chosen"] for r in read_task_set(tasks / "eval_qa.parquet")[:20]}
    assert qa[question] == answer and all(len(question) <= len(q) for q in qa)
