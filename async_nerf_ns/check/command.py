"""The ``async-nerf-check`` command: which kind of folder it was given, the checks, the output."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import tyro
from rich.console import Console

from async_nerf_ns.check.dataset import check_dataset, is_dataset
from async_nerf_ns.check.findings import Report
from async_nerf_ns.check.run import check_cells_run, check_ns_run, is_cells_run, is_ns_run


@dataclass
class Check:
    """Checks a dataset or a run folder and says whether it is sound.

    DATA (a dataset in the async-nerf layout): the layout as ns-train's parser reads it, and its derived
    files: every shard set (complete; every chunk's size and CRC-32 against its manifest; written from
    the current files or stale) and the stage-1 cache. RUN (an ns-train output folder with config.yml,
    an async-nerf-train-cells run folder with run_config.yml, or its assembled run): every checkpoint
    (CRC-32, read whole, loaded strictly into the pipeline its config builds), per cell its state
    (done / training / failed with the last error line of its log / not started, attempts, steps), and
    whether the assembled run holds the cells' final checkpoints.

    Exit code 0 when sound (warnings allowed), 1 when something is wrong, 2 when PATH is neither.
    """

    path: tyro.conf.Positional[Path]
    """A dataset folder or a run folder."""
    json: bool = False
    """Print the findings as JSON (for scripts) instead of a table."""
    strict: bool = True
    """Build each run's pipeline (on the CPU; needs its dataset) and load every checkpoint into it
    strictly; --no-strict only checks checksums and that torch reads each checkpoint whole."""
    cache_dir: Optional[Path] = None
    """For a dataset: its derived-files folder, if ns-train was given one (default: DATA/.async_nerf_cache,
    or the fallback under $TMPDIR that a read-only dataset uses)."""
    shard_dir: List[Path] = field(default_factory=list)
    """For a dataset: more shard folders to check (--pipeline.datamanager.shards.shard-dir of a run)."""

    def report(self) -> Report:
        path = self.path.expanduser()
        if is_cells_run(path):
            return check_cells_run(path, self.strict)
        if is_ns_run(path):
            kind = "assembled run" if path.parent.parent.name == "assembled" or path.parent.name == "assembled" else "ns-train run"
            return check_ns_run(path, self.strict, Report(str(path), kind))
        if is_dataset(path):
            return check_dataset(path, self.cache_dir, self.shard_dir)
        report = Report(str(path), "unknown")
        report.add("path", path, "error", "neither a dataset (coordinates.pt, train/) nor a run folder (config.yml or run_config.yml)")
        return report

    def main(self) -> int:
        if self.json:  # stdout is the JSON alone: what building a pipeline prints goes to stderr
            with contextlib.redirect_stdout(sys.stderr):
                report = self.report()
            print(report.to_json())
        else:
            report = self.report()
            report.print(Console(width=200))
        if report.kind == "unknown":
            return 2
        return report.exit_code


def entrypoint() -> None:
    tyro.extras.set_accent_color("bright_yellow")
    sys.exit(tyro.cli(Check).main())
