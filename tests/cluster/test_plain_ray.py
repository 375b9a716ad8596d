"""Plain Ray tools, end to end (slow): on a real `ray start --head` on 127.0.0.1 with token auth,
the whole tiny recipe runs through `ray job submit --working-dir . -- python -m mortgagellm run`,
the app's generated Serve config goes up with `serve deploy`, `serve status` shows both experts
healthy, the official `openai` client gets a routed answer from the expert the job trained, and
only the processes the test started are stopped (the Serve proxy's port is free again)."""

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from mortgagellm.serve import app as serve_app
from mortgagellm.serve import demo, door, ops
from mortgagellm.stages import STAGES
from tests.cluster import head as ray_head

ROOT = Path(__file__).resolve().parents[2]
# Every stage, each at the least that still runs it (the stage tests' sizes: SETS and SFT_SMALL
# in tests/pipelines/test_sft.py, DPO_SMALL in test_dpo.py, SMALL in test_evaluate.py); about
# 5 minutes on 2 shared cores. The tiny preset keeps its own steps: with fewer, instruct follows
# no held-out instruction and the residual stage cannot form a fidelity ratio at all.
# residual.min_fidelity_ratio 0 turns the gate into a report: every swept lambda passes, the
# table of ratios is still measured and written, and a merge of a barely trained pair is kept.
# 400 routing requests (not 40): tier 1 is then sure of the request sent at the end (0.99), so
# the router answers it without the barely trained structured expert's few-shot vote.
STAGE_SECTIONS = """\
bootstrap: {preset: tiny, eval_instructions: 30, domain_documents: 0, threads: 1}
corpus:
  tasks: {sft_per_task: 48, dpo_pairs: 32, routing_requests: 400, eval_per_task: 6,
          eval_qa_pairs: 4, eval_routing: 10}
  synthetic_docs: 300
  synthetic_shards: 2
  regulations: [data/cfpb-regulations/reg-h-1008-2011-31730.xml]   # in the uploaded repo
  seq_len: 128
  docs_per_shard: 400
  batch_docs: 200
pretrain:
  max_steps: 8
  warmup_steps: 2
  checkpoint_every: 8
  log_every: 4
  domain_docs: 10
  scaling: {threads_per_worker: 1}
  deepspeed: {micro_batch_size: 4, lr: 1.0e-3}
residual: {sweep: [0.5, 1.0], min_fidelity_ratio: 0.0, eval_instructions: 10, domain_docs: 5,
           threads: 1}
sft:
  task_source: corpus
  max_seq_len: 256
  epochs: 1
  log_every: 10
  checkpoint_every: 100
  eval_per_task: 4
  max_new_tokens: 24
  threads: 1
  scaling: {threads_per_worker: 1}
  deepspeed: {micro_batch_size: 8, lr: 3.0e-3}
dpo:
  task_source: corpus
  method: lora
  max_seq_len: 192
  log_every: 2
  checkpoint_every: 20
  eval_pairs: 4
  max_new_tokens: 24
  threads: 1
  scaling: {threads_per_worker: 1}
  deepspeed: {micro_batch_size: 4, lr: 2.0e-3}
evaluate: {task_source: corpus, per_task: 3, qa_pairs: 3, fairness_files: 3,
           eval_instructions: 5, domain_docs: 3, routing_requests: 10, summary_tokens: 16,
           answer_tokens: 16, max_seq_len: 256, resamples: 100, threads: 1, batch_size: 16}
"""
EXPERT_STAGES = {"structured": "sft", "conversational": "dpo"}
(STRUCTURED, _), _ = demo.DEMO_REQUESTS


def whole_recipe(tmp: Path, port: int) -> Path:
    """Every stage, output in <tmp>/run (absolute, as a cluster needs), served on 127.0.0.1:port
    with the API keys in <tmp>/api_keys and an audit key made before the deploy."""
    path = tmp / "plain-ray.yaml"
    path.write_text(
        f"run: {{name: plain-ray, output_dir: {tmp / 'run'}, seed: 0}}\n" + STAGE_SECTIONS +
        f"serve:\n  host: 127.0.0.1\n  port: {port}\n"
        f"  auth: {{keys_file: {tmp / 'api_keys'}}}\n  audit: {{create_key: true}}\n"
        "  limits: {max_prompt_tokens: 160, max_tokens: 32, default_max_tokens: 16}\n")
    return path


def ray_tool(tool: str, args: list[str], token: Path, timeout: int) -> subprocess.CompletedProcess:
    """`ray ...` or `serve ...` from this venv, run from the repo root as a user would, with the
    cluster's token in the environment."""
    return subprocess.run([str(ray_head.VENV_BIN / tool), *args], env=ray_head.client_env(token),
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)


def wait_healthy(url: str, token: Path, app: str, timeout_s: float = 600) -> dict:
    """`serve status`, parsed, once `app` is RUNNING with every deployment HEALTHY."""
    deadline, status = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        shown = ray_tool("serve", ["status", "--address", url], token, timeout=60)
        assert shown.returncode == 0, shown.stderr[-3000:]
        status = yaml.safe_load(shown.stdout)
        state = status["applications"].get(app, {})
        assert state.get("status") != "DEPLOY_FAILED", state.get("message")
        if state.get("status") == "RUNNING" and all(
                d["status"] == "HEALTHY" for d in state["deployments"].values()):
            return status
        time.sleep(5)
    raise AssertionError(f"{app} not running and healthy after {timeout_s} s: {status}")


def port_is_free(port: int, timeout_s: float = 30) -> bool:
    """Whether a server can listen on 127.0.0.1:port again within timeout_s. With SO_REUSEADDR,
    as servers (Serve's proxy among them) bind: the closed connections of the answered request
    linger in TIME_WAIT on that port, and only a process still listening makes this fail."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                s.listen()
                return True
            except OSError:
                time.sleep(1)
    return False


def serve_deploy(recipe: Path, url: str, token: Path) -> tuple[str, dict]:
    """What `mortgagellm serve` does before its build (register the stages' experts, make the
    audit key), a fresh API key in the recipe's key file, then the app's Serve config written
    out and sent with `serve deploy`. Returns (the API key, the config)."""
    args = ops.app_args(str(recipe), [])
    loaded = serve_app.load(args)
    key, line = door.new_key("plain-ray")
    serve_app.keys_file(loaded, args).write_text(line + "\n")
    ops.prepare(loaded, args)
    config = serve_app.serve_config(loaded, args)
    path = recipe.parent / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    sent = ray_tool("serve", ["deploy", str(path), "--address", url], token, timeout=180)
    assert sent.returncode == 0, sent.stdout[-3000:] + sent.stderr[-3000:]
    return key, config


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(2400)
def test_plain_ray_cli_runs_every_stage_then_serve_deploy_answers(tmp_path):
    import openai

    port = ray_head.free_ports(1)[0]
    recipe = whole_recipe(tmp_path, port)
    (tmp_path / "head").mkdir()
    with ray_head.running(tmp_path / "head", num_cpus=4) as head:
        url, token, marker = head["url"], head["token"], head["marker"]
        # The README's command, verbatim but for the address and the recipe: a recipe with
        # ray.address local joins the cluster it is sent to with --ray.address=auto.
        job = ray_tool("ray", ["job", "submit", "--address", url, "--working-dir", ".", "--",
                               "python", "-m", "mortgagellm", "run", str(recipe),
                               "--ray.address=auto"], token, timeout=1800)
        shown = job.stdout[-4000:] + job.stderr[-4000:]
        assert job.returncode == 0, shown
        assert "succeeded" in job.stdout + job.stderr, shown
        assert "pretrain step 8/8" in job.stdout, shown  # the job's own log, tailed back
        manifests = {s: json.loads((tmp_path / "run" / s / "manifest.json").read_text())
                     for s in STAGES}
        assert [m["stage"] for m in manifests.values()] == list(STAGES)
        assert manifests["residual"]["metrics"]["scale"] in (0.5, 1.0)
        trained = {e: manifests[s]["outputs"]["model"]["sha256"]
                   for e, s in EXPERT_STAGES.items()}

        key, config = serve_deploy(recipe, url, token)
        deployments = config["applications"][0]["deployments"]
        assert {d["name"]: d.get("user_config", {}).get("version") for d in deployments} == {
            serve_app.ROUTER: None, serve_app.RATE_LIMITS: None} | {
            serve_app.DEPLOYMENTS[e]: v for e, v in trained.items()}  # limits: the shared counts
        status = wait_healthy(url, token, "mortgagellm")
        experts = status["applications"]["mortgagellm"]["deployments"]
        assert {experts[n]["status"] for n in serve_app.DEPLOYMENTS.values()} == {"HEALTHY"}
        assert set(status["proxies"].values()) == {"HEALTHY"}

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key,
                               max_retries=0, timeout=120)
        # A loan file to classify: the structured expert's request. (The conversational expert,
        # after six DPO steps, answers most questions with its end-of-turn token at once.)
        answer = client.chat.completions.create(
            model="mortgagellm", max_tokens=16,
            messages=[{"role": "user", "content": STRUCTURED}])
        meta = answer.model_extra["mortgagellm"]
        assert (meta["route"], meta["decided_by"]) == ("structured", "tier1")
        assert meta["expert_version"] == trained["structured"]
        assert answer.choices[0].message.content.strip()
        assert answer.usage.completion_tokens >= 1
    assert ray_head.processes(marker) == []
    assert port_is_free(port), f"the Serve proxy still holds 127.0.0.1:{port}"
