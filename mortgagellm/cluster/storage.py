"""Storage URIs: local paths and s3:// (or any pyarrow filesystem URI) behind one small API.

Stages write locally and publish with `upload_dir`; inputs given as URIs are fetched with
`download_dir` into the run's cache. Nothing here reaches a model hub.
"""

from __future__ import annotations

import os
from pathlib import Path

from pyarrow import fs as pafs


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


def upload_dir(local_dir: str | Path, uri: str) -> None:
    """Copy a local directory tree to a path or URI (a no-op when they are the same place)."""
    fs, path = filesystem(uri)
    if isinstance(fs, pafs.LocalFileSystem) and Path(path).resolve() == Path(local_dir).resolve():
        return
    fs.create_dir(path, recursive=True)
    pafs.copy_files(str(local_dir), path, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)


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
