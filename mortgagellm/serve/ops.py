"""What the serve, deploy and rollback commands do: start the app on Ray, switch an expert's model
version in place, and leave a record of every switch in the audit log.

Run: mortgagellm serve configs/cpu-demo.yaml [--demo]
     mortgagellm deploy configs/cpu-demo.yaml structured <version | model dir>
     mortgagellm rollback configs/cpu-demo.yaml structured
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

from mortgagellm.config import Recipe
from mortgagellm.serve import app as serve_app
from mortgagellm.serve import registry

log = logging.getLogger(__name__)
CLUSTER_FILE = "cluster.json"
DEMO_REQUESTS = (
    "Classify the underwriting decision of this loan file as approve, refer or deny.\n\n"
    "Borrower: Alex Kim. Credit score 742. DTI 31%. LTV 78%. Employment: 6 years, salaried.",
    "Can you explain escrow in plain English?",
)


def app_args(config: str, overrides: list[str]) -> dict[str, str]:
    """build_app's args from the CLI: the recipe path and its dotted overrides."""
    return {"config": config} | dict(o.split("=", 1) for o in overrides)


def start(recipe: Recipe, args: dict[str, str]) -> str:
    """Deploy (or update in place) the app on the connected Ray cluster; returns its base URL.

    Serve compares the new app with the running one: when only an expert's user_config changed
    (deploy / rollback), its replicas are reconfigured in place, not restarted.
    """
    from ray import serve

    cfg = recipe.serve
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(serve_app.build_app(args), name=cfg.app_name, route_prefix=cfg.route_prefix)
    return f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"


def serve(recipe: Recipe, config: str, overrides: list[str], demo: bool = False) -> int:
    """`mortgagellm serve`: start Ray as the recipe says, serve the app, wait for Ctrl-C."""
    import ray

    from mortgagellm.cluster.runtime import init_ray

    context = init_ray(recipe.ray, recipe.run.output_dir)
    url = start(recipe, app_args(config, overrides))
    state = serve_app.serve_dir(recipe) / CLUSTER_FILE
    state.write_text(json.dumps({"address": context.address_info["gcs_address"],
                                 "token": os.environ.get("RAY_AUTH_TOKEN_PATH"), "url": url}))
    key_path = Path(f"{serve_app.keys_file(recipe, {})}.secret")
    print(f"mortgagellm serving on {url}/v1 (OpenAI API); key: {key_path if key_path.exists() else 'your own'}")
    try:
        if demo:
            for text in DEMO_REQUESTS:
                print(demo_line(url, key_path.read_text().strip(), text))
            return 0
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        from ray import serve as ray_serve

        ray_serve.shutdown()
        ray.shutdown()
        state.unlink(missing_ok=True)


def demo_line(url: str, key: str, text: str) -> str:
    """Send one routed chat request and describe the answer in one line."""
    body = json.dumps({"model": "mortgagellm", "max_tokens": 48,
                       "messages": [{"role": "user", "content": text}]}).encode()
    request = urllib.request.Request(f"{url}/v1/chat/completions", body, {
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = json.load(response)
    meta = answer["mortgagellm"]
    return (f"[{meta['route']} {meta['confidence']:.2f} by {meta['decided_by']}, "
            f"expert {meta['expert_version'][:12]}] {text.splitlines()[0][:60]!r}\n"
            f"  -> {answer['choices'][0]['message']['content']!r}")


def switch(recipe: Recipe, config: str, overrides: list[str], expert: str, action: str,
           change: tuple[str | None, str]) -> int:
    """Audit a version switch and apply it to the running app, if one runs."""
    from mortgagellm.serve.audit import AuditLog

    previous, version = change
    a = recipe.serve.audit
    log_ = AuditLog(serve_app.audit_dir(recipe), "ops", a.retention_days, a.pii_salt)
    log_.append({"type": action, "expert": expert, "from": previous, "to": version,
                 "user": getpass.getuser(),
                 "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    log_.close()
    print(f"{action}: {expert} {str(previous)[:12]} -> {version[:12]}")
    if connect(recipe):
        start(recipe, app_args(config, overrides))
        print("the running app now serves it (replicas reconfigured in place)")
    else:
        print("no running app found; the next `mortgagellm serve` serves it")
    return 0


def deploy(recipe: Recipe, config: str, overrides: list[str], expert: str, ref: str) -> int:
    """`mortgagellm deploy`: register a directory if given one, make it current, apply."""
    path = serve_app.registry_path(recipe)
    if Path(ref).is_dir():
        ref = registry.register(path, ref, source="mortgagellm deploy")
    return switch(recipe, config, overrides, expert, "deploy",
                  registry.deploy(path, expert, ref))


def rollback(recipe: Recipe, config: str, overrides: list[str], expert: str) -> int:
    """`mortgagellm rollback`: back to the version deployed before the current one."""
    change = registry.rollback(serve_app.registry_path(recipe), expert)
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
        init_ray(recipe.ray, recipe.run.output_dir)
        return True
    if not state.is_file():
        return False
    info = json.loads(state.read_text())
    if info["token"]:
        os.environ["RAY_AUTH_TOKEN_PATH"] = info["token"]
    init_ray(recipe.ray.model_copy(update={"address": info["address"]}), recipe.run.output_dir)
    return True
