"""The RayService's serveConfigV2, generated: the app's entry point and args plus its placement.

Run: python k8s/serve_config.py --write     rewrite every serveConfigV2 block listed in TARGETS
     python k8s/serve_config.py a100        print one variant

The app is configured only through build_app(args) (STYLE 9): args name the recipe it reads its
`serve` section from, inside the image, and the file the API-key Secret is mounted as. What this
adds is what only the cluster knows: where each deployment runs (experts on GPUs, the router on CPU
workers) and autoscaling bounds that fit the worker groups of the RayService that embeds it.
tests/k8s/test_embedded.py fails when a manifest's serveConfigV2 differs from what this generates.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml

IMPORT_PATH = "mortgagellm.serve.app:build_app"
IMAGE_REPO = "/home/ray/mortgagellm"  # where the Dockerfile puts the repo's configs/
API_KEYS_FILE = "/etc/mortgagellm/api-keys/api-keys"  # secret.api-keys.yaml, mounted
EXPERTS = ("StructuredExpert", "ConversationalExpert")
ROUTER = "Router"
HERE = Path(__file__).resolve().parent

VARIANTS: dict[str, dict[str, Any]] = {
    # One A100 per expert replica, up to 4 of each = the 8 single-GPU pods of the a100 group.
    "a100": {"recipe": "configs/llama3-8b-a100.yaml",
             "expert_actor": {"num_cpus": 4, "num_gpus": 1, "accelerator_type": "A100"},
             "expert_replicas": (1, 4), "expert_target": 8, "expert_max_ongoing": 32,
             "router_replicas": (2, 8)},
    # CPU only: small models, 1-2 replicas each, for a laptop-sized Kubernetes (kind, minikube).
    "cpu": {"recipe": "configs/cpu-demo.yaml",
            "expert_actor": {"num_cpus": 1, "num_gpus": 0},
            "expert_replicas": (1, 2), "expert_target": 2, "expert_max_ongoing": 8,
            "router_replicas": (1, 2)},
}
TARGETS = {"a100": HERE / "base/rayservice.mortgagellm.yaml",
           "cpu": HERE / "overlays/cpu-dev/rayservice.serve-config.patch.yaml"}


def serve_config(variant: str) -> dict[str, Any]:
    """The Serve config (ServeDeploySchema) of one placement variant."""
    v = VARIANTS[variant]
    experts = [{
        "name": name,
        "max_ongoing_requests": v["expert_max_ongoing"],
        "autoscaling_config": {
            "min_replicas": v["expert_replicas"][0], "max_replicas": v["expert_replicas"][1],
            "target_ongoing_requests": v["expert_target"],
            "upscale_delay_s": 30, "downscale_delay_s": 600},
        "ray_actor_options": dict(v["expert_actor"]),
    } for name in EXPERTS]
    router = {
        "name": ROUTER,
        "autoscaling_config": {"min_replicas": v["router_replicas"][0],
                               "max_replicas": v["router_replicas"][1],
                               "target_ongoing_requests": 64},
        "ray_actor_options": {"num_cpus": 1, "num_gpus": 0},
    }
    return {
        "http_options": {"host": "0.0.0.0", "port": 8000},
        "applications": [{
            "name": "mortgagellm",
            "route_prefix": "/",
            "import_path": IMPORT_PATH,
            "args": {"config": f"{IMAGE_REPO}/{v['recipe']}", "api_keys_file": API_KEYS_FILE},
            "deployments": [router, *experts],
        }],
    }


def render(variant: str) -> str:
    """serveConfigV2's text: YAML in the order written above."""
    return yaml.safe_dump(serve_config(variant), sort_keys=False)


def rewrite(path: Path, text: str) -> None:
    """Replace the `serveConfigV2: |` block scalar in a manifest, keeping everything around it."""
    source = path.read_text()
    match = re.search(r"^( *)serveConfigV2: \|\n((?:\1  .*\n|\n)*)", source, re.MULTILINE)
    if match is None:
        raise SystemExit(f"{path}: no `serveConfigV2: |` block to rewrite")
    pad = match.group(1) + "  "
    block = "".join(pad + line if line.strip() else line for line in text.splitlines(True))
    path.write_text(source[:match.start(2)] + block + source[match.end(2):])


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        for name, target in TARGETS.items():
            rewrite(target, render(name))
            print(f"wrote serveConfigV2 ({name}) into {target.relative_to(HERE.parent)}")
    elif len(sys.argv) == 2 and sys.argv[1] in VARIANTS:
        print(render(sys.argv[1]), end="")
    else:
        raise SystemExit(f"usage: python k8s/serve_config.py --write | {' | '.join(VARIANTS)}")
