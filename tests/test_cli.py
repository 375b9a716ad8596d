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
