"""mortgagellm/cluster/launcher.yaml, the VM cluster (`ray up`): Ray's own launcher schema after
Ray's defaults, plus what this project needs from it: a head that schedules no work, A100 workers
the production recipe fits, this package installed on every node and token auth on."""

import copy

import jsonschema
import pytest
import yaml

from mortgagellm.config import load_recipe
from tests.k8s import manifests as m

LAUNCHER = m.ROOT / "mortgagellm/cluster/launcher.yaml"


def ray_up_errors(config: dict) -> list[str]:
    """What `ray up` checks before it starts a node: its defaults filled in, then its schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        validate_config(prepare_config(copy.deepcopy(config)))
    except (jsonschema.ValidationError, ValueError) as err:
        return [str(err).splitlines()[0]]
    return []


def launcher_errors(config: dict, scaling) -> list[str]:
    """Node types: min <= max, the head has no CPUs for tasks, the recipe fits one worker type."""
    types = config["available_node_types"]
    errors = [f"{name}: min_workers {t['min_workers']} > max_workers {t['max_workers']}"
              for name, t in types.items() if t.get("min_workers", 0) > t.get("max_workers", 0)]
    if types[config["head_node_type"]]["resources"].get("CPU") != 0:
        errors.append("head: resources.CPU must be 0 so that no task runs on the head")
    need_cpus = scaling.workers_per_node * scaling.cpus_per_worker
    if not any(t.get("max_workers", 0) >= scaling.num_nodes and
               t["resources"].get("GPU", 0) >= scaling.workers_per_node and
               t["resources"].get("CPU", 0) >= need_cpus for t in types.values()):
        errors.append(f"no node type holds {scaling.num_nodes} x {scaling.workers_per_node} "
                      f"GPU workers x {scaling.cpus_per_worker:g} CPUs")
    return errors


@pytest.fixture
def config():
    return yaml.safe_load(LAUNCHER.read_text())


@pytest.fixture(scope="module")
def scaling():
    return load_recipe(m.ROOT / "configs/llama3-8b-a100.yaml").pretrain.scaling


def test_ray_up_accepts_it(config):
    assert ray_up_errors(config) == []


def test_head_schedules_nothing_and_the_recipe_fits_the_a100_nodes(config, scaling):
    assert launcher_errors(config, scaling) == []
    assert config["available_node_types"]["a100"]["resources"]["GPU"] == 8


def test_every_node_installs_this_package_and_starts_ray_with_token_auth(config):
    assert config["file_mounts"]["/home/ubuntu/mortgagellm"] == "."
    assert {".venv", "runs", ".git"} <= set(config["rsync_exclude"])
    setup = "\n".join(config["setup_commands"])
    assert "pip install -q -c ~/mortgagellm/constraints/cpu.txt -e ~/mortgagellm" in setup
    assert setup.index("torch==") < setup.index("deepspeed") < setup.index("-e ~/mortgagellm")
    head = " ".join(config["head_start_ray_commands"])
    assert "--head" in head and "--num-cpus=0" in head and "--dashboard-host=127.0.0.1" in head
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        start = [c for c in commands if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=" in c for c in start)


def test_launcher_mistakes_are_reported(config, scaling):
    typo = copy.deepcopy(config)
    typo["available_node_types"]["a100"]["max_worker"] = 4
    assert ray_up_errors(typo) == [("Additional properties are not allowed ('max_worker' was "
                                    "unexpected)")]
    config["available_node_types"]["a100"].update(min_workers=5, max_workers=3)
    config["available_node_types"]["head"]["resources"] = {"CPU": 16}
    assert launcher_errors(config, scaling) == [
        "a100: min_workers 5 > max_workers 3",
        "head: resources.CPU must be 0 so that no task runs on the head",
        "no node type holds 4 x 8 GPU workers x 8 CPUs"]
