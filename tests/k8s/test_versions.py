"""One Ray version everywhere: pyproject's pin, every rayVersion, every image tag
(<package version>-ray<Ray version>-py311[-gpu]) and the Dockerfile's base image."""

import copy
import re

import tomllib

from tests.k8s import manifests as m


def pins() -> tuple[str, str]:
    """(Ray version, package version) from pyproject.toml."""
    project = tomllib.loads((m.ROOT / "pyproject.toml").read_text())["project"]
    (ray,) = [re.fullmatch(r"ray(\[[\w,]+\])?==([\d.]+)", d) for d in project["dependencies"]
              if re.match(r"ray\b", d)]
    return ray.group(2), project["version"]


def version_errors(doc: dict, ray: str, package: str) -> list[str]:
    """rayVersion and image tags of one resource that disagree with the pins."""
    tag = re.compile(rf"^[\w.\-/]+/mortgagellm:{re.escape(package)}-ray{re.escape(ray)}"
                     r"-py311(-gpu)?$")
    errors = [f"{where}: rayVersion {spec.get('rayVersion')} != {ray}"
              for where, spec in m.cluster_specs(doc) if spec.get("rayVersion") != ray]
    errors += [f"{m.label(doc)}: image {c['image']} is not <repo>/mortgagellm:{package}-ray{ray}"
               "-py311[-gpu]" for c in m.containers(doc) if not tag.match(c["image"])]
    return errors


def test_pins_are_read():
    assert pins() == ("2.60.0", "0.1.0")


def test_every_ray_version_and_image_matches_pyproject(everything):
    ray, package = pins()
    assert [e for _, d in everything for e in version_errors(d, ray, package)] == []
    images = {c["image"] for _, d in everything for c in m.containers(d)}
    assert images == {f"ghcr.io/your-org/mortgagellm:{package}-ray{ray}-py311",
                      f"ghcr.io/your-org/mortgagellm:{package}-ray{ray}-py311-gpu"}


def test_dockerfile_builds_from_the_same_ray():
    ray, _ = pins()
    text = (m.ROOT / "Dockerfile").read_text()
    assert f"ARG RAY_TAG={ray}-py311\n" in text
    assert "FROM rayproject/ray:${RAY_TAG}\n" in text
    assert f"ray.__version__ == '{ray}'" in text  # the build fails if pip moved Ray
    assert "pip install --no-cache-dir -c constraints/cpu.txt ." in text


def test_a_stale_version_is_reported():
    (doc,) = m.load(m.K8S / "base/rayservice.mortgagellm.yaml")
    doc = copy.deepcopy(doc)
    doc["spec"]["rayClusterConfig"]["rayVersion"] = "2.59.0"
    doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0][
        "image"] = "ghcr.io/your-org/mortgagellm:0.1.0-ray2.59.0-py311"
    assert version_errors(doc, "2.60.0", "0.1.0") == [
        "RayService/mortgagellm.rayClusterConfig: rayVersion 2.59.0 != 2.60.0",
        ("RayService/mortgagellm: image ghcr.io/your-org/mortgagellm:0.1.0-ray2.59.0-py311 is not "
         "<repo>/mortgagellm:0.1.0-ray2.60.0-py311[-gpu]")]
