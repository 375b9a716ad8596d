"""A real `ray start --head --block` on 127.0.0.1 with token auth, for the tests that talk to a
cluster the way a user does (tests/cluster/test_submit.py, test_plain_ray.py): own ports,
worker-port range and temp dir, and a marker in its environment so that stopping it stops only
the processes it started (Ray daemons, workers, job drivers and Serve actors inherit it)."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

VENV_BIN = Path(sys.executable).parent
MARKER = "MLLM_TEST_HEAD"
"""The environment variable whose value names one head's processes."""


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free on 127.0.0.1 now (from the kernel's ephemeral range)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def worker_port_range(n: int) -> int:
    """The first of `n` free ports below the kernel's ephemeral range, where the ports of
    free_ports (ephemeral ones) and other sockets' ports can never fall: a random range inside
    it collided with one of them ("worker_ports is trying to use a port ... used by other
    components") on a fresh CI machine."""
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(50):
        low = random.randrange(10000, ephemeral_low - n, 100)
        try:
            for port in (low, low + n - 1):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return low
        except OSError:
            continue
    raise RuntimeError(f"no {n} free worker ports below {ephemeral_low}")


def client_env(token: Path | None) -> dict[str, str]:
    """This process's environment without any RAY_ variable, plus the client side of token auth
    as a user would set it (Ray's clients send the token only with RAY_AUTH_MODE=token)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    if token is not None:
        env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    return env


def processes(marker: str) -> list[psutil.Process]:
    """The live processes that carry this head's marker in their environment."""
    ours = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(MARKER) == marker:
                ours.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return ours


def stop(proc: subprocess.Popen, marker: str) -> None:
    """Stop what this head started: `ray start --block`'s process group, then any process that
    carries its marker in its environment."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    ours = processes(marker)
    for p in ours:
        p.terminate()
    _, alive = psutil.wait_procs(ours, timeout=15)
    for p in alive:
        p.kill()
    proc.wait(timeout=30)


@contextlib.contextmanager
def running(tmp: Path, num_cpus: int = 2) -> Iterator[dict]:
    """A Ray head on 127.0.0.1 with token auth, `num_cpus` logical CPUs, its own ports and temp
    dir, logging to <tmp>/head.log. Yields {url (the dashboard), token (its path), temp_dir, tmp,
    marker}; stops only its own processes when the block ends."""
    token = tmp / "token"
    token.write_text(os.urandom(24).hex())
    token.chmod(0o600)
    temp_dir = tempfile.mkdtemp(prefix="mllm-sub-", dir="/tmp")  # short: socket path limit
    gcs, dash, agent, agent_grpc, env_agent, client, node, obj, metrics = free_ports(9)
    low = worker_port_range(61)
    marker = os.urandom(8).hex()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {
        "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", MARKER: marker,
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "DS_ACCELERATOR": "cpu"}
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
           "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
           "--include-dashboard", "true", "--dashboard-agent-listen-port", str(agent),
           "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port",
           str(env_agent), "--ray-client-server-port", str(client), "--node-manager-port",
           str(node), "--object-manager-port", str(obj), "--metrics-export-port", str(metrics),
           "--min-worker-port", str(low), "--max-worker-port", str(low + 60),
           "--num-cpus", str(num_cpus), "--object-store-memory", str(100 << 20),
           "--temp-dir", temp_dir, "--disable-usage-stats"]
    with open(tmp / "head.log", "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=tmp)
    url = f"http://127.0.0.1:{dash}"
    try:
        wait_for_dashboard(url, token, proc, tmp / "head.log")
        yield {"url": url, "token": token, "temp_dir": Path(temp_dir), "tmp": tmp,
               "marker": marker}
    finally:
        stop(proc, marker)
        shutil.rmtree(temp_dir, ignore_errors=True)


def wait_for_dashboard(url: str, token: Path, proc: subprocess.Popen, log: Path) -> None:
    """Block until the dashboard answers an authenticated request (180 s at most)."""
    import requests

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"ray start exited:\n{log.read_text()[-3000:]}"
        try:
            r = requests.get(f"{url}/api/version", timeout=2,
                             headers={"Authorization": f"Bearer {token.read_text()}"})
            if r.status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(1)
    raise AssertionError(f"dashboard at {url} not up after 180 s:\n{log.read_text()[-3000:]}")
