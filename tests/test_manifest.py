"""Manifests: fingerprints, hashing, and the skip / re-run decision."""

import json

import pytest

from mortgagellm import manifest


def make_output(tmp_path):
    out = tmp_path / "stage"
    (out / "model").mkdir(parents=True)
    (out / "model" / "weights.bin").write_bytes(b"\x00" * 10)
    (out / "model" / "config.json").write_text("{}")
    return out


def write_manifest(out, fp):
    return manifest.write(str(out), manifest.Manifest(
        stage="s", fingerprint=fp, config={"x": 1},
        outputs={"model": manifest.artifact(out / "model")}, metrics={"loss": 1.5}))


def test_fingerprint_depends_on_config_and_input_hashes_only():
    a = manifest.fingerprint("s", {"lr": 1}, {"data": {"uri": "/a", "sha256": "h1"}})
    assert a == manifest.fingerprint("s", {"lr": 1}, {"data": {"uri": "/moved", "sha256": "h1"}})
    assert a != manifest.fingerprint("s", {"lr": 2}, {"data": {"uri": "/a", "sha256": "h1"}})
    assert a != manifest.fingerprint("s", {"lr": 1}, {"data": {"uri": "/a", "sha256": "h2"}})
    assert a != manifest.fingerprint("t", {"lr": 1}, {"data": {"uri": "/a", "sha256": "h1"}})


def test_directory_hash_sees_content_and_names(tmp_path):
    out = make_output(tmp_path)
    before = manifest.sha256_path(out / "model")
    (out / "model" / "weights.bin").rename(out / "model" / "weights2.bin")
    renamed = manifest.sha256_path(out / "model")
    assert renamed != before
    (out / "model" / "weights2.bin").rename(out / "model" / "weights.bin")
    assert manifest.sha256_path(out / "model") == before


def test_unchanged_stage_is_reusable_and_manifest_round_trips(tmp_path):
    out = make_output(tmp_path)
    write_manifest(out, "fp1")
    previous, why = manifest.reusable(str(out), "fp1")
    assert previous is not None and previous.metrics == {"loss": 1.5}
    assert "unchanged" in why
    assert json.loads((out / "manifest.json").read_text())["fingerprint"] == "fp1"


@pytest.mark.parametrize("change,reason", [
    ("config", "config or inputs changed"),
    ("modified", "was modified"),
    ("missing", "is missing"),
])
def test_changed_stage_is_rerun_with_the_reason(tmp_path, change, reason):
    out = make_output(tmp_path)
    write_manifest(out, "fp1")
    if change == "modified":
        (out / "model" / "weights.bin").write_bytes(b"\x01" * 10)
    if change == "missing":
        (out / "model" / "weights.bin").unlink()
        (out / "model" / "config.json").unlink()
        (out / "model").rmdir()
    previous, why = manifest.reusable(str(out), "fp2" if change == "config" else "fp1")
    assert previous is None and reason in why


def test_no_manifest_means_run(tmp_path):
    assert manifest.reusable(str(tmp_path), "fp") == (None, "no previous manifest")


def test_corrupt_manifest_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt manifest"):
        manifest.read(str(tmp_path))


# ---- the code in the fingerprint ----------------------------------------------------------------

def test_code_hash_covers_what_a_stage_imports_and_nothing_else():
    modules = manifest._closure("mortgagellm.pipelines.sft")
    assert {"mortgagellm.pipelines.sft", "mortgagellm.manifest", "mortgagellm.config",
            "mortgagellm.modeling"} <= modules  # modeling: imported inside a function
    assert not any(m.startswith("mortgagellm.serve") for m in modules)
    assert manifest.code_hash("mortgagellm.pipelines.sft") != manifest.code_hash(
        "mortgagellm.pipelines.corpus")


def test_a_code_change_reruns_the_stage_and_says_why(tmp_path, package_copy, caplog):
    caplog.set_level("INFO", logger="mortgagellm.manifest")
    out = make_output(tmp_path)
    config, inputs = {"lr": 1}, {"data": {"uri": "/a", "sha256": "h1"}}

    def attempt():
        manifest._closure.cache_clear()
        pending = manifest.begin("sft", out, config, inputs)
        return pending, manifest.skip_if_current(pending)

    pending, done = attempt()
    assert done is None
    manifest.finish(pending, {"model": manifest.artifact(out / "model")}, {"loss": 1.0})
    assert attempt()[1] is not None  # nothing changed: skipped
    with (package_copy / "serve" / "app.py").open("a") as f:  # sft does not import it
        f.write("\n# a change elsewhere\n")
    assert attempt()[1] is not None
    caplog.clear()
    with (package_copy / "datasets" / "schemas.py").open("a") as f:  # sft imports it, indirectly
        f.write("\n# a comment is a change too\n")
    again, done = attempt()
    assert done is None and "sft: running (code changed)" in caplog.text
    assert again.fingerprint != pending.fingerprint and again.config == pending.config
