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


def test_a_download_onto_itself_is_refused_and_deletes_nothing(tmp_path, monkeypatch):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "a.parquet").write_bytes(b"rows")
    monkeypatch.chdir(tmp_path)  # the same place, named relative and absolute
    with pytest.raises(ValueError, match="the same place"):
        storage.download("shards", tmp_path / "shards")
    assert (tmp_path / "shards" / "a.parquet").read_bytes() == b"rows"


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


# ---- node_copy: what a Ray task, actor or Train worker on any node reads -------------------------

def published_model(s3_bucket, tmp_path):
    """A small 'model' directory published at <run>/bootstrap/base: (run URI, its hash, files)."""
    src = tmp_path / "published"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"a": 1}')
    (src / "sub" / "w.bin").write_bytes(bytes(range(256)) * 64)
    run = f"{s3_bucket}/run"
    storage.upload(src, f"{run}/bootstrap/base")
    return run, storage.sha256_path(src), files_under(src)


def counting_downloads(monkeypatch):
    calls = []
    real = storage.download

    def download(uri, local):
        calls.append(uri)
        return real(uri, local)

    monkeypatch.setattr(storage, "download", download)
    return calls


def test_node_copy_downloads_once_into_this_nodes_own_cache(s3_bucket, tmp_path, monkeypatch):
    """No run.cache_dir: the root is this node's $XDG_CACHE_HOME, read when node_copy runs."""
    from mortgagellm.config import RunConfig

    run, sha, files = published_model(s3_bucket, tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "node2"))
    calls = counting_downloads(monkeypatch)
    config = RunConfig(output_dir=run)
    local = storage.node_copy(f"{run}/bootstrap/base", sha, config)
    assert local == tmp_path / "node2/mortgagellm/s3" / run[5:] / "bootstrap/base"
    assert files_under(local) == files and storage.sha256_path(local) == sha
    assert storage.node_copy(f"{run}/bootstrap/base", sha, config) == local  # reused
    assert calls == [f"{run}/bootstrap/base"]
    assert sorted(p.name for p in local.parent.iterdir()) == [".base.lock", ".base.sha256", "base"]

    explicit = RunConfig(output_dir=run, cache_dir=str(tmp_path / "mine"))  # respected
    assert storage.node_copy(f"{run}/bootstrap/base", sha, explicit) == \
        tmp_path / "mine/bootstrap/base"
    other = storage.node_path(f"{s3_bucket}/elsewhere/base", explicit)  # another run's output
    assert other == tmp_path / "mine/_shared/s3" / s3_bucket[5:] / "elsewhere/base"
    assert storage.node_copy(str(tmp_path / "x"), "", explicit) == tmp_path / "x"  # a path


def test_node_copy_adopts_a_copy_already_there_and_replaces_a_wrong_one(s3_bucket, tmp_path,
                                                                        monkeypatch):
    """The driver's node holds its own fetched copy at the same place: hashed, not downloaded.
    A copy whose content differs from the hash is downloaded again."""
    from mortgagellm.config import RunConfig

    run, sha, files = published_model(s3_bucket, tmp_path)
    config = RunConfig(output_dir=run, cache_dir=str(tmp_path / "cache"))
    storage.download(f"{run}/bootstrap/base", tmp_path / "cache/bootstrap/base")
    calls = counting_downloads(monkeypatch)
    assert storage.node_copy(f"{run}/bootstrap/base", sha, config) == \
        tmp_path / "cache/bootstrap/base"
    assert calls == []
    (tmp_path / "cache/bootstrap/.base.sha256").unlink()
    (tmp_path / "cache/bootstrap/base/config.json").write_text("changed")
    local = storage.node_copy(f"{run}/bootstrap/base", sha, config)
    assert calls == [f"{run}/bootstrap/base"] and storage.sha256_path(local) == sha


def test_node_copy_refuses_content_that_does_not_hash_as_recorded(s3_bucket, tmp_path):
    from mortgagellm.config import RunConfig

    run, sha, _ = published_model(s3_bucket, tmp_path)
    config = RunConfig(output_dir=run, cache_dir=str(tmp_path / "cache"))
    wrong = "0" * 64
    with pytest.raises(storage.StorageError, match=rf"{run}/bootstrap/base hashes as {sha}, "
                       rf"not {wrong} as its manifest records"):
        storage.node_copy(f"{run}/bootstrap/base", wrong, config)
    assert sorted(p.name for p in (tmp_path / "cache/bootstrap").iterdir()) == [".base.lock"]


def test_concurrent_ranks_on_one_node_download_once_and_see_a_whole_copy(s3_bucket, tmp_path,
                                                                         monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from mortgagellm.config import RunConfig

    run, sha, files = published_model(s3_bucket, tmp_path)
    config = RunConfig(output_dir=run, cache_dir=str(tmp_path / "cache"))
    calls = counting_downloads(monkeypatch)

    def rank(_):
        local = storage.node_copy(f"{run}/bootstrap/base", sha, config)
        return local, files_under(local), storage.sha256_path(local)

    with ThreadPoolExecutor(6) as pool:
        seen = list(pool.map(rank, range(6)))
    assert seen == [(tmp_path / "cache/bootstrap/base", files, sha)] * 6
    assert len(calls) == 1
    assert not [p for p in (tmp_path / "cache").rglob("*") if ".part-" in p.name]
