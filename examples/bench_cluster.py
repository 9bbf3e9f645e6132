"""Cells as Ray tasks: cells per hour with 1 and 2 workers, and the quality of a run with a killed worker.

    python examples/bench_cluster.py [--iterations 150] [--scene example_data/town] [--output bench_out/cluster]

Every row is the real ``async-nerf-train-cells`` command (a subprocess, starting its own local Ray
cluster with ``--num-cpus W``) on the example town's 2x2 partition (4 cells), ``async-nerf-small``
with ``--max-num-iterations ITERATIONS`` steps per cell and a checkpoint every ITERATIONS/5 steps:

(i)  **cells per hour** with W = 1 and 2 workers of 1 CPU each (``--cpus-per-cell 1``: one torch
     thread per cell): 4 cells / training wall time, where the training wall time runs from the
     first cell's start (attempts.log) to the last cell's DONE; the command's whole wall time
     (Ray start-up, the shards (already written by an earlier row or not), the assembly and its
     eval_setup check) is reported beside it. The speed-up is the ratio of the two cells/hour.
(ii) **val PSNR** (ns-eval of the assembled run) of a 2-worker Ray run in which one cell's worker is
     SIGKILLed after its first checkpoint (Ray retries it, it resumes from the checkpoint), against
     ``--backend local`` (the same cells one after the other in one process) at the same steps per
     cell; and the largest absolute difference between the two assembled checkpoints.

The preset's schedule is not rescaled to ITERATIONS (both sides of every comparison use the same).
Rows run one after the other; timings are comparable within one invocation on a quiet machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from examples import bench_common as bc  # noqa: E402

CELLS = 4
ASSEMBLED = Path("assembled") / "async-nerf-small" / "config.yml"


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _env() -> Dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONWARNINGS": "ignore",
            "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def _read(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def train_cells(scene: Path, run_dir: Path, iterations: int, backend: str, workers: int, kill_cell: Optional[int]) -> Dict[str, Any]:
    """One async-nerf-train-cells run; with ``kill_cell``, that cell's worker is SIGKILLed once it has a checkpoint."""
    command = [
        _bin("async-nerf-train-cells"), "--data", str(scene), "--run-dir", str(run_dir), "--backend", backend,
        "--num-cpus", str(workers), "--cpus-per-cell", "1", "--max-retries", "2", "--poll-seconds", "1",
        "--", "--max-num-iterations", str(iterations), "--steps-per-save", str(max(1, iterations // 5)),
        "--pipeline.datamanager.partition.grid-dim", "2", "2", "--logging.local-writer.enable", "False",
    ]
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = run_dir.parent / f"{run_dir.name}.log"
    started = time.time()
    killed = None
    with open(log, "w") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, env=_env(), cwd=run_dir.parent)
        folder = run_dir / "cells" / f"cell_{kill_cell:03d}" if kill_cell is not None else None
        while process.poll() is None:
            if folder is not None and killed is None:
                progress = _read(folder / "progress.json")
                if progress and progress["state"] == "training" and list((folder / "nerfstudio_models").glob("*.ckpt")):
                    os.kill(progress["pid"], signal.SIGKILL)
                    killed = progress
                    print(f"  killed cell {kill_cell}'s worker (pid {progress['pid']}) at step {progress['step']}", flush=True)
            time.sleep(0.2)
    wall = time.time() - started
    if process.returncode != 0:
        return {"error": f"exited {process.returncode}", "log": str(log)}
    attempts: List[Dict[str, Any]] = []
    done = []
    for k in range(CELLS):
        folder = run_dir / "cells" / f"cell_{k:03d}"
        attempts += [json.loads(line) for line in (folder / "attempts.log").read_text().splitlines()]
        done.append(_read(folder / "DONE.json"))
    first = min(a["unix_time"] for a in attempts)
    last = max(d["finished_unix_time"] for d in done)
    return {
        "backend": backend, "workers": workers, "iterations": iterations, "command_wall_s": wall,
        "train_wall_s": last - first, "cells_per_hour": CELLS / (last - first) * 3600,
        "attempts": len(attempts), "killed": killed, "log": str(log), "config": str(run_dir / ASSEMBLED),
    }


def evaluate(config: Path) -> Dict[str, Any]:
    output = config.parent / "eval.json"
    subprocess.run([_bin("ns-eval"), "--load-config", str(config), "--output-path", str(output)], env=_env(),
                   check=True, capture_output=True)
    return json.loads(output.read_text())["results"]


def max_difference(a: Path, b: Path) -> float:
    import torch

    def weights(config: Path):
        checkpoint = sorted((config.parent / "nerfstudio_models").glob("step-*.ckpt"))[-1]
        return torch.load(checkpoint, map_location="cpu", weights_only=True)["pipeline"]

    wa, wb = weights(a), weights(b)
    return max(((wa[k].double() - wb[k].double()).abs().max().item() if wa[k].numel() else 0.0) for k in wa)


def main() -> None:
    parser = bc.base_parser(__doc__, "cluster", default_iterations=150)
    args = bc.resolve_common(parser.parse_args())
    runs = args.output / "runs"
    if runs.exists():
        import shutil

        shutil.rmtree(runs)
    rows = {}
    for label, backend, workers, kill in (
        ("ray, 1 worker", "ray", 1, None),
        ("ray, 2 workers", "ray", 2, None),
        ("ray, 2 workers, cell 1's worker killed", "ray", 2, 1),
        ("local (one process)", "local", 1, None),
    ):
        print(f"[{time.strftime('%H:%M:%S')}] {label}", flush=True)
        row = train_cells(args.scene, runs / label.split(",")[0].split(" ")[0] / f"w{workers}{'k' if kill is not None else ''}",
                          args.iterations, backend, workers, kill)
        if "error" not in row:
            row["eval"] = evaluate(Path(row["config"]))
            print(f"  train wall {row['train_wall_s']:.0f} s ({row['cells_per_hour']:.0f} cells/h), command "
                  f"{row['command_wall_s']:.0f} s, val PSNR {row['eval']['psnr']:.2f}", flush=True)
        else:
            print(f"  FAILED: {row}", flush=True)
        rows[label] = row

    one, two = rows["ray, 1 worker"], rows["ray, 2 workers"]
    killed, local = rows["ray, 2 workers, cell 1's worker killed"], rows["local (one process)"]
    lines = [f"Example town, 2x2 cells, async-nerf-small, {args.iterations} steps per cell, 1 CPU (1 torch thread) per cell", ""]
    lines.append("| run | attempts | train wall (s) | cells/hour | command wall (s) | val PSNR | depth RMSE (m) |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for label, row in rows.items():
        if "error" in row:
            lines.append(f"| {label} | failed | | | | | |")
            continue
        lines.append(
            f"| {label} | {row['attempts']} | {row['train_wall_s']:.0f} | {row['cells_per_hour']:.0f} | "
            f"{row['command_wall_s']:.0f} | {row['eval']['psnr']:.2f} | {bc.fmt(row['eval'].get('depth_rmse_m'), '.1f')} |"
        )
    summary: Dict[str, Any] = {}
    if "error" not in one and "error" not in two:
        summary["speedup_2_vs_1_workers"] = two["cells_per_hour"] / one["cells_per_hour"]
        lines += ["", f"Speed-up with 2 workers: {summary['speedup_2_vs_1_workers']:.2f}x cells/hour"]
    if "error" not in killed and "error" not in local:
        summary["psnr_killed_minus_local_db"] = killed["eval"]["psnr"] - local["eval"]["psnr"]
        summary["max_abs_weight_difference"] = max_difference(Path(killed["config"]), Path(local["config"]))
        lines += [f"Killed-worker Ray run vs local: {summary['psnr_killed_minus_local_db']:+.3f} dB val PSNR, "
                  f"largest weight difference {summary['max_abs_weight_difference']:.3g}"]
    text = "\n".join(lines)
    print("\n" + text)
    bc.write_results(args.output, {"rows": rows, "summary": summary, "machine": bc.machine_info()}, text)


if __name__ == "__main__":
    main()
