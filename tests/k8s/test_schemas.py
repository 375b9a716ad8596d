"""Every manifest in k8s/ and every rendered overlay against its schema: the KubeRay v1.7 CRDs
(vendored in tests/k8s/crds) for ray.io kinds, Kubernetes' own for core kinds. Strict: an unknown
field is an error. Broken copies show each kind of mistake is caught."""

import copy

import pytest

from tests.k8s import manifests as m

FILES = m.resource_files()


def test_the_crds_are_there():
    assert sorted(p.name for p in m.CRDS.glob("*.yaml")) == sorted(m.CRD_FILES.values())


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(m.K8S)))
def test_manifest_matches_its_schema(path):
    (doc,) = m.load(path)  # one resource per file
    kind, purpose = path.name.split(".")[:2]
    assert kind == doc["kind"].lower() and purpose, f"{path.name}: name it <kind>.<purpose>.yaml"
    assert m.schema_errors(doc) == []


def test_base_has_every_piece_of_the_stack(base_docs):
    names = {(d["kind"], d["metadata"]["name"]) for d in base_docs}
    assert names == {("RayCluster", "mortgagellm-training"), ("RayJob", "mortgagellm-recipe"),
                     ("RayJob", "mortgagellm-pretrain"), ("RayService", "mortgagellm"),
                     ("Secret", "mortgagellm-api-keys"), ("Secret", "mortgagellm-audit-key"),
                     ("NetworkPolicy", "mortgagellm-ray-private"),
                     ("PersistentVolumeClaim", "mortgagellm-shared"),
                     ("ConfigMap", "mortgagellm-grafana-dashboard")}


@pytest.mark.parametrize("overlay", ["cpu-dev", "a100-prod"])
def test_rendered_overlay_matches_the_schemas(rendered, overlay):
    docs = rendered[overlay]
    assert {d["kind"] for d in docs} >= {"RayCluster", "RayJob", "RayService", "Namespace"}
    assert [e for d in docs for e in m.schema_errors(d)] == []


# ---------------------------------------------------------------- the checks can fail


@pytest.fixture
def cluster():
    (doc,) = m.load(m.K8S / "base/raycluster.training.yaml")
    return copy.deepcopy(doc)


def test_typo_in_a_field_name_is_reported(cluster):
    cluster["spec"]["workerGroupSpecs"][0]["minReplica"] = 1
    cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = 1
    errors = m.schema_errors(cluster)
    assert len(errors) == 2
    assert "spec.workerGroupSpecs.0: Additional properties are not allowed ('minReplica'" in \
        errors[0] + errors[1]
    assert any("containers.0" in e and "'imagePullPolicyy'" in e for e in errors)


def test_wrong_type_and_bad_enum_are_reported(cluster):
    cluster["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "four"
    cluster["spec"]["authOptions"]["mode"] = "tokens"
    errors = " | ".join(m.schema_errors(cluster))
    assert "maxReplicas: 'four' is not of type 'integer'" in errors
    assert "authOptions.mode: 'tokens' is not one of ['disabled', 'token']" in errors


def test_defaults_are_applied_before_required(cluster):
    group = cluster["spec"]["workerGroupSpecs"][0]
    del group["minReplicas"], group["maxReplicas"]  # required, but the CRD has defaults
    assert m.schema_errors(cluster) == []
    del group["groupName"]  # required, no default
    assert m.schema_errors(cluster) == [
        ("RayCluster/mortgagellm-training: spec.workerGroupSpecs.0: 'groupName' is a required "
         "property")]


def test_nulls_count_as_absent(cluster):
    cluster["spec"]["enableInTreeAutoscaling"] = None  # a boolean field
    assert m.schema_errors(cluster) == []


def test_metadata_and_core_kinds_are_strict_too(cluster):
    cluster["metadata"]["label"] = {"a": "b"}
    assert "metadata: Additional properties are not allowed ('label'" in m.schema_errors(cluster)[0]
    (policy,) = m.load(m.K8S / "base/networkpolicy.ray-private.yaml")
    policy["spec"]["ingres"] = []
    assert "('ingres' was unexpected)" in m.schema_errors(policy)[0]
