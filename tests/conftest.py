"""Shared fixtures: one embedded Ray cluster for the whole session, and the tiny bootstrap pair."""

import os

# Read by ray when it is first imported: every Ray listener then binds to 127.0.0.1.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

# Ray writes some files into its *default* temp dir ($RAY_TMPDIR/ray, else $TMPDIR/ray or
# /tmp/ray) whatever temp_dir a cluster is given (ray_current_cluster, for one). The session's
# Ray, and every subprocess it starts, defaults to an empty tree of its own instead: never a
# /tmp/ray that another user's cluster owns, and no test passes only because an earlier Ray run
# left /tmp/ray behind (the folder is not created here: code that needs it must make it).
_RAY_DEFAULT = tempfile.mkdtemp(prefix="mllm-t-", dir="/tmp")  # short: socket path limit
os.environ["RAY_TMPDIR"] = _RAY_DEFAULT
atexit.register(shutil.rmtree, _RAY_DEFAULT, ignore_errors=True)
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """gpu tests are skipped without CUDA (torch is imported only if such a test exists).

    MLLM_TEST_ORDER=reverse runs the suite back to front: a test that passes only because an
    earlier one ran (a status it did not send, a file it did not write) fails that way."""
    if os.environ.get("MLLM_TEST_ORDER") == "reverse":
        items.reverse()
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    import torch

    if not torch.cuda.is_available():
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(scope="session")
def ray_cluster():
    """The session's single local Ray cluster (loopback, token auth); stopped at the end.

    Only this process's own cluster is shut down; nothing else on the machine is touched.
    """
    from mortgagellm.cluster.runtime import init_ray
    from mortgagellm.config import RayConfig

    run_dir = Path(tempfile.mkdtemp(prefix="mllm-run-"))
    temp_dir = tempfile.mkdtemp(prefix="mllm-ray-", dir="/tmp")  # short: socket path limit
    cfg = RayConfig(num_cpus=4, object_store_mb=256, temp_dir=temp_dir)
    context = init_ray(cfg, run_dir)
    import ray

    yield {"context": context, "run_dir": run_dir, "config": cfg}
    ray.shutdown()
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_recipe_path(tmp_path_factory):
    """A recipe that builds the tiny preset pair into a session temp dir.

    Its base sees no generated mortgage documents: the residual tests make their own DAPT step
    on mortgage text, sized for a base that has seen only the home-finance prose."""
    out = tmp_path_factory.mktemp("tiny-run")
    path = out / "tiny.yaml"
    path.write_text(f"run:\n  output_dir: {out / 'run'}\n  seed: 0\n"
                    "bootstrap:\n  preset: tiny\n  eval_instructions: 30\n"
                    "  domain_documents: 0\n")
    return path


@pytest.fixture(scope="session")
def tiny_pair(tiny_recipe_path):
    """The tiny base + instruct pair, built once per session through the recipe runner."""
    from mortgagellm.config import load_recipe
    from mortgagellm.pipelines.recipe import run_recipe

    recipe = load_recipe(tiny_recipe_path)
    (manifest,) = run_recipe(recipe, last="bootstrap")
    return manifest


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """A copy of the package's source that manifest.code_hash reads instead of the real one:
    a test edits it to see a code change re-run a stage, and the real tree stays untouched."""
    from mortgagellm import manifest

    copy = tmp_path / "src" / "mortgagellm"
    shutil.copytree(manifest.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(manifest, "PACKAGE", copy)
    manifest._closure.cache_clear()
    yield copy
    manifest._closure.cache_clear()


@pytest.fixture(scope="session")
def s3_server():
    """A local S3 server (moto) on 127.0.0.1 for the session: its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
"""Credentials and region for the local S3 server (moto accepts any)."""


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
    """A new, empty bucket on the local S3 server, as s3://<name>, with the environment that
    pyarrow reads (AWS_ENDPOINT_URL, credentials, region) pointing at the server."""
    import uuid

    from pyarrow import fs

    for name, value in S3_ENV.items() | {("AWS_ENDPOINT_URL", s3_server)}:
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    bucket = f"mllm-{uuid.uuid4().hex[:12]}"
    fs.S3FileSystem(endpoint_override=s3_server, allow_bucket_creation=True).create_dir(bucket)
    return f"s3://{bucket}"
