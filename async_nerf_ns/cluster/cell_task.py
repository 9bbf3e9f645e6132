"""One cell trained by nerfstudio's trainer in a fixed folder: the unit of work of a cluster run.

``train_cell(run_dir, k)`` reads the run's configuration (``RUN/run_config.yml``, written by the
driver), restricts it to cell ``k`` and trains it in ``RUN/cells/cell_<k>/``. Everything it writes is
named so that running it again finds it (Ray reruns a task from the start after its worker died):

- ``attempts.log``: one line per start (attempt, pid, host, step it starts from, time);
- ``progress.json``: the step reached, rewritten atomically every ``progress_every`` steps;
- ``nerfstudio_models/step-N.ckpt``: checkpoints (atomic, see engine/checkpoints.py); a rerun
  resumes from the newest one that loads (a damaged one goes to ``unloadable_checkpoints/``), and
  the ``keep_checkpoints`` newest are kept so that there is one to fall back to;
- ``train.log``: the task's output, when it runs as a Ray task;
- ``DONE.json``: written last, atomically: the cell is finished (final step, metrics, seconds);
  a rerun of a finished cell only returns it.

Only small results (paths, numbers) are returned, never tensors.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import random
import socket
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
import torch
import yaml
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils import writer
from nerfstudio.utils.rich_utils import CONSOLE

from async_nerf_ns.engine.checkpoints import checkpoint_step, newest_loadable_checkpoint, write_json_atomic

RUN_CONFIG = "run_config.yml"
"""The whole run's trainer config (all cells) in RUN/; every task derives its cell's config from it."""
CELLS_DIR = "cells"
ATTEMPTS = "attempts.log"
PROGRESS = "progress.json"
DONE = "DONE.json"
UNLOADABLE = "unloadable_checkpoints"
LOCK = ".lock"
LOG = "train.log"


# --------------------------------------------------------------------------------------- config
def num_cells(config: TrainerConfig) -> int:
    rows, columns = config.pipeline.datamanager.partition.grid_dim
    return int(rows) * int(columns)


def cell_dir(run_dir: Path, k: int) -> Path:
    return Path(run_dir) / CELLS_DIR / f"cell_{k:03d}"


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
    if device == "cpu":
        config.mixed_precision = False
    return config


# --------------------------------------------------------------------------------------- files
def read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


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
    device = "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"

    config = cell_config(load_config(run_dir / RUN_CONFIG), run_dir, k, device)
    config.keep_checkpoints = keep_checkpoints  # AsyncNerfTrainer prunes to these after each save
    models = config.get_checkpoint_dir()
    checkpoint = newest_loadable_checkpoint(models, quarantine=folder / UNLOADABLE)
    config.load_checkpoint = checkpoint
    start_step = 0 if checkpoint is None else checkpoint_step(checkpoint) + 1
    attempt = len(read_attempts(folder)) + 1
    host, pid = socket.gethostname(), os.getpid()
    _append_attempt(
        folder,
        {"attempt": attempt, "pid": pid, "host": host, "start_step": start_step, "device": device,
         "threads": threads, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "unix_time": time.time()},
    )
    last_step = config.max_num_iterations - 1

    def report(step: int, state: str = "training") -> None:
        write_json_atomic(
            folder / PROGRESS,
            {"cell": k, "step": step, "last_step": last_step, "attempt": attempt, "pid": pid, "host": host,
             "state": state, "time": time.time()},
        )

    started = time.perf_counter()
    psnr: List[float] = []
    if checkpoint is None or start_step <= last_step:  # else: killed after its last save, before DONE
        report(start_step, "setting up")
        _run_trainer(config, report, psnr, progress_every, start_step)
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
        "train_psnr": float(np.mean(psnr)) if psnr else None,
        "finished_unix_time": time.time(),
        "device": device,
        "host": host,
    }
    report(last_step, "done")
    write_json_atomic(folder / DONE, record)
    CONSOLE.print(f"Cell {k}: done at step {last_step} (attempt {attempt}, from step {start_step})")
    return record


def _run_trainer(
    config: TrainerConfig, report: Callable[..., None], psnr: List[float], progress_every: int, start_step: int
) -> None:
    """nerfstudio's trainer as ns-train runs it, plus progress reports and the train PSNR."""
    # nerfstudio's writers are module globals that every trainer appends to: a process that trains
    # several cells one after the other (the local backend, a reused Ray worker) starts each afresh.
    writer.EVENT_WRITERS.clear()
    writer.EVENT_STORAGE.clear()
    config.save_config()
    _seed_everything(config.machine.seed)
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    assert trainer._start_step == start_step, (trainer._start_step, start_step)
    train_iteration = trainer.train_iteration

    def recorded_iteration(step: int):
        loss, loss_dict, metrics = train_iteration(step)
        if "psnr" in metrics:
            psnr.append(float(torch.as_tensor(metrics["psnr"]).detach()))
            del psnr[:-progress_every]
        return loss, loss_dict, metrics

    trainer.train_iteration = recorded_iteration  # type: ignore[method-assign]
    trainer.callbacks.append(
        TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], report, update_every_num_iters=progress_every)
    )
    trainer.train()
    for event_writer in writer.EVENT_WRITERS:
        if hasattr(event_writer, "tb_writer"):
            event_writer.tb_writer.close()
