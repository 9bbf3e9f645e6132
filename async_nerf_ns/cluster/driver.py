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

As nerfstudio splits ``TrainerConfig`` and ``Trainer``: `TrainCells` is the command's options (and the
run's trainer config they give), ``TrainCells.setup()`` builds the `CellsDriver` it names in
``_target``, which plans the cells, hands them to a backend (ray_backend.py, local_backend.py) and
assembles the run (assemble_run.py).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, NoReturn, Optional, Sequence, Tuple, Type, Union

import tyro
import yaml
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE

from async_nerf_ns.cluster.assemble_run import assemble_run
from async_nerf_ns.cluster.cell_task import IMPLEMENTATION, num_cells
from async_nerf_ns.cluster.errors import ClusterError
from async_nerf_ns.cluster.local_backend import LocalBackend
from async_nerf_ns.cluster.ray_backend import RayBackend
from async_nerf_ns.files.atomic import write_text_atomic
from async_nerf_ns.files.run_folder import ASSEMBLED, ATTEMPTS, DONE, LOG, PROGRESS, RUN_CONFIG, cell_dir, read_json
from async_nerf_ns.method import presets

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
    _target: tyro.conf.Suppress[Type[CellsDriver]] = field(default_factory=lambda: CellsDriver)
    """The class that runs this config (nerfstudio's ``InstantiateConfig._target``)."""

    def setup(self) -> CellsDriver:
        """The driver that runs this config."""
        return self._target(self)

    def main(self) -> Optional[Path]:
        """``setup().main()``: trains the cells that are not done; returns the assembled config.yml (None
        when some cells are left to other commands). Raises SystemExit(1) when a cell failed for good."""
        return self.setup().main()

    @property
    def method_name(self) -> str:
        """--method, or the preset that fits the resources asked for."""
        if self.method is not None:
            return self.method
        return "async-nerf" if self.gpus_per_cell > 0 else "async-nerf-small"

    def trainer_config(self) -> TrainerConfig:
        """The method's config with the options after ``--``, parsed once as ns-train parses them; the
        fields each task decides (TASK_DECIDED_OPTIONS not given after ``--``, and the device) are None."""
        default = presets()[self.method_name]
        config = tyro.cli(
            tyro.conf.FlagConversionOff[type(default)],  # like ns-train: --pipeline.finetune-tpf True
            default=default,
            args=list(self.ns_train_args),
            prog="async-nerf-train-cells ... --",
        )
        given = given_flags(self.ns_train_args)
        for name, flag in TASK_DECIDED_OPTIONS.items():
            if flag not in given:
                _set(config, name, None)
        config.machine.device_type = None  # type: ignore[assignment]  # each task: cell_task.task_device
        return config

    def run_config(self, run_dir: Path) -> TrainerConfig:
        """The trainer config for all cells of the run in ``run_dir``; written to RUN/run_config.yml, or
        checked against it when the run folder was started before."""
        config = self.trainer_config()
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

    def task_options(self) -> Dict[str, Any]:
        """What every cell task is given (cell_task.train_cell's options)."""
        return {"cpus": self.cpus_per_cell, "gpus": self.gpus_per_cell, "progress_every": self.progress_every,
                "keep_checkpoints": self.keep_checkpoints}


class CellsDriver:
    """Runs a `TrainCells`: which cells to train, a backend that trains them, the failures named, the
    run assembled once every cell is done."""

    def __init__(self, config: TrainCells) -> None:
        self.config = config
        self.backend: Union[RayBackend, LocalBackend] = (
            RayBackend(config.ray_address, config.num_cpus, config.cpus_per_cell, config.gpus_per_cell,
                       config.max_retries, config.poll_seconds)
            if config.backend == "ray" else LocalBackend()
        )

    def main(self) -> Optional[Path]:
        """Trains the cells that are not done; returns the assembled config.yml (None when some cells
        are left to other commands). Raises SystemExit(1) when a cell failed for good."""
        run_dir = self.config.run_dir.resolve()
        run_config = self.config.run_config(run_dir)
        total = num_cells(run_config)
        wanted = self.wanted_cells(total)
        self.backend.connect()  # before the data preparation: a refused connection or missing resources fail fast
        prepared = prepare(run_config)
        empty = [int(k) for k in prepared.get("empty_cells", [])]
        if empty:
            CONSOLE.print(f"[yellow]Cells {empty} have no training pixels: they are not trained (left empty)")
        todo = [k for k in wanted if k not in empty and not is_done(run_dir, k)]
        skipped = [k for k in wanted if k not in empty and k not in todo]
        if skipped:
            CONSOLE.print(f"Cells {skipped} are done already (DONE.json): not trained again")
        failed = self.backend.train(run_dir, todo, **self.config.task_options())
        if failed:
            self.fail(run_dir, failed, len(todo))
        missing = [k for k in range(total) if k not in empty and not is_done(run_dir, k)]
        if missing:
            CONSOLE.print(f"Cells {missing} are not done yet: the run is assembled once every cell is")
            return None
        return assemble_run(run_dir, run_config, prepared, empty, self.backend.check_assembled)

    def wanted_cells(self, total: int) -> List[int]:
        """--cells (default: all), checked against the partition's ``total`` cells."""
        cells = self.config.cells
        wanted = sorted(set(cells)) if cells is not None else list(range(total))
        if not wanted or any(not 0 <= k < total for k in wanted):
            raise ClusterError(f"--cells {list(cells or [])}: the partition has cells 0..{total - 1}")
        return wanted

    def fail(self, run_dir: Path, failed: Dict[int, str], tried: int) -> NoReturn:
        """Names the cells that failed for good and their logs; exits 1."""
        CONSOLE.print(f"[bold red]{len(failed)} of {tried} cells failed for good:")
        for k, reason in sorted(failed.items()):
            folder = cell_dir(run_dir, k)
            CONSOLE.print(f"  cell {k}: {reason}\n    logs: {folder / LOG}, {folder / ATTEMPTS}, {folder / PROGRESS}"
                          + self.backend.extra_logs)
        CONSOLE.print("Rerun the same command to retry them; finished cells are not trained again.")
        raise SystemExit(1)


def prepare(config: TrainerConfig) -> Dict[str, Any]:
    """Stage 1 and every cell's ray shards, written once here so that tasks only read them."""
    from async_nerf_ns.data.prepare import prepare_training_data

    prepared = prepare_training_data(copy.deepcopy(config))
    prepared.pop("datamanager", None)
    return prepared


def is_done(run_dir: Path, k: int) -> bool:
    """Cell ``k`` finished (its DONE.json is there)."""
    return read_json(cell_dir(run_dir, k) / DONE) is not None


def given_flags(args: Sequence[str]) -> List[str]:
    """The long options named in command-line arguments, spelled as tyro prints them (``--a.b-c``
    for ``--a.b_c`` and ``--a.b-c=v``); tyro takes no abbreviations, so these are the options given."""
    return [arg.split("=", 1)[0].replace("_", "-") for arg in args if arg.startswith("--")]


def _set(config: Any, dotted: str, value: Any) -> None:
    *parents, name = dotted.split(".")
    for part in parents:
        config = getattr(config, part)
    setattr(config, name, value)


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
