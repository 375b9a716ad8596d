"""Validators for the manifests in k8s/: each returns a list of readable errors, empty when valid.

- schema_errors: the KubeRay v1.7 CRD openAPIV3Schema (strict about unknown fields, defaults
  applied before `required`, nulls dropped), Kubernetes' own schemas for core kinds;
- rule_errors: what the KubeRay operator checks at run time (ray-operator/controllers/ray/utils/
  validation.go): name length, replicas, token auth vs rayVersion, RayJob cluster source ...;
- serve_config_errors / runtime_env_errors / entrypoint_errors: the YAML strings inside, checked
  with Ray's own schemas and this project's CLI.
The tests feed them the real manifests and deliberately broken copies.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import io
import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
CRDS = ROOT / "tests" / "k8s" / "crds"  # vendored KubeRay v1.7.0 CRDs (README there)
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}
K8S_VERSION = "1.32.0"  # the kubectl here; core kinds are checked against this API version
IMAGE_REPO = "/home/ray/mortgagellm/"  # where the Dockerfile puts the repo
# validation.go: 63 - len("-serve-svc") for clusters; 6 characters fewer for the CRs that name
# a cluster after themselves.
NAME_LIMITS = {"RayCluster": 53, "RayJob": 47, "RayService": 47}
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
UPGRADE_TYPES = {"NewCluster", "NewClusterWithIncrementalUpgrade", "None"}
RESOURCE_PARAMS = ("num-cpus", "num-gpus", "memory", "resources")


DASHBOARD = K8S / "base" / "configmap.grafana-dashboard.yaml"
_SERIES = re.compile(r"\b(ray_[a-z0-9_]+)")


def dashboard() -> dict:
    """The Grafana dashboard JSON inside its ConfigMap."""
    (config_map,) = load(DASHBOARD)
    (body,) = config_map["data"].values()
    return json.loads(body)


def dashboard_series() -> set[str]:
    """Every Prometheus series the dashboard's PromQL names (ours and Ray Serve's: all ray_*)."""
    return {name for panel in dashboard()["panels"] for target in panel["targets"]
            for name in _SERIES.findall(target["expr"])}


def load(path: Path) -> list[dict]:
    """Every document of a YAML file."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def resource_files() -> list[Path]:
    """Every resource manifest in k8s/ (patches and kustomizations are checked via renders)."""
    return sorted(p for p in K8S.rglob("*.yaml")
                  if p.name != "kustomization.yaml" and not p.name.endswith(".patch.yaml"))


def overlays() -> list[str]:
    return sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))


def render(overlay: str) -> list[dict]:
    """`kubectl kustomize k8s/overlays/<overlay>` as documents."""
    out = subprocess.run([shutil.which("kubectl") or "kubectl", "kustomize",
                          str(K8S / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=60, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


def sources(everything: list[tuple[str, dict]]) -> set[str]:
    """The sources present among (source, resource) pairs: 'base' and each rendered overlay."""
    return {src for src, _ in everything}


def label(doc: dict) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


# ------------------------------------------------------------------------- schemas


@functools.cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    """The kind's ray.io/v1 openAPIV3Schema, made strict: unknown fields are errors."""
    crd = yaml.load((CRDS / CRD_FILES[kind]).read_text(), Loader=yaml.CSafeLoader)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]))


def _strict(schema: dict) -> dict:
    """An object schema with `properties` forbids other keys, as the API server prunes and (with
    kubectl's field validation) rejects them - unless it preserves unknown fields."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: _strict(v) for k, v in out["properties"].items()}
        if not out.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = _strict(out[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [_strict(s) for s in out[key]]
    return out


def drop_nulls(value: Any) -> Any:
    """The API server treats an explicit null as an absent field."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def apply_defaults(schema: dict, value: Any) -> None:
    """Fill schema defaults in place, as the API server does before checking `required`."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key, sub in props.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                apply_defaults(sub, value[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value.keys() - props.keys():
                apply_defaults(extra, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(schema["items"], item)


def schema_errors(doc: dict) -> list[str]:
    """Schema errors of one resource: its CRD for ray.io kinds, Kubernetes' for core kinds."""
    doc = drop_nulls(copy.deepcopy(doc))
    if doc.get("kind") in CRD_FILES and doc.get("apiVersion") == "ray.io/v1":
        validator = crd_validator(doc["kind"])
        apply_defaults(validator.schema, doc)
        errors = [f"{label(doc)}: {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                  for e in validator.iter_errors(doc)]
        # The CRD leaves metadata open; the API server checks it as ObjectMeta.
        meta = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc.get("metadata", {})}
        return errors + _kubernetes_errors(meta, label(doc))
    return _kubernetes_errors(doc, label(doc))


def _kubernetes_errors(doc: dict, where: str) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        return [f"{where}: {'.'.join(map(str, err.path)) or '<root>'}: {err.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{where}: no schema for {doc.get('apiVersion')} {doc.get('kind')}"]
    return []


# ------------------------------------------------------------------------- operator rules


def cluster_specs(doc: dict) -> Iterator[tuple[str, dict]]:
    """(where, RayClusterSpec) of a RayCluster, a RayJob or a RayService."""
    spec = doc.get("spec", {})
    key = {"RayCluster": None, "RayJob": "rayClusterSpec",
           "RayService": "rayClusterConfig"}.get(doc.get("kind"), "-")
    if key is None:
        yield label(doc), spec
    elif key in spec:
        yield f"{label(doc)}.{key}", spec[key]


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def rule_errors(doc: dict) -> list[str]:
    """The checks the KubeRay operator makes when it reconciles the resource."""
    kind, name = doc.get("kind"), doc.get("metadata", {}).get("name", "")
    errors = []
    if kind in NAME_LIMITS:
        if len(name) > NAME_LIMITS[kind]:
            errors.append(f"{label(doc)}: name is {len(name)} characters, the operator allows "
                          f"{NAME_LIMITS[kind]}")
        if not DNS1035.match(name):
            errors.append(f"{label(doc)}: name is not a DNS-1035 label")
    for where, spec in cluster_specs(doc):
        errors += cluster_rule_errors(where, spec)
    if kind == "RayJob":
        errors += job_rule_errors(label(doc), doc.get("spec", {}))
    if kind == "RayService":
        errors += service_rule_errors(label(doc), doc.get("spec", {}))
    return errors


def cluster_rule_errors(where: str, spec: dict) -> list[str]:
    errors = []
    head = spec.get("headGroupSpec", {})
    groups = spec.get("workerGroupSpecs", [])
    for group_name, group in [("head", head)] + [(g.get("groupName"), g) for g in groups]:
        if not group.get("template", {}).get("spec", {}).get("containers"):
            errors.append(f"{where}: group {group_name} has no container")
        params = group.get("rayStartParams", {})
        if group.get("resources") and any(params.get(p) for p in RESOURCE_PARAMS):
            errors.append(f"{where}: group {group_name} sets resources both in rayStartParams "
                          "and in resources")
        if "labels" in params:
            errors.append(f"{where}: group {group_name}: rayStartParams['labels'] is not "
                          "supported; use the group's labels field")
    names = [g.get("groupName") for g in groups]
    if len(names) != len(set(names)):
        errors.append(f"{where}: worker group names repeat: {names}")
    for g in groups:
        low, high = g.get("minReplicas", 0), g.get("maxReplicas", 2147483647)
        if low > high:
            errors.append(f"{where}: group {g.get('groupName')}: minReplicas {low} > "
                          f"maxReplicas {high}")
        if "replicas" in g and not low <= g["replicas"] <= high:
            errors.append(f"{where}: group {g.get('groupName')}: replicas {g['replicas']} "
                          f"outside [{low}, {high}]")
    if spec.get("authOptions", {}).get("mode") == "token":
        version = spec.get("rayVersion", "")
        if not version or version_tuple(version) < (2, 52, 0):
            errors.append(f"{where}: authOptions.mode token needs rayVersion >= 2.52.0 "
                          f"(got {version or 'none'})")
    return errors


def job_rule_errors(where: str, spec: dict) -> list[str]:
    errors = []
    selector = spec.get("clusterSelector") or {}
    if "rayClusterSpec" not in spec and not selector:
        errors.append(f"{where}: one of rayClusterSpec or clusterSelector must be set")
    if selector and not selector.get("ray.io/cluster"):
        errors.append(f"{where}: clusterSelector needs the cluster name under ray.io/cluster")
    shutdown = spec.get("shutdownAfterJobFinishes", False)
    if spec.get("suspend") and not shutdown:
        errors.append(f"{where}: a suspended RayJob needs shutdownAfterJobFinishes")
    if spec.get("suspend") and selector:
        errors.append(f"{where}: clusterSelector mode cannot be suspended")
    if spec.get("ttlSecondsAfterFinished", 0) > 0 and not shutdown:
        errors.append(f"{where}: ttlSecondsAfterFinished needs shutdownAfterJobFinishes")
    if spec.get("activeDeadlineSeconds", 1) <= 0:
        errors.append(f"{where}: activeDeadlineSeconds must be positive")
    if spec.get("backoffLimit", 0) < 0:
        errors.append(f"{where}: backoffLimit must not be negative")
    return errors


def service_rule_errors(where: str, spec: dict) -> list[str]:
    errors = []
    upgrade = spec.get("upgradeStrategy", {}).get("type")
    if upgrade is not None and upgrade not in UPGRADE_TYPES:
        errors.append(f"{where}: upgradeStrategy.type {upgrade!r} is not one of "
                      f"{sorted(UPGRADE_TYPES)}")
    head_service = spec.get("rayClusterConfig", {}).get("headGroupSpec", {}).get("headService")
    if head_service and head_service.get("metadata", {}).get("name"):
        errors.append(f"{where}: headGroupSpec.headService.metadata.name must not be set")
    if spec.get("rayClusterDeletionDelaySeconds", 0) < 0:
        errors.append(f"{where}: rayClusterDeletionDelaySeconds must not be negative")
    return errors


# ------------------------------------------------------------------------- embedded strings


def _unknown(data: dict, model: Any, where: str) -> list[str]:
    """Keys Ray's pydantic model does not know (Ray's schemas accept and ignore them)."""
    return [f"{where}: unknown key {k!r} (known: {', '.join(sorted(model.model_fields))})"
            for k in data if k not in model.model_fields]


def serve_config_errors(text: str) -> list[str]:
    """serveConfigV2 checked with Ray Serve's own schemas, strictly."""
    from pydantic import ValidationError
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import (
        DeploymentSchema,
        HTTPOptionsSchema,
        RayActorOptionsSchema,
        ServeApplicationSchema,
        ServeDeploySchema,
    )

    data = yaml.safe_load(text)
    try:
        ServeDeploySchema.model_validate(data)
    except ValidationError as err:
        return [f"serveConfigV2: {e['loc']}: {e['msg']}" for e in err.errors()]
    errors = _unknown(data, ServeDeploySchema, "serveConfigV2")
    errors += _unknown(data.get("http_options", {}), HTTPOptionsSchema, "http_options")
    for app in data["applications"]:
        errors += _unknown(app, ServeApplicationSchema, f"application {app.get('name')}")
        errors += runtime_env_errors(app.get("runtime_env", {}), f"application {app['name']}")
        for dep in app.get("deployments", []):
            where = f"deployment {dep.get('name')}"
            errors += _unknown(dep, DeploymentSchema, where)
            errors += _unknown(dep.get("ray_actor_options", {}), RayActorOptionsSchema, where)
            scaling = dep.get("autoscaling_config")
            if scaling is not None:
                errors += _unknown(scaling, AutoscalingConfig, f"{where} autoscaling_config")
                try:  # ServeDeploySchema lets min_replicas > max_replicas through; this does not
                    AutoscalingConfig(**scaling)
                except (ValidationError, ValueError) as err:
                    errors.append(f"{where} autoscaling_config: {err}")
    return errors


def runtime_env_errors(env: str | dict, where: str = "runtimeEnvYAML") -> list[str]:
    """A runtime env checked with Ray's RuntimeEnv (which takes unknown keys for plugins)."""
    from ray.runtime_env import RuntimeEnv

    data = yaml.safe_load(env) if isinstance(env, str) else env
    if not isinstance(data, dict):
        return [f"{where}: not a mapping"]
    errors = [f"{where}: unknown field {k!r}" for k in data if k not in RuntimeEnv.known_fields]
    try:
        RuntimeEnv(**data)
    except (TypeError, ValueError) as err:
        errors.append(f"{where}: {err}")
    return errors


def entrypoint_recipe(entrypoint: str) -> tuple[Path, list[str]]:
    """The repo path of the recipe a `python -m mortgagellm ...` entrypoint names (it ships in the
    image under IMAGE_REPO), and its dotted overrides."""
    from mortgagellm.cli import split_overrides

    args = shlex.split(entrypoint)[3:]
    (config,) = [a for a in args if a.endswith(".yaml")]
    if not config.startswith(IMAGE_REPO):
        raise ValueError(f"entrypoint {entrypoint!r}: the recipe is not under {IMAGE_REPO}")
    overrides = [a for a in args if a.startswith("--") and "." in a.split("=", 1)[0]]
    return ROOT / config[len(IMAGE_REPO):], split_overrides(overrides)


def entrypoint_errors(entrypoint: str) -> list[str]:
    """`python -m MODULE ...`: the module imports; for mortgagellm, the CLI accepts the arguments
    and the recipe (mapped from the image to the repo) loads with the given overrides."""
    from mortgagellm.cli import build_parser
    from mortgagellm.config import ConfigError, load_recipe

    args = shlex.split(entrypoint)
    if args[:2] != ["python", "-m"] or len(args) < 3:
        return [f"entrypoint {entrypoint!r}: expected `python -m MODULE ...`"]
    try:
        found = importlib.util.find_spec(args[2])
    except ModuleNotFoundError:
        found = None
    if found is None:
        return [f"entrypoint {entrypoint!r}: module {args[2]} is not importable"]
    if args[2] != "mortgagellm":
        return []
    try:
        with contextlib.redirect_stderr(io.StringIO()) as usage:
            build_parser().parse_known_args(args[3:])
    except SystemExit:
        return [f"entrypoint {entrypoint!r}: the CLI refuses it: {usage.getvalue().strip()}"]
    try:
        recipe = load_recipe(*entrypoint_recipe(entrypoint))
    except (ConfigError, ValueError) as err:
        return [f"entrypoint {entrypoint!r}: {err}"]
    return [f"entrypoint {entrypoint!r}: {err}" for err in image_path_errors(
        recipe.corpus.regulations + recipe.corpus.user_corpora)]


def image_path_errors(paths: list[str]) -> list[str]:
    """Local corpus paths a job reads in the image: absolute (a job's working directory is not
    the image's), under IMAGE_REPO, present in the repo and copied in by the Dockerfile."""
    copied = {line.split()[-1].rstrip("/") + "/" for line in
              (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("COPY")}
    copied.discard(IMAGE_REPO)  # files copied to the root, not folders
    errors = []
    for path in paths:
        if "://" in path:
            continue
        if not path.startswith(IMAGE_REPO):
            errors.append(f"corpus path {path!r} is not an absolute path under {IMAGE_REPO}")
        elif not (ROOT / path[len(IMAGE_REPO):]).exists():
            errors.append(f"corpus path {path!r}: {path[len(IMAGE_REPO):]} is not in the repo")
        elif not any((path.rstrip("/") + "/").startswith(c) for c in copied):
            errors.append(f"corpus path {path!r} is not copied into the image by the Dockerfile")
    return errors


# ------------------------------------------------------------------------- walking pods


def items_under(doc: Any, keys: tuple[str, ...]) -> Iterator[dict]:
    """Every item of every list held under one of `keys`, anywhere in a resource."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in keys and isinstance(value, list):
                yield from value
            else:
                yield from items_under(value, keys)
    elif isinstance(doc, list):
        for item in doc:
            yield from items_under(item, keys)


def containers(doc: dict) -> Iterator[dict]:
    """Every container of every pod template in a resource."""
    return items_under(doc, ("containers", "initContainers"))


# ------------------------------------------------------------------------- project rules

CONTROL_PORTS = {6379, 8265, 10001}  # GCS, dashboard / job API, Ray Client
SERVE_PORT = 8000


def quantity(value: str | float) -> float:
    """A Kubernetes CPU/GPU quantity as a number ('500m' -> 0.5)."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def group_capacity(group: dict) -> tuple[float, float]:
    """(CPUs, GPUs) Ray sees on one pod of a group: rayStartParams win over container limits."""
    limits = group["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
    params = group.get("rayStartParams", {})
    cpus = quantity(params.get("num-cpus", limits.get("cpu", 0)))
    gpus = quantity(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
    return cpus, gpus


def recipe_fit_errors(scaling: Any, spec: dict, where: str) -> list[str]:
    """The recipe's Train topology (nodes x workers x CPUs/GPUs) fits one worker group's maximum."""
    need_cpus = scaling.workers_per_node * scaling.cpus_per_worker
    need_gpus = scaling.workers_per_node if scaling.use_gpu else 0
    for group in spec.get("workerGroupSpecs", []):
        cpus, gpus = group_capacity(group)
        if (group.get("maxReplicas", 2147483647) >= scaling.num_nodes and cpus >= need_cpus
                and gpus >= need_gpus):
            return []
    return [(f"{where}: no worker group holds {scaling.num_nodes} node(s) x {need_cpus:g} CPUs x "
            f"{need_gpus} GPUs (pretrain.scaling)")]


def serve_fit_errors(service: dict) -> list[str]:
    """Every Serve deployment at its max replicas fits the RayService's worker groups at theirs."""
    spec = service["spec"]
    config = yaml.safe_load(spec["serveConfigV2"])
    groups = [(g["maxReplicas"], *group_capacity(g)) for g in spec["rayClusterConfig"]
              .get("workerGroupSpecs", [])]
    need_cpu = need_gpu = 0.0
    errors = []
    for app in config["applications"]:
        for dep in app.get("deployments", []):
            actor = dep.get("ray_actor_options", {})
            cpus, gpus = actor.get("num_cpus", 1), actor.get("num_gpus", 0)
            replicas = dep.get("autoscaling_config", {}).get("max_replicas",
                                                             dep.get("num_replicas", 1))
            need_cpu, need_gpu = need_cpu + replicas * cpus, need_gpu + replicas * gpus
            if not any(c >= cpus and g >= gpus for _, c, g in groups):
                errors.append(f"{label(service)}: no worker pod holds one {dep['name']} replica "
                              f"({cpus:g} CPUs, {gpus:g} GPUs)")
    have_cpu = sum(n * c for n, c, _ in groups)
    have_gpu = sum(n * g for n, _, g in groups)
    if need_gpu > have_gpu or need_cpu > have_cpu:
        errors.append(f"{label(service)}: deployments at max replicas need {need_cpu:g} CPUs and "
                      f"{need_gpu:g} GPUs; the worker groups at max hold {have_cpu:g} and "
                      f"{have_gpu:g}")
    return errors


def network_policy_errors(policy: dict) -> list[str]:
    """The policy selects every Ray pod, opens Serve's port and no control port to everyone."""
    spec, where = policy["spec"], label(policy)
    errors = []
    if spec.get("podSelector", {}).get("matchLabels", {}).get("ray.io/is-ray-node") != "yes":
        errors.append(f"{where}: podSelector does not select the Ray pods (ray.io/is-ray-node)")
    if "Ingress" not in spec.get("policyTypes", []):
        errors.append(f"{where}: policyTypes lacks Ingress: nothing is restricted")
    serve_open = False
    for i, rule in enumerate(spec.get("ingress", [])):
        peers = rule.get("from", [])
        to_all = not peers or any("ipBlock" in p or p.get("namespaceSelector") == {} for p in peers)
        ports = {p.get("port") for p in rule.get("ports", [])}
        if to_all and (not ports or ports & CONTROL_PORTS):
            errors.append(f"{where}: ingress rule {i} opens "
                          f"{sorted(ports & CONTROL_PORTS) or 'every port'} to any source")
        serve_open |= to_all and SERVE_PORT in ports
    if not serve_open:
        errors.append(f"{where}: Serve's port {SERVE_PORT} is not reachable")
    return errors


def reference_errors(docs: list[dict]) -> list[str]:
    """Secrets and volume claims that pod templates mount exist among the resources."""
    have = {(d["kind"], d["metadata"]["name"]) for d in docs}
    errors = []
    for doc in docs:
        for volume in items_under(doc, ("volumes",)):
            secret = volume.get("secret", {}).get("secretName")
            if secret and ("Secret", secret) not in have:
                errors.append(f"{label(doc)}: mounts missing Secret {secret}")
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            if claim and ("PersistentVolumeClaim", claim) not in have:
                errors.append(f"{label(doc)}: mounts missing PersistentVolumeClaim {claim}")
    return errors



def import_path_errors(import_path: str) -> list[str]:
    """`module:attribute` imports and names a callable (what Serve calls with the args)."""
    module, _, attribute = import_path.partition(":")
    try:
        target = getattr(importlib.import_module(module), attribute, None)
    except ImportError as err:
        return [f"import_path {import_path}: {err}"]
    return [] if callable(target) else [f"import_path {import_path}: {attribute} is not callable"]


def serve_config_module() -> Any:
    """k8s/serve_config.py, the serveConfigV2 generator, imported from its path."""
    spec = importlib.util.spec_from_file_location("serve_config", K8S / "serve_config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------- storage


def served_recipe(service: dict) -> Any:
    """The recipe a RayService serves: its serveConfigV2 args, as build_app loads them."""
    from mortgagellm.config import load_recipe

    args = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]
    overrides = {k: v for k, v in args.items() if k not in ("config", "api_keys_file")}
    return load_recipe(ROOT / args["config"].removeprefix(IMAGE_REPO), overrides)


def _offered(group: dict) -> dict[str, float]:
    """Ray resources one pod of a group offers: CPU, GPU and rayStartParams' custom ones."""
    cpus, gpus = group_capacity(group)
    custom = group.get("rayStartParams", {}).get("resources")
    return {"CPU": cpus, "GPU": gpus} | (json.loads(yaml.safe_load(custom)) if custom else {})


def _mount(group: dict, path: str) -> tuple[str, bool] | None:
    """(mountPath, writable) of the volume `path` lies on in a group's pod, None if none."""
    spec = group["template"]["spec"]
    claims = {v["name"]: v.get("persistentVolumeClaim") for v in spec.get("volumes", [])}
    best = None
    for mount in spec["containers"][0].get("volumeMounts", []):
        root = mount["mountPath"].rstrip("/")
        if (path == root or path.startswith(root + "/")) and (best is None or
                                                              len(root) > len(best[0])):
            pvc = claims.get(mount["name"]) or {}
            best = (root, not mount.get("readOnly") and not pvc.get("readOnly"))
    return best


def storage_errors(service: dict) -> list[str]:
    """Every path the served recipe writes is on a writable volume in every pod its writer can
    run in, and what build_app reads (registry, run outputs) is mounted in every pod."""
    from mortgagellm.registry import registry_path
    from mortgagellm.serve import app

    recipe = served_recipe(service)
    writes = {app.ROUTER: [str(app.audit_dir(recipe))] if recipe.serve.audit.enabled else []}
    reads = [str(registry_path(recipe)), recipe.run.output_dir]
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    spec = service["spec"]["rayClusterConfig"]
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g)
                                                 for g in spec.get("workerGroupSpecs", [])]
    errors = []
    for dep in config["applications"][0]["deployments"]:
        actor = dep.get("ray_actor_options", {})
        needs = {"CPU": actor.get("num_cpus", 1), "GPU": actor.get("num_gpus", 0)} | actor.get(
            "resources", {})
        for name, group in groups:
            offered = _offered(group)
            if not all(offered.get(r, 0) >= n for r, n in needs.items() if n):
                continue  # no replica of this deployment can run in this group
            for path in writes.get(dep["name"], []) + reads:
                where = f"{label(service)}: group {name}: {dep['name']}"
                mount = _mount(group, path) if path.startswith("/") else None
                if not path.startswith("/"):
                    errors.append(f"{where} uses relative path {path}: it resolves in the pod's "
                                  "working directory, on no volume")
                elif mount is None:
                    errors.append(f"{where} uses {path}, which is on no mounted volume")
                elif path in writes.get(dep["name"], []) and not mount[1]:
                    errors.append(f"{where} writes {path}, but {mount[0]} is mounted read-only")
    return sorted(set(errors))
