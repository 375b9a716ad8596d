"""The kept Serve config (mortgagellm/serve/serve_config.yaml): generated from the cpu-demo
recipe, valid for Serve, its import path imports; the recipe's serve options reach it."""

import importlib
from pathlib import Path

import yaml

from mortgagellm.config import load_recipe
from mortgagellm.serve import app

ROOT = Path(__file__).resolve().parents[2]
KEPT = ROOT / "mortgagellm/serve/serve_config.yaml"


def test_kept_file_is_what_the_generator_writes():
    assert KEPT.read_text() == app.render("configs/cpu-demo.yaml"), (
        "regenerate: python -m mortgagellm.serve.app configs/cpu-demo.yaml > " + str(KEPT))


def test_kept_file_validates_as_a_serve_config_and_imports():
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import ServeDeploySchema

    data = yaml.safe_load(KEPT.read_text())
    schema = ServeDeploySchema.model_validate(data)
    (application,) = schema.applications
    names = [d.name for d in application.deployments]
    assert names == ["Router", "StructuredExpert", "ConversationalExpert", "RateLimits"]
    for deployment in data["applications"][0]["deployments"][:3]:
        AutoscalingConfig(**deployment["autoscaling_config"])  # catches min > max
    assert data["applications"][0]["deployments"][3]["num_replicas"] == 1  # the shared counts
    module, _, attribute = application.import_path.partition(":")
    assert callable(getattr(importlib.import_module(module), attribute))
    assert data["http_options"]["host"] == "127.0.0.1"


def test_every_option_comes_from_the_recipe():
    recipe = load_recipe(ROOT / "configs/cpu-demo.yaml", ["serve.structured.max_queued_requests=3",
                                                          "serve.conversational.num_gpus=0.5"])
    options = app.deployment_options(recipe)
    assert options["StructuredExpert"]["max_queued_requests"] == 3
    assert options["ConversationalExpert"]["ray_actor_options"] == {"num_cpus": 0.75,
                                                                    "num_gpus": 0.5}
    assert options["Router"]["autoscaling_config"]["target_ongoing_requests"] == 64


def test_production_recipe_matches_the_rayservice_placement():
    """The a100 recipe's serve section agrees with k8s/serve_config.py's a100 variant."""
    recipe = load_recipe(ROOT / "configs/llama3-8b-a100.yaml")
    for expert in ("structured", "conversational"):
        s = getattr(recipe.serve, expert)
        assert (s.num_gpus, s.max_ongoing_requests, s.autoscaling.max_replicas) == (1, 32, 4)
        assert s.autoscaling.target_ongoing_requests == 8
    assert recipe.serve.auth.keys_file == "/etc/mortgagellm/api-keys/api-keys"


def test_serves_proxy_gives_up_only_after_the_apps_own_deadline():
    """The proxy's timeout is a backstop: the app's JSON 504 (or a stream's error event) must
    reach the client before the proxy's plain-text 408 or its cut."""
    from ray.serve.config import HTTPOptions

    recipe = load_recipe(ROOT / "configs/cpu-demo.yaml", ["serve.router.request_timeout_s=20"])
    http = app.serve_config(recipe, {}, versions=False)["http_options"]
    assert http["request_timeout_s"] > recipe.serve.router.request_timeout_s == 20
    assert HTTPOptions(**http).request_timeout_s == http["request_timeout_s"]
