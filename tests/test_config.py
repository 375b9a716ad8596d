"""Recipe loading: both shipped recipes validate; bad recipes fail naming the key and the file; the
embedded default needs nothing outside the repository."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mortgagellm.config import ConfigError, load_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_recipe_loads_and_starts_with_its_command(name):
    path = ROOT / "configs" / name
    recipe = load_recipe(path)
    assert recipe.run.output_dir
    lines = path.read_text().splitlines()
    command = " ".join(lines[:2])  # the command may continue on the second line
    assert lines[0].startswith("# Run:")
    # `run` every stage, or `report`: every stage, then the report (cpu-replica)
    assert re.search(rf"mortgagellm (run|report) configs/{re.escape(name)}", command), command


# Recipe keys that name inputs a run reads (models, corpora, key files), wherever they sit.
INPUT_KEYS = {"base_model", "instruct_model", "model", "regulations", "user_corpora", "keys_file",
              "routing_test_set"}


def repo_copy(dest: Path) -> Path:
    """The repository's files as a clone has them (tracked and not ignored), copied to dest."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def named_inputs(node, key=None):
    """Every path held under an INPUT_KEYS key of the resolved recipe (corpus.mixture's weights
    share a key name but are numbers, not paths)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from named_inputs(v, k)
    elif key in INPUT_KEYS and isinstance(node, (str, list)):
        yield from node if isinstance(node, list) else [node]


def test_embedded_default_needs_nothing_outside_the_repo(tmp_path):
    import yaml

    repo = repo_copy(tmp_path / "clone")
    assert not (repo.parent / "shared").exists()
    out = subprocess.run([sys.executable, "-m", "mortgagellm", "config", "configs/cpu-demo.yaml"],
                         cwd=repo, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(repo)})
    assert out.returncode == 0, out.stderr
    inputs = [p for p in named_inputs(yaml.safe_load(out.stdout)) if "://" not in p]
    assert "data/cfpb-regulations" in inputs
    assert "data/routing-handwritten/test.jsonl" in inputs  # the hand-written routing test set
    missing = [p for p in inputs if not (repo / p).exists()]
    assert missing == [], f"cpu-demo names paths a clone does not have: {missing}"
    regulations = sorted(f.name for f in (repo / "data/cfpb-regulations").glob("*.xml"))
    assert regulations == ["reg-b-1002-2017-20417_20220101.xml", "reg-h-1008-2011-31730.xml",
                           "reg-x-1024-2017-21912.xml"]


def test_production_recipe_is_4_nodes_of_8_a100_zero3_bf16():
    recipe = load_recipe(ROOT / "configs/llama3-8b-a100.yaml")
    assert recipe.pretrain.scaling.num_workers == 32
    assert recipe.pretrain.deepspeed.zero_stage == 3
    assert recipe.pretrain.deepspeed.precision == "bf16"
    assert recipe.bootstrap.base_model.endswith("Meta-Llama-3.1-8B")


def test_dotted_overrides_are_typed_from_yaml(tmp_path):
    recipe = load_recipe(ROOT / "configs/cpu-demo.yaml",
                         ["pretrain.deepspeed.lr=3e-4", "bootstrap.preset=tiny",
                          "bootstrap.shape.hidden_size=32", "ray.include_dashboard=true"])
    assert recipe.pretrain.deepspeed.lr == pytest.approx(3e-4)
    assert recipe.bootstrap.preset == "tiny"
    assert recipe.bootstrap.shape.hidden_size == 32
    assert recipe.ray.include_dashboard is True


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_unknown_key_is_named_with_the_file_and_known_keys(tmp_path):
    path = write(tmp_path, "pretrain:\n  deepspeed:\n    zero_stag: 2\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    message = str(err.value)
    assert str(path) in message
    assert "pretrain.deepspeed.zero_stag: unknown key" in message
    assert "zero_stage" in message  # the known keys are listed


def test_bad_values_are_named(tmp_path):
    path = write(tmp_path, "pretrain:\n  deepspeed:\n    zero_stage: 5\nbootstrap:\n  lr: -1\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert "pretrain.deepspeed.zero_stage" in str(err.value) and "got 5" in str(err.value)
    assert "bootstrap.lr" in str(err.value)


def test_unknown_override_is_rejected():
    with pytest.raises(ConfigError, match="bootstrap.presett: unknown key"):
        load_recipe(ROOT / "configs/cpu-demo.yaml", ["bootstrap.presett=tiny"])


def test_override_into_a_scalar_is_rejected():
    with pytest.raises(ConfigError, match="run.seed is not a section"):
        load_recipe(ROOT / "configs/cpu-demo.yaml", ["run.seed.x=1"])


@pytest.mark.parametrize("text,match", [
    ("pretrain:\n  deepspeed:\n    offload_params: true\n    zero_stage: 2\n",
     "offload_params needs zero_stage 3"),
    ("bootstrap:\n  base_model: /models/base\n", "set both base_model and instruct_model"),
    ("- a\n- b\n", "a recipe is a mapping"),
    ("run: [unclosed\n", "not valid YAML"),
])
def test_inconsistent_recipes_are_rejected(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_recipe(write(tmp_path, text))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_old_pretrain_eval_docs_key_loads_into_domain_docs(tmp_path):
    old = write(tmp_path, "pretrain:\n  eval_docs: 7\n")
    assert load_recipe(old).pretrain.domain_docs == 7
    assert "eval_docs" not in load_recipe(old).pretrain.model_dump()
    # an override replaces the file's value under either name
    assert load_recipe(old, ["pretrain.domain_docs=12"]).pretrain.domain_docs == 12
    shipped = ROOT / "configs/cpu-demo.yaml"  # writes domain_docs
    assert load_recipe(shipped, ["pretrain.eval_docs=9"]).pretrain.domain_docs == 9
    # one file giving both names is ambiguous; the message lists the known keys
    both = write(tmp_path, "pretrain:\n  domain_docs: 8\n  eval_docs: 7\n")
    with pytest.raises(ConfigError, match=r"pretrain.eval_docs: unknown key .*domain_docs"):
        load_recipe(both)
