"""The running app on the session's Ray cluster (loopback): the official `openai` client gets
routed answers from both experts, streamed and not; the door's 401 / 413 / 400 / 404 /
503; the audit log; Prometheus series; deploy and rollback in place.

The experts serve the micro model (conftest.py); the Serve proxy binds 127.0.0.1 on a free port.
"""

import json
import shutil
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from mortgagellm import modeling, registry
from mortgagellm.registry import registry_path
from mortgagellm.serve import audit, demo, door, engine, ops, router
from tests.k8s import manifests

pytestmark = pytest.mark.integration
(STRUCTURED, _), (CONVERSATIONAL, _) = demo.DEMO_REQUESTS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RECIPE = """\
run: {{output_dir: {output}}}
serve:
  port: {port}
  registry: {work}/registry.json
  audit: {{dir: {work}/audit, key_file: {work}/audit.key, create_key: true, pii_salt: test}}
  auth: {{keys_file: {work}/keys}}
  router: {{num_cpus: 0.1, expert_timeout_s: 60}}
  structured:
    model: {model}
    num_cpus: 0.5
    max_ongoing_requests: 2
    max_queued_requests: 2
    autoscaling: {{min_replicas: 1, max_replicas: 2, target_ongoing_requests: 1,
                  upscale_delay_s: 1, downscale_delay_s: 3, metrics_interval_s: 0.5,
                  look_back_period_s: 1}}
  conversational:
    model: {model}
    num_cpus: 0.5
    autoscaling: {{min_replicas: 2, max_replicas: 2}}
  limits: {{max_body_bytes: 65536, max_prompt_tokens: 200, max_tokens: 64,
            default_max_tokens: 16}}
"""


@pytest.fixture(scope="module")
def app(ray_cluster, micro_model, serve_output, tier1, tmp_path_factory):
    """The app, deployed once for this module; deleted (only it) at the end."""
    from ray import serve

    from mortgagellm.config import load_recipe

    work = tmp_path_factory.mktemp("served")
    key, line = door.new_key("tester")
    (work / "keys").write_text(line + "\n")
    config = work / "recipe.yaml"
    config.write_text(RECIPE.format(output=serve_output, port=free_port(), work=work,
                                    model=micro_model))
    recipe = load_recipe(config)
    url = ops.start(ops.app_args(str(config), []))
    yield SimpleNamespace(url=url, key=key, recipe=recipe, config=str(config), work=work,
                          model=micro_model)
    serve.delete(recipe.serve.app_name)
    serve.shutdown()


@pytest.fixture(scope="module")
def client(app):
    import openai

    return openai.OpenAI(base_url=f"{app.url}/v1", api_key=app.key, max_retries=0)


def post(app, path, body, key=None, **kw):
    headers = {"Authorization": f"Bearer {key or app.key}"} | kw.pop("headers", {})
    return requests.post(f"{app.url}{path}", json=body, headers=headers, timeout=60, **kw)


def greedy(model_dir, text, max_tokens):
    """What the expert must answer at temperature 0: the engine run locally on the same model."""
    model, tokenizer = modeling.load_for_inference(str(model_dir), threads=1)
    ids = modeling.chat_ids(tokenizer, [{"role": "user", "content": text}])
    decoder = engine.Decoder(model, tokenizer, [engine.GenRequest(tuple(ids), max_tokens)])
    out = ""
    while not decoder.done:
        out += decoder.step()[0].text
    return out


def chat(client, text, model="mortgagellm", **kw):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], **({"max_tokens": 8} | kw))


def test_routed_answers_from_both_experts_carry_route_and_version(app, client):
    version = registry.current(registry_path(app.recipe), "structured")[0]
    for text, route, model in ((STRUCTURED, "structured", "mortgagellm-structured"),
                               (CONVERSATIONAL, "conversational", "mortgagellm-chat")):
        answer = chat(client, text)
        meta = answer.model_extra["mortgagellm"]
        assert (meta["route"], meta["decided_by"], answer.model) == (route, "tier1", model)
        assert meta["confidence"] > 0.9 and meta["expert_version"] == version
        assert answer.choices[0].message.content == greedy(app.model, text, 8)
        assert answer.choices[0].finish_reason == "length"
        assert answer.usage.completion_tokens == 8
        assert answer.usage.total_tokens == answer.usage.prompt_tokens + 8


def test_demo_lines_show_route_version_answer_and_expectation(app):
    """What `make demo` ends with: one line per request naming its route and expert version."""
    version = registry.current(registry_path(app.recipe), "structured")[0]
    line = demo.demo_line(app.url, app.key, STRUCTURED, expected="approve", max_tokens=48)
    assert line.startswith("[structured ") and f"expert {version[:12]}]" in line
    assert line.endswith("expected: 'approve'")
    assert demo.demo_line(app.url, app.key, CONVERSATIONAL, max_tokens=48).startswith(
        "[conversational ")


def test_the_judge_can_be_the_served_app_itself(app, monkeypatch):
    """evaluate.judge pointed at this project's app: the rubric prompt goes through the door and
    the router to an expert. The micro model's 256-token context cannot hold the rubric, and
    that, like a wrong key, is an error for the caller, never a silently unparseable score."""
    import openai

    from mortgagellm import judge
    from mortgagellm.config import JudgeSettings

    def grader(key):
        monkeypatch.setenv("MLLM_TEST_KEY", key)
        return judge.Judge(JudgeSettings(base_url=f"{app.url}/v1", model="mortgagellm-chat",
                                         api_key_env="MLLM_TEST_KEY", max_retries=0))

    with pytest.raises(openai.BadRequestError, match=r"the prompt has \d+ tokens; the limit"):
        grader(app.key).grade("qa", "What is escrow?", "An escrow account.", "It holds taxes.")
    with pytest.raises(openai.AuthenticationError):
        grader("sk-wrong").grade("qa", "What is escrow?", "An escrow account.", "It holds taxes.")


def test_streaming_gives_the_same_answer_in_chunks(app, client):
    whole = chat(client, CONVERSATIONAL, max_tokens=12).choices[0].message.content
    chunks = list(chat(client, CONVERSATIONAL, max_tokens=12, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "length"
    assert {c.model_extra["mortgagellm"]["route"] for c in chunks} == {"conversational"}
    raw = post(app, "/v1/chat/completions", {"model": "mortgagellm-chat", "stream": True,
                                             "max_tokens": 4,
                                             "messages": [{"role": "user", "content": "hi"}]})
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = [line for line in raw.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]" and len(events) >= 3


def test_text_completions_streamed_and_not(app, client):
    whole = client.completions.create(model="mortgagellm-chat", prompt="The escrow",
                                      max_tokens=6)
    assert whole.usage.completion_tokens == 6 and whole.model == "mortgagellm-chat"
    parts = list(client.completions.create(model="mortgagellm-chat", prompt="The escrow",
                                           max_tokens=6, stream=True))
    assert "".join(p.choices[0].text for p in parts) == whole.choices[0].text


def test_client_choice_overrides_routing(client):
    meta = chat(client, STRUCTURED, model="mortgagellm-chat").model_extra["mortgagellm"]
    assert (meta["route"], meta["decided_by"], meta["confidence"]) == (
        "conversational", "client", 1.0)


def test_unsure_requests_are_also_asked_of_tier2(client, tier1):
    text = "And this one"  # no document, no task: tier 1 is unsure (confidence ~0.79)
    p = tier1.probability(text)
    assert max(p, 1 - p) < tier1.threshold  # serve.router.threshold auto: tier 1's own
    meta = chat(client, text).model_extra["mortgagellm"]
    assert meta["decided_by"] == "hybrid"
    assert meta["tier1_confidence"] == pytest.approx(max(p, 1 - p))


def test_models_and_healthz(app, client):
    models = {m.id: m.model_extra["mortgagellm"] for m in client.models.list()}
    assert set(models) == {"mortgagellm", "mortgagellm-structured", "mortgagellm-chat"}
    assert models["mortgagellm-chat"]["expert_version"] == registry.current(
        registry_path(app.recipe), "conversational")[0]
    assert requests.get(f"{app.url}/healthz", timeout=10).json() == {"status": "ok"}


def test_keys_are_required(app):
    import openai

    bad = openai.OpenAI(base_url=f"{app.url}/v1", api_key="mllm-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        chat(bad, CONVERSATIONAL)
    response = requests.get(f"{app.url}/v1/models", timeout=10)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_oversized_bodies_are_413(app):
    big = {"model": "mortgagellm", "messages": [{"role": "user", "content": "x" * 70_000}]}
    response = post(app, "/v1/chat/completions", big)
    assert response.status_code == 413
    assert "exceeds the limit of 65536 bytes" in response.json()["error"]["message"]
    chunked = post(app, "/v1/chat/completions", None,
                   data=(b"x" * 8192 for _ in range(10)),
                   headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413


def test_bad_requests_say_what_is_wrong(app, client):
    import openai

    long_prompt = "escrow " * 400
    response = post(app, "/v1/chat/completions", {
        "model": "mortgagellm-chat", "messages": [{"role": "user", "content": long_prompt}]})
    assert response.status_code == 400
    assert "the limit is 200" in response.json()["error"]["message"]
    response = post(app, "/v1/completions", {"model": "mortgagellm", "prompt": "x",
                                             "max_tokens": 65})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "max_tokens_too_large"
    with pytest.raises(openai.NotFoundError, match="gpt-4"):
        chat(client, "hi", model="gpt-4")
    response = post(app, "/v1/chat/completions", None, data=b"{not json",
                    headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    response = post(app, "/v1/chat/completions", {"model": "mortgagellm", "messages": []})
    assert response.status_code == 400 and "messages" in response.json()["error"]["message"]


def test_overload_is_refused_fast_with_503(app):
    """StructuredExpert takes 2 ongoing + 2 queued: of 12 simultaneous requests, the surplus
    gets 503 with Retry-After at once, and nothing hangs."""
    from concurrent.futures import ThreadPoolExecutor

    body = {"model": "mortgagellm-structured", "max_tokens": 64,
            "messages": [{"role": "user", "content": CONVERSATIONAL}]}

    def one(_):
        started = time.monotonic()
        response = post(app, "/v1/chat/completions", body)
        return response.status_code, time.monotonic() - started, response.headers

    audited = len([r for r in audit_records(app) if r.get("status") == 503])
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(12)))
    refused = [r for r in results if r[0] == 503]
    assert refused and {r[0] for r in results} <= {200, 503}
    assert all(r[2]["retry-after"] == "1" and r[1] < 5 for r in refused)
    # each refusal is audited and counted, as code "overloaded"
    wait_for(lambda: len([r for r in audit_records(app) if r.get("status") == 503])
             >= audited + len(refused), "the refusals in the audit log")
    errors = wait_for(lambda: [line for line in metrics_text().splitlines()
                               if line.startswith("ray_mortgagellm_errors")
                               and 'code="overloaded"' in line], "the overloaded error series")
    assert errors


def audit_records(app) -> list[dict]:
    """Every record in the app's audit log so far."""
    return [json.loads(line) for f in sorted((app.work / "audit").glob("*.jsonl"))
            for line in f.read_text().splitlines()]


def wait_for(found, what, seconds=60):
    """Poll found() until it returns something truthy (the log and metrics are written async)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if result := found():
            return result
        time.sleep(0.5)
    raise AssertionError(f"{what} did not appear within {seconds} s")


def metrics_text() -> str:
    import ray

    port = ray._private.worker.global_worker.node.metrics_export_port
    return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def test_every_request_is_audited_redacted_and_chained(app, client):
    """An answer and each kind of refusal this test sends are audited with their status."""
    answer = chat(client, "My SSN is 123-45-6789. What is escrow?")
    request_id = answer.model_extra["mortgagellm"]["request_id"]
    (record,) = wait_for(lambda: [r for r in audit_records(app) if r.get("request_id")
                                  == request_id], "the answer in the audit log")
    before = len(audit_records(app))
    sent = [
        (401, requests.get(f"{app.url}/v1/models", timeout=10)),
        (404, post(app, "/v1/chat/completions", {
            "model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]})),
        (413, post(app, "/v1/chat/completions", {
            "model": "mortgagellm", "messages": [{"role": "user", "content": "x" * 70_000}]})),
        (400, post(app, "/v1/chat/completions", {"model": "mortgagellm", "messages": []})),
        (400, post(app, "/v1/completions", {"model": "mortgagellm", "prompt": "x",
                                            "max_tokens": 65})),
    ]
    assert [r.status_code for _, r in sent] == [code for code, _ in sent]
    wait_for(lambda: len(audit_records(app)) >= before + len(sent), "the refusals in the log")
    records = audit_records(app)
    assert "123-45-6789" not in json.dumps(records)
    assert record["key_id"] == "tester" and record["status"] == 200
    assert record["route"] == "conversational" and record["router_mode"] == "hybrid"
    assert record["expert_version"] == answer.model_extra["mortgagellm"]["expert_version"]
    assert record["completion_tokens"] == 8 and record["latency_ms"] > 0
    assert sorted(r.get("status") for r in records[before:]) == sorted(c for c, _ in sent)
    report = audit.verify(app.work / "audit", (app.work / "audit.key").read_bytes().strip())
    assert report.ok and report.records == len(records)


def test_prometheus_series_on_the_ray_metrics_port(app, client):
    chat(client, CONVERSATIONAL)
    assert post(app, "/v1/chat/completions", {
        "model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}).status_code == 404
    series = ("mortgagellm_requests", "mortgagellm_routing_latency_ms", "mortgagellm_tokens",
              "mortgagellm_generation_latency_ms", "mortgagellm_errors")
    def every_series():
        text = metrics_text()
        return text if all(f"ray_{s}" in text for s in series) else None

    text = wait_for(every_series, "every mortgagellm series")
    lines = [line for line in text.splitlines() if line.startswith("ray_mortgagellm_requests")]
    assert any('route="conversational"' in line and 'status="200"' in line for line in lines)
    errors = [line for line in text.splitlines() if line.startswith("ray_mortgagellm_errors")]
    assert any('code="model_not_found"' in line for line in errors), errors
    # Every series the Grafana dashboard queries is exported under that exact name. The audit
    # alarm only exists once it fires: it is a counter of the router's Metrics, named as the
    # counters scraped here are (ray_<name>_total).
    scraped = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
               if line and not line.startswith("#")}
    alarm = "ray_mortgagellm_audit_refused_total"
    assert "ray_mortgagellm_errors_total" in scraped
    assert '"mortgagellm_audit_refused"' in Path(router.__file__).read_text()
    assert manifests.dashboard_series() - {alarm} <= scraped, (
        manifests.dashboard_series() - {alarm} - scraped)


def replicas(name):
    """Names of the live replica actors of a deployment."""
    import ray

    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if f"#{name}#" in a["name"]}


def expert_info(app, name):
    from ray import serve

    return serve.get_deployment_handle(name, app.recipe.serve.app_name).info.remote().result()


def test_deploy_and_rollback_switch_versions_in_place(app, client, tmp_path):
    """ConversationalExpert (2 fixed replicas) gets a second model and goes back, reconfigured
    through user_config: the same replica actors before and after."""
    import torch
    from transformers import AutoModelForCausalLM

    second = tmp_path / "second"
    shutil.copytree(app.model, second)
    model = AutoModelForCausalLM.from_pretrained(second)
    with torch.no_grad():
        model.lm_head.weight.mul_(-1)
    model.save_pretrained(second)
    old = registry.current(registry_path(app.recipe), "conversational")[0]
    before = replicas("ConversationalExpert")
    assert len(before) == 2
    assert ops.deploy(app.recipe, app.config, [], "conversational", str(second)) == 0
    new = registry.current(registry_path(app.recipe), "conversational")[0]
    assert new != old and replicas("ConversationalExpert") == before
    assert expert_info(app, "ConversationalExpert")["version"] == new
    answer = chat(client, CONVERSATIONAL)
    assert answer.model_extra["mortgagellm"]["expert_version"] == new
    assert answer.choices[0].message.content == greedy(second, CONVERSATIONAL, 8)
    assert ops.rollback(app.recipe, app.config, [], "conversational") == 0
    assert replicas("ConversationalExpert") == before
    assert chat(client, CONVERSATIONAL).model_extra["mortgagellm"]["expert_version"] == old
    events = [json.loads(line) for f in (app.work / "audit").glob("ops-*.jsonl")
              for line in f.read_text().splitlines()]
    assert [(e["type"], e["from"], e["to"]) for e in events] == [("deploy", old, new),
                                                                 ("rollback", new, old)]


def load(app, model, seconds, workers, stop_when=None, at_least=0, limit_s=120):
    """Constant load from `workers` threads for `seconds`, and on until `at_least` requests have
    been answered (a loaded machine answers fewer per second), never past `limit_s`:
    (ok, failed) counts."""
    import itertools
    from concurrent.futures import ThreadPoolExecutor

    body = {"model": model, "max_tokens": 4,
            "messages": [{"role": "user", "content": CONVERSATIONAL}]}
    started = time.monotonic()
    answered = itertools.count(1)  # next() is atomic under the GIL
    done = [0]

    def more() -> bool:
        elapsed = time.monotonic() - started
        return elapsed < limit_s and (elapsed < seconds or done[0] < at_least)

    def worker(_):
        ok = failed = 0
        while more() and not (stop_when and stop_when()):
            response = post(app, "/v1/chat/completions", body)
            ok, failed = ok + (response.status_code == 200), failed + (response.status_code != 200)
            done[0] = next(answered)
        return ok, failed

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(worker, range(workers)))
    return sum(r[0] for r in results), sum(r[1] for r in results)


def test_a_replica_killed_under_load_fails_under_1_percent(app):
    """One of ConversationalExpert's two replicas is killed mid-load; the router's one retry
    and Serve's replacement keep failures below 1 %."""
    import threading

    import ray

    victim = min(replicas("ConversationalExpert"))
    killer = threading.Timer(3.0, lambda: ray.kill(ray.get_actor(victim, namespace="serve"),
                                                    no_restart=True))
    killer.start()
    # 12 s of load with the kill at 3 s, and at least 100 answers: enough that one failure
    # would be 1 % (a machine shared with other test runs answered only 44 in 12 s)
    ok, failed = load(app, "mortgagellm-chat", seconds=12, workers=3, at_least=100)
    killer.join()
    assert victim not in replicas("ConversationalExpert")
    assert ok + failed >= 100 and failed / (ok + failed) < 0.01, (ok, failed)


def running_replicas(app, name):
    """How many replicas of a deployment Serve reports RUNNING."""
    from ray import serve

    states = serve.status().applications[app.recipe.serve.app_name].deployments
    return states[name].replica_states.get("RUNNING", 0)


def open_streams(app, count, max_tokens):
    """`count` streamed chats, each in its own thread: (threads' futures, an event per stream
    set once its first SSE event arrived); each future gives the stream's events."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    started = [threading.Event() for _ in range(count)]
    body = {"model": "mortgagellm-chat", "stream": True, "max_tokens": max_tokens,
            "temperature": 1.0, "messages": [{"role": "user", "content": CONVERSATIONAL}]}

    def one(i):
        with post(app, "/v1/chat/completions", body, stream=True) as response:
            assert response.status_code == 200, response.text
            events = []
            for line in response.iter_lines():
                if line:
                    events.append(line.decode().removeprefix("data: "))
                    started[i].set()
            return events

    pool = ThreadPoolExecutor(count)
    return [pool.submit(one, i) for i in range(count)], started, pool


def test_a_replica_killed_mid_stream_ends_its_streams_with_an_error_then_done(app):
    """Streams are opened on both ConversationalExpert replicas; once every client has its
    first event, the replica with the most requests in flight (asked of the replica itself,
    before the kill) is killed. Its streams end with an OpenAI error event, then [DONE], and
    are audited with that 503; the others finish; Serve replaces the replica and the app
    answers again."""
    import ray

    wait_for(lambda: len(replicas("ConversationalExpert")) == 2  # after an earlier kill too
             and running_replicas(app, "ConversationalExpert") == 2, "two replicas", 120)
    actors = {name: ray.get_actor(name, namespace="serve")
              for name in replicas("ConversationalExpert")}
    futures, started, pool = open_streams(app, count=6, max_tokens=64)
    assert all(event.wait(60) for event in started), "a stream sent nothing within 60 s"
    in_flight = {name: ray.get(actor.get_num_ongoing_requests.remote(), timeout=10)
                 for name, actor in actors.items()}
    victim = max(in_flight, key=in_flight.get)
    ray.kill(actors[victim], no_restart=True)
    streams = [future.result(timeout=120) for future in futures]
    pool.shutdown()
    assert in_flight[victim] >= 1, in_flight
    failed = [events for events in streams if "error" in json.loads(events[-2])]
    assert 1 <= len(failed) <= in_flight[victim], (in_flight, [s[-2:] for s in streams])
    survivors = sum(in_flight.values()) - in_flight[victim]
    assert len(streams) - len(failed) >= survivors  # the other replica's streams all finished
    for events in streams:
        assert events[-1] == "[DONE]"
    for events in failed:
        error = json.loads(events[-2])["error"]
        assert (error["type"], error["code"]) == ("server_error", "expert_unavailable")
        assert len(events) >= 3  # the role chunk (at least) came before the error: mid-stream
    ids = {json.loads(events[0])["mortgagellm"]["request_id"]: events for events in streams}

    def audited():
        found = {r["request_id"]: r for r in audit_records(app) if r.get("request_id") in ids}
        return found if len(found) == len(ids) else None

    records = wait_for(audited, "the streams' audit records")
    for request_id, events in ids.items():
        record = records[request_id]
        assert (record["status"], record.get("error_code")) == (
            (503, "expert_unavailable") if events in failed else (200, None)), record
    wait_for(lambda: len(replicas("ConversationalExpert") - set(actors)) == 1
             and running_replicas(app, "ConversationalExpert") == 2, "a new replica", 120)
    assert post(app, "/v1/chat/completions", {
        "model": "mortgagellm-chat", "max_tokens": 4,
        "messages": [{"role": "user", "content": CONVERSATIONAL}]}).status_code == 200


@pytest.mark.slow  # 30-50 s of waiting on the autoscaler: run with -m slow (make test-all)
def test_load_scales_the_structured_expert_up_and_back_down(app):
    """target 1 ongoing request per replica, max 2: three callers raise it to 2 replicas, and
    it returns to 1 once they stop (delays are test-sized in RECIPE)."""
    from ray import serve

    def running():
        states = serve.status().applications[app.recipe.serve.app_name].deployments
        return states["StructuredExpert"].replica_states.get("RUNNING", 0)

    deadline = time.monotonic() + 60
    while running() != 1 and time.monotonic() < deadline:  # after the overload test
        time.sleep(1)
    assert running() == 1
    ok, _ = load(app, "mortgagellm-structured", seconds=60, workers=3,
                 stop_when=lambda: running() == 2)
    assert running() == 2 and ok > 0
    deadline = time.monotonic() + 60
    while running() != 1 and time.monotonic() < deadline:
        time.sleep(1)
    assert running() == 1
