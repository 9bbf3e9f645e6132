"""The local backend of ``async-nerf-train-cells`` (``--backend local``): the cells one after the other in
the driver's process, no Ray; the assembled run is checked here too."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any, Dict, Sequence

from nerfstudio.utils.rich_utils import CONSOLE

from async_nerf_ns.cluster.assemble import check_assembled_run
from async_nerf_ns.cluster.cell_task import train_cell


class LocalBackend:
    """Trains cells in this process (the same ``train_cell`` a Ray task runs)."""

    extra_logs = ""
    """Where else a failed cell's output is (its cell folder aside): on this console."""

    def connect(self) -> None:
        """Nothing to connect to."""

    def train(self, run_dir: Path, todo: Sequence[int], **task_options: Any) -> Dict[int, str]:
        """Trains the cells ``todo``; returns the failed ones with the reason."""
        failed: Dict[int, str] = {}
        for k in todo:
            CONSOLE.rule(f"cell {k}")
            try:
                train_cell(run_dir, k, log_to_file=False, **task_options)
            except Exception as error:  # one cell's failure must not stop the others
                traceback.print_exc()
                failed[k] = f"{type(error).__name__}: {error}"
        return failed

    @staticmethod
    def check_assembled(config_path: Path) -> Dict[str, Any]:
        """``check_assembled_run`` in this process."""
        return check_assembled_run(config_path)
