"""What the KubeRay operator checks when it reconciles (name length, replicas, token auth vs
rayVersion, a RayJob's cluster source ...) and this project's own rules: heads schedule no work,
RayJob clusters are copies of the training cluster, the recipes and the Serve app fit the worker
groups, mounted Secrets and volumes exist, and the control ports stay private."""

import copy

import pytest
import yaml

from mortgagellm.config import load_recipe
from tests.k8s import manifests as m


def test_every_resource_passes_the_operator_checks(everything):
    assert [e for _, d in everything for e in m.rule_errors(d)] == []


def ray_docs(everything, kind=None):
    return [(src, d) for src, d in everything
            if d["kind"] in m.CRD_FILES and (kind is None or d["kind"] == kind)]


def test_every_cluster_uses_token_auth_and_a_head_that_schedules_no_work(everything):
    specs = [(w, s) for _, d in ray_docs(everything) for w, s in m.cluster_specs(d)]
    assert len(specs) == 4 * len(m.sources(everything))  # RayCluster, 2 RayJobs, RayService
    for where, spec in specs:
        assert spec["authOptions"] == {"mode": "token"}, where
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", where
        assert spec["enableInTreeAutoscaling"] is True, where


def test_rayjob_clusters_are_copies_of_the_training_cluster(everything):
    for source in m.sources(everything):
        docs = [d for src, d in everything if src == source]
        (training,) = [d["spec"] for d in docs if d["kind"] == "RayCluster"]
        jobs = [d for d in docs if d["kind"] == "RayJob"]
        assert len(jobs) == 2
        for job in jobs:
            assert job["spec"]["rayClusterSpec"] == training, f"{source} {m.label(job)}"
            assert job["spec"]["shutdownAfterJobFinishes"] is True
            assert job["spec"]["suspend"] is True  # applying an overlay starts no training


def test_each_rayjob_recipe_fits_its_cluster(everything):
    for source, job in ray_docs(everything, "RayJob"):
        recipe = load_recipe(*m.entrypoint_recipe(job["spec"]["entrypoint"]))
        assert m.recipe_fit_errors(recipe.pretrain.scaling, job["spec"]["rayClusterSpec"],
                                   m.label(job)) == [], source


def test_production_recipe_fits_the_training_cluster_and_too_big_does_not(base_docs):
    (cluster,) = [d for d in base_docs if d["kind"] == "RayCluster"]
    scaling = load_recipe(m.ROOT / "configs/llama3-8b-a100.yaml").pretrain.scaling
    assert (scaling.num_nodes, scaling.workers_per_node, scaling.use_gpu) == (4, 8, True)
    assert m.recipe_fit_errors(scaling, cluster["spec"], "training") == []
    bigger = scaling.model_copy(update={"num_nodes": 5})
    assert m.recipe_fit_errors(bigger, cluster["spec"], "training") == [
        "training: no worker group holds 5 node(s) x 64 CPUs x 8 GPUs (pretrain.scaling)"]


def test_serve_app_fits_the_serving_cluster(everything):
    services = ray_docs(everything, "RayService")
    assert len(services) == len(m.sources(everything))
    for source, service in services:
        assert m.serve_fit_errors(service) == [], source


def test_serve_fit_can_fail(base_docs):
    (service,) = copy.deepcopy([d for d in base_docs if d["kind"] == "RayService"])
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    config["applications"][0]["deployments"][1]["autoscaling_config"]["max_replicas"] = 6
    service["spec"]["serveConfigV2"] = yaml.safe_dump(config)
    assert m.serve_fit_errors(service) == [
        ("RayService/mortgagellm: deployments at max replicas need 48 CPUs and 10 GPUs; the "
         "worker groups at max hold 80 and 8")]
    config["applications"][0]["deployments"][1]["ray_actor_options"]["num_gpus"] = 2
    service["spec"]["serveConfigV2"] = yaml.safe_dump(config)
    assert "no worker pod holds one StructuredExpert replica (4 CPUs, 2 GPUs)" in \
        m.serve_fit_errors(service)[0]


def test_mounted_secrets_and_volumes_exist(everything, base_docs):
    for source in m.sources(everything):
        assert m.reference_errors([d for src, d in everything if src == source]) == [], source
    without_secret = [d for d in base_docs if d["kind"] != "Secret"]
    assert sorted(m.reference_errors(without_secret)) == sorted(
        ["RayService/mortgagellm: mounts missing Secret mortgagellm-api-keys"] * 3
        + ["RayService/mortgagellm: mounts missing Secret mortgagellm-audit-key"])


def test_network_policy_keeps_gcs_and_dashboard_private(everything):
    policies = [d for _, d in everything if d["kind"] == "NetworkPolicy"]
    assert len(policies) == len(m.sources(everything))
    for policy in policies:
        assert m.network_policy_errors(policy) == []
    leaky = copy.deepcopy(policies[0])
    leaky["spec"]["ingress"].append({"ports": [{"protocol": "TCP", "port": 8265}]})
    leaky["spec"]["ingress"].append({"from": [{"namespaceSelector": {}}]})
    assert m.network_policy_errors(leaky) == [
        "NetworkPolicy/mortgagellm-ray-private: ingress rule 4 opens [8265] to any source",
        "NetworkPolicy/mortgagellm-ray-private: ingress rule 5 opens every port to any source"]


# ---------------------------------------------------------------- the operator checks can fail


@pytest.fixture
def job():
    (doc,) = m.load(m.K8S / "base/rayjob.recipe.yaml")
    return copy.deepcopy(doc)


def test_too_long_or_non_dns_name_is_reported(job):
    job["metadata"]["name"] = "mortgagellm-" + "x" * 36  # 48 > 47
    assert m.rule_errors(job) == [
        "RayJob/" + job["metadata"]["name"] + ": name is 48 characters, the operator allows 47"]
    job["metadata"]["name"] = "Mortgagellm_recipe"
    assert m.rule_errors(job) == ["RayJob/Mortgagellm_recipe: name is not a DNS-1035 label"]


def test_min_above_max_replicas_is_reported(job):
    group = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    group.update(minReplicas=3, maxReplicas=2, replicas=2)
    assert m.rule_errors(job) == [
        "RayJob/mortgagellm-recipe.rayClusterSpec: group a100: minReplicas 3 > maxReplicas 2",
        "RayJob/mortgagellm-recipe.rayClusterSpec: group a100: replicas 2 outside [3, 2]"]


def test_token_auth_needs_ray_2_52(job):
    job["spec"]["rayClusterSpec"]["rayVersion"] = "2.51.2"
    assert m.rule_errors(job) == [("RayJob/mortgagellm-recipe.rayClusterSpec: authOptions.mode "
                                   "token needs rayVersion >= 2.52.0 (got 2.51.2)")]
    del job["spec"]["rayClusterSpec"]["rayVersion"]
    assert "(got none)" in m.rule_errors(job)[0]


def test_rayjob_needs_a_cluster_and_suspend_needs_shutdown(job):
    del job["spec"]["rayClusterSpec"]
    job["spec"]["shutdownAfterJobFinishes"] = False
    assert m.rule_errors(job) == [
        "RayJob/mortgagellm-recipe: one of rayClusterSpec or clusterSelector must be set",
        "RayJob/mortgagellm-recipe: a suspended RayJob needs shutdownAfterJobFinishes",
        "RayJob/mortgagellm-recipe: ttlSecondsAfterFinished needs shutdownAfterJobFinishes"]
    job["spec"].update(clusterSelector={"ray.io/cluster": "mortgagellm-training"}, suspend=False,
                       shutdownAfterJobFinishes=True)
    assert m.rule_errors(job) == []


def test_resources_twice_and_bad_upgrade_type_are_reported(base_docs):
    (service,) = copy.deepcopy([d for d in base_docs if d["kind"] == "RayService"])
    service["spec"]["upgradeStrategy"]["type"] = "BlueGreen"
    router = service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    router.update(rayStartParams={"num-cpus": "4"}, resources={"CPU": "4"})
    assert m.rule_errors(service) == [
        ("RayService/mortgagellm.rayClusterConfig: group router sets resources both in "
         "rayStartParams and in resources"),
        ("RayService/mortgagellm: upgradeStrategy.type 'BlueGreen' is not one of ['NewCluster', "
         "'NewClusterWithIncrementalUpgrade', 'None']")]
