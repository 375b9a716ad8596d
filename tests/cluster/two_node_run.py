"""Script for test_multinode: a 2-node Ray cluster on loopback (ray.cluster_utils.Cluster, token
auth, own temp dir, also as Ray's default temp dir) runs the pretrain stage with 2 workers, one
per node (STRICT_SPREAD), and prints the ranks' placement and the nodes as JSON. Only the cluster
this script started is shut down.

With NODE2_CACHE the second node's raylet, and so every worker it starts, gets
XDG_CACHE_HOME=NODE2_CACHE: the cache root another machine would have (the driver and the
head's workers keep this process's).

Usage: python tests/cluster/two_node_run.py RECIPE.yaml RUN_DIR [NODE2_CACHE]
"""

import os
import secrets
import sys
import tempfile
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# Cluster() writes ray_current_cluster into Ray's *default* temp dir whatever temp_dir says:
# point that default at this script's own tree (short: socket path limit), never /tmp/ray.
temp_dir = tempfile.mkdtemp(prefix="mllm-2n-", dir="/tmp")
os.environ["RAY_TMPDIR"] = temp_dir
os.makedirs(os.path.join(temp_dir, "ray"))
run_dir = Path(sys.argv[2])
token = run_dir / "cluster_token"
token.write_text(secrets.token_hex(32))
os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})

import json  # noqa: E402

from ray.cluster_utils import Cluster  # noqa: E402

from mortgagellm.config import load_recipe  # noqa: E402
from mortgagellm.pipelines import pretrain  # noqa: E402

node = {"num_cpus": 2, "node_ip_address": "127.0.0.1", "object_store_memory": 128 << 20}
head = node | {"temp_dir": os.path.join(temp_dir, "ray")}
cluster = Cluster(initialize_head=True, head_node_args=head)
try:
    second = cluster.add_node(**node, env_vars={"XDG_CACHE_HOME": sys.argv[3]} if
                              len(sys.argv) > 3 else None)
    cluster.wait_for_nodes()
    recipe = load_recipe(sys.argv[1], [
        f"ray.address={cluster.address}", "pretrain.scaling.num_nodes=2",
        "pretrain.scaling.placement_strategy=STRICT_SPREAD", "pretrain.max_steps=4",
        "pretrain.checkpoint_every=4", "pretrain.log_every=2"])
    m = pretrain.run(recipe)
    print("PLACEMENT " + json.dumps(m.metrics["placement"]))
    print("NODES " + json.dumps(sorted(n["NodeID"] for n in __import__("ray").nodes())))
    print("SECOND " + json.dumps(second.node_id))
finally:
    __import__("ray").shutdown()
    cluster.shutdown()
    __import__("shutil").rmtree(temp_dir, ignore_errors=True)
