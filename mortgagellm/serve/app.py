"""build_app(args): the one entry point of the serving app, for `mortgagellm serve`, `serve run`,
`serve deploy` and the RayService (import path mortgagellm.serve.app:build_app).

Run: mortgagellm serve configs/cpu-demo.yaml
     serve run mortgagellm.serve.app:build_app config=configs/cpu-demo.yaml serve.port=8001

args: `config` (recipe YAML, required), `api_keys_file` (overrides serve.auth.keys_file), and any
dotted recipe override (`serve.router.mode=tier1`). Everything else comes from the recipe's
`serve` section: a Router (ingress) bound to StructuredExpert and ConversationalExpert.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from mortgagellm import routing
from mortgagellm.config import ExpertSettings, Recipe, load_recipe

log = logging.getLogger(__name__)
DEPLOYMENTS = {"structured": "StructuredExpert", "conversational": "ConversationalExpert"}
ROUTER = "Router"
IMPORT_PATH = "mortgagellm.serve.app:build_app"


def load(args: dict[str, Any]) -> Recipe:
    """The recipe named by args['config'] with the other args (but api_keys_file) as overrides."""
    if "config" not in args:
        raise ValueError("build_app needs args['config'], the recipe YAML")
    overrides = {k: v for k, v in args.items() if k not in ("config", "api_keys_file")}
    return load_recipe(args["config"], overrides)


def serve_dir(recipe: Recipe) -> Path:
    """<output_dir>/serve: registry, tier-1 cache, audit log and demo key by default."""
    return Path(recipe.run.output_dir) / "serve"


def audit_dir(recipe: Recipe) -> Path:
    """The audit log directory."""
    return Path(recipe.serve.audit.dir or serve_dir(recipe) / "audit")


def keys_file(recipe: Recipe, args: dict[str, Any]) -> Path:
    """Where the API-key hashes are read from."""
    return Path(args.get("api_keys_file") or recipe.serve.auth.keys_file
                or serve_dir(recipe) / "api_keys")


def api_keys(recipe: Recipe, args: dict[str, Any]) -> dict[str, str]:
    """{sha256: key id} from the keys file and environment; creates the demo key if asked.

    With no key at all the app still starts and refuses every request (fail closed), as a
    RayService whose key Secret has not been filled yet should.
    """
    from mortgagellm.serve import door

    auth, path = recipe.serve.auth, keys_file(recipe, args)
    keys = door.load_keys(str(path), auth.env_var)
    if not keys and auth.create_demo_key:
        secret, line = door.new_key("demo")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(line + "\n")
        fd = os.open(f"{path}.secret", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
        log.info("created API key 'demo'; the key is in %s.secret", path)
        keys = door.load_keys(str(path), auth.env_var)
    if auth.required and not keys:
        log.warning("no API keys in %s or $%s: every request will get 401", path, auth.env_var)
    return keys


EXPERT_STAGES = {"structured": "sft", "conversational": "dpo"}
"""The stage whose 'model' output each expert serves once that stage has run."""


def served_model(recipe: Recipe, expert: str) -> tuple[str, str]:
    """(version, model directory) the expert serves.

    A model the registry has not seen yet — the recipe's `model` directory, else the expert's
    own stage output (sft -> structured, dpo -> conversational) — is registered and deployed
    here, so a freshly trained expert goes live on the next start. Otherwise the registry's
    current version wins (a rollback stays rolled back). Before any expert stage has run, the
    bootstrap instruct model stands in for both experts.
    """
    from mortgagellm import manifest, registry
    from mortgagellm.manifest import require_manifest, stage_dir

    path = registry.registry_path(recipe)
    wanted, stage = getattr(recipe.serve, expert).model, EXPERT_STAGES[expert]
    trained = None if wanted else manifest.read(str(stage_dir(recipe, stage)))
    if wanted and Path(wanted).is_dir():
        candidate = (manifest.sha256_path(wanted), wanted, f"serve.{expert}.model", {})
    elif trained is not None:
        entry = trained.outputs["model"]
        metrics = {k: v for k, v in trained.metrics.items() if k != "history"}
        candidate = (entry["sha256"], entry["uri"], f"{stage}:model", metrics)
    else:
        candidate = None
    if candidate and candidate[0] not in registry.read(path)["versions"]:
        version, model_dir, source, metrics = candidate
        registry.register(path, model_dir, source=source, metrics=metrics, version=version)
        registry.deploy(path, expert, version)
        log.info("%s expert: deployed %s (%s) from %s", expert, version[:12], source, model_dir)
    found = registry.current(path, expert)
    if found is None:
        if candidate:  # registered already (e.g. the other expert serves the same directory)
            version = candidate[0]
        elif wanted:
            version = registry.resolve(path, wanted)
        else:
            boot = require_manifest(recipe, "bootstrap")
            entry = boot.outputs["instruct"]
            version = registry.register(path, entry["uri"], source="bootstrap:instruct",
                                        metrics=boot.metrics.get("instruct", {}),
                                        version=entry["sha256"])
            log.warning("%s expert: no %s output in %s yet; serving the bootstrap instruct "
                        "model in its place", expert, stage, stage_dir(recipe, stage))
        registry.deploy(path, expert, version)
        found = registry.current(path, expert)
    return found[0], found[1]["path"]


def deployment_options(recipe: Recipe) -> dict[str, dict[str, Any]]:
    """{deployment name: its options} from the recipe: resources, autoscaling, queue limits and
    health checks. build_app applies them in code, serve_config writes them out."""
    cfg = recipe.serve
    options = {ROUTER: {
        "autoscaling_config": cfg.router.autoscaling.model_dump(),
        "max_ongoing_requests": cfg.router.max_ongoing_requests,
        "max_queued_requests": cfg.router.max_queued_requests,
        "ray_actor_options": {"num_cpus": cfg.router.num_cpus}}}
    for expert, name in DEPLOYMENTS.items():
        s: ExpertSettings = getattr(cfg, expert)
        options[name] = {
            "autoscaling_config": s.autoscaling.model_dump(),
            "max_ongoing_requests": s.max_ongoing_requests,
            "max_queued_requests": s.max_queued_requests,
            "health_check_period_s": s.health_check_period_s,
            "health_check_timeout_s": s.health_check_timeout_s,
            "ray_actor_options": {"num_cpus": s.num_cpus, "num_gpus": s.num_gpus}}
    return options


def user_config(recipe: Recipe, expert: str) -> dict[str, str]:
    """An expert's user_config: the model version it serves and where its weights are."""
    version, model_dir = served_model(recipe, expert)
    return {"model": model_dir, "version": version}


def serve_config(recipe: Recipe, args: dict[str, Any], versions: bool = True) -> dict[str, Any]:
    """The app as a Serve config (ServeDeploySchema, what `serve build` writes).

    Deploying it declaratively is what makes deploy / rollback happen in place: Serve keeps the
    replicas when import path and args are unchanged and only the experts' user_config differs.
    versions=False leaves user_config out (the file kept in configs/: versions are per run).
    """
    cfg = recipe.serve
    options = deployment_options(recipe)
    if versions:
        for expert, name in DEPLOYMENTS.items():
            options[name]["user_config"] = user_config(recipe, expert)
    return {
        "http_options": {"host": cfg.host, "port": cfg.port},
        "applications": [{
            "name": cfg.app_name, "route_prefix": cfg.route_prefix, "import_path": IMPORT_PATH,
            "args": args, "deployments": [{"name": n} | o for n, o in options.items()]}],
    }


def build_app(args: dict[str, Any]) -> Any:
    """The serving Application: Router(StructuredExpert, ConversationalExpert)."""
    from mortgagellm.serve.experts import Expert
    from mortgagellm.serve.router import Router

    recipe = load(args)
    cfg = recipe.serve
    options = deployment_options(recipe)
    experts = {}
    for expert, name in DEPLOYMENTS.items():
        s: ExpertSettings = getattr(cfg, expert)
        deployment = Expert.options(name=name, user_config=user_config(recipe, expert),
                                    **options[name])
        experts[expert] = deployment.bind(expert, s.threads, s.max_batch_size,
                                          s.batch_wait_timeout_s, cfg.limits.max_prompt_tokens)
    router = Router.options(name=ROUTER, **options[ROUTER])
    return router.bind(experts["structured"], experts["conversational"],
                       cfg.model_dump(mode="json"), str(routing.tier1_file(recipe).absolute()),
                       api_keys(recipe, args), str(audit_dir(recipe).absolute()))


def render(config: str) -> str:
    """The kept Serve config of a recipe: YAML with a header saying how it was made."""
    import yaml

    recipe = load({"config": config})
    header = (f"# Run: serve deploy mortgagellm/serve/serve_config.yaml   (from the repository "
              f"root)\n# Generated by `python -m mortgagellm.serve.app {config}`; "
              "tests/serve/test_serve_config.py\n# fails when it differs. Expert model versions "
              "(user_config) are added per run by\n# `mortgagellm serve` / `deploy` / "
              "`rollback` from the model registry.\n")
    return header + yaml.safe_dump(serve_config(recipe, {"config": config}, versions=False),
                                   sort_keys=False)


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m mortgagellm.serve.app RECIPE > "
                         "mortgagellm/serve/serve_config.yaml")
    print(render(sys.argv[1]), end="")
