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
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mortgagellm import __version__
from mortgagellm.cluster import storage

if TYPE_CHECKING:
    from mortgagellm.config import Recipe

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
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


def sha256_path(path: str | Path) -> str:
    """Content hash of a file, or of a directory tree (sorted relative paths + file hashes)."""
    path = Path(path)
    if path.is_file():
        return _sha256_file(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: nothing to hash")
    tree = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        tree.update(f"{file.relative_to(path).as_posix()}\0{_sha256_file(file)}\n".encode())
    return tree.hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


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
        digest.update(f"{name}\0{_sha256_file(_source_file(name))}\n".encode())
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
    """Where a stage writes its output and manifest: <run.output_dir>/<stage>."""
    return Path(recipe.run.output_dir) / stage


def require_manifest(recipe: Recipe, stage: str) -> Manifest:
    """The manifest an earlier stage left, or an error saying which stage to run."""
    found = read(str(stage_dir(recipe, stage)))
    if found is None:
        raise FileNotFoundError(
            f"no {stage} output in {stage_dir(recipe, stage)}; run `mortgagellm {stage}` first")
    return found


def write(out_dir: str, manifest: Manifest) -> Manifest:
    """Write <out_dir>/manifest.json (atomically on local disk)."""
    text = json.dumps(asdict(manifest), indent=2, sort_keys=True) + "\n"
    storage.write_bytes(f"{out_dir}/{MANIFEST}", text.encode())
    return manifest


def read(out_dir: str) -> Manifest | None:
    """The manifest in out_dir, or None when there is none."""
    uri = f"{out_dir}/{MANIFEST}"
    if not storage.exists(uri):
        return None
    try:
        return Manifest(**json.loads(storage.read_bytes(uri)))
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"{uri}: corrupt manifest ({err}); delete it to re-run the stage") from err


def reusable(out_dir: str, expected_fingerprint: str) -> tuple[Manifest | None, str]:
    """(manifest, why) — the manifest when the stage can be skipped, else None and the reason."""
    previous = read(out_dir)
    if previous is None:
        return None, "no previous manifest"
    if previous.fingerprint != expected_fingerprint:
        return None, "config or inputs changed since the last run"
    for name, entry in previous.outputs.items():
        if not Path(entry["uri"]).exists():
            return None, f"output {name} is missing ({entry['uri']})"
        if sha256_path(entry["uri"]) != entry["sha256"]:
            return None, f"output {name} was modified since it was written ({entry['uri']})"
    return previous, "inputs, config, code and outputs unchanged"


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


def begin(stage: str, out_dir: Path, config: dict[str, Any],
          inputs: dict[str, dict[str, str]] | None = None, module: str | None = None) -> Pending:
    """The fingerprint of a stage run: its config, inputs and the code of `module` (default
    mortgagellm.pipelines.<stage>) with everything it imports."""
    inputs = inputs or {}
    code = code_hash(module or f"mortgagellm.pipelines.{stage}")
    return Pending(stage, Path(out_dir), config, inputs, code,
                   fingerprint(stage, config, inputs, code))


def skip_if_current(pending: Pending, force: bool = False) -> Manifest | None:
    """The earlier manifest when nothing changed (and not `force`), else None; logs which."""
    previous, why = reusable(str(pending.out_dir), pending.fingerprint)
    if previous is not None and not force:
        log.info("%s: up to date (%s); skipping. Manifest: %s", pending.stage, why,
                 pending.out_dir / MANIFEST)
        return previous
    if previous is None and (earlier := read(str(pending.out_dir))) is not None:
        why = changed(earlier, pending) or why
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
    wrote and measured, when and for how long."""
    return write(str(pending.out_dir), Manifest(
        stage=pending.stage, fingerprint=pending.fingerprint, config=pending.config,
        inputs=pending.inputs, outputs=outputs, metrics=metrics, started_at=pending.started_at,
        duration_s=round(time.monotonic() - pending.t0, 2), code=pending.code))


def now() -> tuple[str, float]:
    """(ISO-8601 UTC wall time, monotonic start) for a stage's timing."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), time.monotonic()
