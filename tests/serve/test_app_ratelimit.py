"""A key's rate limit on the running app with two router replicas (session Ray cluster,
loopback): the replicas share the count (the RateLimits deployment), so together they admit
exactly the key's limit. Its own small app: test_app.py's runs one router, and its overload and
audit tests count on that."""

import json
from types import SimpleNamespace

import pytest
import requests

from mortgagellm.serve import door, ops
from tests.serve.test_app import free_port, wait_for

pytestmark = pytest.mark.integration
LIMITED_RPM = 4
"""Requests per minute of key 'limited' (its keys-file line says rpm=4)."""

RECIPE = """\
run: {{output_dir: {output}}}
serve:
  port: {port}
  registry: {work}/registry.json
  audit: {{dir: {work}/audit, key_file: {work}/audit.key, create_key: true, pii_salt: test}}
  auth: {{keys_file: {work}/keys}}
  router: {{num_cpus: 0.1, autoscaling: {{min_replicas: 2, max_replicas: 2}}}}
  structured: {{model: {model}, num_cpus: 0.25}}
  conversational: {{model: {model}, num_cpus: 0.25}}
  limits: {{max_tokens: 8, default_max_tokens: 1}}
"""


@pytest.fixture(scope="module")
def app(ray_cluster, micro_model, serve_output, tier1, tmp_path_factory):
    """The app with two router replicas and key 'limited' at rpm=4; deleted at the end."""
    from ray import serve

    from mortgagellm.config import load_recipe

    work = tmp_path_factory.mktemp("limited")
    key, line = door.new_key("limited")
    (work / "keys").write_text(f"{line} rpm={LIMITED_RPM}\n")
    config = work / "recipe.yaml"
    config.write_text(RECIPE.format(output=serve_output, port=free_port(), work=work,
                                    model=micro_model))
    recipe = load_recipe(config)
    url = ops.start(ops.app_args(str(config), []))
    yield SimpleNamespace(url=url, key=key, work=work)
    serve.delete(recipe.serve.app_name)
    serve.shutdown()


def router_records(app) -> list[tuple[str, dict]]:
    """(writer, record) of every router replica's audit records (files <writer>-<day>.jsonl)."""
    return [(f.name.rsplit("-", 1)[0], json.loads(line))
            for f in sorted((app.work / "audit").glob("router_*.jsonl"))
            for line in f.read_text().splitlines()]


def test_a_key_limit_holds_across_two_router_replicas(app):
    """16 requests in a row with a key of rpm=4 get exactly 4 answers, then 429s. Both router
    replicas served some (their audit writers say so), so one of them refused while its own
    share was under 4: the count is shared, not per replica."""
    body = {"model": "mortgagellm-chat", "messages": [{"role": "user", "content": "hi"}]}
    answers = [requests.post(f"{app.url}/v1/chat/completions", json=body, timeout=60,
                             headers={"Authorization": f"Bearer {app.key}"}) for _ in range(16)]
    assert [a.status_code for a in answers] == [200] * LIMITED_RPM + [429] * 12
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers[:5]] == [
        "3", "2", "1", "0", "0"]
    refused = answers[-1]
    assert refused.json()["error"]["type"] == "requests"
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-limit-requests"] == str(LIMITED_RPM)
    assert 1 <= int(refused.headers["retry-after"]) <= 60

    def audited():
        rows = [(w, r["status"]) for w, r in router_records(app) if r.get("type") == "request"]
        return rows if len(rows) >= 16 else None

    rows = wait_for(audited, "the 16 requests in the audit log")
    assert sorted(status for _, status in rows) == [200] * LIMITED_RPM + [429] * 12
    assert len({writer for writer, _ in rows}) == 2, rows  # 2**-15 that one took all 16
