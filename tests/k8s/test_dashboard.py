"""The Grafana dashboard (k8s/base/configmap.grafana-dashboard.yaml): it parses, it is part of the
base, it covers what the serving issue asks for, and its PromQL is well formed. That every series
it names is really exported is checked against a live scrape in
tests/serve/test_app.py::test_prometheus_series_on_the_ray_metrics_port."""

import re

from tests.k8s import manifests


def test_the_dashboard_is_in_the_base_and_labelled_for_grafanas_sidecar():
    kustomization = manifests.load(manifests.K8S / "base" / "kustomization.yaml")[0]
    assert manifests.DASHBOARD.name in kustomization["resources"]
    (config_map,) = manifests.load(manifests.DASHBOARD)
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_every_panel_queries_prometheus_and_fits_the_grid():
    panels = manifests.dashboard()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel
        assert panel["datasource"]["uid"] == "${datasource}"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}")
            # a rate window on every counter or histogram read
            for name in re.findall(r"ray_\w+_(?:total|bucket|count|sum)\b", expr):
                assert re.search(rf"{name}(\{{[^}}]*\}})?\[\d+m\]", expr), (name, expr)


def test_it_shows_routes_latencies_errors_tier2_replicas_and_audit_health():
    series = manifests.dashboard_series()
    assert {"ray_mortgagellm_requests_total", "ray_mortgagellm_errors_total",
            "ray_mortgagellm_generation_latency_ms_bucket",
            "ray_mortgagellm_routing_latency_ms_count",
            "ray_serve_deployment_processing_latency_ms_bucket",
            "ray_serve_deployment_replica_healthy",
            "ray_mortgagellm_audit_refused_total"} <= series
    titles = " | ".join(p["title"] for p in manifests.dashboard()["panels"]).lower()
    for topic in ("route", "latency", "errors", "tier-2", "replicas", "audit"):
        assert topic in titles, topic
