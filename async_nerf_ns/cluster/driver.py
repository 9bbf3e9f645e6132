"""The driver of a cluster run: one task per cell (Ray, or in this process), then one assembled run.

    RUN/run_config.yml             the whole run's trainer config (what ns-train would train)
    RUN/cells/cell_<k>/            one ordinary nerfstudio run per cell (see cell_task.py)
    RUN/assembled/<method>/        config.yml + nerfstudio_models/step-N.ckpt + dataparser_transforms.json

Rerunning the same command continues: finished cells (DONE.json) are skipped, unfinished ones
resume from their newest loadable checkpoint. A cell that fails for good (its retries used up) does
not stop the others; the driver exits non-zero after they finish, naming it and its logs.

The device, mixed precision and field implementation are decided by each cell task on its own node
(cell_task.py), unless given after ``--``: run_config.yml holds ``null`` for those. The assembled run
is checked (loaded back with nerfstudio's ``eval_setup``) where the cells' implementation loads: in a
Ray task with the cells' resources, or in this process with ``--backend local``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import torch
import tyro
import yaml
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from async_nerf_ns.cluster.assemble import (
    assemble_cell_states,
    check_assembled_run,
    shard_pixel_counts,
    write_assembled_run,
)
from async_nerf_ns.cluster.cell_task import IMPLEMENTATION, num_cells, read_attempts, read_json, train_cell
from async_nerf_ns.files.atomic import write_text_atomic
from async_nerf_ns.method import presets
from async_nerf_ns.files.run_folder import ASSEMBLED, ATTEMPTS, DONE, LOG, PROGRESS, RUN_CONFIG, cell_dir

Method = Literal["async-nerf-small", "async-nerf"]
TASK_DECIDED_OPTIONS = {
    "mixed_precision": "--mixed-precision",
    "pipeline.model.implementation": "--pipeline.model.implementation",
}
"""Config fields a cell task decides on its own node, unless given after ``--`` (ns-train's flags)."""
RUN_CONFIG_HEADER = (
    "# async-nerf-train-cells: the run's config for all cells. null fields are decided by each cell task on its\n"
    "# own node: machine.device_type (cuda when the task has a GPU), mixed_precision (on for cuda) and\n"
    "# pipeline.model.implementation (the first task's choice, RUN/" + IMPLEMENTATION + "); see cells/cell_<k>/config.yml.\n"
)
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


class ClusterError(RuntimeError):
    """The cluster cannot run the cells as asked (no node with the resources, a changed run folder, ...)."""


@dataclass
class TrainCells:
    """Train every cell of an async-nerf partition as its own fault-tolerant task, then assemble them
    into one nerfstudio run directory (for ns-viewer, ns-eval, ns-render).

    Options after ``--`` are ns-train options of the method, e.g.
    ``async-nerf-train-cells --data D --run-dir R -- --max-num-iterations 5000 --pipeline.datamanager.partition.grid-dim 3 3``.
    """

    data: Path
    """The dataset (async-nerf layout); on a cluster, on storage every node mounts at the same path."""
    run_dir: Path
    """Folder of the run (cells, checkpoints, the assembled run); on a cluster, shared by every node.
    Rerun the command with the same folder to continue after an interruption."""
    method: Optional[Method] = None
    """The ns-train method whose config every cell trains with; default: async-nerf (GPU sizes) when
    --gpus-per-cell > 0, else async-nerf-small."""
    backend: Literal["ray", "local"] = "ray"
    """ray: one Ray task per cell; local: the cells one after the other in this process (no Ray)."""
    ray_address: Optional[str] = None
    """Address of a running Ray cluster (e.g. HEAD:6379, or "auto"); None: start a local one."""
    num_cpus: Optional[int] = None
    """CPUs of the local Ray cluster started without --ray-address (default: all of this machine's)."""
    cpus_per_cell: float = 1.0
    """CPUs reserved per cell task (fractions allowed); torch uses max(1, int(this)) threads."""
    gpus_per_cell: float = 0.0
    """GPUs reserved per cell task (fractions allowed: 0.5 runs two cells per GPU); 0: train on CPUs."""
    max_retries: int = 3
    """Times Ray reruns a cell whose worker died (killed, out of memory, node lost); each rerun resumes
    from the cell's newest loadable checkpoint. Python errors in training are not retried."""
    cells: Optional[Tuple[int, ...]] = None
    """Train only these cells (e.g. to split the cells over several commands); default: all. The run
    is assembled once every cell is done."""
    progress_every: int = 10
    """Steps between a task's progress reports."""
    keep_checkpoints: int = 2
    """Newest checkpoints each cell keeps (2 leaves one to fall back to when the newest is damaged);
    how often they are written is ns-train's --steps-per-save."""
    poll_seconds: float = 2.0
    """How often the driver refreshes the progress display."""
    ns_train_args: tyro.conf.Suppress[Tuple[str, ...]] = ()
    """The ns-train options (given after ``--`` on the command line)."""

    # ------------------------------------------------------------------------------------ main
    def main(self) -> Optional[Path]:
        """Trains the cells that are not done; returns the assembled config.yml (None when some cells
        are left to other commands). Raises SystemExit(1) when a cell failed for good."""
        run_dir = self.run_dir.resolve()
        config = self.run_config(run_dir)
        total = num_cells(config)
        wanted = sorted(set(self.cells)) if self.cells is not None else list(range(total))
        bad = [k for k in wanted if not 0 <= k < total]
        if bad or not wanted:
            raise ClusterError(f"--cells {list(self.cells or [])}: the partition has cells 0..{total - 1}")

        if self.backend == "ray":
            self.connect_ray()  # before the data preparation: a refused connection or missing resources fail fast
        prepared = self.prepare(config)
        empty = [int(k) for k in prepared.get("empty_cells", [])]
        if empty:
            CONSOLE.print(f"[yellow]Cells {empty} have no training pixels: they are not trained (left empty)")
        todo = [k for k in wanted if k not in empty and read_json(cell_dir(run_dir, k) / DONE) is None]
        skipped = [k for k in wanted if k not in empty and k not in todo]
        if skipped:
            CONSOLE.print(f"Cells {skipped} are done already (DONE.json): not trained again")
        failed = self.run_local(run_dir, todo) if self.backend == "local" else self.run_ray(run_dir, todo)
        if failed:
            CONSOLE.print(f"[bold red]{len(failed)} of {len(todo)} cells failed for good:")
            for k, reason in sorted(failed.items()):
                folder = cell_dir(run_dir, k)
                CONSOLE.print(f"  cell {k}: {reason}\n    logs: {folder / LOG}, {folder / ATTEMPTS}, {folder / PROGRESS}"
                              + (" and Ray's worker logs (/tmp/ray/session_latest/logs/ on its node)" if self.backend == "ray" else ""))
            CONSOLE.print("Rerun the same command to retry them; finished cells are not trained again.")
            raise SystemExit(1)

        missing = [k for k in range(total) if k not in empty and read_json(cell_dir(run_dir, k) / DONE) is None]
        if missing:
            CONSOLE.print(f"Cells {missing} are not done yet: the run is assembled once every cell is")
            return None
        return self.assemble(run_dir, config, prepared, empty)

    # ------------------------------------------------------------------------------------ config
    @property
    def method_name(self) -> str:
        """--method, or the preset that fits the resources asked for."""
        if self.method is not None:
            return self.method
        return "async-nerf" if self.gpus_per_cell > 0 else "async-nerf-small"

    def parse_ns_train_args(self, default: Optional[TrainerConfig] = None) -> TrainerConfig:
        """The method's config with the options after ``--``, parsed as ns-train parses them."""
        default = default if default is not None else presets()[self.method_name]
        return tyro.cli(
            tyro.conf.FlagConversionOff[type(default)],  # like ns-train: --pipeline.finetune-tpf True
            default=default,
            args=list(self.ns_train_args),
            prog="async-nerf-train-cells ... --",
        )

    def given_task_options(self) -> List[str]:
        """Which of TASK_DECIDED_OPTIONS the options after ``--`` set: parsed twice, from two defaults
        that differ in every one of them; a field the user set is equal in both."""
        a, b = presets()[self.method_name], presets()[self.method_name]
        a.mixed_precision, b.mixed_precision = False, True
        a.pipeline.model.implementation, b.pipeline.model.implementation = "torch", "tcnn"
        a, b = self.parse_ns_train_args(a), self.parse_ns_train_args(b)
        return [name for name in TASK_DECIDED_OPTIONS if _get(a, name) == _get(b, name)]

    def run_config(self, run_dir: Path) -> TrainerConfig:
        """The method's config with the ns-train options, for all cells; written to RUN/run_config.yml,
        or checked against it when the run folder was started before. The fields each task decides
        (TASK_DECIDED_OPTIONS when not given, and the device) are None."""
        config = self.parse_ns_train_args()
        given = self.given_task_options()
        for name in TASK_DECIDED_OPTIONS:
            if name not in given:
                _set(config, name, None)
        config.machine.device_type = None  # type: ignore[assignment]  # each task: cell_task.task_device
        if config.pipeline.datamanager.cells is not None:
            raise ClusterError("give the cells to train with --cells, not --pipeline.datamanager.cells")
        config.data = self.data.resolve()
        config.pipeline.datamanager.data = config.data
        config.output_dir = run_dir
        config.experiment_name = ASSEMBLED
        config.method_name = self.method_name
        config.timestamp = ""
        text = RUN_CONFIG_HEADER + yaml.dump(config)
        path = run_dir / RUN_CONFIG
        if path.exists():
            if path.read_text() != text:
                raise ClusterError(
                    f"{run_dir} was started with other options ({path}); rerun with the same options to "
                    "continue it, or choose another --run-dir"
                )
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, text)
        return config

    @staticmethod
    def prepare(config: TrainerConfig) -> Dict[str, Any]:
        """Stage 1 and every cell's ray shards, written once here so that tasks only read them."""
        from async_nerf_ns.data.prepare import prepare_training_data

        prepared = prepare_training_data(copy.deepcopy(config))
        prepared.pop("datamanager", None)
        return prepared

    # ------------------------------------------------------------------------------------ backends
    def task_kwargs(self) -> Dict[str, Any]:
        return {"cpus": self.cpus_per_cell, "gpus": self.gpus_per_cell, "progress_every": self.progress_every,
                "keep_checkpoints": self.keep_checkpoints, "log_to_file": self.backend == "ray"}

    def run_local(self, run_dir: Path, todo: Sequence[int]) -> Dict[int, str]:
        """The cells one after the other in this process; returns the failed ones with the reason."""
        failed: Dict[int, str] = {}
        for k in todo:
            CONSOLE.rule(f"cell {k}")
            try:
                train_cell(run_dir, k, **self.task_kwargs())
            except Exception as error:  # one cell's failure must not stop the others
                traceback.print_exc()
                failed[k] = f"{type(error).__name__}: {error}"
        return failed

    def connect_ray(self) -> None:
        """Connects to --ray-address (or starts a local cluster) once, and checks that some node can
        run a cell task. Raises ClusterError, with the fix, when the cluster refuses the connection."""
        import ray

        if not ray.is_initialized():
            if self.ray_address is None:
                ray.init(num_cpus=self.num_cpus or os.cpu_count(), include_dashboard=False,
                         object_store_memory=100 * 2**20)
            else:
                refused = probe_authentication(self.ray_address)
                if refused is not None:
                    raise ClusterError(ray_auth_help(self.ray_address, refused))
                try:
                    ray.init(address=self.ray_address)
                except Exception as error:  # ConnectionError, AuthenticationError, RuntimeError
                    reason = auth_failure(error)
                    if reason is None:
                        raise
                    raise ClusterError(ray_auth_help(self.ray_address, reason)) from error
        check_resources(ray.nodes(), self.cpus_per_cell, self.gpus_per_cell)

    def run_ray(self, run_dir: Path, todo: Sequence[int]) -> Dict[int, str]:
        """One Ray task per cell, polled with a progress display; returns the failed ones with the reason."""
        import ray

        if not todo:
            return {}
        self.connect_ray()
        task = ray.remote(train_cell)
        refs = {
            task.options(num_cpus=self.cpus_per_cell, num_gpus=self.gpus_per_cell, max_retries=self.max_retries,
                         name=f"cell_{k:03d}").remote(str(run_dir), k, **self.task_kwargs()): k
            for k in todo
        }
        failed: Dict[int, str] = {}
        monitor = _Monitor(run_dir, todo)
        pending = list(refs)
        with monitor.progress:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=self.poll_seconds)
                for ref in ready:
                    k = refs[ref]
                    try:
                        record = ray.get(ref)
                    except Exception as error:  # RayTaskError (Python error), WorkerCrashedError (retries used up)
                        failed[k] = _first_line(error)
                        CONSOLE.print(f"[red]cell {k} failed: {failed[k]}")
                        continue
                    if not (cell_dir(run_dir, k) / DONE).is_file():
                        failed[k] = (
                            f"finished on {record['host']}, but its {DONE} is not in {cell_dir(run_dir, k)} here: "
                            "the run folder must be on storage every node mounts at the same path"
                        )
                monitor.update(failed)
        return failed

    # ------------------------------------------------------------------------------------ assembly
    def assemble(self, run_dir: Path, config: TrainerConfig, prepared: Dict[str, Any], empty: Sequence[int]) -> Path:
        """Every cell's final checkpoint into one run directory, checked with nerfstudio's eval_setup."""
        records = {k: read_json(cell_dir(run_dir, k) / DONE) for k in range(num_cells(config)) if k not in empty}
        names = [f"cell {k} ({r['checkpoint']})" for k, r in records.items()]
        # mmap: tensors are read when used, so K checkpoints of K cells each never sit in RAM at once.
        states = [torch.load(r["checkpoint"], map_location="cpu", weights_only=True, mmap=True)["pipeline"]
                  for r in records.values()]
        state = assemble_cell_states(states, names, shard_pixel_counts(prepared), empty)
        first = next(iter(records))
        path = write_assembled_run(
            self.assembled_config(run_dir, config, records[first]), state, max(r["step"] for r in records.values()),
            cell_dir(run_dir, first) / "dataparser_transforms.json", check=False,
        )
        checked = self.check_assembled(path)
        CONSOLE.print(f"[bold green]Assembled {len(records)} cells into {path}[/] (loaded back by pid "
                      f"{checked['pid']} on {checked['host']}, {checked['device']}, {checked['implementation']} fields)")
        CONSOLE.print(f"  ns-eval --load-config {path} --output-path eval.json\n  ns-viewer --load-config {path}")
        return path

    @staticmethod
    def assembled_config(run_dir: Path, config: TrainerConfig, done: Dict[str, Any]) -> TrainerConfig:
        """The run's config with what its tasks decided: the implementation all cells use, and the
        device and mixed precision of the cell whose DONE record is ``done``."""
        config = copy.deepcopy(config)
        record = read_json(run_dir / IMPLEMENTATION)
        implementation = done.get("implementation") or (record or {}).get("implementation")
        if implementation is None:
            raise ClusterError(f"{run_dir / IMPLEMENTATION} is missing: which field implementation the cells use is unknown")
        config.pipeline.model.implementation = implementation
        if config.mixed_precision is None:
            config.mixed_precision = bool(done.get("mixed_precision", False))
        if config.machine.device_type is None:
            config.machine.device_type = done.get("device", "cpu")
        return config

    def check_assembled(self, config_path: Path) -> Dict[str, Any]:
        """``check_assembled_run`` where the cells' implementation loads: in this process (local backend),
        or as a Ray task with a cell's resources (the driver's machine may have no GPU or tinycudann)."""
        if self.backend == "local":
            return check_assembled_run(config_path)
        import ray

        self.connect_ray()
        task = ray.remote(check_assembled_run).options(
            num_cpus=self.cpus_per_cell, num_gpus=self.gpus_per_cell, max_retries=self.max_retries, name="check_assembled"
        )
        try:
            return ray.get(task.remote(str(config_path)))
        except Exception as error:
            raise ClusterError(f"the assembled run {config_path} does not load: {_first_line(error)}") from error


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


def _get(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def _set(config: Any, dotted: str, value: Any) -> None:
    *parents, name = dotted.split(".")
    for part in parents:
        config = getattr(config, part)
    setattr(config, name, value)


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


class _Monitor:
    """Per-cell progress bars fed by the tasks' progress.json, and a line per new attempt."""

    def __init__(self, run_dir: Path, cells: Sequence[int]) -> None:
        self.run_dir = run_dir
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=CONSOLE
        )
        self.bars = {k: self.progress.add_task(f"cell {k}: waiting", total=None) for k in cells}
        self.seen_attempts = {k: len(read_attempts(cell_dir(run_dir, k))) for k in cells}

    def update(self, failed: Dict[int, str]) -> None:
        for k, bar in self.bars.items():
            folder = cell_dir(self.run_dir, k)
            attempts = read_attempts(folder)
            for record in attempts[self.seen_attempts[k] :]:
                CONSOLE.print(
                    f"cell {k}: attempt {record['attempt']} (pid {record['pid']} on {record['host']}) "
                    f"from step {record['start_step']}"
                )
            self.seen_attempts[k] = len(attempts)
            progress = read_json(folder / PROGRESS)
            if k in failed:
                self.progress.update(bar, description=f"cell {k}: [red]failed")
            elif progress is not None:
                state = progress["state"]
                self.progress.update(
                    bar, total=progress["last_step"] + 1, completed=progress["step"] + (state == "done"),
                    description=f"cell {k}: {state} (attempt {progress['attempt']}, {progress['host']})",
                )


def split_pass_through(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Own options, and the ns-train options after ``--``."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def cli(argv: Sequence[str]) -> TrainCells:
    own, ns_train = split_pass_through(argv)
    command = tyro.cli(TrainCells, args=own)
    return dataclasses.replace(command, ns_train_args=tuple(ns_train))
