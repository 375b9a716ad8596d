"""A 2-worker pretrain job on a 2-node local Ray cluster uses both nodes (STRICT_SPREAD)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipelines.test_pretrain import make_run

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_two_workers_land_on_two_nodes(tiny_pair, tmp_path):
    recipe = make_run(tmp_path, tiny_pair)
    recipe_path = tmp_path / "two-node.yaml"
    recipe_path.write_text(f"run:\n  output_dir: {recipe.run.output_dir}\n"
                           "pretrain:\n  warmup_steps: 1\n  deepspeed:\n    micro_batch_size: 2\n")
    env = os.environ | {"DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(ROOT / "tests/cluster/two_node_run.py"),
                          str(recipe_path), str(tmp_path)], capture_output=True, text=True,
                         env=env, timeout=540, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = {line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1])
             for line in out.stdout.splitlines() if line.startswith(("PLACEMENT", "NODES"))}
    placement, nodes = lines["PLACEMENT"], lines["NODES"]
    assert [p["rank"] for p in placement] == [0, 1]
    assert len(nodes) == 2 and {p["node_id"] for p in placement} == set(nodes)
