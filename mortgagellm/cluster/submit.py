"""`mortgagellm submit`: run the recipe as a Ray job on an existing cluster, logs streamed back.

Run: RAY_ADDRESS=http://HEAD:8265 RAY_AUTH_TOKEN_PATH=cluster_token \
       mortgagellm submit configs/llama3-8b-a100.yaml [--stages pretrain residual]

What `ray job submit --working-dir . -- python -m mortgagellm run CONFIG` does, plus: the recipe is
validated here before anything is sent, the job's metadata carries the hash of the exact recipe the
job runs, a recipe with `ray.address: local` joins the cluster instead of starting its own, and a
failed job's error is printed and turned into a non-zero exit.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import os
import re
import secrets
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mortgagellm import __version__
from mortgagellm.cluster import storage
from mortgagellm.config import Recipe
from mortgagellm.stages import select

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
# Never uploaded with the working dir: the virtualenv alone is gigabytes, runs/ holds outputs,
# .git is history. Ray also skips what .gitignore lists; these hold even without one.
EXCLUDES = [".venv", "runs", ".git", "**/__pycache__", "*.egg-info", ".pytest_cache"]
# The last line of a Python traceback ("FileNotFoundError: ...") or of a refused recipe.
_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Exit)\b|mortgagellm: )")


class SubmitError(ValueError):
    """A submission refused before it reaches the cluster; the message says what to change."""


@dataclass(frozen=True)
class JobSpec:
    """Everything JobSubmissionClient.submit_job is given."""

    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    submission_id: str


def recipe_sha256(recipe: Recipe) -> str:
    """Hash of the fully resolved recipe (every default filled in), as stored in job metadata."""
    blob = json.dumps(recipe.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def stage_args(stages: list[str] | None) -> list[str]:
    """`--from A --to B` for a contiguous run of stages in flow order; [] for the whole recipe."""
    if not stages:
        return []
    chosen = select(stages[0], stages[-1])
    if list(chosen) != list(stages):
        raise SubmitError(f"--stages {' '.join(stages)}: give consecutive stages in flow order "
                          f"({' -> '.join(chosen)})")
    return ["--from", stages[0], "--to", stages[-1]]


def job_spec(config: str | Path, recipe: Recipe, overrides: list[str],
             stages: list[str] | None = None, force: bool = False,
             working_dir: Path = REPO) -> JobSpec:
    """The job for a recipe: entrypoint, runtime env (the repo, without .venv) and metadata.

    `ray.address: local` would start a second, embedded cluster inside the job; the job joins the
    cluster it runs on instead (`--ray.address=auto`, RAY_ADDRESS is set for job drivers).
    """
    check_output_dir(recipe)
    job_recipe = recipe.model_copy(deep=True)
    if recipe.ray.address == "local":
        overrides = [*overrides, "ray.address=auto"]
        job_recipe.ray.address = "auto"
    digest = recipe_sha256(job_recipe)
    args = ["python", "-m", "mortgagellm", "run", config_arg(config, working_dir),
            *stage_args(stages), *(["--force"] if force else []), *(f"--{o}" for o in overrides)]
    metadata = {"recipe": str(config), "recipe_sha256": digest, "run_name": recipe.run.name,
                "output_dir": recipe.run.output_dir, "stages": " ".join(stages or ["all"]),
                "mortgagellm_version": __version__}
    return JobSpec(
        entrypoint=shlex.join(args),
        runtime_env={"working_dir": str(working_dir), "excludes": EXCLUDES,
                     "env_vars": {"PYTHONUNBUFFERED": "1"}},
        metadata=metadata,
        submission_id=f"{recipe.run.name}-{digest[:8]}-{secrets.token_hex(3)}")


def config_arg(config: str | Path, working_dir: Path) -> str:
    """The recipe path as the job sees it: relative inside the uploaded working dir.

    A recipe outside the working dir is not uploaded; its absolute path must then exist on the
    head node (a shared volume, or a head on this machine).
    """
    path = Path(config).resolve()
    if path.is_relative_to(working_dir.resolve()):
        return path.relative_to(working_dir.resolve()).as_posix()
    log.warning("%s is outside %s and is not uploaded: the head must see it at that path",
                path, working_dir)
    return str(path)


def check_output_dir(recipe: Recipe) -> None:
    """Refuse a relative run.output_dir: on the cluster it would land in the job's temporary copy
    of the working dir, gone when the job's runtime env is cleaned up."""
    out = recipe.run.output_dir
    if not (storage.is_remote(out) or Path(out).is_absolute()):
        raise SubmitError(f"run.output_dir {out!r} is relative: on a cluster it would be written "
                          "inside the job's temporary working dir. Set --run.output_dir to a "
                          "volume every node mounts (e.g. /mnt/shared/...) or an s3:// URI")


def auth_headers(mode: str) -> dict[str, str]:
    """The bearer header for a token-auth cluster, read from the variables Ray itself reads.

    Sent explicitly, so it does not depend on RAY_AUTH_MODE or on Ray's process-wide token cache.
    """
    if mode == "disabled":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN", "")
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if not token and path:
        token = Path(path).expanduser().read_text().strip()
    if not token:
        raise SubmitError("the cluster uses token auth (ray.auth: token): set RAY_AUTH_TOKEN_PATH "
                          "to a file holding its token, or RAY_AUTH_TOKEN; on KubeRay the token "
                          "is in the cluster's Secret (see README, Running on a cluster)")
    return {"Authorization": f"Bearer {token}"}


def failure_line(lines: list[str]) -> str | None:
    """The last error line of a job's log (a traceback's final line or a refused recipe)."""
    for line in reversed(lines):
        if _ERROR_LINE.match(line.strip()):
            return line.strip()
    return None


def submit(config: str | Path, recipe: Recipe, overrides: list[str], *, address: str | None,
           stages: list[str] | None = None, force: bool = False, wait: bool = True) -> int:
    """Submit the recipe, follow its logs; 0 when the job succeeded, 1 when it did not."""
    from ray.exceptions import RayError
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SubmitError("no cluster: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    job = job_spec(config, recipe, overrides, stages, force)
    try:
        client = JobSubmissionClient(address, headers=auth_headers(recipe.ray.auth))
        job_id = send(client, job)
    except (RayError, RuntimeError, OSError) as err:
        print(f"mortgagellm: {address} refused the job: {err}", file=sys.stderr)
        return 1
    print(f"submitted {job_id} to {address} (recipe sha256 {job.metadata['recipe_sha256'][:12]})",
          flush=True)
    if not wait:
        print(f"follow it with: ray job logs --follow --address {address} {job_id}")
        return 0
    tail = asyncio.run(_follow(client, job_id))
    return report(client, job_id, tail)


AGENT_NOT_READY = "No available agent to submit job"
"""What a head whose job agent has not registered yet answers (a cluster just started, or one
too busy to answer within Ray's wait); Ray's own message says to try again later."""


ALREADY_EXISTS = "already exists"
"""What the head answers a submission id it has queued: an earlier try got through."""


def send(client: Any, job: JobSpec, attempts: int = 6, wait_s: float = 10.0) -> str:
    """Submit the job; while the head has no job agent yet, or drops the connection (a head
    too busy to answer), wait and try again with the same submission id, so the job is never
    queued twice: a retry the head answers with "already exists" means an earlier try got
    through. Any other refusal is raised at once."""
    for attempt in range(1, attempts + 1):
        try:
            return client.submit_job(entrypoint=job.entrypoint, runtime_env=job.runtime_env,
                                     metadata=job.metadata, submission_id=job.submission_id)
        except (RuntimeError, OSError) as err:  # requests' ConnectionError is an OSError
            if attempt > 1 and isinstance(err, RuntimeError) and ALREADY_EXISTS in str(err) \
                    and job.submission_id in str(err):
                return job.submission_id
            dropped = isinstance(err, OSError)
            if not (dropped or AGENT_NOT_READY in str(err)) or attempt == attempts:
                raise
            why = "dropped the connection" if dropped else "has no job agent yet"
            print(f"mortgagellm: the head {why}; retrying in {wait_s:.0f} s "
                  f"({attempt}/{attempts - 1})", file=sys.stderr, flush=True)
            time.sleep(wait_s)
    raise AssertionError("unreachable")


async def _follow(client: Any, job_id: str) -> list[str]:
    """Print the job's log as it comes; returns its last lines for the error report."""
    tail: collections.deque[str] = collections.deque(maxlen=200)
    async for chunk in client.tail_job_logs(job_id):
        sys.stdout.write(chunk)
        sys.stdout.flush()
        tail.extend(chunk.splitlines())
    return list(tail)


def report(client: Any, job_id: str, tail: list[str], settle_s: float = 30.0) -> int:
    """Wait (briefly) for the final status once the log stream closed; print it; exit code."""
    deadline = time.monotonic() + settle_s
    info = client.get_job_info(job_id)
    while not info.status.is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
        info = client.get_job_info(job_id)
    if info.status.value == "SUCCEEDED":
        print(f"job {job_id} SUCCEEDED")
        return 0
    reason = failure_line(tail) or info.message
    print(f"mortgagellm: job {job_id} {info.status.value}: {reason}", file=sys.stderr)
    return 1
