"""One cell trained by nerfstudio's trainer in a fixed folder: the unit of work of a cluster run.

``train_cell(run_dir, k)`` reads the run's configuration (``RUN/run_config.yml``, written by the
driver), restricts it to cell ``k`` and trains it in ``RUN/cells/cell_<k>/``. Everything it writes is
named so that running it again finds it (Ray reruns a task from the start after its worker died):

- ``attempts.log``: one line per start (attempt, pid, host, Ray node id, step it starts from, device,
  field implementation, mixed precision, time);
- ``progress.json``: the step reached and the train PSNR and loss (means over the steps since the
  previous report), rewritten atomically every ``progress_every`` steps;
- ``nerfstudio_models/step-N.ckpt``: checkpoints (atomic, with a CRC-32 sidecar, see files/checkpoints.py); a rerun
  resumes from the newest one that loads (a damaged one goes to ``unloadable_checkpoints/``), and
  the ``keep_checkpoints`` newest are kept so that there is one to fall back to;
- ``train.log``: the task's output, when it runs as a Ray task;
- ``DONE.json``: written last, atomically: the cell is finished (final step, metrics, seconds);
  a rerun of a finished cell only returns it.

Only small results (paths, numbers) are returned, never tensors.

**Decided by the task, on its own node** (unless given explicitly after ``--``; the driver then writes
``null`` for them in ``run_config.yml``): the device (CUDA when the task has a GPU and CUDA works
there), mixed precision (on for CUDA, off for the CPU) and the field implementation. tiny-cuda-nn
and torch fields have different checkpoint layouts, so every cell of a run uses the same one: the
first task that starts decides it (tcnn when it trains on CUDA and ``tinycudann`` imports there, else
torch) and records it in ``RUN/cell_implementation.json``; every later task (and every retry, on any
node) uses the recorded one and fails with a clear error when its node cannot (tcnn needs CUDA and
tinycudann there). The ``cells/cell_<k>/config.yml`` of each task holds what it trained with.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import random
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import yaml
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils import writer
from nerfstudio.utils.rich_utils import CONSOLE

from async_nerf_ns.engine.trainer import AsyncNerfTrainer
from async_nerf_ns.files.atomic import write_json_atomic
from async_nerf_ns.files.checkpoints import checkpoint_step, newest_loadable_checkpoint
from async_nerf_ns.model.implementation import tcnn_importable
from async_nerf_ns.files.run_folder import ATTEMPTS, CELLS_DIR, DONE, LOCK, LOG, PROGRESS, RUN_CONFIG, UNLOADABLE, cell_dir, read_json

IMPLEMENTATION = "cell_implementation.json"
"""In RUN/: the field implementation every cell of the run uses, and who decided it (first task)."""


class NodeCannotTrainCell(RuntimeError):
    """This task's node cannot train the run's cells as the run trains them (e.g. tcnn without CUDA)."""


# --------------------------------------------------------------------------------------- config
def num_cells(config: TrainerConfig) -> int:
    rows, columns = config.pipeline.datamanager.partition.grid_dim
    return int(rows) * int(columns)


def load_config(path: Path) -> TrainerConfig:
    """A trainer config written by ``save_config``/``yaml.dump`` (how ns-eval reads config.yml)."""
    return yaml.load(Path(path).read_text(), Loader=yaml.Loader)


def cell_config(run_config: TrainerConfig, run_dir: Path, k: int, device: str) -> TrainerConfig:
    """The run's config restricted to cell ``k``, writing to ``RUN/cells/cell_<k>/`` (no viewer)."""
    config = copy.deepcopy(run_config)
    config.pipeline.datamanager.cells = (k,)
    # nerfstudio's run folder is OUTPUT/<experiment>/<method>/<timestamp>: RUN/cells/cell_<k>/.
    config.output_dir = Path(run_dir)
    config.experiment_name = CELLS_DIR
    config.method_name = cell_dir(run_dir, k).name
    config.timestamp = ""
    config.vis = "tensorboard"
    config.viewer.quit_on_train_completion = True
    config.save_only_latest_checkpoint = True
    config.load_dir, config.load_step, config.load_checkpoint = None, None, None
    config.machine.device_type = device  # type: ignore[assignment]
    config.machine.num_devices = 1
    return config


def task_device(gpus: float) -> str:
    """CUDA when the task was given a GPU and CUDA works on its node, else the CPU."""
    return "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"


def run_implementation(run_dir: Path, given: Optional[str], proposal: Dict[str, Any]) -> Dict[str, Any]:
    """The run's field implementation record (``RUN/cell_implementation.json``), created by the first
    task from ``proposal`` when there is none; an existing record always wins (its checkpoints have
    that layout). ``given``: the implementation given after ``--`` (None: the tasks decide)."""
    path = Path(run_dir) / IMPLEMENTATION
    record = read_json(path)
    if record is None:
        record = _create_json_once(path, proposal)
    if "implementation" not in record:
        raise NodeCannotTrainCell(f"{path} has no 'implementation': delete it only if no cell has a checkpoint yet")
    if given is not None and record["implementation"] != given:
        raise NodeCannotTrainCell(
            f"{path} says the run's cells use {record['implementation']!r} fields, but the run config asks for "
            f"{given!r}: the run folder was reused with another --pipeline.model.implementation; choose another --run-dir"
        )
    return record


def _create_json_once(path: Path, content: Dict[str, Any]) -> Dict[str, Any]:
    """Writes ``content`` to ``path`` unless the file exists (then returns what it holds): the first
    of several processes, on any node of a shared file system, wins (``os.link`` does not replace)."""
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(content, stream, indent=1)
            stream.flush()
            os.fsync(stream.fileno())
        try:
            os.link(temp, path)
            return dict(content)
        except FileExistsError:
            existing = read_json(path)
            if existing is None:
                raise NodeCannotTrainCell(f"{path} exists but is not readable JSON") from None
            return existing
    finally:
        Path(temp).unlink(missing_ok=True)


def task_config(
    run_dir: Path, k: int, device: str, tcnn_available: bool, host: str = ""
) -> Tuple[TrainerConfig, Dict[str, Any]]:
    """The config cell ``k``'s task trains with on ``device`` (see the module docstring), and the run's
    implementation record. Raises NodeCannotTrainCell when this node cannot use the run's implementation.

    Args:
        run_dir: the run folder (``run_config.yml``; ``cell_implementation.json`` is created there by
            the first task).
        k: the cell.
        device: "cuda" or "cpu", this task's device.
        tcnn_available: whether tinycudann imports on this node.
        host: this node's name (for the record and messages).
    """
    run_config = load_config(Path(run_dir) / RUN_CONFIG)
    config = cell_config(run_config, run_dir, k, device)
    given = run_config.pipeline.model.implementation
    proposal = "tcnn" if device == "cuda" and tcnn_available else "torch"
    record = run_implementation(
        run_dir,
        given,
        {"implementation": given or proposal, "decided_by": "ns-train option" if given else f"the task of cell {k}",
         "host": host, "device": device, "tcnn_importable": tcnn_available, "time": time.strftime("%Y-%m-%d %H:%M:%S")},
    )
    implementation = record["implementation"]
    if implementation == "tcnn" and not (device == "cuda" and tcnn_available):
        origin = ("--pipeline.model.implementation tcnn" if given else
                  f"decided by {record.get('decided_by', '?')} on {record.get('host', '?')} ({record.get('device', '?')})")
        missing = "tinycudann does not import here" if device == "cuda" else "this task trains on the CPU (no GPU or no CUDA here)"
        raise NodeCannotTrainCell(
            f"cell {k} on {host or 'this node'}: the run's cells use tiny-cuda-nn fields ({origin}; "
            f"{Path(run_dir) / IMPLEMENTATION}), but {missing}. tcnn checkpoints cannot be trained by torch fields: "
            "install tinycudann on every GPU node, or start a new run (another --run-dir) with "
            "'-- --pipeline.model.implementation torch'"
        )
    config.pipeline.model.implementation = implementation  # type: ignore[assignment]
    if config.mixed_precision is None:
        config.mixed_precision = device == "cuda"
    return config, record


# --------------------------------------------------------------------------------------- files
def read_attempts(folder: Path) -> List[Dict[str, Any]]:
    """The attempt log of a cell folder, one dict per start."""
    path = Path(folder) / ATTEMPTS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _append_attempt(folder: Path, record: Dict[str, Any]) -> None:
    with open(folder / ATTEMPTS, "a") as stream:
        stream.write(json.dumps(record) + "\n")
        stream.flush()
        os.fsync(stream.fileno())


def _seed_everything(seed: int) -> None:
    """What ns-train's train_loop does before building the trainer."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------- task
def train_cell(
    run_dir: Path,
    k: int,
    cpus: float = 1.0,
    gpus: float = 0.0,
    progress_every: int = 10,
    keep_checkpoints: int = 2,
    log_to_file: bool = False,
) -> Dict[str, Any]:
    """Trains cell ``k`` of the run in ``run_dir`` to the run's last step; returns its DONE record.

    Args:
        run_dir: the run folder holding ``run_config.yml`` (on storage every node sees at the same path).
        k: the cell.
        cpus: CPUs given to this task; torch uses ``max(1, int(cpus))`` threads (OMP_NUM_THREADS too),
            so that several cells on one node never oversubscribe its cores.
        gpus: GPUs given to this task (fractions allowed); the cell trains on CUDA when > 0 and
            CUDA is available, else on the CPU.
        progress_every: steps between rewrites of ``progress.json``.
        keep_checkpoints: newest checkpoints kept (>= 2 leaves one to fall back to when the newest
            is damaged).
        log_to_file: append the task's output (nerfstudio's console, warnings, tracebacks) to
            ``train.log`` in the cell folder instead of printing it (Ray tasks: the log then sits next
            to the checkpoints on shared storage, and the driver's console keeps its progress bars).
    """
    run_dir = Path(run_dir)
    folder = cell_dir(run_dir, k)
    done = read_json(folder / DONE)
    if done is not None:
        return done
    folder.mkdir(parents=True, exist_ok=True)
    with _exclusive(folder, k), (_output_to(folder / LOG) if log_to_file else contextlib.nullcontext()):
        try:
            return _train_cell(run_dir, k, folder, cpus, gpus, progress_every, keep_checkpoints)
        except BaseException:
            if log_to_file:
                traceback.print_exc()  # into train.log, where the driver's failure message points
            raise


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    with open(path, "a", buffering=1) as stream, contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
        yield


@contextlib.contextmanager
def _exclusive(folder: Path, k: int) -> Iterator[None]:
    """Holds the cell folder's lock: a second driver on the same run folder cannot train the cell twice
    at once. The lock goes with the process that holds it (a killed task releases it)."""
    with open(folder / LOCK, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress = read_json(folder / PROGRESS) or {}
            raise RuntimeError(
                f"cell {k} ({folder}) is being trained by another process (pid {progress.get('pid')} on "
                f"{progress.get('host')}): is another async-nerf-train-cells running on this run folder?"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _train_cell(
    run_dir: Path, k: int, folder: Path, cpus: float, gpus: float, progress_every: int, keep_checkpoints: int
) -> Dict[str, Any]:
    threads = max(1, int(cpus))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    device = task_device(gpus)
    host, pid, node = socket.gethostname(), os.getpid(), _ray_node_id()
    if gpus > 0 and device == "cpu":
        CONSOLE.print(f"[yellow]Cell {k}: the task has {gpus} GPU(s) but CUDA is not available on {host}: training on the CPU")

    config, _ = task_config(run_dir, k, device, tcnn_importable() if device == "cuda" else False, host)
    config.keep_checkpoints = keep_checkpoints  # AsyncNerfTrainer prunes to these after each save
    models = config.get_checkpoint_dir()
    checkpoint = newest_loadable_checkpoint(models, quarantine=folder / UNLOADABLE)
    config.load_checkpoint = checkpoint
    start_step = 0 if checkpoint is None else checkpoint_step(checkpoint) + 1
    attempt = len(read_attempts(folder)) + 1
    implementation, mixed_precision = config.pipeline.model.implementation, bool(config.mixed_precision and device == "cuda")
    _append_attempt(
        folder,
        {"attempt": attempt, "pid": pid, "host": host, "node_id": node, "start_step": start_step, "device": device,
         "implementation": implementation, "mixed_precision": mixed_precision, "threads": threads,
         "time": time.strftime("%Y-%m-%d %H:%M:%S"), "unix_time": time.time()},
    )
    last_step = config.max_num_iterations - 1
    train_metrics: Dict[str, Optional[float]] = {"train_psnr": None, "train_loss": None}

    def report(step: int, state: str = "training") -> None:
        write_json_atomic(
            folder / PROGRESS,
            {"cell": k, "step": step, "last_step": last_step, "attempt": attempt, "pid": pid, "host": host,
             "node_id": node, "state": state, "time": time.time(), "device": device, **train_metrics},
        )

    started = time.perf_counter()
    if checkpoint is None or start_step <= last_step:  # else: killed after its last save, before DONE
        report(start_step, "setting up")
        _run_trainer(config, report, train_metrics, progress_every, start_step)
    final = newest_loadable_checkpoint(models)
    assert final is not None and checkpoint_step(final) == last_step, (final, last_step)
    record = {
        "cell": k,
        "step": last_step,
        "checkpoint": str(final),
        "config": str(config.get_base_dir() / "config.yml"),
        "attempts": attempt,
        "start_step": start_step,
        "seconds": time.perf_counter() - started,
        **train_metrics,
        "finished_unix_time": time.time(),
        "device": device,
        "implementation": implementation,
        "mixed_precision": mixed_precision,
        "host": host,
        "node_id": node,
    }
    report(last_step, "done")
    write_json_atomic(folder / DONE, record)
    CONSOLE.print(f"Cell {k}: done at step {last_step} (attempt {attempt}, from step {start_step})")
    return record


def _ray_node_id() -> Optional[str]:
    """The Ray node this task runs on (several nodes can share a host name), or None outside Ray."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_node_id()


class TrainMetricsReport(TrainingCallback):
    """Every ``every`` steps (and at the end): the means of the trainer's train PSNR and loss over the
    steps since the previous report into ``metrics`` (``train_psnr``, ``train_loss``), then ``report(step)``.

    It reads ``AsyncNerfTrainer.last_train_metrics`` after each step and sums the tensors on the
    training device; the only read-back to the host (which waits for the GPU) is at a report.
    """

    KEYS = {"train_psnr": "psnr", "train_loss": "loss"}

    def __init__(self, trainer: AsyncNerfTrainer, report: Callable[[int], None], metrics: Dict[str, Optional[float]],
                 every: int) -> None:
        super().__init__([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self.after_step)
        self.trainer, self.report, self.metrics, self.every = trainer, report, metrics, max(1, int(every))
        self.sums: Dict[str, torch.Tensor] = {}
        self.count = 0

    def after_step(self, step: int) -> None:
        last = self.trainer.last_train_metrics
        if self.trainer.last_train_step == step:
            for name, key in self.KEYS.items():
                if key in last:
                    value = last[key].float()
                    self.sums[name] = self.sums[name] + value if name in self.sums else value
            self.count += 1
        if step % self.every == 0:
            self.flush()
            self.report(step)

    def flush(self) -> None:
        """The means since the previous report into ``metrics`` (left as they are when no step ran)."""
        if self.count:
            for name, total in self.sums.items():
                self.metrics[name] = float(total.item()) / self.count
        self.sums, self.count = {}, 0


def _run_trainer(
    config: TrainerConfig, report: Callable[..., None], metrics: Dict[str, Optional[float]], progress_every: int,
    start_step: int,
) -> None:
    """nerfstudio's trainer as ns-train runs it, plus progress reports with the train PSNR and loss."""
    # nerfstudio's writers are module globals that every trainer appends to: a process that trains
    # several cells one after the other (the local backend, a reused Ray worker) starts each afresh.
    writer.EVENT_WRITERS.clear()
    writer.EVENT_STORAGE.clear()
    config.save_config()
    _seed_everything(config.machine.seed)
    trainer = config.setup(local_rank=0, world_size=1)
    assert isinstance(trainer, AsyncNerfTrainer), type(trainer)
    trainer.setup()
    assert trainer._start_step == start_step, (trainer._start_step, start_step)
    reporter = TrainMetricsReport(trainer, report, metrics, progress_every)
    trainer.callbacks.append(reporter)
    trainer.train()
    reporter.flush()  # the steps after the last report, for DONE.json
    for event_writer in writer.EVENT_WRITERS:
        if hasattr(event_writer, "tb_writer"):
            event_writer.tb_writer.close()
