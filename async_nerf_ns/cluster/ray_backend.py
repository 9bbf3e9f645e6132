"""The Ray backend of ``async-nerf-train-cells``: one connection to the cluster, one Ray task per cell,
and the assembled run checked by a Ray task with a cell's resources (the driver's machine may have no
GPU or tinycudann).

The connection is made once, before the data preparation, so that a refused connection or resources
no node has fail fast; Ray refusing this driver's credentials is named with the fix
(``RAY_AUTH_HELP``). Ray is imported only when a method runs: the local backend and the cell tasks'
own code do not need it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from nerfstudio.utils.rich_utils import CONSOLE

from async_nerf_ns.cluster.assemble import check_assembled_run
from async_nerf_ns.cluster.cell_task import train_cell
from async_nerf_ns.cluster.errors import ClusterError
from async_nerf_ns.cluster.progress_display import CellProgressDisplay
from async_nerf_ns.files.run_folder import DONE, cell_dir

RAY_AUTH_HELP = """\
the Ray cluster at {address} refused this driver: {reason}
Ray 2.60 turns token authentication on in `ray start --head` when a token exists (~/.ray/auth_token,
RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH) or RAY_AUTH_MODE=token is set; a driver or `ray start --address` given
an explicit address sends a token only with RAY_AUTH_MODE=token (here: RAY_AUTH_MODE={mode}; {token}).
Either
  - use the head's token: copy the head's ~/.ray/auth_token (`ray get-auth-token` prints it) to this machine's
    ~/.ray/auth_token (or set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH=<file>) and set RAY_AUTH_MODE=token, here
    and for every `ray start --address` (e.g. RAY_AUTH_MODE=token async-nerf-train-cells --ray-address {address} ...);
  - or, on a private network only, start the head, every node and this driver with RAY_AUTH_MODE=disabled
    (then anyone who can reach the cluster's ports can run code on it).
See README.md, "Training cells on a cluster (Ray)"."""


class RayBackend:
    """Cells as Ray tasks on the cluster at ``address`` (HEAD:6379, "auto"; None: a local Ray cluster of
    ``num_cpus``), each with ``cpus``/``gpus`` reserved and rerun up to ``max_retries`` times when its
    worker dies."""

    extra_logs = " and Ray's worker logs (/tmp/ray/session_latest/logs/ on its node)"
    """Where else a failed cell's output is (its cell folder aside)."""

    def __init__(self, address: Optional[str], num_cpus: Optional[int], cpus: float, gpus: float,
                 max_retries: int, poll_seconds: float) -> None:
        self.address, self.num_cpus = address, num_cpus
        self.cpus, self.gpus, self.max_retries, self.poll_seconds = cpus, gpus, max_retries, poll_seconds
        self.connected = False

    def connect(self) -> None:
        """Connects to the cluster (or starts a local one) and checks that some node can run a cell task;
        later calls do nothing. Raises ClusterError, with the fix, when the cluster refuses the connection."""
        import ray

        if self.connected:
            return
        if not ray.is_initialized():
            if self.address is None:
                ray.init(num_cpus=self.num_cpus or os.cpu_count(), include_dashboard=False,
                         object_store_memory=100 * 2**20)
            else:
                _connect_to(ray, self.address)
        check_resources(ray.nodes(), self.cpus, self.gpus)
        self.connected = True

    def train(self, run_dir: Path, todo: Sequence[int], **task_options: Any) -> Dict[int, str]:
        """One Ray task per cell, polled with a progress display; returns the failed ones with the reason."""
        import ray

        if not todo:
            return {}
        self.connect()
        task = ray.remote(train_cell)
        refs = {
            task.options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=self.max_retries,
                         name=f"cell_{k:03d}").remote(str(run_dir), k, log_to_file=True, **task_options): k
            for k in todo
        }
        failed: Dict[int, str] = {}
        display = CellProgressDisplay(run_dir, todo)
        pending = list(refs)
        with display.progress:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=self.poll_seconds)
                for ref in ready:
                    reason = _failure(ray, ref, run_dir, refs[ref])
                    if reason is not None:
                        failed[refs[ref]] = reason
                display.update(failed)
        return failed

    def check_assembled(self, config_path: Path) -> Dict[str, Any]:
        """``check_assembled_run`` as a Ray task with a cell's resources, where the cells' implementation loads."""
        import ray

        self.connect()
        task = ray.remote(check_assembled_run).options(
            num_cpus=self.cpus, num_gpus=self.gpus, max_retries=self.max_retries, name="check_assembled"
        )
        try:
            return ray.get(task.remote(str(config_path)))
        except Exception as error:
            raise ClusterError(f"the assembled run {config_path} does not load: {_first_line(error)}") from error


def _connect_to(ray: Any, address: str) -> None:
    """``ray.init(address=...)``; a refusal of this process's credentials is raised as ClusterError naming the fix."""
    refused = probe_authentication(address)
    if refused is not None:
        raise ClusterError(ray_auth_help(address, refused))
    try:
        ray.init(address=address)
    except Exception as error:  # ConnectionError, AuthenticationError, RuntimeError
        reason = auth_failure(error)
        if reason is None:
            raise
        raise ClusterError(ray_auth_help(address, reason)) from error


def _failure(ray: Any, ref: Any, run_dir: Path, k: int) -> Optional[str]:
    """Why cell ``k``'s finished task ``ref`` failed, None when it did not."""
    try:
        record = ray.get(ref)
    except Exception as error:  # RayTaskError (Python error), WorkerCrashedError (retries used up)
        reason = _first_line(error)
        CONSOLE.print(f"[red]cell {k} failed: {reason}")
        return reason
    if not (cell_dir(run_dir, k) / DONE).is_file():
        return (
            f"finished on {record['host']}, but its {DONE} is not in {cell_dir(run_dir, k)} here: "
            "the run folder must be on storage every node mounts at the same path"
        )
    return None


def probe_authentication(address: str) -> Optional[str]:
    """Ray's refusal, when the GCS at ``address`` (host:port) refuses this process's credentials, else None.

    ``ray.init`` retries a refused connection for ~20 s and then says only "Failed to connect"; one
    GCS client (Ray's own, ``ray._raylet.GcsClient``) is refused in ~1 s with Ray's AuthenticationError.
    Anything else (unreachable, another address form, another Ray version) is left to ``ray.init``.
    """
    if address == "auto" or "://" in address:
        return None
    try:
        from ray._raylet import GcsClient
        from ray.exceptions import AuthenticationError
    except ImportError:
        return None
    try:
        GcsClient(address=address)
    except AuthenticationError as error:
        return auth_failure(error)
    except Exception:
        return None
    return None


def auth_failure(error: BaseException) -> Optional[str]:
    """The line of Ray's authentication failure in ``error`` or the errors it was raised from, or None."""
    from ray.exceptions import AuthenticationError

    seen = 0
    while error is not None and seen < 10:
        text = str(error)
        if isinstance(error, AuthenticationError) or "InvalidAuthToken" in text or "authentication token" in text:
            lines = [line.strip() for line in text.splitlines() if "auth" in line.lower()]
            line = lines[-1] if lines else text
            return line.split(". ")[0][:300]  # Ray's own advice follows; ours is in RAY_AUTH_HELP
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
        seen += 1
    return None


def ray_auth_help(address: str, reason: str) -> str:
    """The ClusterError message for a refused connection: the cause, what this machine has, the fix."""
    mode = os.environ.get("RAY_AUTH_MODE", "unset")
    sources = [name for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH") if os.environ.get(name)]
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file():
        sources.append(str(default))
    token = f"tokens here: {', '.join(sources)}" if sources else "no token on this machine"
    return RAY_AUTH_HELP.format(address=address, reason=reason, mode=mode, token=token)


def check_resources(nodes: List[Dict[str, Any]], cpus: float, gpus: float) -> None:
    """A task that asks for more than any node has stays pending forever, silently: refuse instead."""
    alive = [n for n in nodes if n.get("Alive", True)]
    for name, wanted in (("GPU", gpus), ("CPU", cpus)):
        if wanted <= 0:
            continue
        per_node = [float(n.get("Resources", {}).get(name, 0.0)) for n in alive]
        if not per_node or max(per_node) < wanted:
            raise ClusterError(
                f"--{name.lower()}s-per-cell {wanted}: no node of the Ray cluster has {wanted} {name}(s) "
                f"({name}s per node: {per_node or 'no nodes'}); a cell task would wait forever. "
                + ("Train on CPUs with --gpus-per-cell 0, or add GPU nodes." if name == "GPU" else "Ask for fewer.")
            )


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]
