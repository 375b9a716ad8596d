"""The running app with serve.topology adapters on the session's Ray cluster (loopback): one
AdapterExperts deployment serves both experts as LoRA adapters on the micro model; the router
sends a structured and a conversational request to their adapters, and the response and the
audit log name the adapter and its version."""

import json
from types import SimpleNamespace

import pytest

from mortgagellm import modeling
from mortgagellm.manifest import sha256_path
from mortgagellm.serve import audit, demo, door, ops
from tests.serve.test_adapters import answer, request
from tests.serve.test_app import chat, free_port, wait_for

pytestmark = pytest.mark.integration
(STRUCTURED, _), (CONVERSATIONAL, _) = demo.DEMO_REQUESTS

RECIPE = """\
run: {{output_dir: {output}}}
serve:
  topology: adapters
  port: {port}
  registry: {work}/registry.json
  audit: {{dir: {work}/audit, key_file: {work}/audit.key, create_key: true, pii_salt: test}}
  auth: {{keys_file: {work}/keys}}
  router: {{num_cpus: 0.1, expert_timeout_s: 60}}
  adapters: {{model: {base}, num_cpus: 0.5}}
  structured: {{model: {structured}}}
  conversational: {{model: {conversational}}}
  limits: {{max_body_bytes: 65536, max_prompt_tokens: 200, max_tokens: 64,
            default_max_tokens: 16}}
"""


@pytest.fixture(scope="module")
def app(ray_cluster, micro_model, micro_adapters, serve_output, tmp_path_factory):
    """The adapters app, deployed once for this module; deleted (only it) at the end."""
    from ray import serve

    from mortgagellm.config import load_recipe

    work = tmp_path_factory.mktemp("served-adapters")
    key, line = door.new_key("tester")
    (work / "keys").write_text(line + "\n")
    config = work / "recipe.yaml"
    config.write_text(RECIPE.format(output=serve_output, port=free_port(), work=work,
                                    base=micro_model, **micro_adapters))
    recipe = load_recipe(config)
    url = ops.start(ops.app_args(str(config), []))
    yield SimpleNamespace(url=url, key=key, recipe=recipe, work=work)
    serve.delete(recipe.serve.app_name)
    serve.shutdown()


def test_one_deployment_answers_each_route_with_its_adapter_and_the_audit_names_it(
        app, micro_model, micro_adapters):
    import openai
    from ray import serve

    deployments = serve.status().applications[app.recipe.serve.app_name].deployments
    assert set(deployments) == {"Router", "AdapterExperts", "RateLimits"}
    client = openai.OpenAI(base_url=f"{app.url}/v1", api_key=app.key, max_retries=0)
    model, tokenizer = modeling.load_adapters(
        str(micro_model), {r: str(d) for r, d in micro_adapters.items()}, threads=1)
    versions = {r: sha256_path(d) for r, d in micro_adapters.items()}
    ids = {}
    for text, route in ((STRUCTURED, "structured"), (CONVERSATIONAL, "conversational")):
        reply = chat(client, text)
        meta = reply.model_extra["mortgagellm"]
        assert (meta["route"], meta["decided_by"], meta["adapter"]) == (route, "tier1", route)
        assert meta["expert_version"] == versions[route]
        assert meta["base_version"] == sha256_path(micro_model)
        expected = answer(model, tokenizer, [request(tokenizer, text, route, 8)])[0]
        assert reply.choices[0].message.content == expected
        ids[meta["request_id"]] = route
    assert {m.id: m.model_extra["mortgagellm"]["expert_version"]
            for m in client.models.list().data if m.id != "mortgagellm"} == {
        "mortgagellm-structured": versions["structured"],
        "mortgagellm-chat": versions["conversational"]}

    def audited():
        found = [r for f in sorted((app.work / "audit").glob("*.jsonl"))
                 for line in f.read_text().splitlines()
                 if (r := json.loads(line)).get("request_id") in ids]
        return found if len(found) == len(ids) else None

    for record in wait_for(audited, "both answers in the audit log"):
        route = ids[record["request_id"]]
        assert (record["route"], record["adapter"], record["status"]) == (route, route, 200)
        assert record["expert_version"] == versions[route]
        assert record["base_version"] == sha256_path(micro_model)
    report = audit.verify(app.work / "audit", (app.work / "audit.key").read_bytes().strip())
    assert report.ok
