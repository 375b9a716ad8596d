"""report: the table, deltas, footnotes and verdicts from hand-written manifests, the plots as
real PNG files linked from report.md, and the `report` sub-command's wiring (no Ray, no torch)."""

import subprocess
import sys
from pathlib import Path

import pytest

from mortgagellm import cli, manifest, stages
from mortgagellm.config import validate_recipe
from mortgagellm.evaluation import repeats
from mortgagellm.pipelines import recipe as pipeline
from mortgagellm.pipelines import report

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def m(value, lo, hi, n=100):
    return {"value": value, "n": n, "ci95": [lo, hi]}


# instruct and structured have every task; dapt was not evaluated on qa; only structured has the
# unknown metric decision/calibration; zeta is an unknown task.
VARIANTS = {
    "structured": {"decision": {"accuracy": m(0.75, 0.66, 0.84), "macro_f1": m(0.7, 0.6, 0.8),
                                "calibration": m(0.1, 0.05, 0.15)},
                   "intent": {"accuracy": m(0.3, 0.2, 0.4)},
                   "summary": {"rouge_l": m(0.32, 0.25, 0.39, n=40)},
                   "qa": {"token_f1": m(0.4, 0.3, 0.5)},
                   "domain": {"perplexity": m(9.8, 9.3, 10.3)},
                   "zeta": {"score": m(1.0, 0.5, 1.5, n=10)}},
    "instruct": {"decision": {"accuracy": m(0.5, 0.4, 0.6), "macro_f1": m(0.4, 0.3, 0.5)},
                 "intent": {"accuracy": m(0.7, 0.6, 0.8)},
                 "summary": {"rouge_l": m(0.3, 0.23, 0.37, n=40)},
                 "qa": {"token_f1": m(0.35, 0.25, 0.45)},
                 "domain": {"perplexity": m(10.0, 9.5, 10.5)},
                 "zeta": {"score": m(2.0, 1.5, 2.5, n=10)}},
    "dapt": {"decision": {"accuracy": m(0.55, 0.45, 0.65), "macro_f1": m(0.45, 0.35, 0.55)},
             "intent": {"accuracy": m(0.6, 0.5, 0.7)},
             "summary": {"rouge_l": m(0.2, 0.15, 0.25, n=40)},
             "domain": {"perplexity": m(6.0, 5.5, 6.5)},
             "zeta": {"score": m(2.0, 1.5, 2.5, n=10)}},
}


def evaluate_metrics():
    return {"variants": {v: {"model": f"/models/{v}", "version": f"{i:02d}" * 32, "tasks": t}
                         for i, (v, t) in enumerate(VARIANTS.items())},
            "sample_sizes": {"decision": 100, "intent": 100, "summary": 40, "qa": 100,
                             "domain": 100, "zeta": 10},
            "judge": None}


def history(first, last, steps):
    return [{"step": s, "loss": first + (last - first) * s / steps, "lr": 1e-4}
            for s in range(1, steps + 1)]


SWEEP = [{"scale": s, "fidelity": f, "fidelity_ratio": f / 0.8, "domain_perplexity": p,
          "by_format": {}} for s, f, p in ((0.0, 0.3, 6.0), (0.5, 0.7, 6.4), (1.0, 0.78, 7.5))]
RESIDUAL = {"scale": 0.5, "fidelity_ratio": 0.875, "sweep": SWEEP, "selection_rule": "rule text",
            "fidelity": {"instruct": 0.8, "dapt": 0.3, "merged": 0.7},
            "domain_perplexity": {"base": 12.0, "instruct": 10.0, "dapt": 6.0, "merged": 6.4}}
STAGE_METRICS = {"pretrain": {"history": history(3.0, 2.0, 20)},
                 "sft": {"history": history(1.5, 0.5, 10)},
                 "dpo": {"history": history(0.7, 0.3, 5)},
                 "residual": RESIDUAL, "evaluate": evaluate_metrics()}


@pytest.fixture
def run_dir(tmp_path):
    """A recipe whose output_dir holds a manifest for every stage up to evaluate."""
    recipe = validate_recipe({"run": {"name": "fixture-run", "output_dir": str(tmp_path / "run")}})
    for i, stage in enumerate(dict.fromkeys((*stages.STAGES, "evaluate"))):
        manifest.write(str(manifest.stage_dir(recipe, stage)), manifest.Manifest(
            stage=stage, fingerprint=f"{stage}-fingerprint-0123456789", config={},
            metrics=STAGE_METRICS.get(stage, {}), started_at="2025-01-01T00:00:00Z",
            duration_s=10.0 + i))
    return recipe


def table(markdown):
    """The results table as {(task, metric): {column: text}}."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| task | metric |"))
    head = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = dict(zip(head, (c.strip() for c in line.strip("|").split("|"))))
        rows[(cells["task"], cells["metric"])] = cells
    return rows


def test_rows_known_tasks_and_metrics_first_unknown_sorted_after():
    keys = [(r.task, r.metric) for r in report.table_rows(evaluate_metrics())]
    assert keys == [("decision", "accuracy"), ("decision", "macro_f1"),
                    ("decision", "calibration"), ("intent", "accuracy"), ("summary", "rouge_l"),
                    ("qa", "token_f1"), ("domain", "perplexity"), ("zeta", "score")]
    assert report.variants(evaluate_metrics()) == ["instruct", "dapt", "structured"]


def test_table_cells_deltas_missing_cells_and_footnotes(run_dir):
    markdown = report.build(run_dir, "configs/fixture.yaml").read_text()
    rows = table(markdown)
    acc = rows[("decision", "accuracy")]
    assert acc["instruct"] == "0.50 [0.40, 0.60]" and acc["structured"] == "0.75 [0.66, 0.84]"
    assert acc["Δ structured"] == "+0.25"        # 0.75 - 0.50
    assert acc["Δ dapt"] == "+0.05"              # 0.55 - 0.50
    assert acc["n"] == "100" and acc["better"] == "↑"
    ppl = rows[("domain", "perplexity")]
    assert ppl["Δ dapt"] == "-4.00" and ppl["better"] == "↓"   # 6.0 - 10.0
    assert rows[("summary", "rouge_l")]["n"] == "40"
    qa = rows[("qa", "token_f1")]
    assert qa["dapt"].startswith("–[^") and qa["Δ dapt"] == "–"
    note = qa["dapt"][len("–"):]
    assert f"{note}: dapt was not evaluated on qa." in markdown
    calibration = rows[("decision", "calibration")]     # the unknown metric is kept
    assert calibration["structured"] == "0.10 [0.05, 0.15]"
    assert calibration["instruct"].startswith("–[^") and calibration["Δ structured"] == "–"
    assert "instruct was evaluated on decision but has no calibration for it." in markdown
    assert rows[("zeta", "score")]["Δ structured"] == "-1.00"


def test_header_has_provenance_and_training_has_losses_and_sweep(run_dir):
    markdown = report.build(run_dir, "configs/fixture.yaml").read_text()
    assert "fixture-run" in markdown and "`configs/fixture.yaml`" in markdown
    for stage in ("bootstrap", "pretrain", "residual", "evaluate"):
        assert f"| {stage} | `{f'{stage}-fingerprint-0123456789'[:12]}` |" in markdown
    assert "| structured | `/models/structured` | `000000000000` |" in markdown
    assert "| pretrain | 20 | 2.9500 | 2.0000 |" in markdown
    assert "| sft | 10 | 1.4000 | 0.5000 |" in markdown        # 1.5 - 1.0 * 1 / 10
    assert "| 0.5 | 0.700 | 0.875 | 6.400 | **yes** |" in markdown
    assert "| 1 | 0.780 | 0.975 | 7.500 |  |" in markdown
    assert "Written: λ = 0.5 (rule text)" in markdown


def test_effects_verdicts_follow_the_intervals():
    found = {e.claim: e for e in report.effects(evaluate_metrics())}
    assert found["(a) DAPT lowers domain perplexity"].verdict == report.SHOWN
    assert "(Δ -4.00; lower is better)" in found["(a) DAPT lowers domain perplexity"].detail
    assert found["(c) the SFT expert beats instruct on decision"].verdict == report.SHOWN
    assert found["(c) the SFT expert beats instruct on summary"].verdict == report.NOISE
    assert found["(c) the SFT expert beats instruct on intent"].verdict == report.REVERSED
    assert found["(d) the DPO expert beats instruct on QA"].verdict == report.MISSING
    assert "merged" in found["(b) the residual restores instruction fidelity lost by DAPT"].detail


@pytest.mark.parametrize("better, than, metric, expected", [
    (m(0.65, 0.6, 0.7), m(0.45, 0.4, 0.5), "accuracy", report.SHOWN),
    (m(0.55, 0.45, 0.7), m(0.45, 0.4, 0.5), "accuracy", report.NOISE),
    (m(0.15, 0.1, 0.2), m(0.45, 0.4, 0.5), "accuracy", report.REVERSED),
    (m(5.5, 5.0, 6.0), m(9.5, 9.0, 10.0), "perplexity", report.SHOWN),
    (m(10.0, 9.5, 11.0), m(9.5, 9.0, 10.0), "perplexity", report.NOISE),
    (m(0.7, 0.55, 0.9), m(0.5, 0.5, 0.5), "accuracy", report.SHOWN),  # routing against chance
    # the cpu-replica case: 0.004 vs a degenerate [0, 0] separates, but is no effect
    (m(0.004, 0.003, 0.005), m(0.0, 0.0, 0.0), "token_f1", report.SMALL),
    # 5 % lower perplexity with tight intervals: below the 10 % relative minimum
    (m(9.5, 9.45, 9.55), m(10.0, 9.95, 10.05), "perplexity", report.SMALL),
    (m(9.0, 8.95, 9.05), m(10.0, 9.95, 10.05), "perplexity", report.SHOWN),  # 10 % lower
    (m(0.3, 0.28, 0.32), m(0.34, 0.33, 0.35), "accuracy", report.SMALL),  # reversed by 0.04
    (m(3.3, 3.2, 3.4), m(3.0, 2.9, 3.1), "judge", report.SHOWN),  # 0.3 on the 1-5 scale
    (m(float("nan"), float("nan"), float("nan"), n=0), m(0.1, 0.0, 0.2), "flip_rate",
     report.MISSING),
])
def test_verdict_needs_separate_intervals_and_the_minimum_effect(better, than, metric, expected):
    assert report.verdict(better, than, metric) == expected


def test_a_zero_baseline_and_an_unmeasured_cell_are_said_beside_the_table():
    import copy

    metrics = copy.deepcopy(evaluate_metrics())
    metrics["variants"]["instruct"]["tasks"]["intent"]["accuracy"] = m(0.0, 0.0, 0.04)
    metrics["variants"]["structured"]["tasks"]["fairness"] = {
        "flip_rate": m(float("nan"), float("nan"), float("nan"), n=0)}
    metrics["variants"]["instruct"]["tasks"]["fairness"] = {"flip_rate": m(0.1, 0.05, 0.2, n=40)}
    lines = report.results_table(metrics, report.table_rows(metrics))
    assert any("baseline scores 0** on intent accuracy" in line for line in lines)
    flips = next(line for line in lines if line.startswith("| fairness | flip_rate"))
    # cells count different pairs (those that parse), so each shows its n
    assert "n/a (n=0)" in flips and "0.10 [0.05, 0.20] (n=40)" in flips


def test_routing_effect_against_chance():
    metrics = evaluate_metrics()
    metrics["variants"]["routed"] = {"model": "-", "version": "f" * 64,
                                     "tasks": {"routing": {"accuracy": m(0.9, 0.85, 0.95)}}}
    routing = report.effects(metrics)[-1]
    assert routing.verdict == report.SHOWN and "0.90 [0.85, 0.95]" in routing.detail


def test_plots_are_pngs_linked_from_the_report(run_dir):
    path = report.build(run_dir, "configs/fixture.yaml")
    markdown = path.read_text()
    pngs = sorted(p.name for p in path.parent.glob("*.png"))
    assert pngs == ["losses.png", "sweep.png", "tasks-classification.png", "tasks-domain.png",
                    "tasks-qa.png", "tasks-summary.png", "tasks-zeta.png"]
    for name in pngs:
        assert (path.parent / name).read_bytes()[:8] == PNG_MAGIC
        assert f"]({name})" in markdown
    assert "## What this run shows" in markdown and "- **shown**: (a) DAPT" in markdown
    assert "at least the minimum effect (0.05 absolute" in markdown


def test_results_json_holds_every_cell_and_verdict_of_the_page(run_dir):
    import json

    path = report.build(run_dir, "configs/fixture.yaml")
    data = json.loads((path.parent / "results.json").read_text())
    assert data["run"] == "fixture-run" and data["seed"] == run_dir.run.seed
    cells = {(c["task"], c["metric"], c["variant"]): c for c in data["cells"]}
    # one per measured (task, metric, variant) of the fixture: dapt has no qa, only structured
    # has decision calibration
    expected = sum(len(metrics) for tasks in VARIANTS.values() for metrics in tasks.values())
    assert len(cells) == expected
    assert cells[("decision", "accuracy", "structured")] == {
        "task": "decision", "metric": "accuracy", "variant": "structured", "seed": 0,
        "value": 0.75, "n": 100, "ci95": [0.66, 0.84]} | {"seed": run_dir.run.seed}
    verdicts = {e["claim"]: e["verdict"] for e in data["effects"]}
    assert verdicts["(a) DAPT lowers domain perplexity"] == report.SHOWN
    assert data["min_effect"]["absolute"] == 0.05


def test_report_command_runs_up_to_evaluate_then_builds(run_dir, tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(pipeline, "run_plan", lambda recipe, jobs, **kw: calls.append(
        [job.name for job in jobs]) or {})
    out = tmp_path / "elsewhere"
    assert cli.main(["report", str(ROOT / "configs/cpu-demo.yaml"),
                     "--run.output_dir", run_dir.run.output_dir, "--output", str(out)]) == 0
    assert calls == [list(stages.STAGES)]  # cpu-demo: one seed, no variants
    assert capsys.readouterr().out.strip() == str(out / "report.md")
    assert (out / "report.md").is_file() and (out / "losses.png").is_file()


def test_report_help_imports_nothing_heavy():
    code = ("import sys\nfrom mortgagellm.cli import main\n"
            "try:\n    main(['report', '--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'ray', 'transformers', 'deepspeed', 'matplotlib')"
            " if m in sys.modules]\nprint('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout and "--output" in out.stdout


def test_the_fewshot_prompts_are_stated_verbatim_beside_their_rows():
    from mortgagellm.pipelines.report import fewshot_prompts

    assert fewshot_prompts({"variants": {}}) == []
    lines = fewshot_prompts({"fewshot_prompts": {"decision": "Example 1:\nDecide.\nAnswer: deny"
                                                 "\n\nNow this one:\n"}})
    text = "\n".join(lines)
    assert "fewshot_<task> rows" in text and "<summary>decision</summary>" in text
    assert "```text\nExample 1:\nDecide.\nAnswer: deny\n\nNow this one:\n```" in text


# ---- the router section (issue 20) -----------------------------------------------------------

ROUTER = {"kind": "ngram", "threshold": 0.83, "threshold_in_use": 0.83,
          "threshold_fitted_on": "20% of routing_train",
          "confusion": {"routing_tier1": {"structured": {"structured": 296, "conversational": 4},
                                          "conversational": {"structured": 5,
                                                             "conversational": 295}},
                        "routing_hand": {"structured": {"structured": 85, "conversational": 6},
                                         "conversational": {"structured": 31,
                                                            "conversational": 65}}},
          "to_tier2": {"routing_tier1": 0.05, "routing_hand": 0.3},
          "mistakes_to_tier2": {"routing_tier1": 0.8, "routing_hand": 0.5}}


def routed_metrics():
    metrics = evaluate_metrics()
    metrics["variants"]["routed"] = {"model": "-", "version": "f" * 64, "router": ROUTER, "tasks": {
        "routing": {"accuracy": m(0.97, 0.95, 0.98, n=600)},
        "routing_tier1": {"accuracy": m(0.985, 0.972, 0.992, n=600),
                          "confident_mistakes": m(0.005, 0.002, 0.015, n=600),
                          "ece": m(0.02, 0.01, 0.03, n=600)},
        "routing_hand": {"accuracy": m(0.802, 0.74, 0.85, n=187),
                         "confident_mistakes": m(0.05, 0.03, 0.09, n=187),
                         "ece": m(0.12, 0.08, 0.17, n=187)}}}
    return metrics


def test_router_section_shows_both_sets_threshold_confusion_and_goals(run_dir):
    import json

    manifest.write(str(manifest.stage_dir(run_dir, "evaluate")), manifest.Manifest(
        stage="evaluate", fingerprint="evaluate-fingerprint", config={},
        metrics=routed_metrics(), started_at="2025-01-01T00:00:00Z", duration_s=1.0))
    path = report.build(run_dir, "configs/fixture.yaml")
    text = path.read_text()
    assert "## Router: tier 1 alone" in text
    assert "fitted on 20% of routing_train: 0.830; in use: 0.830 (hybrid mode)" in text
    assert ("| hand-written | 187 | 0.802 [0.740, 0.850] | 0.050 [0.030, 0.090] | "
            "0.120 [0.080, 0.170] | 0.300 | 0.500 |") in text
    assert "| generated (eval_routing) | 600 | 0.985 [0.972, 0.992] |" in text
    assert "| hand-written | 85 | 6 | 31 | 65 |" in text  # s→s, s→c, c→s, c→c
    assert "- generated (eval_routing) accuracy >= 0.98: **met** (0.985)" in text
    assert "- hand-written accuracy >= 0.95: **not met** (0.802)" in text
    assert "- hand-written confident mistakes <= 0.01: **not met** (0.050)" in text
    rows = table(text)  # the tier-1 rows are in the results table too, lower ECE better
    assert rows[("routing_hand", "ece")]["better"] == "↓"
    assert rows[("routing_hand", "accuracy")]["routed"] == "0.80 [0.74, 0.85]"
    data = json.loads((path.parent / "results.json").read_text())
    assert data["router"]["threshold"] == 0.83
    assert data["router"]["confusion"]["routing_hand"]["conversational"]["structured"] == 31
    assert [g["met"] for g in data["router"]["goals"]] == [True, False, False]
    cells = {(c["task"], c["metric"], c["variant"]) for c in data["cells"]}
    assert ("routing_hand", "confident_mistakes", "routed") in cells
    page = (path.parent / "report.html").read_text()
    assert "Router: tier 1 alone</h2>" in page and "<td>hand-written</td>" in page
    assert (path.parent / "tasks-routing.png").read_bytes()[:8] == PNG_MAGIC


def test_no_router_section_without_a_routed_variant(run_dir):
    import json

    path = report.build(run_dir, "configs/fixture.yaml")
    assert "Router: tier 1 alone" not in path.read_text()
    assert json.loads((path.parent / "results.json").read_text())["router"] is None


def test_routed_is_compared_with_its_best_part_on_every_task_it_shares():
    from mortgagellm.evaluation import routed_report

    metrics = evaluate_metrics()
    metrics["variants"]["routed"] = {"model": "router", "version": "r" * 64, "tasks": {
        "decision": {"accuracy": m(0.70, 0.60, 0.80)},  # best: structured 0.75 [0.66, 0.84]
        "intent": {"accuracy": m(0.50, 0.40, 0.60)},  # best: instruct 0.7 [0.6, 0.8]
        "domain": {"perplexity": m(6.3, 5.9, 6.7)},  # lower is better: best dapt 6.0
        "routing": {"accuracy": m(0.9, 0.8, 0.95)}}}  # no other variant has it: no row
    rows = {(r["task"], r["metric"]): r for r in routed_report.compare(
        metrics, report.LOWER_IS_BETTER)}
    assert set(rows) == {("decision", "accuracy"), ("intent", "accuracy"),
                         ("domain", "perplexity")}
    assert (rows["decision", "accuracy"]["best"], rows["decision", "accuracy"]["met"]) == (
        "structured", True)  # 0.70 is inside [0.66, 0.84]
    assert (rows["intent", "accuracy"]["best"], rows["intent", "accuracy"]["met"]) == (
        "instruct", False)  # 0.50 is below [0.6, 0.8]
    assert rows["intent", "accuracy"]["delta"] == pytest.approx(-0.2)
    assert rows["domain", "perplexity"]["best"] == "dapt"
    assert rows["domain", "perplexity"]["met"]  # 6.3 is inside [5.5, 6.5]
    text = "\n".join(routed_report.section(metrics, report.LOWER_IS_BETTER))
    assert "| intent | accuracy | 0.50 [0.40, 0.60] | instruct | 0.70 [0.60, 0.80] | -0.20 | " \
           "missed |" in text
    assert "Met on 2 of 3; missed on intent accuracy." in text
    assert report.results(metrics, 0)["routed_vs_parts"][0]["task"] == "decision"
    assert routed_report.section(evaluate_metrics(), report.LOWER_IS_BETTER) == []


# ---- run.repeat_seeds: the recipe at further seeds, and the report across them -----------------

def test_a_seeds_recipe_writes_under_seeds_and_repeats_nothing_further():
    recipe = validate_recipe({"run": {"output_dir": "s3://bucket/run/", "cache_dir": "/c",
                                      "seed": 0, "repeat_seeds": [1, 2]}})
    seeded = manifest.seed_recipe(recipe, 2)
    assert (seeded.run.seed, seeded.run.repeat_seeds) == (2, [])
    assert seeded.run.output_dir == "s3://bucket/run/seeds/2"
    assert str(seeded.run.local_dir) == "/c/seeds/2"
    assert manifest.stage_uri(seeded, "pretrain") == "s3://bucket/run/seeds/2/pretrain"
    assert recipe.run.seed == 0 and recipe.run.repeat_seeds == [1, 2]  # the run is unchanged
    for bad in ([0], [1, 1]):
        with pytest.raises(ValueError, match="each seed at most once"):
            validate_recipe({"run": {"seed": 0, "repeat_seeds": bad}})


class InOrder:
    """cluster.runtime.OwnProcesses without Ray: each call runs when it is waited for, first
    started first; records what ran and the most jobs started and not yet done at once."""

    def __init__(self):
        self.started, self.ran, self.most = [], [], 0

    def __len__(self):
        return len(self.started)

    def start(self, name, fn, args):
        self.started.append((name, fn, args))
        self.most = max(self.most, len(self.started))

    def next_done(self):
        name, fn, args = self.started.pop(0)
        self.ran.append(name)
        try:
            return name, fn(*args), None
        except Exception as err:  # noqa: BLE001 - handed back as OwnProcesses does
            return name, None, err


@pytest.fixture
def in_order(monkeypatch):
    from mortgagellm.cluster import runtime

    tasks = InOrder()
    monkeypatch.setattr(runtime, "OwnProcesses", lambda: tasks)
    monkeypatch.setattr(runtime, "ensure_ray", lambda *a: None)
    return tasks


def with_runs(recipe, seeds=(), **compare):
    """`recipe` with run.repeat_seeds and <stage>.compare set."""
    update = {"run": recipe.run.model_copy(update={"repeat_seeds": list(seeds)})}
    for stage, variants in compare.items():
        update[stage] = getattr(recipe, stage).model_copy(update={"compare": variants})
    return recipe.model_copy(update=update)


def test_the_plan_is_the_run_its_further_seeds_from_pretrain_and_the_variants():
    recipe = with_runs(validate_recipe({"run": {"output_dir": "/r"}}), seeds=(3,),
                       dpo={"dpo-only": DPO_ONLY}, sft={"plain": {"counterfactual": False}})
    jobs = {job.name: job for job in pipeline.plan(recipe)}
    assert list(jobs) == [
        "bootstrap", "corpus", "pretrain", "residual", "sft", "dpo",
        "seed 3 pretrain", "seed 3 residual", "seed 3 sft", "seed 3 dpo",
        "sft variant plain", "dpo variant dpo-only", "evaluate", "seed 3 evaluate"]
    assert jobs["seed 3 pretrain"].after == ("bootstrap", "corpus")  # the run's, shared
    assert jobs["seed 3 sft"].after == ("bootstrap", "corpus", "seed 3 residual")
    assert jobs["seed 3 sft"].share == stages.SHARED_ACROSS_SEEDS
    assert (jobs["seed 3 sft"].recipe.run.output_dir, jobs["seed 3 sft"].recipe.run.seed) == (
        "/r/seeds/3", 3)
    variant = jobs["dpo variant dpo-only"]
    assert variant.after == variant.share == stages.NEEDS["dpo"]  # the run's merged model
    assert (variant.recipe.run.output_dir, variant.recipe.dpo.sft.epochs) == (
        "/r/variants/dpo-dpo-only", 0)
    assert [job.name for job in pipeline.plan(recipe, last="residual")] == [
        "bootstrap", "corpus", "pretrain", "residual", "seed 3 pretrain", "seed 3 residual"]


def test_a_jobs_cores_are_its_workers_threads_or_the_whole_node():
    recipe = validate_recipe({
        "sft": {"threads": 1, "scaling": {"workers_per_node": 2, "threads_per_worker": 1}},
        "residual": {"threads": 1}, "evaluate": {"concurrency": 2, "threads": 1}})
    cores = {job.stage: job.cores for job in pipeline.plan(recipe)}
    assert (cores["sft"], cores["residual"], cores["evaluate"]) == (2, 1, 2)
    assert cores["bootstrap"] is None and cores["corpus"] is None  # every core
    assert validate_recipe({}).dpo.scaling.threads_per_worker is None
    assert next(job for job in pipeline.plan(validate_recipe({})) if job.stage == "dpo"
                ).cores is None  # Ray's default threads: taken as the whole node


def test_report_runs_every_job_once_after_its_inputs_as_many_as_fit(run_dir, in_order,
                                                                     monkeypatch):
    recipe = with_runs(run_dir, seeds=(3, 5), dpo={"dpo-only": DPO_ONLY})
    ran = []
    monkeypatch.setattr(pipeline, "run_stage", lambda r, stage: ran.append(
        (r.run.output_dir, stage)) or manifest.stage_manifest(r, stage) or stage)
    jobs = pipeline.plan(recipe)
    one_core = sum(1 for job in jobs if job.cores == 1)
    done = pipeline.run_plan(recipe, jobs, cores=2)
    assert sorted(done) == sorted(job.name for job in jobs) and len(ran) == len(jobs)
    order = in_order.ran
    for job in jobs:  # each after what it reads
        assert all(order.index(name) < order.index(job.name) for name in job.after), job.name
    assert in_order.most <= 2 if one_core else in_order.most == 1
    out = run_dir.run.output_dir
    assert (f"{out}/seeds/5", "pretrain") in ran and (f"{out}/variants/dpo-dpo-only", "dpo") in ran
    for seed in (3, 5):
        seeded = manifest.seed_recipe(recipe, seed)
        for stage in stages.SHARED_ACROSS_SEEDS:  # the very manifest, naming the run's outputs
            assert manifest.require_manifest(seeded, stage) == \
                manifest.require_manifest(recipe, stage)
    variant = manifest.variant_recipe(recipe, "dpo", "dpo-only")
    for need in stages.NEEDS["dpo"]:
        assert manifest.require_manifest(variant, need) == manifest.require_manifest(recipe, need)


def test_two_one_core_jobs_run_together_and_a_whole_node_job_alone(tmp_path, in_order,
                                                                 monkeypatch):
    one_core = {"threads": 1, "scaling": {"threads_per_worker": 1}}
    recipe = with_runs(validate_recipe({
        "run": {"output_dir": str(tmp_path)}, "sft": one_core, "dpo": one_core,
        "evaluate": {"concurrency": 2, "threads": 1}}), seeds=(3,))
    beside = {}
    def stage(r, name):  # the jobs started and not yet done while this one runs
        beside[f"{'' if r.run.seed == 0 else 'seed 3 '}{name}"] = [
            started for started, _, _ in in_order.started]
        return name
    monkeypatch.setattr(pipeline, "run_stage", stage)
    jobs = [pipeline.Job(j.name, j.recipe, j.stage, (), ()) for j in pipeline.plan(recipe)
            if j.stage in ("sft", "dpo", "evaluate")]
    assert [(job.name, job.cores) for job in jobs] == [
        ("sft", 1), ("dpo", 1), ("seed 3 sft", 1), ("seed 3 dpo", 1), ("evaluate", 2),
        ("seed 3 evaluate", 2)]
    pipeline.run_plan(recipe, jobs, cores=2)
    assert beside["sft"] == ["dpo"] and beside["seed 3 sft"] == ["seed 3 dpo"]  # a core each
    assert beside["evaluate"] == beside["seed 3 evaluate"] == []  # every core: alone
    assert in_order.most == 2
    serial = recipe.model_copy(update={"run": recipe.run.model_copy(
        update={"parallel_stages": False})})
    in_order.most = 0
    pipeline.run_plan(serial, jobs, cores=2)
    assert in_order.most == 1  # run.parallel_stages false: one at a time


def test_a_failed_job_stops_what_reads_it_and_the_rest_finish(run_dir, in_order, monkeypatch):
    recipe = with_runs(run_dir, seeds=(3,))
    def stage(r, name):
        if r.run.seed == 3 and name == "residual":
            raise RuntimeError("seed 3's residual gate failed")
        return name
    monkeypatch.setattr(pipeline, "run_stage", stage)
    with pytest.raises(RuntimeError, match="seed 3's residual gate failed"):
        pipeline.run_plan(recipe, pipeline.plan(recipe), cores=2)
    assert "evaluate" in in_order.ran and "seed 3 residual" in in_order.ran
    assert not {"seed 3 sft", "seed 3 dpo", "seed 3 evaluate"} & set(in_order.ran)


def seeded_run(run_dir, values):
    """run_dir plus seeds 1 and 2 whose structured decision accuracy and residual fidelity
    ratio are values[seed] = (accuracy, fidelity ratio)."""
    recipe = run_dir.model_copy(update={"run": run_dir.run.model_copy(
        update={"repeat_seeds": [1, 2]})})
    for seed, (accuracy, ratio) in values.items():
        target = recipe if seed == 0 else manifest.seed_recipe(recipe, seed)
        metrics = evaluate_metrics()
        metrics["variants"]["structured"]["tasks"]["decision"]["accuracy"] = m(
            accuracy, accuracy - 0.05, accuracy + 0.05)
        for stage, data in (("evaluate", metrics), ("residual", RESIDUAL | {
                "fidelity_ratio": ratio})):
            manifest.write(str(manifest.stage_dir(target, stage)), manifest.Manifest(
                stage=stage, fingerprint=f"{stage}-{seed}", config={}, metrics=data))
    return recipe


def test_the_report_gives_each_key_number_at_every_seed_with_its_spread(run_dir):
    import json

    recipe = seeded_run(run_dir, {0: (0.75, 0.95), 1: (0.55, 0.92), 2: (0.95, 0.91)})
    path = report.build(recipe, "configs/fixture.yaml")
    data = json.loads((path.parent / "results.json").read_text())["across_seeds"]
    assert data["seeds"] == [0, 1, 2]
    cells = {(c["variant"], c["task"], c["metric"]): c for c in data["cells"]}
    acc = cells[("structured", "decision", "accuracy")]
    assert acc["values"] == {"0": 0.75, "1": 0.55, "2": 0.95}
    assert acc["mean"] == pytest.approx(0.75) and acc["sd"] == pytest.approx(0.2)  # by hand
    assert (acc["min"], acc["max"], acc["seeds"]) == (0.55, 0.95, 3)
    assert cells[("instruct", "decision", "accuracy")]["sd"] == 0.0  # same at every seed
    decision = next(e for e in data["effects"] if e["claim"].endswith("on decision"))
    # structured 0.55 [0.50, 0.60] vs instruct 0.5 [0.4, 0.6] overlaps at seed 1 only
    assert decision["verdicts"] == {"0": report.SHOWN, "1": report.NOISE, "2": report.SHOWN}
    assert data["gate_held_on_every_seed"] is True
    text = path.read_text()
    section = text[text.index("## Across seeds"):]
    assert "0.75 ± 0.20 [0.55–0.95]" in section and "0: shown; 1: not shown" in section
    assert "| 1 | 0.5 | 0.920 | 6.40 / 10.00 |" in section and "held on every seed" in section


def test_the_schedule_sums_every_stage_and_says_how_much_ran_side_by_side(run_dir):
    import json

    recipe = with_runs(run_dir, seeds=(3,))
    seeded = manifest.seed_recipe(recipe, 3)
    for stage in stages.select("pretrain", "evaluate"):  # seed 3's, 5 s after the run's began
        manifest.write(str(manifest.stage_dir(seeded, stage)), manifest.Manifest(
            stage=stage, fingerprint=stage, config={}, metrics=STAGE_METRICS.get(stage, {}),
            started_at="2025-01-01T00:00:05Z", duration_s=20.0))
    found = report.schedule(recipe)
    # the run's 7 stages: 10..16 s, all started at 00:00:00; seed 3's 5 stages: 20 s each
    assert found["sum_s"] == sum(range(10, 17)) + 5 * 20 == 191
    assert found["span_s"] == 25.0  # 00:00:00 to seed 3's ends at 00:00:25
    assert found["jobs"][0] == {"job": "bootstrap", "started": "2025-01-01T00:00:00Z",
                                "duration_s": 10.0}
    assert [j["job"] for j in found["jobs"]][-5:] == [
        f"seed 3 {s}" for s in stages.select("pretrain", "evaluate")]
    path = report.build(recipe, "configs/fixture.yaml")
    assert json.loads((path.parent / "results.json").read_text())["schedule"] == found
    assert "durations sum to 0.05 h; from the first start to the last end took 0.01 h, ×7.64" \
        in path.read_text()


def test_a_seed_that_fails_the_residual_gate_is_said(run_dir):
    recipe = seeded_run(run_dir, {0: (0.75, 0.95), 1: (0.75, 0.85), 2: (0.75, 0.93)})
    text = report.build(recipe, "configs/fixture.yaml").read_text()
    assert "(fidelity ratio ≥ 0.9 with a domain perplexity below instruct's) **did not hold** " \
        "on every seed" in text


def test_a_missing_seed_run_names_the_stage_to_run(run_dir):
    recipe = run_dir.model_copy(update={"run": run_dir.run.model_copy(
        update={"repeat_seeds": [7]})})
    with pytest.raises(FileNotFoundError, match="seeds/7/residual"):
        report.build(recipe, "configs/fixture.yaml")


# ---- dpo.compare: the conversational expert's variants, trained and set side by side -----------

DPO_ONLY = {"sft": {"epochs": 0}, "onpolicy": {"enabled": False}}


def test_a_variant_is_the_section_with_its_overrides_and_a_bad_one_is_named():
    recipe = validate_recipe({"dpo": {"sft": {"epochs": 2, "lr": 0.002}, "beta": 0.2,
                                      "compare": {"dpo-only": DPO_ONLY}}})
    variant = recipe.dpo.variant("dpo-only")
    assert (variant.sft.epochs, variant.sft.lr, variant.beta) == (0, 0.002, 0.2)  # deep merge
    assert variant.compare == {} and not variant.onpolicy.enabled
    plain = validate_recipe({"dpo": {"sft": {"epochs": 2, "lr": 0.002}, "beta": 0.2}})
    assert recipe.dpo.fingerprinted() == plain.dpo.fingerprinted()  # a variant retrains nothing
    with pytest.raises(ValueError, match=r"dpo.compare.typo.sft.epochz: Extra inputs are not"):
        validate_recipe({"dpo": {"compare": {"typo": {"sft": {"epochz": 0}}}}})


def test_the_report_sets_the_variants_side_by_side_with_instruct(run_dir):
    import json

    recipe = run_dir.model_copy(update={"dpo": run_dir.dpo.model_copy(
        update={"compare": {"dpo-only": DPO_ONLY}})})
    heldout = {"n": 60, "n_numeric": 40, "reward_margin": 9.1, "reward_accuracy": 0.88,
               "qa_numeric_correct": 0.02, "qa_numeric_grounded": 0.33, "qa_supported": 0.22,
               "qa_knowledge": 0.125, "fidelity": 0.8, "n_instructions": 150}
    for target, expert, sft, onpolicy in (
            (recipe, heldout, 2, True),
            (manifest.variant_recipe(recipe, "dpo", "dpo-only"),
             heldout | {"qa_numeric_grounded": 0.025, "reward_margin": 2.5}, 0, False)):
        phase = {"sft": heldout | {"qa_numeric_grounded": 0.5, "reward_margin": 4.0}} if sft \
            else {}  # an SFT phase is measured before DPO only when it ran
        manifest.write(str(manifest.stage_dir(target, "dpo")), manifest.Manifest(
            stage="dpo", fingerprint="dpo", metrics={"history": history(0.7, 0.3, 5), "heldout": {
                "expert": expert, "instruct": heldout | {"qa_numeric_grounded": 0.0}, **phase}},
            config={"dpo": {"sft": {"epochs": sft}, "onpolicy": {"enabled": onpolicy}} | ({
                "nll_weight": 1.0} if sft else {})}))  # dpo-only: an older manifest
    path = report.build(recipe, "configs/fixture.yaml")
    text = path.read_text()
    section = text[text.index("## Conversational expert: DPO variants"):]
    # grounded figures with a Wilson interval over the 40 questions with a figure: 13 of 40
    # and instruction fidelity with its interval over the 150 held-out instructions (120 of 150);
    # settings an older manifest lacks (format replay, NLL weight) are shown as a dash
    assert "| this recipe | 2 | – | 1.00 | yes | 9.10 | 0.88 | 0.02 | 0.33 [0.20, 0.48] | 0.22 | " \
        "0.12 | 60 | 40 | 0.80 [0.73, 0.86] |" in section
    assert "| this recipe: its SFT phase, before DPO | 2 | – | 1.00 | yes | 4.00 | 0.88 | 0.02 | " \
        "0.50 [0.35, 0.65] |" in section
    assert "| dpo-only | 0 | – | – | no | 2.50 | 0.88 | 0.02 | 0.03 [0.00, 0.13] | 0.22 | 0.12 | " \
        "60 | 40 |" in section
    assert "dpo-only: its SFT phase" not in section
    assert "| instruct (reference) | – | – | – | – | 9.10 | 0.88 | 0.02 | 0.00 [0.00, 0.09] |" \
        in section
    data = json.loads((path.parent / "results.json").read_text())["variants"]["dpo"]
    assert data["dpo-only"]["heldout"]["expert"]["reward_margin"] == 2.5
    assert data["dpo-only"]["settings"] == {"SFT epochs first": 0, "SFT format replay": None,
                                            "NLL weight": None, "on-policy pairs": False}
    # at each of run.repeat_seeds, this recipe's own expert is a row too (its seed's run)
    seeded = recipe.model_copy(update={"run": recipe.run.model_copy(update={
        "repeat_seeds": [3]})})
    manifest.write(str(manifest.stage_dir(manifest.seed_recipe(seeded, 3), "dpo")),
                   manifest.Manifest(stage="dpo", fingerprint="dpo", metrics={"heldout": {
                       "expert": heldout | {"qa_numeric_grounded": 0.45}}},
                       config={"dpo": {"sft": {"epochs": 2}, "onpolicy": {"enabled": True}}}))
    found = repeats.stage_variants(seeded, "dpo")
    assert list(found) == ["this recipe", "this recipe, seed 3", "dpo-only"]
    assert found["this recipe, seed 3"]["heldout"]["expert"]["qa_numeric_grounded"] == 0.45


def test_the_structured_experts_variants_show_the_flip_rate_before_and_after(run_dir):
    recipe = run_dir.model_copy(update={"sft": run_dir.sft.model_copy(update={
        "counterfactual": True, "compare": {"no-counterfactual": {"counterfactual": False}}})})
    for target, flip, cda in ((recipe, 0.0, True), (manifest.variant_recipe(
            recipe, "sft", "no-counterfactual"), 0.068, False)):
        expert = {"decision": {"accuracy": 0.7}, "doc_kind": {"accuracy": 0.72},
                  "intent": {"accuracy": 0.65}, "summary": {"field_accuracy": 0.4},
                  "fairness": {"flip_rate": m(flip, 0.0, 0.15, n=59),
                               "unparseable": m(0.017, 0.0, 0.09, n=60)}}
        manifest.write(str(manifest.stage_dir(target, "sft")), manifest.Manifest(
            stage="sft", fingerprint="sft", config={"sft": {"counterfactual": cda}},
            metrics={"history": history(1.5, 0.5, 10), "heldout": {"expert": expert}}))
    text = report.build(recipe, "configs/fixture.yaml").read_text()
    section = text[text.index("## Structured expert: SFT variants"):]
    assert "| this recipe | yes | 0.70 | 0.72 | 0.65 | 0.40 | 0.00 (n=59) | 0.02 (n=60) |" \
        in section
    assert "| no-counterfactual | no | 0.70 | 0.72 | 0.65 | 0.40 | 0.07 (n=59) |" in section
    assert "instruct (reference)" not in section  # no instruct numbers in this manifest


def test_further_seeds_of_an_s3_run_read_its_bootstrap_and_corpus_from_s3(
        s3_bucket, tmp_path, in_order, monkeypatch):
    """With output_dir s3://…, each seed's run gets the run's published manifests under
    <output_dir>/seeds/<seed>/ and downloads the outputs they name into its own cache."""
    recipe = validate_recipe({"run": {"output_dir": f"{s3_bucket}/run", "repeat_seeds": [4],
                                      "cache_dir": str(tmp_path / "cache")}})
    for stage in stages.SHARED_ACROSS_SEEDS:
        local = tmp_path / "elsewhere" / stage
        (local / "out").mkdir(parents=True)
        (local / "out" / "data.txt").write_text(f"{stage} output")
        manifest.write(str(local), manifest.Manifest(
            stage=stage, fingerprint=stage, config={},
            outputs={"out": manifest.artifact(local / "out")}))
        manifest.publish(manifest.read(str(local)), local, manifest.stage_uri(recipe, stage))
    monkeypatch.setattr(pipeline, "run_stage", lambda r, stage: stage)
    jobs = [job for job in pipeline.plan(recipe) if job.name == "seed 4 pretrain"]
    pipeline.run_plan(recipe, jobs, cores=2)
    seeded = manifest.seed_recipe(recipe, 4)
    for stage in stages.SHARED_ACROSS_SEEDS:
        found = manifest.require_manifest(seeded, stage)  # fetched into the seed's cache
        path = Path(found.output_path("out"))
        assert path == tmp_path / "cache" / "seeds" / "4" / stage / manifest.SHARED / "out"
        assert (path / "data.txt").read_text() == f"{stage} output"
    assert not (Path.cwd() / "s3:").exists()
