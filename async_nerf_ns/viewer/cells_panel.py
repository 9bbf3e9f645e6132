"""The cells panel of the viewer: per cell its steps, last train PSNR, training rays and images.

Sources: the model's cells (their step counts and last train PSNR, saved in checkpoints, and the
training rays counted in the ray shards), and for a run of ``async-nerf-train-cells`` the cells'
own progress files (``RUN/cells/cell_<k>/progress.json`` and ``DONE.json``), which the cell tasks
rewrite while they train, possibly on other machines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from async_nerf_ns.files.run_folder import CELLS_DIR, DONE, PROGRESS, RUN_CONFIG, cell_dir
from async_nerf_ns.files.run_folder import read_json as _read_json


@dataclass
class CellStatus:
    cell: int
    steps: int
    train_psnr: Optional[float]
    rgb_rays: int
    depth_rays: int
    images: int
    state: str = ""
    """For a cluster run: the cell task's state (setting up, training, done) and where it runs."""


def model_statuses(model) -> List[CellStatus]:
    """The cells' status as the model holds it (reads a few scalars from the device: call it rarely)."""
    statuses = []
    for k, cell in enumerate(model.cells):
        psnr = float(cell.train_psnr)
        rgb, depth, images = (int(v) for v in cell.training_pixels.tolist())
        statuses.append(CellStatus(k, cell.step_count, None if math.isnan(psnr) else psnr, rgb, depth, images))
    return statuses


def cluster_run_of(base_dir: Optional[Path]) -> Optional[Path]:
    """The ``async-nerf-train-cells`` run folder that ``base_dir`` (a run's folder) belongs to, if any:
    its assembled run (RUN/assembled/<method>) or one of its cells (RUN/cells/cell_<k>)."""
    if base_dir is None:
        return None
    for candidate in (Path(base_dir).parent.parent, Path(base_dir).parent.parent.parent):
        if (candidate / RUN_CONFIG).is_file() and (candidate / CELLS_DIR).is_dir():
            return candidate
    return None


def with_cluster_progress(statuses: List[CellStatus], run_dir: Path) -> List[CellStatus]:
    """The statuses updated from each cell task's progress.json / DONE.json (steps, state, train PSNR)."""
    updated = []
    for status in statuses:
        folder = cell_dir(run_dir, status.cell)
        done, progress = _read_json(folder / DONE), _read_json(folder / PROGRESS)
        if done is not None:
            psnr = done.get("train_psnr")
            status = CellStatus(status.cell, int(done["step"]) + 1, psnr if psnr is not None else status.train_psnr,
                                status.rgb_rays, status.depth_rays, status.images, f"done on {done.get('host', '?')}")
        elif progress is not None:
            psnr = progress.get("train_psnr")
            status = CellStatus(status.cell, int(progress["step"]), psnr if psnr is not None else status.train_psnr,
                                status.rgb_rays, status.depth_rays, status.images,
                                f"{progress.get('state', '?')} on {progress.get('host', '?')} (attempt {progress.get('attempt', '?')})")
        else:
            status = CellStatus(status.cell, 0, status.train_psnr, status.rgb_rays, status.depth_rays, status.images, "not started")
        updated.append(status)
    return updated


def panel_markdown(statuses: List[CellStatus], highlight: Optional[int] = None, total_steps: Optional[int] = None) -> str:
    """A markdown table, one row per cell; the row of ``highlight`` (the cell under the camera) in bold."""
    with_state = any(s.state for s in statuses)
    header = "| cell | steps | train PSNR | RGB rays | depth rays | images |" + (" state |" if with_state else "")
    lines = [header, "|" + "---|" * (7 if with_state else 6)]
    for s in statuses:
        steps = f"{s.steps:,}" + (f" / {total_steps:,}" if total_steps else "")
        psnr = "-" if s.train_psnr is None else f"{s.train_psnr:.2f}"
        cells = [f"{s.cell}", steps, psnr, f"{s.rgb_rays:,}", f"{s.depth_rays:,}", f"{s.images}"]
        if with_state:
            cells.append(s.state)
        if s.cell == highlight:
            cells = [f"**{c}**" for c in cells]
            cells[0] = f"**{s.cell} (camera)**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
