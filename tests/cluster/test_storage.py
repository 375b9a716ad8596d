"""Storage: local paths and file:// URIs go through the same pyarrow filesystem code as s3://."""

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
    storage.upload_dir(src, f"file://{tmp_path}/remote")
    assert (tmp_path / "remote" / "sub" / "w.bin").read_bytes() == b"\x01\x02"
    local = storage.download_dir(str(tmp_path / "remote"), tmp_path / "unused")
    assert local == tmp_path / "remote"
