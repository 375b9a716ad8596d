"""Storage URIs: local paths and s3:// (or any pyarrow filesystem URI) behind one small API.

Stages write locally and publish with `upload`; inputs given as URIs are fetched with
`download_dir` / `download` into the run's cache. A Ray task, actor or Train worker, on whichever
node it runs, resolves what it reads with `node_copy` (a URI is downloaded once into that node's
own cache and checked against its content hash) and places node-local files with `node_path`.
Nothing here reaches a model hub.

S3 settings come from the environment, as pyarrow reads them: credentials from
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or the node's IAM role), the region
from AWS_DEFAULT_REGION, and an S3-compatible server (MinIO, Ceph, moto) from AWS_ENDPOINT_URL,
e.g. http://127.0.0.1:9000.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from pyarrow import fs as pafs

if TYPE_CHECKING:
    from mortgagellm.config import RunConfig


class StorageError(OSError):
    """A storage location that cannot be used; the message names the URI and what failed."""


def is_remote(uri: str) -> bool:
    """True for URIs with a scheme other than file:// (s3://, gs://, ...)."""
    return "://" in uri and not uri.startswith("file://")


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and in-filesystem path for a local path or URI."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).absolute())
    return pafs.FileSystem.from_uri(uri)


def exists(uri: str) -> bool:
    """Whether a file or directory exists at the path or URI."""
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(uri: str) -> bytes:
    """Whole content of one file."""
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write one file, creating parent directories; local writes are atomic (tmp + rename)."""
    fs, path = filesystem(uri)
    fs.create_dir(os.path.dirname(path), recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{path}.tmp-{os.getpid()}"
        Path(tmp).write_bytes(data)
        os.replace(tmp, path)
        return
    with fs.open_output_stream(path) as stream:
        stream.write(data)


def delete(uri: str) -> None:
    """Remove the file or directory tree at the path or URI; nothing there is not an error."""
    fs, path = filesystem(uri)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif kind == pafs.FileType.File:
        fs.delete_file(path)


def subdirs(uri: str) -> list[str]:
    """Names of the directories directly under the path or URI (none when it does not exist)."""
    return _names(uri, pafs.FileType.Directory)


def files(uri: str) -> list[str]:
    """Names of the files directly under the path or URI (none when it does not exist)."""
    return _names(uri, pafs.FileType.File)


def _names(uri: str, kind: pafs.FileType) -> list[str]:
    fs, path = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == kind)


def check_writable(uri: str) -> None:
    """Write and delete a marker file under `uri`: a missing bucket, an unreachable endpoint or
    missing credentials fail here, naming the URI, instead of when a stage first publishes."""
    marker = f"{uri.rstrip('/')}/.mortgagellm-write-check-{uuid.uuid4().hex[:12]}"
    step = "opening the filesystem"
    try:
        fs, path = filesystem(marker)
        step = f"writing the test file {marker}"
        with fs.open_output_stream(path) as stream:
            stream.write(b"")
        step = f"deleting the test file {marker}"
        fs.delete_file(path)
    except (OSError, ValueError) as err:  # pyarrow: OSError from the store, ValueError: bad URI
        raise StorageError(
            f"{uri} is not usable as run.output_dir: {step} failed: {err}. Check that the bucket "
            "exists, the endpoint (AWS_ENDPOINT_URL for an S3-compatible server) and the "
            "credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the node's "
            "IAM role).") from err


def upload(local: str | Path, uri: str) -> None:
    """Copy a local file or directory tree to `uri`, replacing whatever was there."""
    delete(uri)
    copy_into(local, uri)


def copy_into(local: str | Path, uri: str) -> None:
    """Copy a local file or directory tree to `uri`, keeping what else is there (files of the
    same name are overwritten)."""
    fs, path = filesystem(uri)
    if Path(local).is_dir():
        fs.create_dir(path, recursive=True)  # an empty directory exists there too
    pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)


def download(uri: str, local: str | Path) -> Path:
    """Copy the file or directory tree at `uri` to `local`, replacing whatever was there."""
    fs, path = filesystem(uri)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{uri}: not found")
    local = Path(local)
    if not is_remote(uri) and Path(path).resolve() == local.resolve():
        raise ValueError(f"download {uri} to {local}: the same place; copying it onto itself "
                         "would delete it")
    if local.is_dir():
        shutil.rmtree(local)
    local.unlink(missing_ok=True)
    local.parent.mkdir(parents=True, exist_ok=True)
    if kind == pafs.FileType.Directory:
        local.mkdir()
    pafs.copy_files(path, str(local), source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem())
    return local


def download_dir(uri: str, local_dir: str | Path) -> Path:
    """Copy a directory from a URI into local_dir; local paths are returned as they are."""
    if not is_remote(uri):
        return Path(filesystem(uri)[1])
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"{uri}: no such directory")
    Path(local_dir).mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(local_dir), source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem())
    return Path(local_dir)


# ---- content hashes, and what a process on any node reads --------------------------------------

def sha256_path(path: str | Path) -> str:
    """Content hash of a file, or of a directory tree (sorted relative paths + file hashes)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: nothing to hash")
    tree = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        tree.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return tree.hexdigest()


def sha256_file(path: Path) -> str:
    """Content hash of one file."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def node_path(uri: str, run: RunConfig) -> Path:
    """Where THIS node keeps `uri`: a local path is itself (absolute); a URI under
    run.output_dir is the same place under run.local_dir, resolved here (run.cache_dir, else
    this node's $XDG_CACHE_HOME or ~/.cache default), any other URI is under <local_dir>/_shared."""
    if not is_remote(uri):
        return Path(filesystem(uri)[1])
    root = run.output_dir.rstrip("/")
    if uri.startswith(f"{root}/"):
        return run.local_dir / uri[len(root) + 1:]
    return run.local_dir.joinpath("_shared", *uri.replace("://", "/", 1).split("/"))


def node_copy(uri: str, sha256: str, run: RunConfig) -> Path:
    """A local copy of the file or directory tree at `uri` on this node, at `node_path`: what a
    Ray task, actor or Train worker reads, wherever it runs (a local path is returned as it is).

    Downloaded once per node and content: ranks on one node wait on a lock file, the download
    goes to a temporary name that is renamed into place only once it hashes as `sha256`, and a
    `.<name>.sha256` file beside the copy records the hash it was checked against. A copy that
    is already there (the driver's own, fetched by the manifest) is hashed, not downloaded."""
    target = node_path(uri, run)
    if not is_remote(uri):
        return target
    checked = target.with_name(f".{target.name}.sha256")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(f".{target.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if checked.is_file() and checked.read_text() == sha256 and target.exists():
            return target
        if not (target.exists() and sha256_path(target) == sha256):
            part = target.with_name(f".{target.name}.part-{uuid.uuid4().hex[:12]}")
            download(uri, part)
            if (found := sha256_path(part)) != sha256:
                delete(str(part))
                raise StorageError(f"{uri} hashes as {found}, not {sha256} as its manifest "
                                   "records: changed or partly written since it was published; "
                                   "re-run the stage that wrote it with --force")
            delete(str(target))
            os.replace(part, target)
        write_bytes(str(checked), sha256.encode())
    return target
