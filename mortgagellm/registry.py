"""The model registry: expert model versions by content hash (the manifest's sha256 of the model
directory) with their metrics, and for each expert the history of deployed versions that
`mortgagellm deploy` extends and `mortgagellm rollback` walks back.

One JSON file (serve.registry, default <output_dir>/serve/registry.json), rewritten atomically
under an exclusive lock on <file>.lock (fcntl), so concurrent deploys never lose an update:

    {"versions": {"<sha256>": {"path": ..., "source": ..., "metrics": {...}, "registered_at": ...}},
     "deployed": {"structured": ["<oldest>", ..., "<current>"], "conversational": [...]}}

Versions are immutable: registering copies the weights into <file's dir>/registry/<sha256>/ and
checks the copy's hash, so an sft or dpo rerun that rewrites its output directory changes nothing
a registered version serves, and a rollback restores the weights, not only a label. Copied, not
hard-linked: a rerun that rewrites a file in place would change a hard link's content too.
`verified` rehashes a version's directory when an expert loads it and refuses a changed one.

With a remote run.output_dir (s3://...), each version is also published to
<output_dir>/serve/registry/<sha256>/ (`published_dir`; the entry's "uri"), so a replica on a
node without the registry's volume fetches it once into that node's cache (`node_weights`,
hash-checked), and Ray Serve LLM finds adapter versions there by name.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mortgagellm.cluster import storage
from mortgagellm.manifest import sha256_path

if TYPE_CHECKING:
    from mortgagellm.config import Recipe

log = logging.getLogger(__name__)
EXPERTS = ("structured", "conversational")


def registry_path(recipe: Recipe) -> Path:
    """The recipe's registry file: serve.registry, else <output_dir>/serve/registry.json;
    with serve.topology adapters, registry.adapters.json beside it. The adapters topology
    deploys LoRA adapter versions and the separate one full models: each keeps its own history,
    so switching topology never serves one kind where the other is expected."""
    path = Path(recipe.serve.registry or recipe.run.local_dir / "serve" / "registry.json")
    return path.with_suffix(".adapters.json") if recipe.serve.topology == "adapters" else path


def read(path: str | Path) -> dict[str, Any]:
    """The registry, empty when the file does not exist yet."""
    path = Path(path)
    if not path.is_file():
        return {"versions": {}, "deployed": {role: [] for role in EXPERTS}}
    return json.loads(path.read_text())


@contextlib.contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold the registry's exclusive lock (<file>.lock) for a read-modify-write."""
    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def store_dir(path: str | Path, version: str) -> Path:
    """Where a registered version's weights are kept: <registry file's dir>/registry/<version>."""
    return Path(path).absolute().parent / "registry" / version


def published_dir(recipe: Recipe) -> str | None:
    """Where registered versions are published, one folder per version: <output_dir>/serve/
    registry with a remote output_dir; None with a local one (every node reads the store)."""
    if not storage.is_remote(recipe.run.output_dir):
        return None
    return f"{recipe.run.output_dir.rstrip('/')}/serve/registry"


def node_weights(served: Mapping[str, Any]) -> str:
    """A served version's weights on THIS node: the registry's directory when it is here
    (rehashed, `verified`), else its published copy ({"uri", "run": RunConfig.for_nodes()} in
    `served`, as app.user_config gives it) fetched once into this node's cache and hash-checked
    (storage.node_copy)."""
    if served.get("uri") and not Path(served["model"]).is_dir():
        from mortgagellm.config import RunConfig

        return str(storage.node_copy(served["uri"], served["version"],
                                     RunConfig(**served["run"])))
    return verified(served["model"], served["version"])


def verified(model_dir: str | Path, version: str) -> str:
    """`model_dir` after checking it still hashes to `version`; ValueError naming both hashes
    when it does not (the weights were changed after they were registered)."""
    found = sha256_path(model_dir)
    if found != version:
        raise ValueError(f"{model_dir} hashes to {found[:12]}, not to its version {version[:12]}: "
                         "its files were changed after registration; refusing to serve it. "
                         "Restore them, or register the directory as a new version")
    return str(model_dir)


def _store(path: str | Path, model_dir: str, version: str) -> Path:
    """Copy a model directory into the store (once per version), checking the copy's hash."""
    target = store_dir(path, version)
    if target.is_dir():
        verified(target, version)
        return target
    if "://" in model_dir or not Path(model_dir).is_dir():
        raise ValueError(f"{model_dir}: registering needs a local model directory to copy")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{version[:12]}-"))
    shutil.copytree(model_dir, staging, dirs_exist_ok=True)
    try:
        verified(staging, version)
    except ValueError:
        shutil.rmtree(staging)
        raise
    try:
        os.replace(staging, target)
    except OSError:  # a concurrent register of the same version got there first
        shutil.rmtree(staging)
        verified(target, version)
    return target


def _write(path: str | Path, data: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".registry-")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def register(path: str | Path, model_dir: str, source: str, metrics: dict[str, Any] | None = None,
             version: str | None = None, publish: str | None = None) -> str:
    """Add a model directory: its weights are copied to store_dir (the copy is hashed and must
    equal `version`, a manifest's hash, when given) and, with `publish` (`published_dir`),
    uploaded to <publish>/<version>, recorded as the entry's "uri" once the upload is complete.
    Registering the same content again changes nothing, but publishes a version not yet
    published."""
    version = version or sha256_path(model_dir)
    known = read(path)["versions"].get(version)
    if known is not None and (publish is None or known.get("uri")):
        return version
    # outside the lock: copying and uploading take a while
    stored = Path(known["path"]) if known else _store(path, model_dir, version)
    uri = f"{publish.rstrip('/')}/{version}" if publish else None
    if uri:
        storage.upload(stored, uri)
    with locked(path):
        data = read(path)
        entry = data["versions"].setdefault(version, {
            "path": str(stored), "source": source, "copied_from": str(Path(model_dir).absolute()),
            "metrics": metrics or {},
            "registered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        if uri:
            entry["uri"] = uri
        _write(path, data)
    return version


def resolve(path: str | Path, ref: str) -> str:
    """A full version from a unique prefix (at least 8 characters) of it."""
    matches = [v for v in read(path)["versions"] if v.startswith(ref)] if len(ref) >= 8 else []
    if len(matches) != 1:
        known = ", ".join(v[:12] for v in read(path)["versions"]) or "none"
        raise ValueError(f"{ref!r} names {len(matches)} registered versions (give 8+ characters "
                         f"of one; registered: {known})")
    return matches[0]


def set_metrics(path: str | Path, version: str, metrics: dict[str, Any]) -> None:
    """Add or replace top-level keys of a registered version's metrics (e.g. 'evaluate')."""
    with locked(path):
        data = read(path)
        if version not in data["versions"]:
            raise ValueError(f"version {version[:12]} is not registered in {path}")
        data["versions"][version]["metrics"] |= metrics
        _write(path, data)


def deploy(path: str | Path, expert: str, ref: str) -> tuple[str | None, str]:
    """Make a registered version the expert's current one; returns (previous, new)."""
    with locked(path):
        version = resolve(path, ref)
        data = read(path)
        history = data["deployed"][expert]
        previous = history[-1] if history else None
        if previous != version:
            history.append(version)
            _write(path, data)
    return previous, version


def rollback(path: str | Path, expert: str) -> tuple[str, str]:
    """Return the expert to the version deployed before the current one; (from, to)."""
    with locked(path):
        data = read(path)
        history = data["deployed"][expert]
        if len(history) < 2:
            raise ValueError(f"{expert} has no earlier deployed version to roll back to")
        current = history.pop()
        _write(path, data)
    return current, history[-1]


def current(path: str | Path, expert: str) -> tuple[str, dict[str, Any]] | None:
    """(version, entry) the expert serves, None before anything was deployed."""
    data = read(path)
    history = data["deployed"][expert]
    return (history[-1], data["versions"][history[-1]]) if history else None


# ---- what the recipe's stages wrote, and bringing the registry up to date -----------------------

EXPERT_STAGES = {"structured": "sft", "conversational": "dpo"}
"""The stage whose 'model' output each expert serves once that stage has run."""


def candidate(recipe: Recipe, expert: str, fallback: bool = False
              ) -> tuple[str, str, str, dict[str, Any]] | None:
    """(version, model directory, source, metrics) the recipe offers for an expert: its
    serve.<expert>.model directory, else the expert stage's model (sft -> structured, dpo ->
    conversational); with `fallback`, the bootstrap instruct model when neither exists. Reads
    manifests only."""
    from mortgagellm import manifest

    if recipe.serve.topology == "adapters":
        return adapter_candidate(recipe, expert)
    wanted, stage = getattr(recipe.serve, expert).model, EXPERT_STAGES[expert]
    if wanted and Path(wanted).is_dir():
        return sha256_path(wanted), wanted, f"serve.{expert}.model", {}
    if wanted:  # a version (prefix) already registered
        version = resolve(registry_path(recipe), wanted)
        return version, read(registry_path(recipe))["versions"][version]["path"], wanted, {}
    trained = manifest.stage_manifest(recipe, stage)
    if trained is not None:
        entry = trained.outputs["model"]
        metrics = {k: v for k, v in trained.metrics.items() if k != "history"}
        return entry["sha256"], entry["uri"], f"{stage}:model", metrics
    if not fallback:
        return None
    boot = manifest.require_manifest(recipe, "bootstrap")
    entry = boot.outputs["instruct"]
    return entry["sha256"], entry["uri"], "bootstrap:instruct", boot.metrics.get("instruct", {})


def adapter_candidate(recipe: Recipe, expert: str) -> tuple[str, str, str, dict[str, Any]]:
    """candidate() under serve.topology adapters: serve.<expert>.model (an adapter directory
    or a registered version), else the expert stage's 'adapter' output, which sft and dpo
    write when trained with method lora. A stage trained full-parameter has none: the error
    names the expert and the fix. No bootstrap stand-in: it is no adapter."""
    from mortgagellm import manifest

    wanted, stage = getattr(recipe.serve, expert).model, EXPERT_STAGES[expert]
    if wanted and Path(wanted).is_dir():
        return sha256_path(wanted), wanted, f"serve.{expert}.model", {}
    if wanted:
        version = resolve(registry_path(recipe), wanted)
        return version, read(registry_path(recipe))["versions"][version]["path"], wanted, {}
    trained = manifest.stage_manifest(recipe, stage)
    if trained is None:
        raise FileNotFoundError(
            f"serve.topology adapters: the {expert} expert has no LoRA adapter yet; run "
            f"`mortgagellm {stage}` with {stage}.method: lora (or serve with serve.topology: "
            "separate, where the bootstrap instruct model stands in for it)")
    if "adapter" not in trained.outputs:
        raise ValueError(
            f"serve.topology adapters: the {expert} expert ({stage}) was trained full-parameter, "
            f"so it has no LoRA adapter to serve. Set {stage}.method: lora and rerun "
            f"`mortgagellm {stage}`, or serve it with serve.topology: separate")
    entry = trained.outputs["adapter"]
    metrics = {k: v for k, v in trained.metrics.items() if k != "history"}
    return entry["sha256"], entry["uri"], f"{stage}:adapter", metrics


def adapter_base(recipe: Recipe) -> tuple[str, str]:
    """(version, directory) of the model AdapterExperts loads the adapters on:
    serve.adapters.model, else the residual stage's merged model (the one sft and dpo start
    from)."""
    from mortgagellm import manifest

    if wanted := recipe.serve.adapters.model:
        return sha256_path(wanted), wanted
    entry = manifest.require_manifest(recipe, "residual").outputs["model"]
    return entry["sha256"], entry["uri"]


def sync(recipe: Recipe) -> dict[str, str]:
    """Register and deploy, for each expert, a model the registry has not seen yet (so a freshly
    trained expert goes live on the next `mortgagellm serve`); a version it knows is left as
    the registry has it (a rollback stays rolled back). An expert with nothing deployed and no
    model of its own gets the bootstrap instruct model. Returns {expert: current version}."""
    path, live, publish = registry_path(recipe), {}, published_dir(recipe)
    for expert in EXPERTS:
        offered = candidate(recipe, expert)
        if offered is not None and offered[0] not in read(path)["versions"]:
            version, model_dir, source, metrics = offered
            register(path, model_dir, source=source, metrics=metrics, version=version,
                     publish=publish)
            deploy(path, expert, version)
            log.info("%s expert: deployed %s (%s) from %s", expert, version[:12], source,
                     model_dir)
        if (deployed := current(path, expert)) is not None:
            live[expert] = deployed[0]
            if publish:  # deployed before the run was remote, or its upload was cut short
                register(path, deployed[1]["path"], deployed[1]["source"], version=deployed[0],
                         publish=publish)
            continue
        try:
            offered = offered or candidate(recipe, expert, fallback=True)
        except FileNotFoundError as err:  # not even bootstrap ran: the build will say so
            log.warning("%s expert: nothing to deploy (%s)", expert, err)
            continue
        version, model_dir, source, metrics = offered
        register(path, model_dir, source=source, metrics=metrics, version=version,
                 publish=publish)
        deploy(path, expert, version)
        if source == "bootstrap:instruct":
            log.warning("%s expert: no %s output yet; serving the bootstrap instruct model in "
                        "its place", expert, EXPERT_STAGES[expert])
        live[expert] = version
    return live
