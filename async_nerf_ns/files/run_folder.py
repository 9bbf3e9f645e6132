"""The folder of an ``async-nerf-train-cells`` run: its file names, read by the cell tasks and the
driver (cluster/) and by the viewer's cells panel (viewer/).

    RUN/run_config.yml           the whole run's trainer config (all cells)
    RUN/cells/cell_<k>/          an ordinary nerfstudio run of cell k, with its progress files
    RUN/assembled/<method>/      the assembled run (config.yml, nerfstudio_models/)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

RUN_CONFIG = "run_config.yml"
"""The whole run's trainer config (all cells) in RUN/; every task derives its cell's config from it."""
CELLS_DIR = "cells"
ASSEMBLED = "assembled"
ATTEMPTS = "attempts.log"
PROGRESS = "progress.json"
DONE = "DONE.json"
UNLOADABLE = "unloadable_checkpoints"
LOCK = ".lock"
LOG = "train.log"


def cell_dir(run_dir: Path, k: int) -> Path:
    """RUN/cells/cell_<k>/: the folder of cell k's task."""
    return Path(run_dir) / CELLS_DIR / f"cell_{k:03d}"


def read_json(path: Path) -> Optional[Dict[str, Any]]:
    """A run folder's JSON record (DONE.json, progress.json, the implementation record); None where it
    is absent or does not parse."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
