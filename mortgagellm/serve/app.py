"""build_app(args): the one entry point of the serving app, for `mortgagellm serve`, `serve run`,
`serve deploy` and the RayService (import path mortgagellm.serve.app:build_app).

Run: mortgagellm serve configs/cpu-demo.yaml
     serve run mortgagellm.serve.app:build_app config=configs/cpu-demo.yaml serve.port=8001

args: `config` (recipe YAML, required), `api_keys_file` (overrides serve.auth.keys_file),
`model_versions` (SERVED_ARG, written by serve_config; not read) and any dotted recipe override
(`serve.router.mode=tier1`). Everything else comes from the recipe's `serve` section: a Router
(ingress) bound to StructuredExpert and ConversationalExpert (with serve.topology adapters: to
AdapterExperts, both experts as LoRA adapters on one model), and to RateLimits (the per-key
counts all router replicas share) unless serve.limits.storage_uri names a store of its own. An
expert of engine vllm is a VllmExpert in front of an LLMServer deployment of its own
(StructuredLLM, ConversationalLLM, AdapterLLM: serve/llm.py).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from mortgagellm import routing
from mortgagellm.config import AuditSettings, ExpertSettings, Recipe, load_recipe

log = logging.getLogger(__name__)
DEPLOYMENTS = {"structured": "StructuredExpert", "conversational": "ConversationalExpert"}
ADAPTERS = "AdapterExperts"
"""serve.topology adapters: the one deployment serving both experts as adapters."""
LLM_DEPLOYMENTS = {"StructuredExpert": "StructuredLLM", "ConversationalExpert": "ConversationalLLM",
                   ADAPTERS: "AdapterLLM"}
"""Engine vllm: the LLMServer deployment (Ray Serve LLM) behind each expert deployment."""
SERVED_ARG = "model_versions"
"""The build arg naming the model versions the LLMServers of engine vllm load. build_app does not
read it (the registry says what is served): it is there so that a version switch changes the
app's args, which makes Serve rebuild the app. vLLM loads weights only when its engine starts,
so an LLMServer cannot be reconfigured in place as Expert is; Serve then replaces every replica
of the app (a rolling update)."""
ROUTER = "Router"
RATE_LIMITS = "RateLimits"
IMPORT_PATH = "mortgagellm.serve.app:build_app"
PROXY_TIMEOUT_MARGIN_S = 30.0
"""Serve's proxy gives up on a request (a plain-text 408, or a stream cut without [DONE]) this
long after the app's own deadline, serve.router.request_timeout_s, whose JSON 504 or error event
therefore reaches the client first. The proxy's timer also counts the wait in the queues before
the router, so the margin is a backstop for a router that cannot answer at all, not a second
limit. A client can lift the proxy's limit (header x-request-timeout-seconds); not the app's."""


def load(args: dict[str, Any]) -> Recipe:
    """The recipe named by args['config'] with the other args (but api_keys_file and SERVED_ARG)
    as overrides."""
    if "config" not in args:
        raise ValueError("build_app needs args['config'], the recipe YAML")
    overrides = {k: v for k, v in args.items()
                 if k not in ("config", "api_keys_file", SERVED_ARG)}
    return load_recipe(args["config"], overrides)


def serve_dir(recipe: Recipe) -> Path:
    """<output_dir>/serve: registry, tier-1 cache, audit log and demo key by default."""
    return recipe.run.local_dir / "serve"


def audit_dir(recipe: Recipe) -> Path:
    """The audit log directory."""
    return Path(recipe.serve.audit.dir or serve_dir(recipe) / "audit")


def audit_settings(recipe: Recipe) -> AuditSettings:
    """serve.audit with its key file made absolute (default <output_dir>/serve/audit.key,
    beside the log directory, not in it), as the router replicas and `deploy` read it."""
    a = recipe.serve.audit
    return a.model_copy(update={"key_file": str(Path(a.key_file or serve_dir(recipe) /
                                                     "audit.key").absolute())})


def keys_file(recipe: Recipe, args: dict[str, Any]) -> Path:
    """Where the API-key hashes are read from."""
    return Path(args.get("api_keys_file") or recipe.serve.auth.keys_file
                or serve_dir(recipe) / "api_keys")


def api_keys(recipe: Recipe, args: dict[str, Any]) -> dict[str, Any]:
    """{sha256: door.ApiKey} from the keys file and environment (read only; `mortgagellm serve`
    creates the demo key before the build when the recipe asks). A bad entry fails the build,
    naming the file and line; the Router replicas then re-read the file when it changes.

    With no key at all the app still starts and refuses every request (fail closed), as a
    RayService whose key Secret has not been filled yet should.
    """
    from mortgagellm.serve import door

    auth, path = recipe.serve.auth, keys_file(recipe, args)
    keys = door.load_keys(str(path), auth.env_var)
    if auth.required and not keys:
        log.warning("no API keys in %s or $%s: every request will get 401", path, auth.env_var)
    return keys


def served_model(recipe: Recipe, expert: str) -> tuple[str, str]:
    """(version, model directory) the expert serves: the registry's current version; before
    anything was deployed, what registry.candidate finds (read, not registered: `mortgagellm
    serve` and `deploy` register and deploy first, a RayService reads what they left). Under
    serve.topology adapters: the expert's LoRA adapter."""
    return served(recipe, expert)[:2]


def served(recipe: Recipe, expert: str) -> tuple[str, str, dict[str, Any]]:
    """served_model with the version's metrics (the registry's, or the stage manifest's)."""
    from mortgagellm import registry

    found = registry.current(registry.registry_path(recipe), expert)
    if found is not None:
        return found[0], found[1]["path"], found[1]["metrics"]
    version, model_dir, source, metrics = registry.candidate(recipe, expert, fallback=True)
    log.warning("%s expert: nothing deployed in %s yet; serving %s (%s) unregistered",
                expert, registry.registry_path(recipe), model_dir, source)
    return version, model_dir, metrics


def adapters_config(recipe: Recipe) -> dict[str, Any]:
    """AdapterExperts' user_config: the base model and each expert's adapter, with versions.
    Each served version must be a LoRA adapter trained on this base (the stages record the
    hash of the model an adapter was trained on, `adapter_base`): an adapter only fits that
    model, and a full-parameter expert has no adapter at all."""
    from mortgagellm import registry

    base_version, base_dir = registry.adapter_base(recipe)
    adapters = {}
    for expert, stage in registry.EXPERT_STAGES.items():
        version, model_dir, metrics = served(recipe, expert)
        if not (Path(model_dir) / "adapter_config.json").is_file():
            raise ValueError(
                f"serve.topology adapters: the {expert} expert's version {version[:12]} "
                f"({model_dir}) is a full model, not a LoRA adapter (no adapter_config.json). "
                f"Set {stage}.method: lora and rerun `mortgagellm {stage}`, deploy its adapter, "
                "or use serve.topology: separate")
        if metrics.get("adapter_base") not in (None, base_version):
            raise ValueError(
                f"serve.topology adapters: the {expert} adapter {version[:12]} was trained on "
                f"model {metrics['adapter_base'][:12]}, not on the base served here ({base_dir}, "
                f"{base_version[:12]}); an adapter fits only the model it was trained on. Rerun "
                f"`mortgagellm {stage}` on this base (dpo.sft.epochs > 0 trains DPO's adapter on "
                "its SFT model: set it to 0), set serve.adapters.model to its base, or use "
                "serve.topology: separate")
        adapters[expert] = weights(recipe, version, model_dir)
    return weights(recipe, base_version, base_dir) | {"adapters": adapters}


def expert_deployments(recipe: Recipe) -> dict[str, ExpertSettings]:
    """{deployment name: its settings}: the two experts (topology separate) or AdapterExperts."""
    cfg = recipe.serve
    if cfg.topology == "adapters":
        return {ADAPTERS: cfg.adapters}
    return {name: getattr(cfg, expert) for expert, name in DEPLOYMENTS.items()}


def deployment_options(recipe: Recipe) -> dict[str, dict[str, Any]]:
    """{deployment name: its options} from the recipe: resources, autoscaling, queue limits and
    health checks. build_app applies them in code; serve_config writes them out, for
    `mortgagellm serve` and for the RayServices (k8s/serve_config.py): they exist only here.
    An expert of engine vllm has two: its VllmExpert (proxy_num_cpus, placed by
    accelerator_type) and its LLMServer (LLM_DEPLOYMENTS; no actor options here)."""
    cfg = recipe.serve
    # The router's queue is kept in the replica (serve/gate.py), so it can answer overflow in
    # JSON: Serve lets ongoing + queued requests in, and its own queue is only a backstop.
    options = {ROUTER: {
        "autoscaling_config": cfg.router.autoscaling.model_dump(),
        "max_ongoing_requests": cfg.router.max_ongoing_requests + cfg.router.max_queued_requests,
        "max_queued_requests": cfg.router.max_queued_requests,
        "ray_actor_options": {"num_cpus": cfg.router.num_cpus}
        | ({"resources": cfg.router.resources} if cfg.router.resources else {})}}
    for name, s in expert_deployments(recipe).items():
        options[name] = {
            "autoscaling_config": s.autoscaling.model_dump(),
            "max_ongoing_requests": s.max_ongoing_requests,
            "max_queued_requests": s.max_queued_requests,
            "health_check_period_s": s.health_check_period_s,
            "health_check_timeout_s": s.health_check_timeout_s}
        if s.engine == "vllm":
            # The LLMServer's actor options are left to its LLMConfig (llm.llm_config): a Serve
            # config's ray_actor_options would replace them whole, with the runtime_env it
            # builds, and its GPUs are its engine's placement bundles, not actor options.
            options[LLM_DEPLOYMENTS[name]] = copy.deepcopy(options[name])  # no YAML anchors
        actor = ({"num_cpus": s.vllm.proxy_num_cpus} if s.engine == "vllm" else
                 {"num_cpus": s.num_cpus, "num_gpus": s.num_gpus})
        options[name]["ray_actor_options"] = actor | (
            {"accelerator_type": s.accelerator_type} if s.accelerator_type else {})
    if cfg.limits.storage_uri is None:
        # Exactly one replica: it is the shared state. Each admission is a few dict operations,
        # so it needs no CPU of its own; it runs where routers run (their resources).
        options[RATE_LIMITS] = {
            "num_replicas": 1, "max_ongoing_requests": 1024,
            "ray_actor_options": {"num_cpus": 0}
            | ({"resources": dict(cfg.router.resources)} if cfg.router.resources else {})}
    return options


def user_config(recipe: Recipe, expert: str) -> dict[str, Any]:
    """An expert's user_config: the model version it serves and where its weights are."""
    return weights(recipe, *served_model(recipe, expert))


def _lora(recipe: Recipe) -> dict[str, Any]:
    """serve.adapters.vllm.lora as LLMConfig.lora_config: adapters are loaded from where the
    registry publishes them (registry.published_dir) unless the recipe names a path."""
    from mortgagellm import registry

    lora = recipe.serve.adapters.vllm.lora.model_dump()
    lora["dynamic_lora_loading_path"] = (lora["dynamic_lora_loading_path"]
                                         or registry.published_dir(recipe))
    return lora


def weights(recipe: Recipe, version: str, model_dir: str) -> dict[str, Any]:
    """Where a replica finds a version's weights (registry.node_weights): its directory here
    and, with a remote output_dir, where it is published (the registry's copy, else the stage
    output's) with the run's storage as plain data, so a replica on a node without this
    node's files fetches it into that node's cache."""
    from mortgagellm import registry
    from mortgagellm.cluster import storage
    from mortgagellm.manifest import portable

    found: dict[str, Any] = {"model": model_dir, "version": version}
    if not storage.is_remote(recipe.run.output_dir):
        return found
    entry = registry.read(registry.registry_path(recipe))["versions"].get(version, {})
    uri = entry.get("uri") or portable(recipe, {"uri": model_dir, "sha256": version})["uri"]
    if not storage.is_remote(uri):  # a directory given by path: only a shared volume has it
        return found
    return found | {"uri": uri, "run": recipe.run.for_nodes()}


def serve_config(recipe: Recipe, args: dict[str, Any], versions: bool = True) -> dict[str, Any]:
    """The app as a Serve config (ServeDeploySchema, what `serve build` writes).

    Deploying it declaratively is what makes deploy / rollback happen in place: Serve keeps the
    replicas when import path and args are unchanged and only the experts' user_config differs.
    versions=False leaves user_config out (the file kept in configs/: versions are per run).
    """
    cfg = recipe.serve
    options = deployment_options(recipe)
    loaded = {}  # engine vllm: the model version each LLMServer loads (SERVED_ARG)
    if versions and cfg.topology == "adapters":
        options[ADAPTERS]["user_config"] = adapters_config(recipe)
        if cfg.adapters.engine == "vllm":  # a new adapter is a new model id: no rebuild
            loaded["adapters"] = options[ADAPTERS]["user_config"]["version"]
    elif versions:
        for expert, name in DEPLOYMENTS.items():
            options[name]["user_config"] = user_config(recipe, expert)
            if getattr(cfg, expert).engine == "vllm":
                loaded[expert] = options[name]["user_config"]["version"]
    args = args | ({SERVED_ARG: loaded} if loaded else {})
    return {
        "http_options": {"host": cfg.host, "port": cfg.port, "request_timeout_s":
                         cfg.router.request_timeout_s + PROXY_TIMEOUT_MARGIN_S},
        "applications": [{
            "name": cfg.app_name, "route_prefix": cfg.route_prefix, "import_path": IMPORT_PATH,
            "args": args, "deployments": [{"name": n} | o for n, o in options.items()]}],
    }


def build_app(args: dict[str, Any]) -> Any:
    """The serving Application: Router(StructuredExpert, ConversationalExpert, RateLimits or
    None); with serve.topology adapters, AdapterExperts in both experts' places. It only
    reads: the recipe, the registry (or the stage outputs, before any deploy), the corpus
    stage's tier-1 router and the key file (the Router re-reads it). Nothing is registered,
    deployed, trained or written here."""
    from mortgagellm.serve import door, llm
    from mortgagellm.serve.experts import Expert
    from mortgagellm.serve.ratelimit import RateLimits
    from mortgagellm.serve.router import Router

    recipe = load(args)
    cfg = recipe.serve
    options = deployment_options(recipe)
    experts = {}
    if cfg.topology == "adapters" and cfg.adapters.engine == "vllm":
        s = cfg.adapters
        experts = dict.fromkeys(DEPLOYMENTS, llm.bind(
            ADAPTERS, LLM_DEPLOYMENTS[ADAPTERS], "adapters", s, adapters_config(recipe), options,
            cfg.limits.max_prompt_tokens, {e: getattr(cfg, e).ground for e in DEPLOYMENTS},
            {e: getattr(cfg, e).flag_unsupported for e in DEPLOYMENTS},
            _lora(recipe)))
    elif cfg.topology == "adapters":  # one deployment in both places; requests name an adapter
        s = cfg.adapters
        deployment = Expert.options(name=ADAPTERS, user_config=adapters_config(recipe),
                                    **options[ADAPTERS])
        experts = dict.fromkeys(DEPLOYMENTS, deployment.bind(
            "adapters", s.threads, s.max_batch_size, s.batch_wait_timeout_s,
            cfg.limits.max_prompt_tokens, s.health_check_timeout_s, s.engine,
            s.kv_cache.model_dump(), {e: getattr(cfg, e).ground for e in DEPLOYMENTS},
            {e: getattr(cfg, e).flag_unsupported for e in DEPLOYMENTS}))
    else:
        for expert, name in DEPLOYMENTS.items():
            s = getattr(cfg, expert)
            if s.engine == "vllm":
                experts[expert] = llm.bind(
                    name, LLM_DEPLOYMENTS[name], expert, s, user_config(recipe, expert), options,
                    cfg.limits.max_prompt_tokens, s.ground, s.flag_unsupported)
                continue
            deployment = Expert.options(name=name, user_config=user_config(recipe, expert),
                                        **options[name])
            experts[expert] = deployment.bind(
                expert, s.threads, s.max_batch_size, s.batch_wait_timeout_s,
                cfg.limits.max_prompt_tokens, s.health_check_timeout_s, s.engine,
                s.kv_cache.model_dump(), s.ground, s.flag_unsupported)
    shared = (RateLimits.options(name=RATE_LIMITS, **options[RATE_LIMITS]).bind(
        cfg.limits.strategy) if RATE_LIMITS in options else None)
    api_keys(recipe, args)  # read now, so a bad keys file fails the build and names its line
    router = Router.options(name=ROUTER, **options[ROUTER])
    settings = cfg.model_copy(update={"audit": audit_settings(recipe)}).model_dump(mode="json")
    return router.bind(experts["structured"], experts["conversational"], shared, settings,
                       str(routing.tier1_path(recipe).absolute()),
                       str(keys_file(recipe, args).absolute()), door.env_keys(cfg.auth.env_var),
                       str(audit_dir(recipe).absolute()))


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
