"""Storage of the served app: every path the served recipe writes (the audit log) is on a
writable volume in every pod its writer (the Router) can be scheduled in, and what build_app
reads is mounted everywhere it runs; the a100-prod overlay terminates TLS."""

import copy

import pytest
import yaml

from tests.k8s import manifests as m


def edit_config(service, change):
    """Apply `change(args, deployments)` to a RayService's serveConfigV2."""
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    app = config["applications"][0]
    change(app["args"], {d["name"]: d for d in app["deployments"]})
    service["spec"]["serveConfigV2"] = yaml.safe_dump(config)


def services(everything):
    return [(src, d) for src, d in everything if d["kind"] == "RayService"]


def test_every_served_path_is_writable_where_written(everything):
    found = services(everything)
    assert len(found) == len(m.sources(everything))
    for source, service in found:
        assert m.storage_errors(service) == [], source


def test_routers_run_only_in_the_group_that_mounts_the_log_writable(base_docs):
    (service,) = [d for d in base_docs if d["kind"] == "RayService"]
    assert m.served_recipe(service).serve.router.resources == {"mortgagellm_router": 1}
    unpinned = copy.deepcopy(service)  # the router resource dropped: routers may land on A100s
    edit_config(unpinned, lambda args, deps: (args.pop("serve.router.resources"),
                                              deps["Router"]["ray_actor_options"].pop("resources")))
    errors = m.storage_errors(unpinned)
    assert ("RayService/mortgagellm: group a100: Router writes "
            "/mnt/shared/mortgagellm/llama3-8b/serve/audit, but /mnt/shared is mounted "
            "read-only") in errors


def test_a_read_only_or_missing_mount_is_reported(base_docs):
    (service,) = copy.deepcopy([d for d in base_docs if d["kind"] == "RayService"])
    router = service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    mounts = router["template"]["spec"]["containers"][0]["volumeMounts"]
    shared = next(x for x in mounts if x["name"] == "shared")
    shared["readOnly"] = True  # what the manifest had before issue 16
    assert m.storage_errors(service) == [
        "RayService/mortgagellm: group router: Router writes "
        "/mnt/shared/mortgagellm/llama3-8b/serve/audit, but /mnt/shared is mounted read-only"]
    mounts.remove(shared)
    assert "RayService/mortgagellm: group router: Router uses " \
           "/mnt/shared/mortgagellm/llama3-8b/serve/audit, which is on no mounted volume" in \
           m.storage_errors(service)


def test_a_relative_output_dir_is_reported(rendered):
    """The cpu-dev bug: configs/cpu-demo.yaml's run.output_dir is runs/cpu-demo, while the
    cpu-dev RayJobs write /mnt/shared/cpu-demo; the generator now overrides it."""
    (service,) = copy.deepcopy([d for d in rendered["cpu-dev"] if d["kind"] == "RayService"])
    assert m.served_recipe(service).run.output_dir == "/mnt/shared/cpu-demo"
    edit_config(service, lambda args, deps: args.pop("run.output_dir"))
    assert "RayService/mortgagellm: group cpu: Router uses relative path runs/cpu-demo: it " \
           "resolves in the pod's working directory, on no volume" in m.storage_errors(service)


def test_a100_prod_terminates_tls_at_an_ingress(rendered):
    (ingress,) = [d for d in rendered["a100-prod"] if d["kind"] == "Ingress"]
    assert ingress["spec"]["tls"][0]["secretName"] == "mortgagellm-tls"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "mortgagellm-serve-svc", "port": {"number": 8000}}
    assert m.schema_errors(ingress) == []
    assert not [d for d in rendered["cpu-dev"] if d["kind"] == "Ingress"]


@pytest.mark.parametrize("overlay", ["cpu-dev", "a100-prod"])
def test_the_audit_key_secret_is_mounted_in_router_pods_only(rendered, overlay):
    (service,) = [d for d in rendered[overlay] if d["kind"] == "RayService"]
    spec = service["spec"]["rayClusterConfig"]
    for group in [spec["headGroupSpec"]] + spec["workerGroupSpecs"]:
        secrets = {v.get("secret", {}).get("secretName") for v in group["template"]["spec"]
                   ["volumes"]}
        assert ("mortgagellm-audit-key" in secrets) == ("mortgagellm_router" in group.get(
            "rayStartParams", {}).get("resources", ""))
