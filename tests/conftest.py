"""Shared fixtures: one small generated scene for the tests that need a whole dataset."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import pytest

from examples.make_scene import SceneSpec, generate_scene

# Small enough for CPU end-to-end runs, big enough that the 2x2 partition and the depth track matter.
# The cluster tests' runs (test_train_cells.py, test_cluster_two_nodes.py): the example scene's 1x2
# partition, STEPS steps per cell, a checkpoint every SAVE steps.
STEPS = 40
SAVE = 10
NS_TRAIN = [
    "--max-num-iterations", str(STEPS),
    "--steps-per-save", str(SAVE),
    "--pipeline.datamanager.partition.grid-dim", "1", "2",
    "--logging.local-writer.enable", "False",
]
ASSEMBLED = Path("assembled") / "async-nerf-small" / "config.yml"

E2E_SPEC = SceneSpec(num_rgb=64, width=64, height=48, depth_width=48, depth_height=36, write_preview=False)
E2E_LIDAR_SPEC = dataclasses.replace(E2E_SPEC, lidar=True)
"""The end-to-end test's scene: E2E_SPEC with the spinning LiDAR track (`make_scene --lidar`) as well."""


@pytest.fixture(scope="session")
def example_scene(tmp_path_factory) -> Path:
    """A generated aerial scene in the async-nerf layout (64 RGB frames at 64x48, one lidar track)."""
    return generate_scene(tmp_path_factory.mktemp("example") / "scene", E2E_SPEC)


@pytest.fixture(scope="session")
def example_lidar_scene(tmp_path_factory) -> Path:
    """The example scene of ``example_scene`` with a LiDAR track too (64 RGB frames, a depth-image and a LiDAR track)."""
    return generate_scene(tmp_path_factory.mktemp("example_lidar") / "scene", E2E_LIDAR_SPEC)


def venv_env(threads: Optional[int] = None) -> dict:
    """The environment of a user of the venv: its bin/ first on PATH (ffmpeg for ns-render); with
    ``threads``, torch's thread count (one thread makes CPU training bit-reproducible)."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONWARNINGS": "ignore"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_command(
    args: List[str], cwd: Path, timeout: float = 900, threads: Optional[int] = None, prefix: Sequence[str] = ()
) -> subprocess.CompletedProcess:
    """Runs a console command of the venv (ns-train, ns-eval, ...) as a user would; fails with its output.
    ``prefix``: a command that runs it (e.g. as another user)."""
    bin_dir = Path(sys.executable).parent
    result = subprocess.run(
        [*prefix, str(bin_dir / args[0]), *args[1:]], cwd=cwd, env=venv_env(threads), capture_output=True, text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}\n--- stdout ---\n{result.stdout[-6000:]}"
            f"\n--- stderr ---\n{result.stderr[-6000:]}"
        )
    return result


def wait_for(condition: Callable[[], Optional[object]], process: subprocess.Popen, log: Path, timeout: float = 240):
    """Polls ``condition()`` until it returns something true (returned), while ``process`` (a driver
    writing ``log``) still runs; fails with the log's tail if the process exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        assert process.poll() is None, f"the driver exited ({process.returncode}) first:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"timed out\n{log.read_text()[-4000:]}"
        time.sleep(0.05)


@pytest.fixture
def clean_writers():
    """Closes and clears nerfstudio's event writers after a test that set up trainers in-process."""
    yield
    from stage3_trainer import close_writers

    close_writers()
