"""A 2-worker pretrain job on a 2-node local Ray cluster uses both nodes (STRICT_SPREAD): with a
local run.output_dir (a volume the nodes share), and with run.output_dir on S3 (the local server,
tests/conftest.py) and no volume in common: the second node has a cache root of its own, and
nothing the driver wrote locally is read there."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mortgagellm import manifest
from mortgagellm.cluster import storage
from tests.pipelines.test_pretrain import make_run

ROOT = Path(__file__).resolve().parents[2]


def run_two_nodes(recipe_path, tmp_path, env, *node2_cache):
    """two_node_run.py in a process of its own; its PLACEMENT, NODES and SECOND lines."""
    out = subprocess.run([sys.executable, str(ROOT / "tests/cluster/two_node_run.py"),
                          str(recipe_path), str(tmp_path), *map(str, node2_cache)],
                         capture_output=True, text=True, env=env, timeout=1500, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return {line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1])
            for line in out.stdout.splitlines() if line.startswith(("PLACEMENT", "NODES",
                                                                    "SECOND"))}


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_two_workers_land_on_two_nodes(tiny_pair, tmp_path):
    recipe = make_run(tmp_path, tiny_pair)
    recipe_path = tmp_path / "two-node.yaml"
    recipe_path.write_text(f"run:\n  output_dir: {recipe.run.output_dir}\n"
                           "pretrain:\n  warmup_steps: 1\n  deepspeed:\n    micro_batch_size: 2\n")
    lines = run_two_nodes(recipe_path, tmp_path, os.environ | {"DS_ACCELERATOR": "cpu",
                                                               "PYTHONPATH": str(ROOT)})
    placement, nodes = lines["PLACEMENT"], lines["NODES"]
    assert [p["rank"] for p in placement] == [0, 1]
    assert len(nodes) == 2 and {p["node_id"] for p in placement} == set(nodes)


@pytest.mark.integration
@pytest.mark.slow  # 3.6 min on an idle 2-core machine, 14 min under load
@pytest.mark.timeout(1800)
def test_two_nodes_without_a_shared_volume_train_from_the_bucket(tiny_pair, s3_bucket,
                                                                  tmp_path):
    run = f"{s3_bucket}/run"
    make_run(tmp_path, tiny_pair)  # bootstrap and corpus outputs, published as stages would
    for stage in ("bootstrap", "corpus"):
        local = tmp_path / "run" / stage
        manifest.publish(manifest.read(str(local)), local, f"{run}/{stage}")
    shutil.rmtree(tmp_path / "run")
    recipe_path = tmp_path / "two-node.yaml"  # no run.cache_dir: each node resolves its own
    recipe_path.write_text(f"run:\n  output_dir: {run}\n"
                           "pretrain:\n  warmup_steps: 1\n  deepspeed:\n    micro_batch_size: 2\n")
    node1, node2 = tmp_path / "node1", tmp_path / "node2"
    env = os.environ | {"DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT),
                        "XDG_CACHE_HOME": str(node1)}
    lines = run_two_nodes(recipe_path, tmp_path, env, node2)
    placement, nodes, second = lines["PLACEMENT"], lines["NODES"], lines["SECOND"]
    assert [p["rank"] for p in placement] == [0, 1]  # both records reached the driver
    assert len(nodes) == 2 and {p["node_id"] for p in placement} == set(nodes)
    assert second in nodes and [p["node_id"] for p in placement].count(second) == 1
    assert storage.subdirs(f"{run}/pretrain/scratch") == ["placement"]

    published = manifest.read(f"{run}/pretrain")
    base = published.inputs["base"]
    cache1, cache2 = (n / "mortgagellm" / "s3" / run[len("s3://"):] for n in (node1, node2))
    # The second node's rank fetched the start model into that node's own cache, checked.
    assert manifest.sha256_path(cache2 / "bootstrap" / "base") == base["sha256"]
    assert (cache2 / "bootstrap" / ".base.sha256").read_text() == base["sha256"]
    assert (cache2 / "pretrain" / "scratch").is_dir()  # its checkpoint parts, node-local
    assert not (cache2 / "corpus").exists()  # rows are read from the bucket in place
    assert (cache1 / "pretrain" / "manifest.json").is_file()  # the driver's own cache
    logs = storage.files(f"{run}/pretrain/tensorboard")  # uploaded by rank 0
    assert [n for n in logs if n.startswith("events.")], logs
