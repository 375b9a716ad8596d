"""Ray runtime: start the embedded local cluster or connect to an existing one, with token auth.

Local clusters bind to 127.0.0.1 and keep Ray 2.60's token auth on, with the token in the run's
own directory (never ~/.ray), so a laptop run neither joins a stray cluster nor exposes one.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from mortgagellm.config import RayConfig, ScalingSettings

if TYPE_CHECKING:
    import ray.train

log = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"
_INIT_LOCK = threading.Lock()


def logical_cpus(cfg: RayConfig) -> int:
    """CPUs the embedded cluster advertises: the recipe's number, else 2 x physical, >= 4.

    Ray's CPU count is a scheduling token, not a core: on a 2-core laptop, a 1-worker
    TorchTrainer holding its CPU left Ray Data no CPU to run on and the job hung. Advertising
    more logical CPUs lets both schedule, while torch threads still share the real cores.
    """
    return cfg.num_cpus or max(4, 2 * (os.cpu_count() or 1))


def check_fits(ray_cfg: RayConfig, scaling: ScalingSettings) -> None:
    """Fail before start-up when Train workers plus Ray Data cannot share the local cluster."""
    if ray_cfg.address != "local":
        return
    need = scaling.num_workers * scaling.cpus_per_worker + ray_cfg.data_cpus
    have = logical_cpus(ray_cfg)
    if need > have:
        raise ValueError(
            f"{scaling.num_workers} workers x {scaling.cpus_per_worker} CPUs + ray.data_cpus "
            f"{ray_cfg.data_cpus} = {need} logical CPUs, but the embedded cluster has {have}: "
            "raise ray.num_cpus or lower pretrain.scaling.cpus_per_worker"
        )


def prepare_token(token_path: Path) -> Path:
    """Create (once) a 0600 token file and point this process and its children at it."""
    token_path.parent.mkdir(parents=True, exist_ok=True)
    if not token_path.exists():
        fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_path.absolute())
    return token_path


def init_ray(cfg: RayConfig, run_dir: str | Path) -> dict:
    """Start or connect to Ray as the recipe says; returns ray.init's context info.

    'local' never attaches to a running cluster (explicit address="local"); 'auto' reads
    RAY_ADDRESS; any other value is an address. Token auth: on by default, token kept in
    <run_dir>/ray/auth_token for local clusters; when connecting, RAY_AUTH_TOKEN_PATH or
    RAY_AUTH_TOKEN must already name the cluster's token.
    """
    if cfg.auth == "disabled":
        os.environ["RAY_AUTH_MODE"] = "disabled"
    elif cfg.address == "local":
        prepare_token(Path(run_dir) / "ray" / "auth_token")
    else:
        os.environ["RAY_AUTH_MODE"] = "token"
    if cfg.address == "local":
        # Read by ray at import: makes every listener use the loopback address instead of the
        # machine's routable IP (Ray rewrites a plain _node_ip_address="127.0.0.1").
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    from ray._raylet import AuthenticationTokenLoader, Config

    # Ray caches the auth mode and token when first imported; refresh both (as ray.init itself
    # does when it turns token auth on) so the settings above apply even if ray came in earlier.
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
    if ray.is_initialized():
        raise RuntimeError("Ray is already initialised in this process; call ray.shutdown() first")
    if cfg.address == "local":
        return _start_local(cfg)
    address = os.environ.get("RAY_ADDRESS") if cfg.address == "auto" else cfg.address
    if not address:
        raise ValueError("ray.address is 'auto' but RAY_ADDRESS is not set")
    log.info("connecting to Ray at %s", address)
    return ray.init(address=address, log_to_driver=True)


def ensure_ray(cfg: RayConfig, run_dir: str | Path) -> None:
    """Ray as the recipe says, once per process: the first caller starts or joins it (init_ray),
    later ones use it. Locked, so stages running side by side in threads (`mortgagellm run`'s
    expert wave) never both start a cluster."""
    import ray

    with _INIT_LOCK:
        if not ray.is_initialized():
            init_ray(cfg, run_dir)


def side_by_side(calls: dict[str, tuple[Callable[..., Any], tuple]]
                 ) -> Iterator[tuple[str, Any, BaseException | None]]:
    """Run each fn(*args) of `calls` at the same time (OwnProcesses). Yields (name, result,
    None) or (name, None, error) as each ends; error is the call's own exception. Ray must be
    running (ensure_ray).
    """
    tasks = OwnProcesses()
    for name, (fn, args) in calls.items():
        tasks.start(name, fn, args)
    while tasks:
        yield tasks.next_done()


class OwnProcesses:
    """Calls started one by one, each a Ray task in a process of its own (its own interpreter:
    transformers' lazy imports are not thread-safe, and no GIL is shared) on this node, so it
    reads and writes the files this process does, in this process's working directory and with
    its log lines at INFO (Ray shows them prefixed "(name pid=...)"). The tasks take no CPU of
    Ray's: what they start (Train workers, Data tasks, actors) asks for its own. Ray must be
    running (ensure_ray)."""

    def __init__(self) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self._task = ray.remote(num_cpus=0, max_calls=1, max_retries=0,
                                scheduling_strategy=here)(_in_own_process)
        self._running: dict[Any, str] = {}

    def __len__(self) -> int:
        return len(self._running)

    def start(self, name: str, fn: Callable[..., Any], args: tuple) -> None:
        """Start fn(*args) under `name` (its log lines are prefixed "(name pid=...)")."""
        ref = self._task.options(name=name).remote(fn, args, os.getcwd())
        self._running[ref] = name

    def next_done(self) -> tuple[str, Any, BaseException | None]:
        """Wait for the next call to end: (name, result, None) or (name, None, error)."""
        import ray

        (ready,), _ = ray.wait(list(self._running), num_returns=1)
        name = self._running.pop(ready)
        try:
            return name, ray.get(ready), None
        except ray.exceptions.RayTaskError as err:
            return name, None, err.cause if isinstance(err.cause, BaseException) else err


def _in_own_process(fn: Callable[..., Any], args: tuple, cwd: str) -> Any:
    os.chdir(cwd)
    logging.basicConfig(level=logging.INFO, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return fn(*args)
    except BaseException:
        logging.getLogger(__name__).exception("%s failed", getattr(fn, "__name__", fn))
        raise


def _start_local(cfg: RayConfig) -> dict:
    import ray
    from ray._private import ray_constants

    # The environment variable set in init_ray reaches Ray's own processes; this process may have
    # imported ray before it was set, so its copy of the flag is set here too.
    ray_constants.ENABLE_RAY_CLUSTER = False
    context = ray.init(
        address="local",
        num_cpus=logical_cpus(cfg),
        object_store_memory=cfg.object_store_mb * 1024 * 1024,
        include_dashboard=cfg.include_dashboard,
        dashboard_host=LOOPBACK,
        _node_ip_address=LOOPBACK,
        _temp_dir=cfg.temp_dir,
        log_to_driver=True,
        runtime_env=None if cfg.include_dashboard else {
            "worker_process_setup_hook": "mortgagellm.cluster.worker_setup.quiet_worker_logs"},
    )
    log.info("embedded Ray on %s with %d logical CPUs", LOOPBACK, logical_cpus(cfg))
    return context


def scaling_config(scaling: ScalingSettings) -> ray.train.ScalingConfig:
    """Ray Train ScalingConfig from the recipe's topology (nodes x workers, placement)."""
    from ray.train import ScalingConfig

    return ScalingConfig(
        num_workers=scaling.num_workers,
        use_gpu=scaling.use_gpu,
        resources_per_worker={"CPU": scaling.cpus_per_worker}
        | ({"GPU": 1} if scaling.use_gpu else {}),
        placement_strategy=scaling.placement_strategy,
        accelerator_type=scaling.accelerator_type,
    )
