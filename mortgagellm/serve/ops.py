"""What the serve, deploy and rollback commands do: start the app on Ray, switch an expert's model
version in place, and leave a record of every switch in the audit log.

Run: mortgagellm serve configs/cpu-demo.yaml [--demo]
     mortgagellm deploy configs/cpu-demo.yaml structured <version | model dir>
     mortgagellm rollback configs/cpu-demo.yaml structured
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from mortgagellm import registry
from mortgagellm.config import Recipe, load_recipe
from mortgagellm.serve import app as serve_app

log = logging.getLogger(__name__)
CLUSTER_FILE = "cluster.json"
def app_args(config: str, overrides: list[str]) -> dict[str, str]:
    """build_app's args from the CLI: the recipe and its dotted overrides, with every path
    absolute (the app is built by the Serve controller, whose working directory may differ)."""
    args = {"config": str(Path(config).absolute())} | dict(o.split("=", 1) for o in overrides)
    run = load_recipe(config, overrides).run
    if "://" not in run.output_dir:
        args["run.output_dir"] = str(Path(run.output_dir).absolute())
    else:  # the cache holding the fetched outputs, registry and keys, wherever the app builds
        args["run.cache_dir"] = str(run.local_dir)
    return args


def start(args: dict[str, str], timeout_s: float = 300.0) -> str:
    """Deploy (or update) the app on the connected Ray cluster from its Serve config; returns
    the base URL once it runs.

    Declarative on purpose: when only an expert's user_config changed (deploy / rollback) Serve
    reconfigures the running replicas in place; serve.run would replace them all.
    """
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    recipe = serve_app.load(args)
    prepare(recipe, args)
    config = serve_app.serve_config(recipe, args)
    serve.start(http_options=config["http_options"])
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))
    wait_running(recipe.serve.app_name, timeout_s)
    cfg = recipe.serve
    return f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"


def prepare(recipe: Recipe, args: dict[str, str]) -> None:
    """What the commands do before the (read-only) build: bring the registry up to date with
    the stages' models, and create the demo API key when the recipe asks and none exists."""
    from mortgagellm.serve import door

    registry.sync(recipe)
    auth, path = recipe.serve.auth, serve_app.keys_file(recipe, args)
    if auth.create_demo_key and not door.load_keys(str(path), auth.env_var):
        secret, line = door.new_key("demo")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(line + "\n")
        write_secret(Path(f"{path}.secret"), secret)
        log.info("created API key 'demo'; the key is in %s.secret", path)
    settings = serve_app.audit_settings(recipe)
    if settings.create_key and not os.environ.get(settings.key_env) and \
            not Path(settings.key_file).is_file():
        import secrets

        write_secret(Path(settings.key_file), secrets.token_hex(32))
        log.info("created the audit HMAC key %s", settings.key_file)


def write_secret(path: Path, secret: str) -> None:
    """Write a secret readable by its owner only (mode 0600 from the start)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")


def wait_running(name: str, timeout_s: float) -> None:
    """Block until the app is RUNNING; fail with Serve's message if its deploy failed."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        app = serve.status().applications.get(name)
        if app is not None and app.status == "RUNNING" and all(
                d.status == "HEALTHY" for d in app.deployments.values()):
            return
        if app is not None and app.status == "DEPLOY_FAILED":
            raise RuntimeError(f"serve app {name} failed to deploy: {app.message}")
        time.sleep(0.5)
    raise TimeoutError(f"serve app {name} not running after {timeout_s} s")


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Point this process's stdout and stderr (file descriptors 1 and 2, so Ray's C++ and
    worker log lines too) at `path` for the block, then restore them."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def serve(recipe: Recipe, config: str, overrides: list[str], demo: bool = False) -> int:
    """`mortgagellm serve`: start Ray as the recipe says, serve the app, wait for Ctrl-C. With
    `demo`, ask it held-out questions and stop: Ray's and Serve's own lines (replica starts,
    request logs, shutdown) go to <output_dir>/serve/demo.log, and the terminal shows the
    answers and the tally only."""
    if not demo:
        return _serve(recipe, config, overrides, None)
    lines: list[str] = []
    log_file = serve_app.serve_dir(recipe) / "demo.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    print(f"mortgagellm serve --demo: starting the app and asking it held-out questions "
          f"(Ray and Serve log to {log_file})", flush=True)
    try:
        with output_to(log_file):
            return _serve(recipe, config, overrides, lines)
    finally:
        print("\n".join(lines), flush=True)


def _serve(recipe: Recipe, config: str, overrides: list[str], lines: list[str] | None) -> int:
    """serve()'s work; with `lines` (the demo) its answers and tally are added to them."""
    import ray

    from mortgagellm.cluster.runtime import init_ray

    context = init_ray(recipe.ray, recipe.run.local_dir)
    url = start(app_args(config, overrides))
    state = serve_app.serve_dir(recipe) / CLUSTER_FILE
    state.write_text(json.dumps({"address": context.address_info["gcs_address"],
                                 "token": os.environ.get("RAY_AUTH_TOKEN_PATH"), "url": url}))
    key = Path(f"{serve_app.keys_file(recipe, {})}.secret")
    print(f"mortgagellm: OpenAI API on {url}/v1 (Ctrl-C stops)"
          + (f"; the demo API key is in {key}" if key.is_file() else ""), flush=True)
    try:
        if lines is not None:
            if not key.is_file():
                raise SystemExit(f"--demo needs the demo key {key}: set serve.auth.create_demo_key")
            from mortgagellm.serve import demo as serve_demo

            lines += serve_demo.run(url, key.read_text().strip(), recipe)
            return 0
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        from ray import serve as ray_serve

        # Serve's and Ray's shutdown chatter (controller logs, replicas killed after their
        # graceful timeout) goes to a file, so the demo's tally is the last thing on screen.
        with output_to(serve_app.serve_dir(recipe) / "shutdown.log"):
            ray_serve.shutdown()
            ray.shutdown()
        state.unlink(missing_ok=True)


def switch(recipe: Recipe, config: str, overrides: list[str], expert: str, action: str,
           change: tuple[str | None, str]) -> int:
    """Audit a version switch and apply it to the running app, if one runs."""
    from mortgagellm.serve import audit

    previous, version = change
    log_ = audit.open_log(serve_app.audit_settings(recipe), serve_app.audit_dir(recipe), "ops")
    log_.append({"type": action, "expert": expert, "from": previous, "to": version,
                 "user": getpass.getuser(),
                 "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    log_.close()
    print(f"{action}: {expert} {str(previous)[:12]} -> {version[:12]}")
    if connect(recipe):
        start(app_args(config, overrides))
        rebuilt = recipe.serve.topology == "separate" and \
            getattr(recipe.serve, expert).engine == "vllm"  # app.SERVED_ARG
        print("the running app now serves it (" + ("app rebuilt: vLLM loads a model when its "
              "engine starts, so Serve replaced the replicas" if rebuilt else
              "replicas reconfigured in place") + ")")
    else:
        print("no running app found; the next `mortgagellm serve` serves it")
    return 0


def deploy(recipe: Recipe, config: str, overrides: list[str], expert: str, ref: str) -> int:
    """`mortgagellm deploy`: register a directory if given one, make it current, apply."""
    path = registry.registry_path(recipe)
    if Path(ref).is_dir():
        ref = registry.register(path, ref, source="mortgagellm deploy",
                                publish=registry.published_dir(recipe))
    return switch(recipe, config, overrides, expert, "deploy",
                  registry.deploy(path, expert, ref))


def rollback(recipe: Recipe, config: str, overrides: list[str], expert: str) -> int:
    """`mortgagellm rollback`: back to the version deployed before the current one."""
    change = registry.rollback(registry.registry_path(recipe), expert)
    return switch(recipe, config, overrides, expert, "rollback", change)


def connect(recipe: Recipe) -> bool:
    """Join the cluster the app runs on: the one this process is connected to already, the one
    `mortgagellm serve` started (address and token in <output_dir>/serve/cluster.json), or the
    recipe's address. False when there is none."""
    import ray

    from mortgagellm.cluster.runtime import init_ray

    if ray.is_initialized():
        return True
    state = serve_app.serve_dir(recipe) / CLUSTER_FILE
    if recipe.ray.address != "local":
        init_ray(recipe.ray, recipe.run.local_dir)
        return True
    if not state.is_file():
        return False
    info = json.loads(state.read_text())
    if info["token"]:
        os.environ["RAY_AUTH_TOKEN_PATH"] = info["token"]
    init_ray(recipe.ray.model_copy(update={"address": info["address"]}), recipe.run.local_dir)
    return True
