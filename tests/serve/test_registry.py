"""registry.py and the app's choice of model: versions by content hash, deploy / rollback
history; registry.sync registers what the stages wrote (the bootstrap instruct model on a first
start); the app's served_model only reads."""

import shutil
from pathlib import Path

import pytest

from mortgagellm import manifest, registry
from mortgagellm.config import Recipe
from mortgagellm.serve import app


def model_dir(tmp_path, name, content):
    path = tmp_path / name
    path.mkdir(parents=True)
    (path / "config.json").write_text(content)
    return path


def bootstrap_run(boot, micro_model, metrics=None):
    """A bootstrap stage directory whose instruct model is the micro model; its entry."""
    shutil.copytree(micro_model, boot / "instruct")
    instruct = manifest.artifact(boot / "instruct")
    manifest.write(str(boot), manifest.Manifest(
        stage="bootstrap", fingerprint="f", config={}, outputs={"instruct": instruct},
        metrics=metrics or {}))
    return instruct


def test_versions_are_content_hashes_and_history_walks_back(tmp_path):
    reg = tmp_path / "registry.json"
    a = registry.register(reg, str(model_dir(tmp_path, "a", "{}")), "test", {"fidelity": 0.9})
    b = registry.register(reg, str(model_dir(tmp_path, "b", '{"x": 1}')), "test")
    assert a == manifest.sha256_path(tmp_path / "a") and a != b
    assert registry.register(reg, str(tmp_path / "a"), "again") == a  # same content, no change
    assert registry.read(reg)["versions"][a]["metrics"] == {"fidelity": 0.9}
    assert registry.deploy(reg, "structured", a) == (None, a)
    assert registry.deploy(reg, "structured", b[:8]) == (a, b)  # a unique prefix will do
    assert registry.current(reg, "structured")[0] == b
    assert registry.current(reg, "conversational") is None
    assert registry.rollback(reg, "structured") == (b, a)
    with pytest.raises(ValueError, match="no earlier deployed version"):
        registry.rollback(reg, "structured")
    with pytest.raises(ValueError, match="names 0 registered versions"):
        registry.deploy(reg, "structured", "deadbeef")


def test_first_start_serves_the_bootstrap_instruct_model(tmp_path, micro_model):
    boot = tmp_path / "run" / "bootstrap"
    instruct = bootstrap_run(boot, micro_model, {"instruct": {"fidelity": 1.0}})
    recipe = Recipe.model_validate({"run": {"output_dir": str(tmp_path / "run")}})
    for expert in ("structured", "conversational"):  # read before any deploy: nothing written
        assert app.served_model(recipe, expert) == (instruct["sha256"], str(boot / "instruct"))
    assert not registry.registry_path(recipe).exists()
    assert registry.sync(recipe) == {"structured": instruct["sha256"],
                                     "conversational": instruct["sha256"]}
    stored = str(registry.store_dir(registry.registry_path(recipe), instruct["sha256"]))
    for expert in ("structured", "conversational"):  # the registered copy, not the stage dir
        assert app.served_model(recipe, expert) == (instruct["sha256"], stored)
    entry = registry.read(registry.registry_path(recipe))["versions"][instruct["sha256"]]
    assert entry["source"] == "bootstrap:instruct" and entry["metrics"] == {"fidelity": 1.0}


def test_serve_reads_the_experts_from_an_s3_output_dir(s3_bucket, tmp_path, micro_model):
    """The run published to s3:// elsewhere: serve downloads the stage's model into its own
    cache and registers that copy; registry and keys stay in the cache."""
    uri = f"{s3_bucket}/run/bootstrap"
    instruct = bootstrap_run(tmp_path / "elsewhere" / "bootstrap", micro_model)
    published = manifest.publish(manifest.read(str(tmp_path / "elsewhere" / "bootstrap")),
                                 tmp_path / "elsewhere" / "bootstrap", uri)
    assert published.output_path("instruct") == f"{uri}/instruct"
    recipe = Recipe.model_validate({"run": {"output_dir": f"{s3_bucket}/run",
                                            "cache_dir": str(tmp_path / "cache")}})
    assert registry.sync(recipe) == {"structured": instruct["sha256"],
                                     "conversational": instruct["sha256"]}
    assert registry.registry_path(recipe) == tmp_path / "cache" / "serve" / "registry.json"
    entry = registry.read(registry.registry_path(recipe))["versions"][instruct["sha256"]]
    assert entry["copied_from"] == str(tmp_path / "cache" / "bootstrap" / "instruct")
    assert manifest.sha256_path(entry["path"]) == instruct["sha256"]
    assert app.served_model(recipe, "structured") == (instruct["sha256"], entry["path"])


def test_with_an_s3_run_each_version_is_published_and_a_replica_elsewhere_fetches_it(
        s3_bucket, tmp_path, micro_model, monkeypatch):
    """No shared volume: sync publishes each registered version to <output_dir>/serve/registry/
    <version>, the experts' user_config names it, and a replica on a node without the registry's
    files loads a hash-checked copy from its own cache."""
    from mortgagellm.cluster import storage

    instruct = bootstrap_run(tmp_path / "elsewhere" / "bootstrap", micro_model)
    manifest.publish(manifest.read(str(tmp_path / "elsewhere" / "bootstrap")),
                     tmp_path / "elsewhere" / "bootstrap", f"{s3_bucket}/run/bootstrap")
    recipe = Recipe.model_validate({"run": {"output_dir": f"{s3_bucket}/run",
                                            "cache_dir": str(tmp_path / "cache")}})
    uploads = []
    real_upload = storage.upload
    monkeypatch.setattr(storage, "upload", lambda local, uri: uploads.append(uri) or
                        real_upload(local, uri))
    version = instruct["sha256"]
    registry.sync(recipe)
    published = f"{s3_bucket}/run/serve/registry/{version}"
    assert registry.published_dir(recipe) == f"{s3_bucket}/run/serve/registry"
    assert registry.read(registry.registry_path(recipe))["versions"][version]["uri"] == published
    assert uploads == [published]  # once, though both experts serve it
    registry.sync(recipe)
    assert uploads == [published]  # published already: not again
    served = app.user_config(recipe, "conversational")
    assert (served["uri"], served["run"]) == (published, recipe.run.for_nodes())
    other = served | {"model": str(tmp_path / "not-on-this-node" / version),
                      "run": {"output_dir": f"{s3_bucket}/run", "cache_dir": str(tmp_path / "n2")}}
    fetched = registry.node_weights(other)
    assert fetched == str(tmp_path / "n2" / "serve" / "registry" / version)
    assert manifest.sha256_path(fetched) == version
    assert registry.node_weights(served) == served["model"]  # here: the store, rehashed
    storage.write_bytes(f"{published}/config.json", b"{}")  # changed in the bucket
    with pytest.raises(storage.StorageError, match=f"not {version}"):
        registry.node_weights(other | {"run": {"output_dir": f"{s3_bucket}/run",
                                               "cache_dir": str(tmp_path / "n3")}})


def test_a_version_registered_before_the_run_was_remote_is_published_once_asked(
        s3_bucket, tmp_path):
    reg = tmp_path / "registry.json"
    version = registry.register(reg, str(model_dir(tmp_path, "a", "{}")), "test")
    assert "uri" not in registry.read(reg)["versions"][version]
    assert registry.register(reg, str(tmp_path / "a"), "again", publish=f"{s3_bucket}/reg") \
        == version
    assert registry.read(reg)["versions"][version]["uri"] == f"{s3_bucket}/reg/{version}"
    local = Recipe.model_validate({"run": {"output_dir": str(tmp_path / "run")}})
    assert registry.published_dir(local) is None  # every node reads the store
    assert app.weights(local, version, "/d") == {"model": "/d", "version": version}


def test_trained_experts_go_live_and_a_rollback_stays(tmp_path, micro_model):
    run = tmp_path / "run"
    boot = run / "bootstrap"
    bootstrap_run(boot, micro_model)
    recipe = Recipe.model_validate({"run": {"output_dir": str(run)}})
    instruct = registry.sync(recipe)["structured"]  # no sft yet: instruct stands in

    sft = model_dir(tmp_path / "run" / "sft", "model", "trained")
    manifest.write(str(run / "sft"), manifest.Manifest(
        stage="sft", fingerprint="s", config={}, outputs={"model": manifest.artifact(sft)},
        metrics={"expert": {"decision": 0.5}, "history": [{"step": 1, "loss": 2.0}]}))
    assert app.served_model(recipe, "structured")[0] == instruct  # the app only reads
    registry.sync(recipe)
    version, path = app.served_model(recipe, "structured")  # the trained expert goes live
    assert version == manifest.sha256_path(sft) and version != instruct
    assert path == str(registry.store_dir(registry.registry_path(recipe), version))
    entry = registry.read(registry.registry_path(recipe))["versions"][version]
    assert entry["source"] == "sft:model" and entry["metrics"] == {"expert": {"decision": 0.5}}
    assert app.served_model(recipe, "conversational")[0] == instruct  # no dpo output yet

    registry.rollback(registry.registry_path(recipe), "structured")
    registry.sync(recipe)
    assert app.served_model(recipe, "structured")[0] == instruct  # known version: no re-deploy


def test_recipe_model_seeds_the_registry_once(tmp_path):
    first = model_dir(tmp_path, "first", "{}")
    recipe = Recipe.model_validate({"run": {"output_dir": str(tmp_path / "run")},
                                    "serve": {"structured": {"model": str(first)}}})
    registry.sync(recipe)
    version, path = app.served_model(recipe, "structured")
    assert version == manifest.sha256_path(first) == manifest.sha256_path(path)
    assert path == str(registry.store_dir(registry.registry_path(recipe), version))
    both = recipe.model_copy(update={"serve": recipe.serve.model_copy(update={
        "conversational": recipe.serve.structured})})  # one directory for both experts
    registry.sync(both)
    assert app.served_model(both, "conversational") == (version, path)
    other = registry.register(registry.registry_path(recipe), str(model_dir(tmp_path, "o", "1")),
                              "t")
    registry.deploy(registry.registry_path(recipe), "structured", other)
    assert app.served_model(recipe, "structured")[0] == other  # the registry wins afterwards


def test_build_app_only_reads(tmp_path, micro_model, serve_output):
    """build_app with a first-start recipe: the Application is built from what is there, and
    no file is written anywhere under the run (no registry, no key, no tier-1 training)."""
    run = tmp_path / "run"
    boot = run / "bootstrap"
    bootstrap_run(boot, micro_model)
    shutil.copytree(serve_output / "corpus", run / "corpus")  # the corpus stage's tier 1
    config = tmp_path / "recipe.yaml"
    config.write_text(f"run: {{output_dir: {run}}}\nserve: {{auth: {{create_demo_key: true}}}}\n")
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    built = app.build_app({"config": str(config)})
    assert type(built).__name__ == "Application"
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_build_app_without_a_corpus_run_says_which_stage_to_run(tmp_path, micro_model):
    boot = tmp_path / "run" / "bootstrap"
    bootstrap_run(boot, micro_model)
    config = tmp_path / "recipe.yaml"
    config.write_text(f"run: {{output_dir: {tmp_path / 'run'}}}\n")
    with pytest.raises(FileNotFoundError, match="no corpus output .*mortgagellm corpus"):
        app.build_app({"config": str(config)})


def test_a_rerun_does_not_change_a_registered_version_and_rollback_restores_weights(tmp_path):
    """sft reruns rewrite their output directory in place; the registered version keeps its
    own copy, so rolling back serves the old weights again."""
    reg = tmp_path / "serve" / "registry.json"
    stage = model_dir(tmp_path, "sft/model", "weights v1")
    v1 = registry.register(reg, str(stage), "sft:model")
    registry.deploy(reg, "structured", v1)
    (stage / "config.json").write_text("weights v2")  # the rerun, same directory
    v2 = registry.register(reg, str(stage), "sft:model")
    registry.deploy(reg, "structured", v2)
    assert registry.rollback(reg, "structured") == (v2, v1)
    version, entry = registry.current(reg, "structured")
    assert (Path(entry["path"]) / "config.json").read_text() == "weights v1"
    assert entry["path"] == str(tmp_path / "serve" / "registry" / v1)
    assert registry.verified(entry["path"], v1) == entry["path"]


def test_a_tampered_version_is_refused_on_load(tmp_path):
    reg = tmp_path / "registry.json"
    version = registry.register(reg, str(model_dir(tmp_path, "m", "{}")), "t")
    stored = registry.store_dir(reg, version)
    (stored / "config.json").write_text('{"evil": 1}')
    with pytest.raises(ValueError, match=f"hashes to .*, not to its version {version[:12]}: its "
                       "files were changed after registration; refusing to serve it"):
        registry.verified(stored, version)
    with pytest.raises(ValueError, match="changed after registration"):  # and no re-register
        registry.register(tmp_path / "other.json", str(stored), "t", version=version)


def _metrics_writer(args):
    reg, name, n = args
    for i in range(n):
        registry.set_metrics(reg, VERSION, {f"{name}-{i}": i})


VERSION = "ab" * 32


def test_two_concurrent_writers_lose_no_update(tmp_path):
    """Two processes each add 60 metric keys to one version: every key is there (without the
    lock, read-modify-write races drop some)."""
    import multiprocessing

    reg = tmp_path / "registry.json"
    registry._write(reg, {"versions": {VERSION: {"metrics": {}}},
                          "deployed": {"structured": [], "conversational": []}})
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pool.map(_metrics_writer, [(reg, "a", 60), (reg, "b", 60)])
    assert len(registry.read(reg)["versions"][VERSION]["metrics"]) == 120
