"""The driver of a cluster run: one task per cell (Ray, or in this process), then one assembled run.

    RUN/run_config.yml             the whole run's trainer config (what ns-train would train)
    RUN/cells/cell_<k>/            one ordinary nerfstudio run per cell (see cell_task.py)
    RUN/assembled/<method>/        config.yml + nerfstudio_models/step-N.ckpt + dataparser_transforms.json

Rerunning the same command continues: finished cells (DONE.json) are skipped, unfinished ones
resume from their newest loadable checkpoint. A cell that fails for good (its retries used up) does
not stop the others; the driver exits non-zero after they finish, naming it and its logs.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch
import tyro
import yaml
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from async_nerf_ns.cluster.assemble import assemble_cell_states, write_assembled_run
from async_nerf_ns.cluster.cell_task import (
    ATTEMPTS,
    DONE,
    LOG,
    PROGRESS,
    RUN_CONFIG,
    cell_dir,
    num_cells,
    read_attempts,
    read_json,
    train_cell,
)
from async_nerf_ns.shards.format import IMAGE_COUNTS

Method = Literal["async-nerf-small", "async-nerf"]
ASSEMBLED = "assembled"


class ClusterError(RuntimeError):
    """The cluster cannot run the cells as asked (no node with the resources, a changed run folder, ...)."""


def presets() -> Dict[str, Callable[[], TrainerConfig]]:
    from async_nerf_ns.method import async_nerf_config, async_nerf_small_config

    return {"async-nerf": async_nerf_config, "async-nerf-small": async_nerf_small_config}


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
    method: Method = "async-nerf-small"
    """The ns-train method whose config every cell trains with."""
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
    def run_config(self, run_dir: Path) -> TrainerConfig:
        """The method's config with the ns-train options, for all cells; written to RUN/run_config.yml,
        or checked against it when the run folder was started before."""
        default = presets()[self.method]()
        config = tyro.cli(
            tyro.conf.FlagConversionOff[type(default)],  # like ns-train: --pipeline.finetune-tpf True
            default=default,
            args=list(self.ns_train_args),
            prog="async-nerf-train-cells ... --",
        )
        if config.pipeline.datamanager.cells is not None:
            raise ClusterError("give the cells to train with --cells, not --pipeline.datamanager.cells")
        config.data = self.data.resolve()
        config.pipeline.datamanager.data = config.data
        config.output_dir = run_dir
        config.experiment_name = ASSEMBLED
        config.method_name = self.method
        config.timestamp = ""
        text = yaml.dump(config)
        path = run_dir / RUN_CONFIG
        if path.exists():
            if path.read_text() != text:
                raise ClusterError(
                    f"{run_dir} was started with other options ({path}); rerun with the same options to "
                    "continue it, or choose another --run-dir"
                )
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            temp = path.with_name(f".{path.name}.tmp")
            temp.write_text(text)
            os.replace(temp, path)
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

    def run_ray(self, run_dir: Path, todo: Sequence[int]) -> Dict[int, str]:
        """One Ray task per cell, polled with a progress display; returns the failed ones with the reason."""
        import ray

        if not todo:
            return {}
        if not ray.is_initialized():
            if self.ray_address is not None:
                ray.init(address=self.ray_address)
            else:
                ray.init(num_cpus=self.num_cpus or os.cpu_count(), include_dashboard=False,
                         object_store_memory=100 * 2**20)
        check_resources(ray.nodes(), self.cpus_per_cell, self.gpus_per_cell)
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
        counts = {}
        for kind in ("rgb", "depth"):
            folder = prepared.get(f"{kind}_shards")
            if folder is not None and (Path(folder) / IMAGE_COUNTS).is_file():
                counts[kind] = np.load(Path(folder) / IMAGE_COUNTS)
        state = assemble_cell_states(states, names, counts, empty)
        first = next(iter(records))
        path = write_assembled_run(
            copy.deepcopy(config), state, max(r["step"] for r in records.values()),
            cell_dir(run_dir, first) / "dataparser_transforms.json",
        )
        CONSOLE.print(f"[bold green]Assembled {len(records)} cells into {path}")
        CONSOLE.print(f"  ns-eval --load-config {path} --output-path eval.json\n  ns-viewer --load-config {path}")
        return path


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
