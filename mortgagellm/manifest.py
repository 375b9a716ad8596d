"""Stage manifests and the plumbing every stage shares: what a stage read (with hashes), how it
was configured, which code ran, what it measured and wrote. The next stage reads them; a stage
whose manifest matches its inputs, config and code is skipped.

A stage reads:  pending = begin(stage, out, config, inputs)
                if (done := skip_if_current(pending, force)): return done
                ...                                  # the work
                return finish(pending, outputs, metrics)

A manifest's `fingerprint` hashes the stage name, its resolved config, its input hashes and the
source of the project modules the stage runs (`code_hash`). A re-run with the same fingerprint
whose recorded outputs still hash the same is "up to date"; otherwise the log says what changed.

With run.output_dir a URI (s3://...) a stage writes into stage_dir, a local directory under
run.cache_dir, and `finish` publishes its outputs to <output_dir>/<stage>/, manifest.json last;
a stage that starts running removes its published manifest first, so an interrupted upload is
never taken for a finished stage. The published manifest names the URIs. Later stages read an
earlier one with `require_manifest` / `stage_manifest`, which download its outputs into the
cache (checking their hashes) and return a manifest naming the local copies. Skipping needs
only the published manifest and the outputs' presence: they are hashed when downloaded.
A Ray task, actor or Train worker, maybe on another node, is handed an input as `portable`
names it (the published URI and hash, which storage.node_copy fetches on that node), and what
a stage writes for its own workers is uploaded first (`share`).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import logging
import platform
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mortgagellm import __version__
from mortgagellm.cluster import storage
from mortgagellm.cluster.storage import sha256_path

if TYPE_CHECKING:
    from mortgagellm.config import Recipe, RunConfig

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
SHARED = "_shared"
"""Where `fetch` puts outputs a stage's manifest names under another run's URI."""
_FETCH_LOCK = threading.Lock()
PACKAGE = Path(__file__).resolve().parent


@dataclass
class Manifest:
    """The record one stage leaves beside its output."""

    stage: str
    fingerprint: str
    config: dict[str, Any]
    inputs: dict[str, dict[str, str]] = field(default_factory=dict)
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    started_at: str = ""
    duration_s: float = 0.0
    version: str = __version__
    host: str = field(default_factory=platform.node)
    code: str = ""
    """code_hash of the stage module and the project modules it imports ("" before it was kept)."""

    def output_path(self, name: str) -> str:
        """Path or URI of a named output."""
        return self.outputs[name]["uri"]


def artifact(path: str | Path) -> dict[str, str]:
    """An input/output entry: where it is and its content hash."""
    return {"uri": str(path), "sha256": sha256_path(path)}


def fingerprint(stage: str, config: dict[str, Any], inputs: dict[str, dict[str, str]],
                code: str = "") -> str:
    """Hash of everything that determines a stage's output: config, inputs and code."""
    blob = json.dumps(
        {"stage": stage, "config": config, "inputs": {k: v["sha256"] for k, v in inputs.items()},
         **({"code": code} if code else {})},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


# ---- the code a stage runs ---------------------------------------------------------------------

def code_hash(module: str) -> str:
    """sha256 over the source of `module` and of every mortgagellm module it imports,
    transitively (imports inside functions too, read from the source, nothing imported).

    A change to any of them changes the stage's fingerprint, so the next run re-runs it; a
    comment-only change does too (the source is hashed, not its meaning)."""
    digest = hashlib.sha256()
    for name in sorted(_closure(module)):
        digest.update(f"{name}\0{storage.sha256_file(_source_file(name))}\n".encode())
    return digest.hexdigest()


@functools.cache
def _closure(module: str) -> frozenset[str]:
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += _project_imports(name)
    return frozenset(seen)


def _source_file(module: str) -> Path:
    """The .py file of a mortgagellm module (a package's __init__.py)."""
    base = PACKAGE.joinpath(*module.split(".")[1:])
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    raise ModuleNotFoundError(f"{module}: no source under {PACKAGE}")


def _is_module(name: str) -> bool:
    try:
        _source_file(name)
    except ModuleNotFoundError:
        return False
    return True


def _project_imports(module: str) -> list[str]:
    """The mortgagellm modules `module` imports (and the packages above them, which Python
    imports first)."""
    tree = ast.parse(_source_file(module).read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
            found += [f"{node.module}.{a.name}" for a in node.names]
    names = set()
    for name in found:
        if name.split(".")[0] != "mortgagellm":
            continue
        parts = name.split(".")
        names |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return sorted(n for n in names if _is_module(n))


# ---- where stages write, and what they read ----------------------------------------------------

def stage_dir(recipe: Recipe, stage: str) -> Path:
    """Where a stage writes its output and manifest on this machine: <run.output_dir>/<stage>,
    or <run.cache_dir>/<stage> when output_dir is a URI (`finish` publishes it there)."""
    return recipe.run.local_dir / stage


def seed_recipe(recipe: Recipe, seed: int) -> Recipe:
    """The recipe of one of run.repeat_seeds: the same recipe at `seed`, writing under
    <output_dir>/seeds/<seed> (and <cache_dir>/seeds/<seed> when that is set)."""
    return recipe.model_copy(update={"run": _moved(recipe.run, f"seeds/{seed}", seed=seed)})


def variant_recipe(recipe: Recipe, stage: str, name: str) -> Recipe:
    """The recipe of one of <stage>.compare: the stage's section with that variant's settings,
    writing under <output_dir>/variants/<stage>-<name> (and likewise under cache_dir)."""
    return recipe.model_copy(update={stage: getattr(recipe, stage).variant(name),
                                     "run": _moved(recipe.run, f"variants/{stage}-{name}")})


def _moved(run: RunConfig, where: str, **update: Any) -> RunConfig:
    """`run` writing under <output_dir>/<where> (and <cache_dir>/<where>), with no further
    repeat seeds: a seed's or a variant's run."""
    cache = f"{run.cache_dir.rstrip('/')}/{where}" if run.cache_dir else None
    return run.model_copy(update={"repeat_seeds": [], "cache_dir": cache, **update,
                                  "output_dir": f"{run.output_dir.rstrip('/')}/{where}"})


def stage_uri(recipe: Recipe, stage: str) -> str:
    """Where a stage's output and manifest are kept: <run.output_dir>/<stage>, path or URI."""
    if storage.is_remote(recipe.run.output_dir):
        return f"{recipe.run.output_dir.rstrip('/')}/{stage}"
    return str(stage_dir(recipe, stage))


def published(recipe: Recipe, path: str | Path) -> str:
    """Where `path`, under the run's local directory, is published: the same place under a
    remote output_dir; the path itself with a local output_dir."""
    if not storage.is_remote(recipe.run.output_dir):
        return str(path)
    return _rebase(str(path), str(recipe.run.local_dir), recipe.run.output_dir.rstrip("/"))


def portable(recipe: Recipe, entry: dict[str, str]) -> dict[str, str]:
    """An input entry ({uri, sha256}) as a Ray task, actor or Train worker on any node reads it
    (storage.node_copy): with a remote output_dir, where the cached copy `entry` names was
    published; otherwise, and for a local path outside the cache (a model given by path), the
    absolute path, which only a shared volume (or one node) lets another node read."""
    if storage.is_remote(entry["uri"]):
        return entry
    path = Path(entry["uri"]).absolute()
    if storage.is_remote(recipe.run.output_dir) and path.parent.name == SHARED:
        return read(str(path.parent.parent)).outputs[path.name]  # another run's output (fetch)
    return entry | {"uri": published(recipe, path)}


def share(recipe: Recipe, entry: dict[str, str]) -> dict[str, str]:
    """The `artifact` entry of something this stage wrote for its own Ray workers to read before
    it finishes (training rows, dpo's sft-phase model), as `portable` hands it over: with a
    remote output_dir it is uploaded first to where it would be published."""
    if storage.is_remote(recipe.run.output_dir):
        storage.upload(entry["uri"], published(recipe, Path(entry["uri"]).absolute()))
    return portable(recipe, entry)


def stage_manifest(recipe: Recipe, stage: str) -> Manifest | None:
    """The manifest an earlier stage left, None when there is none; with a remote output_dir
    its outputs are in the cache first and the manifest names those copies (see `fetch`)."""
    uri = stage_uri(recipe, stage)
    if not storage.is_remote(uri):
        return read(uri)
    with _FETCH_LOCK:  # stages side by side (the experts) read the same earlier stages
        return fetch(uri, stage_dir(recipe, stage))


def require_manifest(recipe: Recipe, stage: str) -> Manifest:
    """The manifest an earlier stage left, or an error saying which stage to run."""
    found = stage_manifest(recipe, stage)
    if found is None:
        raise FileNotFoundError(
            f"no {stage} output in {stage_uri(recipe, stage)}; run `mortgagellm {stage}` first")
    return found


def write(out_dir: str, manifest: Manifest) -> Manifest:
    """Write <out_dir>/manifest.json (atomically on local disk)."""
    storage.write_bytes(f"{out_dir}/{MANIFEST}", _text(manifest).encode())
    return manifest


def _text(manifest: Manifest) -> str:
    return json.dumps(asdict(manifest), indent=2, sort_keys=True) + "\n"


def read(out_dir: str) -> Manifest | None:
    """The manifest in out_dir, or None when there is none."""
    uri = f"{out_dir}/{MANIFEST}"
    if not storage.exists(uri):
        return None
    return _parse(storage.read_bytes(uri), uri)


def _parse(data: bytes | str, uri: str) -> Manifest:
    try:
        return Manifest(**json.loads(data))
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"{uri}: corrupt manifest ({err}); delete it to re-run the stage") from err


def reusable(out_dir: str, expected_fingerprint: str) -> tuple[Manifest | None, str]:
    """(manifest, why) — the manifest when the stage can be skipped, else None and the reason.
    Remote outputs must exist; they are hashed when a later stage downloads them (`fetch`)."""
    previous = read(out_dir)
    if previous is None:
        return None, "no previous manifest"
    if previous.fingerprint != expected_fingerprint:
        return None, "config or inputs changed since the last run"
    for name, entry in previous.outputs.items():
        remote = storage.is_remote(entry["uri"])
        if not (storage.exists(entry["uri"]) if remote else Path(entry["uri"]).exists()):
            return None, f"output {name} is missing ({entry['uri']})"
        if not remote and sha256_path(entry["uri"]) != entry["sha256"]:
            return None, f"output {name} was modified since it was written ({entry['uri']})"
    return previous, "inputs, config, code and outputs unchanged"


# ---- a remote output_dir: publish and fetch ------------------------------------------------------

def _rebase(uri: str, old: str, new: str) -> str:
    """`uri` with the prefix `old` replaced by `new`; unchanged when it is not under `old`."""
    if uri == old or uri.startswith(f"{old}/"):
        return new + uri[len(old):]
    return uri


def _rebased(manifest: Manifest, old: str, new: str) -> Manifest:
    """A copy whose input and output locations under `old` are under `new` instead."""
    def move(entries: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        return {k: v | {"uri": _rebase(v["uri"], old, new)} for k, v in entries.items()}

    return Manifest(**asdict(manifest) | {"inputs": move(manifest.inputs),
                                          "outputs": move(manifest.outputs)})


def _roots(uri: str, local: Path) -> tuple[str, str]:
    """(run URI, local run directory) of a stage's <root>/<stage> URI and local directory."""
    return uri.rsplit("/", 1)[0], str(local.parent)


def publish(manifest: Manifest, local: Path, uri: str) -> Manifest:
    """Upload the outputs under `local` to the same places under `uri`, then the manifest
    naming them there, last; the same manifest is kept in `local` (the cache is current).
    Returns the published manifest."""
    remote_root, local_root = _roots(uri, local)
    for entry in manifest.outputs.values():
        if (target := _rebase(entry["uri"], str(local), uri)) != entry["uri"]:
            storage.upload(entry["uri"], target)
    remote = _rebased(manifest, local_root, remote_root)
    write(uri, remote)
    storage.write_bytes(str(local / MANIFEST), _text(remote).encode())
    return remote


def fetch(uri: str, local: Path) -> Manifest | None:
    """The manifest published at `uri` with its outputs copied into `local`, naming the copies;
    None when nothing is published there. A copy whose manifest.json equals the published one
    is used as it is; otherwise every output is downloaded and must hash as recorded."""
    if not storage.exists(f"{uri}/{MANIFEST}"):
        return None
    text = storage.read_bytes(f"{uri}/{MANIFEST}").decode()
    remote = _parse(text, f"{uri}/{MANIFEST}")
    remote_root, local_root = _roots(uri, local)
    found = _rebased(remote, remote_root, local_root)
    # Outputs stored under another run's URI (a further seed or a variant shares the run's
    # bootstrap and corpus this way) are copied into <local>/_shared/<name>, like the rest.
    shared = {name: str(local / SHARED / name) for name, e in found.outputs.items()
              if storage.is_remote(e["uri"])}
    for name, target in shared.items():
        found.outputs[name] = found.outputs[name] | {"uri": target}
    cached = local / MANIFEST
    if cached.is_file() and cached.read_text() == text and all(
            storage.is_remote(e["uri"]) or Path(e["uri"]).exists() for e in found.outputs.values()):
        return found
    cached.unlink(missing_ok=True)
    for name, entry in remote.outputs.items():
        target = shared.get(name) or _rebase(entry["uri"], uri, str(local))
        if target == entry["uri"]:
            continue  # a local path outside the stage's directory: read in place
        storage.download(entry["uri"], target)
        if sha256_path(target) != entry["sha256"]:
            raise ValueError(f"{entry['uri']}: output {name} does not hash as {uri}/{MANIFEST} "
                             "records (changed or partly written since); re-run the stage with "
                             "--force")
    storage.write_bytes(str(cached), text.encode())
    log.info("fetched %s into %s", uri, local)
    return found


# ---- the stage preamble and ending ---------------------------------------------------------------

@dataclass
class Pending:
    """A stage about to run: where it writes, what determines its output, when it started."""

    stage: str
    out_dir: Path
    config: dict[str, Any]
    inputs: dict[str, dict[str, str]]
    code: str
    fingerprint: str
    started_at: str = ""
    t0: float = 0.0
    uri: str = ""
    """Where the stage is kept (stage_uri): out_dir itself, or the URI `finish` publishes to."""


def begin(stage: str, out_dir: Path, config: dict[str, Any],
          inputs: dict[str, dict[str, str]] | None = None, module: str | None = None,
          uri: str | None = None) -> Pending:
    """The fingerprint of a stage run: its config, inputs and the code of `module` (default
    mortgagellm.pipelines.<stage>) with everything it imports. `uri`, a remote stage_uri, is
    checked writable now (a bad bucket, endpoint or credentials fail before any work)."""
    inputs = inputs or {}
    uri = uri or str(out_dir)
    if storage.is_remote(uri):
        storage.check_writable(uri)
    code = code_hash(module or f"mortgagellm.pipelines.{stage}")
    return Pending(stage, Path(out_dir), config, inputs, code,
                   fingerprint(stage, config, inputs, code), uri=uri)


def skip_if_current(pending: Pending, force: bool = False) -> Manifest | None:
    """The earlier manifest when nothing changed (and not `force`), else None; logs which.
    A stage that runs against a remote uri first removes its published and cached manifests."""
    previous, why = reusable(pending.uri, pending.fingerprint)
    if previous is not None and not force:
        log.info("%s: up to date (%s); skipping. Manifest: %s/%s", pending.stage, why,
                 pending.uri, MANIFEST)
        return previous
    earlier = previous or read(pending.uri)
    if previous is None and earlier is not None:
        why = changed(earlier, pending) or why
    if storage.is_remote(pending.uri):
        if earlier is not None:
            storage.delete(f"{pending.uri}/{MANIFEST}")
        (pending.out_dir / MANIFEST).unlink(missing_ok=True)
    log.info("%s: running (%s)", pending.stage, "--force" if previous else why)
    pending.started_at, pending.t0 = now()
    return None


def changed(previous: Manifest, pending: Pending) -> str | None:
    """What differs between an earlier run and this one: code, config or which inputs."""
    what = []
    if previous.code != pending.code:
        what.append("code changed")
    if previous.config != pending.config:
        what.append("config changed")
    names = sorted(k for k in previous.inputs.keys() | pending.inputs.keys()
                   if previous.inputs.get(k, {}).get("sha256")
                   != pending.inputs.get(k, {}).get("sha256"))
    if names:
        what.append(f"inputs changed: {', '.join(names)}")
    return "; ".join(what) or None


def finish(pending: Pending, outputs: dict[str, dict[str, str]],
           metrics: dict[str, Any]) -> Manifest:
    """Write the stage's manifest: what it read, how it was configured, which code, what it
    wrote and measured, when and for how long; to a remote uri, publish outputs and manifest."""
    manifest = Manifest(
        stage=pending.stage, fingerprint=pending.fingerprint, config=pending.config,
        inputs=pending.inputs, outputs=outputs, metrics=metrics, started_at=pending.started_at,
        duration_s=round(time.monotonic() - pending.t0, 2), code=pending.code)
    if storage.is_remote(pending.uri):
        return publish(manifest, pending.out_dir, pending.uri)
    return write(str(pending.out_dir), manifest)


def now() -> tuple[str, float]:
    """(ISO-8601 UTC wall time, monotonic start) for a stage's timing."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), time.monotonic()
