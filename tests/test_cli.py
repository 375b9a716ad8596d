"""The CLI: instant help (no torch import), resolved config printing, clear errors."""

import subprocess
import sys
from pathlib import Path

import pytest

from mortgagellm import cli

ROOT = Path(__file__).resolve().parents[1]


def test_help_imports_no_torch_ray_or_transformers():
    code = ("import sys\nfrom mortgagellm.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'ray', 'transformers', 'deepspeed')\n"
            "         if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout
    assert "run" in out.stdout and "bootstrap" in out.stdout


def test_python_dash_m_is_the_same_command():
    out = subprocess.run([sys.executable, "-m", "mortgagellm", "--help"], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    assert out.stdout.startswith("usage: mortgagellm")


def test_config_prints_resolved_recipe_with_overrides(capsys):
    assert cli.main(["config", str(ROOT / "configs/cpu-demo.yaml"),
                     "--pretrain.deepspeed.zero_stage", "3", "--run.seed=7"]) == 0
    out = capsys.readouterr().out
    assert "zero_stage: 3" in out and "seed: 7" in out


def test_bad_recipe_exits_2_naming_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("bootstrap:\n  preset: huge\n")
    assert cli.main(["config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bootstrap.preset" in err and str(bad) in err


@pytest.mark.parametrize("extra", [["--seed", "1"], ["--run.seed"], ["stray"]])
def test_malformed_overrides_are_refused(extra):
    with pytest.raises(SystemExit):
        cli.main(["config", str(ROOT / "configs/cpu-demo.yaml"), *extra])


def test_split_overrides_pairs_flags_with_values():
    assert cli.split_overrides(["--a.b", "3", "--c.d=x y"]) == ["a.b=3", "c.d=x y"]


def test_unknown_stage_in_from_is_refused():
    with pytest.raises(SystemExit):
        cli.main(["run", str(ROOT / "configs/cpu-demo.yaml"), "--from", "nonsense"])


# ---- the run's closing summary -------------------------------------------------------------------

def stage_manifest(stage, metrics, started_at="2026-01-01T00:00:00Z", duration_s=12.0):
    from mortgagellm.manifest import Manifest

    return Manifest(stage=stage, fingerprint="f" * 64, config={}, metrics=metrics,
                    outputs={"model": {"uri": f"/runs/x/{stage}/model", "sha256": "0"}},
                    started_at=started_at, duration_s=duration_s)


def test_headlines_pick_each_stages_numbers_from_its_manifest():
    from mortgagellm import headlines

    corpus = {"documents": {"kept": 16020, "rejected": 74, "exact_duplicates": 1597,
                            "near_duplicates": 2462}, "tier1": {"heldout_accuracy": 0.9917}}
    assert headlines.headline(stage_manifest("corpus", corpus)) == (
        "documents kept 16,020, rejected 74, duplicates 4,059; router tier 1 0.99 held-out")
    residual = {"scale": 0.75, "fidelity_ratio": 0.909,
                "domain_perplexity": {"merged": 106.03, "instruct": 654.06}}
    assert headlines.headline(stage_manifest("residual", residual)) == (
        "λ 0.75, fidelity ratio 0.91; domain perplexity merged 106.03 vs instruct 654.06")
    sft = {"heldout": {"expert": {"decision": {"accuracy": 0.8}},
                       "instruct": {"decision": {"accuracy": 0.0}}}}
    assert "decision 0.80 vs 0.00, doc_kind ? vs ?" in headlines.headline(
        stage_manifest("sft", sft))  # a number the manifest lacks prints as ?, never crashes
    dpo = {"heldout": {"expert": {"reward_margin": 4.2, "qa_numeric_correct": 0.05,
                                  "qa_numeric_grounded": 0.81, "qa_supported": 0.4},
                       "instruct": {"qa_numeric_correct": 0.02}}}
    assert headlines.headline(stage_manifest("dpo", dpo)) == (
        "held-out reward margin 4.20, QA figures right 0.05 as written, 0.81 grounded, vs "
        "instruct 0.02; answers with no made-up figure 0.40")


def test_the_closing_tables_outputs_stand_in_one_column_however_long_the_numbers():
    from mortgagellm import headlines

    dpo = stage_manifest("dpo", {"heldout": {"expert": {"reward_margin": 9.11,
                                                        "qa_numeric_correct": 0.02}}})
    corpus = stage_manifest("corpus", {"documents": {"kept": 3}})
    lines = headlines.table([(corpus, False, 46.0), (dpo, True, 0.0)], 447.0).splitlines()
    head, first, second, total = lines[1:]
    assert len(headlines.headline(dpo)) > 74  # longer than the old fixed column
    assert head.index("output") == first.index("/runs/x/corpus") == second.index("/runs/x/dpo")
    assert second.split()[:2] == ["dpo", "skipped"] and total.split() == ["total", "447", "s"]


def test_run_prints_a_line_per_stage_then_the_table_and_dumps_metrics_to_the_log(
        tmp_path, monkeypatch, capsys):
    from mortgagellm.pipelines import recipe as pipeline

    done = {"bootstrap": stage_manifest("bootstrap", {"base": {"fidelity": 0.0},
                                                      "instruct": {"fidelity": 0.92},
                                                      "parameters": 1115264}),
            "corpus": None}  # corpus runs now: its manifest starts after the run did
    done["bootstrap"].outputs = {"base": {"uri": "/runs/x/bootstrap/base"},
                                 "instruct": {"uri": "/runs/x/bootstrap/instruct"}}

    def run_stage(recipe, stage, force=False):
        return done[stage] or stage_manifest(stage, {"documents": {"kept": 3}},
                                             started_at="2999-01-01T00:00:00Z")

    monkeypatch.setattr(pipeline, "run_stage", run_stage)
    out_dir = tmp_path / "run"
    assert cli.main(["run", str(ROOT / "configs/cpu-demo.yaml"), "--to", "corpus",
                     f"--run.output_dir={out_dir}"]) == 0
    out = capsys.readouterr().out
    assert "[bootstrap] up to date, skipped: instruction fidelity base 0.00 -> instruct 0.92" in out
    assert "[corpus] 12.0 s: documents kept 3" in out
    table = out[out.index("stage "):]
    assert "  instruct: /runs/x/bootstrap/instruct" in out  # each output as its stage ends
    assert "bootstrap    skipped" in table and "/runs/x/corpus/model" in table
    assert table.splitlines()[1].endswith(" /runs/x/bootstrap")  # several outputs: their folder
    assert "cpu-demo.yaml --demo" in out and "mortgagellm report" in out
    assert "base.fidelity" not in out  # the flat dump is not for the terminal ...
    assert "corpus" in (out_dir / "run.log").read_text()  # ... it is in the run's log
    assert "documents.kept = 3" in (out_dir / "run.log").read_text()


def test_weight_progress_bars_are_off_unless_asked_for(monkeypatch, capsys):
    import os

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    assert cli.main(["config", "configs/cpu-demo.yaml"]) == 0
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"  # inherited by Ray's workers
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    assert cli.main(["config", "configs/cpu-demo.yaml"]) == 0
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "0"
