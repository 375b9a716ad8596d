"""Manifests: fingerprints, hashing, and the skip / re-run decision."""

import json
import shutil

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


# ---- a remote output_dir (s3:// on a local S3 server) ---------------------------------------

def s3_recipe(bucket, cache):
    from mortgagellm.config import Recipe

    return Recipe.model_validate({"run": {"output_dir": f"{bucket}/run", "cache_dir": str(cache)}})


def run_s3_stage(recipe, config, weights=b"\x00" * 10):
    """One pass of the stage protocol for a stage 'sft' that writes model/ and maybe skips."""
    out, uri = manifest.stage_dir(recipe, "sft"), manifest.stage_uri(recipe, "sft")
    pending = manifest.begin("sft", out, config, {"data": {"uri": "/a", "sha256": "h1"}}, uri=uri)
    if done := manifest.skip_if_current(pending):
        return done
    (out / "model").mkdir(parents=True, exist_ok=True)
    (out / "model" / "weights.bin").write_bytes(weights)
    return manifest.finish(pending, {"model": manifest.artifact(out / "model")}, {"loss": 1.0})


def test_a_stage_on_s3_publishes_is_read_back_and_skipped_from_the_uri(s3_bucket, tmp_path,
                                                                       monkeypatch):
    from mortgagellm.cluster import storage

    recipe = s3_recipe(s3_bucket, tmp_path / "cache")
    uri = f"{s3_bucket}/run/sft"
    assert manifest.stage_uri(recipe, "sft") == uri
    assert manifest.stage_dir(recipe, "sft") == tmp_path / "cache" / "sft"
    uploads = []

    def upload(local, target):  # the manifest is never there while outputs are uploaded
        uploads.append(target)
        assert not storage.exists(f"{uri}/manifest.json")
        real_upload(local, target)

    real_upload = storage.upload
    monkeypatch.setattr(storage, "upload", upload)
    m = run_s3_stage(recipe, {"lr": 1})
    assert uploads == [f"{uri}/model"]
    assert m.output_path("model") == f"{uri}/model"  # the published manifest names the URI
    assert manifest.read(uri) == m and not (tmp_path / "cache" / "s3:").exists()

    # Another machine (an empty cache) reads it: the outputs are downloaded and hash as recorded.
    shutil.rmtree(tmp_path / "cache")
    got = manifest.require_manifest(recipe, "sft")
    local_model = tmp_path / "cache" / "sft" / "model"
    assert got.output_path("model") == str(local_model)
    assert (local_model / "weights.bin").read_bytes() == b"\x00" * 10
    assert got.outputs["model"]["sha256"] == m.outputs["model"]["sha256"]

    # ... and skips the stage against the URI, without downloading anything.
    shutil.rmtree(tmp_path / "cache")
    again = run_s3_stage(recipe, {"lr": 1})
    assert again == m and not local_model.exists()

    # A changed config re-runs it: the published manifest goes first, the new one comes last.
    uploads.clear()
    rerun = run_s3_stage(recipe, {"lr": 2}, weights=b"\x01" * 10)
    assert uploads == [f"{uri}/model"] and rerun.fingerprint != m.fingerprint
    assert manifest.read(uri) == rerun


def test_a_stage_on_s3_that_fails_midway_is_not_done(s3_bucket, tmp_path):
    recipe = s3_recipe(s3_bucket, tmp_path / "cache")
    run_s3_stage(recipe, {"lr": 1})
    out, uri = manifest.stage_dir(recipe, "sft"), manifest.stage_uri(recipe, "sft")
    pending = manifest.begin("sft", out, {"lr": 2}, {}, uri=uri)
    assert manifest.skip_if_current(pending) is None  # running ... and then it fails
    assert manifest.stage_manifest(recipe, "sft") is None
    with pytest.raises(FileNotFoundError, match=f"no sft output in {uri}; run `mortgagellm sft"):
        manifest.require_manifest(recipe, "sft")


def test_changed_or_missing_outputs_on_s3_are_caught(s3_bucket, tmp_path, caplog):
    from mortgagellm.cluster import storage

    recipe = s3_recipe(s3_bucket, tmp_path / "cache")
    run_s3_stage(recipe, {"lr": 1})
    uri = manifest.stage_uri(recipe, "sft")
    storage.write_bytes(f"{uri}/model/weights.bin", b"\x07" * 10)  # changed after publishing
    shutil.rmtree(tmp_path / "cache")
    with pytest.raises(ValueError, match=f"{uri}/model: output model does not hash as "
                       f"{uri}/manifest.json records"):
        manifest.require_manifest(recipe, "sft")
    storage.delete(f"{uri}/model")
    caplog.set_level("INFO", logger="mortgagellm.manifest")
    assert run_s3_stage(recipe, {"lr": 1}).output_path("model") == f"{uri}/model"
    assert f"sft: running (output model is missing ({uri}/model))" in caplog.text


def test_a_cached_copy_is_reused_while_its_manifest_matches(s3_bucket, tmp_path, monkeypatch):
    from mortgagellm.cluster import storage

    recipe = s3_recipe(s3_bucket, tmp_path / "cache")
    run_s3_stage(recipe, {"lr": 1})  # written here: the cache holds the published manifest
    downloads = []
    real_download = storage.download
    monkeypatch.setattr(storage, "download", lambda *a: downloads.append(a) or real_download(*a))
    manifest.require_manifest(recipe, "sft")
    assert downloads == []
    (tmp_path / "cache" / "sft" / "manifest.json").write_text("{}")  # not the published one
    manifest.require_manifest(recipe, "sft")
    assert [target for _, target in downloads] == [str(tmp_path / "cache" / "sft" / "model")]


def test_portable_names_the_published_uri_of_a_cached_copy(s3_bucket, tmp_path):
    """What a Ray worker on another node is handed: a stage's output by its URI, and an output a
    seed's run shares from the parent run (fetched into _shared) by the parent run's URI."""
    recipe = s3_recipe(s3_bucket, tmp_path / "cache")
    local = run_s3_stage(recipe, {"lr": 1})
    got = manifest.require_manifest(recipe, "sft").outputs["model"]
    assert got["uri"] == str(tmp_path / "cache" / "sft" / "model")
    assert manifest.portable(recipe, got) == local.outputs["model"]

    seed = manifest.seed_recipe(recipe, 3)
    manifest.write(f"{s3_bucket}/run/seeds/3/sft", local)  # a seed's copy names the run's URIs
    shared = manifest.require_manifest(seed, "sft").outputs["model"]
    assert shared["uri"] == str(tmp_path / "cache" / "seeds/3/sft/_shared/model")
    assert manifest.portable(seed, shared) == local.outputs["model"]
