"""The driver's view of running cell tasks: a progress bar per cell fed by its ``progress.json``, and a
line per new attempt from its ``attempts.log`` (both written by the task, cell_task.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence

from nerfstudio.utils.rich_utils import CONSOLE
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from async_nerf_ns.cluster.cell_task import read_attempts
from async_nerf_ns.files.run_folder import PROGRESS, cell_dir, read_json


class CellProgressDisplay:
    """Per-cell progress bars, refreshed by ``update``; use ``progress`` as a context manager."""

    def __init__(self, run_dir: Path, cells: Sequence[int]) -> None:
        self.run_dir = run_dir
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=CONSOLE
        )
        self.bars = {k: self.progress.add_task(f"cell {k}: waiting", total=None) for k in cells}
        self.seen_attempts = {k: len(read_attempts(cell_dir(run_dir, k))) for k in cells}

    def update(self, failed: Dict[int, str]) -> None:
        """Prints the attempts started since the last update and redraws every cell's bar."""
        for k, bar in self.bars.items():
            folder = cell_dir(self.run_dir, k)
            self._print_new_attempts(k, folder)
            progress = read_json(folder / PROGRESS)
            if k in failed:
                self.progress.update(bar, description=f"cell {k}: [red]failed")
            elif progress is not None:
                state = progress["state"]
                self.progress.update(
                    bar, total=progress["last_step"] + 1, completed=progress["step"] + (state == "done"),
                    description=f"cell {k}: {state} (attempt {progress['attempt']}, {progress['host']})",
                )

    def _print_new_attempts(self, k: int, folder: Path) -> None:
        attempts = read_attempts(folder)
        for record in attempts[self.seen_attempts[k] :]:
            CONSOLE.print(
                f"cell {k}: attempt {record['attempt']} (pid {record['pid']} on {record['host']}) "
                f"from step {record['start_step']}"
            )
        self.seen_attempts[k] = len(attempts)
