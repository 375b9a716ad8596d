"""Storage: local paths and file:// URIs go through the same pyarrow filesystem code as s3://,
which is tested against a local S3 server (moto, tests/conftest.py)."""

import socket

import pytest
from pyarrow import fs as pafs

from mortgagellm.cluster import storage


def test_write_read_exists_for_paths_and_uris(tmp_path):
    target = tmp_path / "a" / "b.txt"
    storage.write_bytes(str(target), b"hello")
    assert target.read_bytes() == b"hello"
    uri = f"file://{tmp_path}/c/d.txt"
    storage.write_bytes(uri, b"world")
    assert storage.exists(uri) and storage.read_bytes(uri) == b"world"
    assert not storage.exists(str(tmp_path / "missing"))
    assert not list(tmp_path.rglob("*.tmp-*"))  # atomic writes leave no temporaries


def test_remote_detection():
    assert storage.is_remote("s3://bucket/key")
    assert not storage.is_remote("file:///tmp/x") and not storage.is_remote("runs/demo")


def test_upload_then_download_directory(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "w.bin").write_bytes(b"\x01\x02")
    storage.upload(src, f"file://{tmp_path}/remote")
    assert (tmp_path / "remote" / "sub" / "w.bin").read_bytes() == b"\x01\x02"
    local = storage.download_dir(str(tmp_path / "remote"), tmp_path / "unused")
    assert local == tmp_path / "remote"


# ---- s3:// against a local S3 server (moto) --------------------------------------------------

def files_under(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_upload_and_download_round_trip_on_s3(s3_bucket, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "w.bin").write_bytes(b"\x01\x02")
    (src / "a.txt").write_text("a")
    uri = f"{s3_bucket}/run/stage/model"
    storage.upload(src, uri)
    assert storage.read_bytes(f"{uri}/sub/w.bin") == b"\x01\x02"
    assert storage.subdirs(f"{s3_bucket}/run/stage") == ["model"]

    (src / "a.txt").unlink()  # an upload replaces the tree: a file gone here is gone there
    storage.upload(src, uri)
    assert not storage.exists(f"{uri}/a.txt")
    (tmp_path / "back").mkdir()
    (tmp_path / "back" / "stale.txt").write_text("x")  # ... and so does a download
    back = storage.download(uri, tmp_path / "back")
    assert files_under(back) == ["sub/w.bin"]
    assert (back / "sub" / "w.bin").read_bytes() == b"\x01\x02"

    storage.upload(src / "sub" / "w.bin", f"{s3_bucket}/one.bin")  # single files too
    one = storage.download(f"{s3_bucket}/one.bin", tmp_path / "one.bin")
    assert one.read_bytes() == b"\x01\x02"
    storage.delete(f"{s3_bucket}/run")
    assert not storage.exists(uri) and storage.subdirs(s3_bucket) == []
    with pytest.raises(FileNotFoundError, match="run/stage/model: not found"):
        storage.download(uri, tmp_path / "gone")


def test_write_check_passes_and_leaves_nothing_behind(s3_bucket):
    storage.check_writable(f"{s3_bucket}/run")
    fs, path = storage.filesystem(s3_bucket)
    left = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    assert [i.path for i in left if i.type != pafs.FileType.Directory] == []


def test_write_check_names_a_missing_bucket(s3_bucket):
    with pytest.raises(storage.StorageError, match=r"s3://mllm-no-such-bucket/run is not usable "
                       r"as run.output_dir: writing the test file .* failed: .*NO_SUCH_BUCKET"):
        storage.check_writable("s3://mllm-no-such-bucket/run")


def test_write_check_names_an_unreachable_endpoint(s3_bucket, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(storage.StorageError, match=rf"{s3_bucket}/run is not usable .* "
                       r"NETWORK_CONNECTION.*AWS_ENDPOINT_URL"):
        storage.check_writable(f"{s3_bucket}/run")
