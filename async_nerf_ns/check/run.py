"""``async-nerf-check RUN``: a run folder's checkpoints (CRC-32, read whole, loaded strictly into the
pipeline its config.yml builds), and for an ``async-nerf-train-cells`` run each cell's state (done,
training, failed with the last error line of its log, not started; attempts, steps) and whether the
assembled run holds what the cells' DONE files say."""

from __future__ import annotations

import fcntl
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import yaml

from async_nerf_ns.check.findings import Report
from async_nerf_ns.cluster.assemble import CELL_STATE_PREFIX
from async_nerf_ns.files.checkpoints import checkpoint_step, checkpoints_by_step, load_checkpoint
from async_nerf_ns.files.checksums import has_checksum
from async_nerf_ns.files.run_folder import ASSEMBLED, ATTEMPTS, CELLS_DIR, DONE, LOCK, LOG, PROGRESS, RUN_CONFIG, UNLOADABLE
from async_nerf_ns.files.run_folder import read_json as _read_json

MODELS = "nerfstudio_models"


def is_cells_run(path: Path) -> bool:
    return (Path(path) / RUN_CONFIG).is_file()


def is_ns_run(path: Path) -> bool:
    return (Path(path) / "config.yml").is_file() or (Path(path) / MODELS).is_dir()


def build_pipeline(config_path: Path):
    """The pipeline config.yml describes, built on the CPU for inference (what ns-eval builds, without
    loading a checkpoint: `check_checkpoints` loads each)."""
    from nerfstudio.configs.method_configs import all_methods

    config = yaml.load(Path(config_path).read_text(), Loader=yaml.Loader)
    if config.method_name in all_methods:
        config.pipeline.datamanager._target = all_methods[config.method_name].pipeline.datamanager._target
    pipeline = config.pipeline.setup(device="cpu", test_mode="inference")
    pipeline.eval()
    return pipeline


def check_checkpoints(report: Report, run: Path, strict: bool) -> Dict[Path, Dict[str, Any]]:
    """Every ``step-N.ckpt`` of an ns-train run folder; returns the states that loaded (by path)."""
    models = Path(run) / MODELS
    paths = checkpoints_by_step(models)
    if not paths:
        report.add("checkpoint", models, "error", "no checkpoint (step-N.ckpt)")
        return {}
    pipeline, why_not = None, None
    if strict:
        try:
            pipeline = build_pipeline(Path(run) / "config.yml")
        except Exception as error:  # the dataset moved, a field implementation missing here, ...
            why_not = f"{type(error).__name__}: {error}"
            report.add("pipeline", Path(run) / "config.yml", "error", f"cannot be built here to load checkpoints strictly ({why_not})")
    loaded = {}
    for path in paths:
        try:
            state = load_checkpoint(path, mmap=True)
        except Exception as error:
            report.add("checkpoint", path, "error", f"does not load: {type(error).__name__}: {error}")
            continue
        detail = f"step {state['step']}; " + ("CRC-32 matches" if has_checksum(path) else "no checksum recorded (written by stock nerfstudio or an older async-nerf)")
        if pipeline is not None:
            try:
                pipeline.load_pipeline(state["pipeline"], state["step"])
            except Exception as error:
                report.add("checkpoint", path, "error", f"does not load strictly into its pipeline: {type(error).__name__}: {str(error)[:400]}")
                continue
            detail += "; loads strictly"
        report.add("checkpoint", path, "ok", detail)
        loaded[path] = state
    if (Path(run) / UNLOADABLE).is_dir() or (Path(run).parent / UNLOADABLE).is_dir():
        folder = Path(run) / UNLOADABLE if (Path(run) / UNLOADABLE).is_dir() else Path(run).parent / UNLOADABLE
        names = sorted(p.name for p in folder.glob("step-*.ckpt"))
        if names:
            report.add("checkpoint", folder, "warning", f"{len(names)} damaged checkpoint(s) set aside by a resume: {', '.join(names)}")
    return loaded


def check_ns_run(run: Path, strict: bool = True, report: Optional[Report] = None) -> Report:
    report = report or Report(str(run), "ns-train run")
    check_checkpoints(report, run, strict)
    return report


def _last_error_line(log: Path) -> Optional[str]:
    if not log.is_file():
        return None
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "Exception" in line or "error:" in line:
            return line[:300]
    return lines[-1][:300] if lines else None


def _being_trained(folder: Path) -> bool:
    lock = folder / LOCK
    if not lock.is_file():
        return False
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def cell_state(folder: Path) -> Dict[str, Any]:
    """done / training / failed / not started, with attempts, steps and the last error line."""
    done = _read_json(folder / DONE)
    progress = _read_json(folder / PROGRESS) or {}
    attempts_path = folder / ATTEMPTS
    attempts = len([line for line in attempts_path.read_text().splitlines() if line.strip()]) if attempts_path.is_file() else 0
    steps = progress.get("step")
    last = progress.get("last_step")
    if done is not None:
        return {"state": "done", "attempts": attempts, "step": done.get("step"), "last_step": done.get("step"), "done": done}
    if _being_trained(folder):
        age = time.time() - float(progress.get("time", time.time()))
        return {"state": "training", "attempts": attempts, "step": steps, "last_step": last,
                "detail": f"pid {progress.get('pid')} on {progress.get('host')}, last report {age:.0f} s ago"}
    if attempts == 0:
        return {"state": "not started", "attempts": 0, "step": None, "last_step": last}
    return {"state": "failed", "attempts": attempts, "step": steps, "last_step": last,
            "detail": _last_error_line(folder / LOG) or "stopped before finishing (no log line)"}


def check_cells_run(run: Path, strict: bool = True) -> Report:
    from async_nerf_ns.cluster.cell_task import load_config, num_cells

    run = Path(run)
    report = Report(str(run), "train-cells run")
    config = load_config(run / RUN_CONFIG)
    cells = num_cells(config)
    done: Dict[int, Dict[str, Any]] = {}
    for k in range(cells):
        folder = run / CELLS_DIR / f"cell_{k:03d}"
        state = cell_state(folder)
        steps = f"step {state['step']} of {state['last_step']}" if state.get("step") is not None else "no steps"
        text = f"{state['state']}; {state['attempts']} attempt(s); {steps}"
        if state.get("detail"):
            text += f"; {state['detail']}"
        status = {"done": "ok", "training": "ok", "not started": "warning", "failed": "error"}[state["state"]]
        report.add("cell", f"cell {k} ({folder})", status, text)
        if state["state"] == "done":
            done[k] = state["done"]
        if (folder / MODELS).is_dir():
            check_checkpoints(report, folder, strict and state["state"] == "done")
    assembled = sorted((run / ASSEMBLED).glob("*/config.yml"))
    if not assembled:
        status = "warning" if len(done) == cells else "ok"
        report.add("assembly", run / ASSEMBLED, status, "not assembled yet" + (" (every cell is done)" if len(done) == cells else ""))
    for config_path in assembled:
        check_assembled(report, config_path.parent, done, cells, strict)
    return report


def check_assembled(report: Report, base: Path, done: Dict[int, Dict[str, Any]], cells: int, strict: bool) -> None:
    """The assembled run's checkpoints load, and its cell parameters are those of the cells' final
    checkpoints (the ones their DONE.json names), but for the colour transforms the assembly fits."""
    loaded = check_checkpoints(report, base, strict)
    if not loaded:
        return
    newest_path = max(loaded, key=checkpoint_step)
    state = loaded[newest_path]["pipeline"]
    if len(done) < cells:
        report.add("assembly", base, "error", f"assembled, but only {len(done)} of {cells} cells have DONE.json")
        return
    mismatched: List[str] = []
    for k, record in sorted(done.items()):
        try:
            cell_state_dict = load_checkpoint(Path(record["checkpoint"]), mmap=True)["pipeline"]
        except Exception as error:
            mismatched.append(f"cell {k}: its final checkpoint {record['checkpoint']} does not load ({error})")
            continue
        prefix = f"{CELL_STATE_PREFIX}{k}."
        # A cell's colour transform is the assembly's own (appearance matching across the cells), not the task's.
        keys = [key for key in cell_state_dict if key.startswith(prefix) and not key.endswith(".colour_transform")]
        differing = [key for key in keys if key not in state or not torch.equal(state[key], cell_state_dict[key])]
        if not keys or differing:
            mismatched.append(f"cell {k}: {len(differing)} of {len(keys)} parameters differ from {record['checkpoint']}")
    if mismatched:
        report.add("assembly", newest_path, "error", "does not match the cells' DONE files: " + "; ".join(mismatched[:4]))
    else:
        steps = sorted({int(r["step"]) for r in done.values()})
        report.add("assembly", newest_path, "ok", f"every cell's parameters equal its final checkpoint (steps {steps})")
