"""Fixtures for the manifest tests: the base's resources and each overlay rendered once."""

import functools
import shutil

import pytest

from tests.k8s import manifests as m


@pytest.fixture(scope="session")
def base_docs() -> list[dict]:
    """Every resource of k8s/base, as the base kustomization lists them."""
    return [d for p in sorted((m.K8S / "base").glob("*.yaml")) if p.name != "kustomization.yaml"
            for d in m.load(p)]


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    """`kubectl kustomize` of every overlay; skipped where kubectl is not installed."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: overlays cannot be rendered (kubectl kustomize)")
    return _renders()


@functools.cache
def _renders() -> dict[str, list[dict]]:
    return {name: m.render(name) for name in m.overlays()}


@pytest.fixture(scope="session")
def everything(base_docs) -> list[tuple[str, dict]]:
    """(source, resource) for the base and, where kubectl is installed, every rendered overlay
    (test_schemas.py reports the skip when it is not)."""
    renders = _renders() if shutil.which("kubectl") else {}
    return [("base", d) for d in base_docs] + [
        (name, d) for name, docs in renders.items() for d in docs]

