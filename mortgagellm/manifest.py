"""Stage manifests: what a stage read (with hashes), how it was configured, what it measured and
wrote. The next stage reads them; a stage whose manifest matches its inputs is skipped.

A manifest's `fingerprint` hashes the stage name, its resolved config and its input hashes. A
re-run with the same fingerprint whose recorded outputs still hash the same is "up to date".
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mortgagellm import __version__
from mortgagellm.cluster import storage

MANIFEST = "manifest.json"


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


def fingerprint(stage: str, config: dict[str, Any], inputs: dict[str, dict[str, str]]) -> str:
    """Hash of everything that determines a stage's output."""
    blob = json.dumps(
        {"stage": stage, "config": config, "inputs": {k: v["sha256"] for k, v in inputs.items()}},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


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
    return previous, "inputs, config and outputs unchanged"


def now() -> tuple[str, float]:
    """(ISO-8601 UTC wall time, monotonic start) for a stage's timing."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), time.monotonic()
