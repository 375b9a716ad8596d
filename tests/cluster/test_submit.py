"""`mortgagellm submit`: the job it builds (unit), and a real `ray start --head` on 127.0.0.1 with
token auth that runs a tiny recipe, reports a failed stage and refuses a job without the token."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from mortgagellm.cluster import submit
from mortgagellm.config import load_recipe
from tests.cluster import head as ray_head

ROOT = Path(__file__).resolve().parents[2]
# Few, small steps: the job must be quick, not good.
TINY = ["bootstrap.base_steps=4", "bootstrap.instruct_steps=4", "bootstrap.general_docs=200",
        "bootstrap.eval_instructions=5", "bootstrap.threads=1"]


def tiny_recipe(tmp_path: Path) -> Path:
    """The tiny preset, written to <tmp_path>/run (an absolute path, as a cluster needs)."""
    path = tmp_path / "tiny.yaml"
    path.write_text(f"run:\n  name: tiny\n  output_dir: {tmp_path / 'run'}\n"
                    "bootstrap:\n  preset: tiny\n")
    return path


# ---------------------------------------------------------------- unit: the job that is sent


def test_job_runs_the_recipe_on_the_cluster_it_is_sent_to(tmp_path):
    path = tiny_recipe(tmp_path)
    recipe = load_recipe(path, TINY)
    job = submit.job_spec(path, recipe, TINY, stages=["bootstrap"], force=True)
    args = shlex.split(job.entrypoint)
    assert args[:5] == ["python", "-m", "mortgagellm", "run", str(path.resolve())]
    assert args[5:9] == ["--from", "bootstrap", "--to", "bootstrap"] and "--force" in args
    # a recipe that would start an embedded cluster joins the cluster instead
    assert args[-1] == "--ray.address=auto"
    joined = load_recipe(path, TINY + ["ray.address=auto"])
    assert job.metadata["recipe_sha256"] == submit.recipe_sha256(joined)
    assert job.metadata["recipe_sha256"] != submit.recipe_sha256(recipe)
    assert job.submission_id.startswith(f"tiny-{job.metadata['recipe_sha256'][:8]}-")


def test_working_dir_is_the_repo_without_venv_runs_or_git(tmp_path):
    job = submit.job_spec(ROOT / "configs/cpu-demo.yaml",
                          load_recipe(ROOT / "configs/cpu-demo.yaml", ["run.output_dir=/mnt/x"]),
                          ["run.output_dir=/mnt/x"])
    assert job.runtime_env["working_dir"] == str(ROOT)
    assert {".venv", "runs", ".git"} <= set(job.runtime_env["excludes"])
    # a recipe inside the repo is named relative to the uploaded copy
    assert shlex.split(job.entrypoint)[4] == "configs/cpu-demo.yaml"


def test_relative_output_dir_is_refused_before_submitting():
    recipe = load_recipe(ROOT / "configs/cpu-demo.yaml")
    with pytest.raises(submit.SubmitError, match="run.output_dir 'runs/cpu-demo' is relative"):
        submit.job_spec(ROOT / "configs/cpu-demo.yaml", recipe, [])


def test_stages_must_be_consecutive(monkeypatch):
    from mortgagellm.pipelines import recipe as pipeline

    monkeypatch.setattr(pipeline, "STAGES", ("bootstrap", "corpus", "pretrain", "residual"))
    assert submit.stage_args(["corpus", "pretrain", "residual"]) == [
        "--from", "corpus", "--to", "residual"]
    with pytest.raises(submit.SubmitError, match="consecutive stages in flow order"):
        submit.stage_args(["corpus", "residual"])
    assert submit.stage_args(None) == []


def test_cli_refuses_before_contacting_a_cluster(capsys, monkeypatch):
    from mortgagellm import cli

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cli.main(["submit", str(ROOT / "configs/cpu-demo.yaml")]) == 2
    assert "no cluster: pass --address" in capsys.readouterr().err
    assert cli.main(["submit", str(ROOT / "configs/cpu-demo.yaml"), "--address",
                     "http://127.0.0.1:9"]) == 2
    assert "run.output_dir 'runs/cpu-demo' is relative" in capsys.readouterr().err


def test_token_comes_from_the_variables_ray_reads(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    with pytest.raises(submit.SubmitError, match="RAY_AUTH_TOKEN_PATH"):
        submit.auth_headers("token")
    (tmp_path / "t").write_text("abc123\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "t"))
    assert submit.auth_headers("token") == {"Authorization": "Bearer abc123"}
    assert submit.auth_headers("disabled") == {}


class Head:
    """A JobSubmissionClient whose head answers `refusals` in turn, then takes the job."""

    def __init__(self, *refusals):
        self.refusals, self.calls = list(refusals), []

    def submit_job(self, **job):
        self.calls.append(job["submission_id"])
        if self.refusals:
            raise self.refusals.pop(0)
        return job["submission_id"]


def test_a_head_without_its_job_agent_yet_is_asked_again_with_the_same_id(tmp_path, capsys):
    path = tiny_recipe(tmp_path)
    job = submit.job_spec(path, load_recipe(path, TINY), TINY)
    busy = RuntimeError("Request failed with status code 500: No available agent to submit "
                        "job, please try again later..")
    head = Head(busy, busy)
    assert submit.send(head, job, wait_s=0) == job.submission_id
    assert head.calls == [job.submission_id] * 3
    assert capsys.readouterr().err.count("no job agent yet") == 2
    # any other refusal at once, and the agent's only `attempts` times
    with pytest.raises(RuntimeError, match="Missing authentication token"):
        submit.send(Head(RuntimeError("Missing authentication token")), job, wait_s=0)
    never = Head(*[busy] * 5)
    with pytest.raises(RuntimeError, match="No available agent"):
        submit.send(never, job, attempts=3, wait_s=0)
    assert len(never.calls) == 3


def test_a_dropped_connection_is_retried_and_an_earlier_try_that_got_through_counts(tmp_path,
                                                                                  capsys):
    import requests

    path = tiny_recipe(tmp_path)
    job = submit.job_spec(path, load_recipe(path, TINY), TINY)
    dropped = requests.ConnectionError("('Connection aborted.', RemoteDisconnected('Remote end "
                                       "closed connection without response'))")
    head = Head(dropped)
    assert submit.send(head, job, wait_s=0) == job.submission_id
    assert head.calls == [job.submission_id] * 2
    assert "the head dropped the connection; retrying" in capsys.readouterr().err
    # the dropped try had queued the job: the retry's "already exists" is success, not an error
    queued = RuntimeError(f"Request failed with status code 400: Job with submission_id "
                          f"{job.submission_id} already exists. Please use a different id.")
    head = Head(dropped, queued)
    assert submit.send(head, job, wait_s=0) == job.submission_id and len(head.calls) == 2
    with pytest.raises(RuntimeError, match="already exists"):  # another job's id, or a first try
        submit.send(Head(queued), job, wait_s=0)


def test_failure_line_is_the_last_error_of_the_log():
    log = ["INFO bootstrap: checking", "Traceback (most recent call last):", '  File "x.py"',
           "FileNotFoundError: /nope/config.json: missing", "(exit 1)"]
    assert submit.failure_line(log) == "FileNotFoundError: /nope/config.json: missing"
    assert submit.failure_line(["mortgagellm: x.yaml: recipe file not found"]).startswith(
        "mortgagellm: ")
    assert submit.failure_line(["all good"]) is None


# ---------------------------------------------------------------- integration: a real head


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A Ray head started with `ray start --head --block` on 127.0.0.1, token auth, own ports and
    temp dir; yields its dashboard URL and token path; stops only its own processes."""
    with ray_head.running(tmp_path_factory.mktemp("head"), num_cpus=2) as started:
        yield started


def _submit_cli(recipe: Path, url: str, overrides: list[str], token: Path | None,
                timeout: int = 300) -> subprocess.CompletedProcess:
    env = ray_head.client_env(token)
    cmd = [sys.executable, "-m", "mortgagellm", "submit", str(recipe), "--address", url,
           "--stages", "bootstrap", *(f"--{o}" for o in overrides)]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          check=False)


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_submitted_recipe_runs_on_the_head_and_failures_exit_non_zero(head, tmp_path):
    from ray.job_submission import JobSubmissionClient

    recipe = tiny_recipe(tmp_path)
    done = _submit_cli(recipe, head["url"], TINY, head["token"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "SUCCEEDED" in done.stdout
    assert "bootstrap base: step 4/4" in done.stdout  # the job's own log, streamed back

    manifest = json.loads((tmp_path / "run/bootstrap/manifest.json").read_text())
    assert manifest["stage"] == "bootstrap" and manifest["config"]["plan"]["base_steps"] == 4
    assert set(manifest["outputs"]) == {"base", "instruct"}

    client = JobSubmissionClient(head["url"],
                                 headers={"Authorization": f"Bearer {head['token'].read_text()}"})
    (job,) = client.list_jobs()
    expected = submit.recipe_sha256(load_recipe(recipe, TINY + ["ray.address=auto"]))
    assert job.status.value == "SUCCEEDED" and job.metadata["recipe_sha256"] == expected
    uploaded = list((head["temp_dir"] / "session_latest/runtime_resources/working_dir_files")
                    .glob("*/mortgagellm/cli.py"))
    assert uploaded, "the repo was not the job's working dir"
    assert not (uploaded[0].parents[1] / ".venv").exists()

    # a stage that fails: its error is shown and the command exits non-zero
    missing = ["bootstrap.base_model=/nonexistent/base", "bootstrap.instruct_model=/nonexistent/i"]
    failed = _submit_cli(recipe, head["url"], missing, head["token"])
    assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr[-3000:]
    assert "FAILED" in failed.stderr and "/nonexistent/base" in failed.stderr

    # without the token the cluster refuses the job; nothing is queued
    refused = _submit_cli(recipe, head["url"], TINY + ["ray.auth=disabled"], token=None,
                          timeout=120)
    assert refused.returncode == 1 and "refused the job" in refused.stderr
    assert "Missing authentication token" in refused.stderr
    assert len(client.list_jobs()) == 2
