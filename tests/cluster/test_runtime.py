"""init_ray on loopback with token auth; Ray Data and a Train worker share 2 cores; scaling."""

import os
import subprocess
import sys

import psutil
import pytest

from mortgagellm.cluster.runtime import check_fits, init_ray, logical_cpus, scaling_config
from mortgagellm.config import RayConfig, ScalingSettings


def test_logical_cpus_default_leaves_room_for_data():
    assert logical_cpus(RayConfig(num_cpus=6)) == 6
    assert logical_cpus(RayConfig()) >= 4


def test_check_fits_refuses_more_workers_than_logical_cpus():
    check_fits(RayConfig(num_cpus=4), ScalingSettings(workers_per_node=2, cpus_per_worker=1.0))
    with pytest.raises(ValueError, match="raise ray.num_cpus"):
        check_fits(RayConfig(num_cpus=4), ScalingSettings(workers_per_node=4))
    # A remote cluster's capacity is the autoscaler's business, not checked here.
    check_fits(RayConfig(address="auto"), ScalingSettings(workers_per_node=64))


def test_scaling_config_from_recipe():
    sc = scaling_config(ScalingSettings(num_nodes=2, workers_per_node=8, use_gpu=True,
                                        cpus_per_worker=4, placement_strategy="SPREAD",
                                        accelerator_type="A100"))
    assert sc.num_workers == 16 and sc.use_gpu
    assert sc.resources_per_worker == {"CPU": 4, "GPU": 1}
    assert sc.placement_strategy == "SPREAD" and sc.accelerator_type == "A100"


@pytest.mark.integration
def test_embedded_cluster_listens_on_loopback_only(ray_cluster):
    import ray

    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    assert ray.cluster_resources()["CPU"] == 4
    listening = [(p.name(), c.laddr.ip) for p in psutil.Process().children(recursive=True)
                 for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert listening, "expected Ray's own processes to listen"
    assert {ip.removeprefix("::ffff:") for _, ip in listening} == {"127.0.0.1"}, listening


@pytest.mark.integration
def test_token_auth_is_on_with_the_token_in_the_run_dir(ray_cluster):
    import ray

    token = ray_cluster["run_dir"] / "ray" / "auth_token"
    assert oct(token.stat().st_mode & 0o777) == "0o600" and len(token.read_text()) == 64

    @ray.remote
    def auth_mode():
        return os.environ.get("RAY_AUTH_MODE"), os.environ.get("RAY_AUTH_TOKEN_PATH")

    assert ray.get(auth_mode.remote()) == ("token", str(token))


@pytest.mark.integration
def test_a_client_with_the_wrong_token_is_refused(ray_cluster, tmp_path):
    wrong = tmp_path / "token"
    wrong.write_text("0" * 64)
    env = os.environ | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(wrong)}
    gcs = ray_cluster["context"].address_info["gcs_address"]
    code = f"import ray; ray.init(address='{gcs}'); print('JOINED')"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode != 0 and "JOINED" not in out.stdout
    assert "auth" in out.stderr.lower()


@pytest.mark.integration
def test_second_init_in_the_same_process_is_refused(ray_cluster):
    with pytest.raises(RuntimeError, match="already initialised"):
        init_ray(ray_cluster["config"], ray_cluster["run_dir"])


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_train_worker_and_ray_data_run_together(ray_cluster, tmp_path):
    """The case that hung with num_cpus=2: one TorchTrainer worker streaming a Ray Dataset whose
    map_batches needs CPUs of its own. With the recipe's logical CPUs it completes."""
    import ray.data
    import ray.train
    from ray.train import RunConfig
    from ray.train.torch import TorchTrainer

    def read_all_rows(config):  # nested, so cloudpickle ships it by value to the worker
        shard = ray.train.get_dataset_shard("train")
        total = sum(int(b["doubled"].sum()) for b in shard.iter_batches(batch_size=16))
        # Train V2 keeps only metrics reported with a checkpoint; a file is simpler here.
        with open(config["out"], "w") as f:
            f.write(str(total))

    ds = ray.data.range(200).map_batches(lambda b: {"doubled": b["id"] * 2})
    trainer = TorchTrainer(
        read_all_rows, train_loop_config={"out": str(tmp_path / "total")},
        scaling_config=scaling_config(ScalingSettings(cpus_per_worker=1)),
        datasets={"train": ds}, run_config=RunConfig(storage_path=str(tmp_path), name="coexist"))
    trainer.fit()
    assert int((tmp_path / "total").read_text()) == 2 * sum(range(200))


def test_workers_of_the_embedded_cluster_drop_the_placement_group_cleaners_warnings(ray_cluster):
    """Without a dashboard the cleaner's State API asks fail every second; each was a warning
    line on the terminal (638 of a demo's 1,046). Its errors still show; other loggers keep
    their levels."""
    import logging

    import ray

    from mortgagellm.cluster.worker_setup import PLACEMENT_GROUP_CLEANER

    @ray.remote(num_cpus=0)
    def levels() -> tuple[int, int]:
        return (logging.getLogger(PLACEMENT_GROUP_CLEANER).getEffectiveLevel(),
                logging.getLogger("mortgagellm.training.loop").getEffectiveLevel())

    cleaner, ours = ray.get(levels.remote())
    assert cleaner == logging.ERROR and ours < logging.ERROR
