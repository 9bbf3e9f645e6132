"""async-nerf-train-cells on a two-node Ray cluster started with ``ray start``, as the README's recipe
starts one, with Ray 2.60's token authentication.

Both nodes run on this machine, each as its own ``ray start --block`` with its own temp dir and its
own HOME (two "machines"), started as the README's recipe says: the head's HOME holds a token (what
``ray get-auth-token --generate`` writes) and the head runs with ``RAY_AUTH_MODE=token``; the second node
and the driver get a copy of it in their ``~/.ray/auth_token`` and ``RAY_AUTH_MODE=token``. (Ray
resolves ``--node-ip-address 127.0.0.1`` to the host's own address: the nodes register under it.) Each node has 1 CPU, so the two cells of the
example scene's 1x2 partition train one per node. The cell on the second node is killed with its node
(raylet, worker and the node's other processes, SIGKILL) once it has a checkpoint: Ray retries it on the
head, where it resumes from that checkpoint, and the run assembles. Every process started here is
stopped by pid in the fixture's teardown.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

from conftest import ASSEMBLED, NS_TRAIN, SAVE, STEPS  # noqa: F401 (the cluster runs' settings)
from conftest import wait_for as _wait_for

from async_nerf_ns.cluster.cell_task import read_attempts, read_json
from async_nerf_ns.files.run_folder import DONE, PROGRESS, cell_dir

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

BIN = Path(sys.executable).parent
NODE_START_TIMEOUT = 120
"""Seconds for one `ray start` to come up: measured 4-9 s per node on this 2-core machine with other tests
beside it, once scripts/setup.sh has removed rfc3987-syntax (31-50 s before; a start Ray itself gives up
on exits after ~50 s)."""


def _free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return str(probe.getsockname()[1])


def _env(home: Path, auth_mode: Optional[str]) -> Dict[str, str]:
    """A user's environment on the "machine" whose home is ``home``: the venv first on PATH, one torch
    thread, no Ray settings inherited from this process (another test's ray.init sets RAY_AUTH_MODE)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", HOME=str(home), PYTHONWARNINGS="ignore",
               OMP_NUM_THREADS="1", COLUMNS="400")
    if auth_mode is not None:
        env["RAY_AUTH_MODE"] = auth_mode
    return env


class Node:
    """One ``ray start --block`` (its own session: the process group is the node's start-up processes)."""

    def __init__(self, name: str, base: Path, home: Path, auth_mode: Optional[str], args: List[str]) -> None:
        self.name, self.temp, self.log = name, base / name, base / f"{name}.log"
        command = [
            str(BIN / "ray"), "start", "--block", *args, "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
            "--object-store-memory", str(80 * 2**20), "--temp-dir", str(self.temp), "--disable-usage-stats",
            "--no-monitor", "--include-log-monitor", "False",
            # Fixed free ports: the defaults (52365, ...) would collide between the two nodes on one host.
            "--dashboard-agent-listen-port", _free_port(), "--dashboard-agent-grpc-port", _free_port(),
            "--runtime-env-agent-port", _free_port(), "--metrics-export-port", _free_port(),
        ]
        # No workers started ahead of the first task: fewer Python processes compete with the node's agents,
        # which Ray gives 15 s to start.
        env = {**_env(home, auth_mode), "RAY_enable_worker_prestart": "0", "RAY_prestart_worker_first_driver": "0"}
        self.started = time.monotonic()
        with open(self.log, "a") as stream:
            self.process = subprocess.Popen(command, env=env, stdout=stream, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def wait_started(self, timeout: float = NODE_START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in self.output():
            assert self.process.poll() is None, f"ray start ({self.name}) exited {self.process.returncode}:\n{self.output()[-3000:]}"
            assert time.monotonic() < deadline, f"ray start ({self.name}) not up after {timeout} s:\n{self.output()[-3000:]}"
            time.sleep(0.2)

    def processes(self) -> List["psutil.Process"]:
        """Every process of this node: the ray start process and all that name its temp dir (raylet,
        agents, workers: workers get their own process groups, so a group kill would miss them)."""
        found = []
        for process in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(process.info["cmdline"] or [])
            if process.info["pid"] == self.process.pid or str(self.temp) in cmdline:
                found.append(process)
        return found

    def raylet(self) -> "psutil.Process":
        for process in self.processes():
            if process.name() == "raylet":
                return process
        raise AssertionError(f"no raylet for node {self.name}:\n{self.output()[-2000:]}")

    def node_id(self) -> str:
        return next(a.split("=", 1)[1] for a in self.raylet().cmdline() if a.startswith("--node_id="))

    def kill(self) -> None:
        """SIGKILL every process of the node, the raylet first (a node lost as a whole)."""
        processes = self.processes()
        processes.sort(key=lambda p: p.name() != "raylet")
        for process in processes:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass  # exited on its own already
        psutil.wait_procs(processes, timeout=20)
        self.process.wait(timeout=20)


START_ATTEMPTS = 2
"""Ray gives a starting raylet 15 s to see its agents (Python processes) and `ray start` 30 s to see the
raylet (both fixed in Ray 2.60); a start that misses it (a loaded machine) is retried once."""


def _start_node(name: str, base: Path, home: Path, auth_mode: Optional[str], args: List[str]) -> Node:
    """A node, started again (up to START_ATTEMPTS) only when Ray's own start-up wait ran out."""
    for attempt in range(1, START_ATTEMPTS + 1):
        node = Node(name, base, home, auth_mode, args)
        try:
            node.wait_started()
            print(f"node {name} up in {time.monotonic() - node.started:.1f} s (attempt {attempt})")
            return node
        except AssertionError:
            node.kill()
            if "timed out during startup" not in node.output():
                raise
            if attempt == START_ATTEMPTS:
                raise AssertionError(
                    f"ray start ({name}) timed out in Ray's own start-up wait {START_ATTEMPTS} times (load average "
                    f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores): the machine is too busy for Ray to start a "
                    f"node; rerun when it is not.\n{node.output()[-1500:]}"
                ) from None
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Dict]:
    """The head (HOME with a token) and a second node (a copy of the token), both with RAY_AUTH_MODE=token."""
    base = Path(tempfile.mkdtemp(prefix="anr-", dir="/tmp"))  # short: Ray's socket paths live under it
    head_home, node_home = base / "home_head", base / "home_second"
    nodes: List[Node] = []
    started = time.monotonic()
    try:
        token = head_home / ".ray" / "auth_token"
        token.parent.mkdir(parents=True)
        # What `ray get-auth-token --generate` writes (ray/_private/authentication: secrets.token_hex(32)),
        # without the ~9 s of a second Ray CLI start here.
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        head = _start_node("head", base, head_home, "token", ["--head", "--port", _free_port(), "--include-dashboard", "False",
                                                         "--ray-client-server-port", _free_port()])
        nodes.append(head)
        address = (head.temp / "ray_current_cluster").read_text().strip()
        (node_home / ".ray").mkdir(parents=True)
        shutil.copy(token, node_home / ".ray" / "auth_token")  # the recipe: copy the head's token
        second = _start_node("second", base, node_home, "token", ["--address", address])
        nodes.append(second)
        yield {"address": address, "head": head, "second": second, "node_home": node_home, "base": base,
               "start_seconds": time.monotonic() - started}
    finally:
        for node in reversed(nodes):
            node.kill()
        shutil.rmtree(base, ignore_errors=True)


def _driver(args: List[str], home: Path, auth_mode: Optional[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as stream:
        return subprocess.Popen([str(BIN / "async-nerf-train-cells"), *args], cwd=log.parent, env=_env(home, auth_mode),
                                stdout=stream, stderr=subprocess.STDOUT)


def test_a_driver_without_the_token_mode_is_refused_with_the_fix(cluster: Dict, example_scene: Path, tmp_path: Path):
    """This machine has the head's token in ~/.ray/auth_token, but Ray sends it to an explicit address only
    with RAY_AUTH_MODE=token: the command must say so, not just "Failed to connect"."""
    log = tmp_path / "driver.log"
    started = time.monotonic()
    driver = _driver(["--data", str(example_scene), "--run-dir", str(tmp_path / "run"), "--ray-address", cluster["address"],
                      "--", *NS_TRAIN], cluster["node_home"], None, log)
    assert driver.wait(timeout=180) != 0
    seconds = time.monotonic() - started
    output = " ".join(log.read_text().split())
    assert f"the Ray cluster at {cluster['address']} refused this driver" in output, output[-3000:]
    assert "InvalidAuthToken" in output and "RAY_AUTH_MODE=unset" in output
    assert f"tokens here: {cluster['node_home'] / '.ray' / 'auth_token'}" in output
    assert "set RAY_AUTH_MODE=token" in output and "RAY_AUTH_MODE=disabled" in output
    print(f"refused after {seconds:.1f} s")


def test_a_cell_on_a_lost_node_is_retried_on_the_other_from_its_checkpoint(cluster: Dict, example_scene: Path, tmp_path: Path):
    run_dir, log = tmp_path / "run", tmp_path / "driver.log"
    head, second = cluster["head"], cluster["second"]
    head_id, second_id = head.node_id(), second.node_id()
    started = time.monotonic()
    driver = _driver(["--data", str(example_scene), "--run-dir", str(run_dir), "--ray-address", cluster["address"],
                      "--poll-seconds", "0.5", "--max-retries", "2", "--", *NS_TRAIN],
                     cluster["node_home"], "token", log)
    try:
        def on_second_node_with_checkpoint():
            for k in (0, 1):
                progress = read_json(cell_dir(run_dir, k) / PROGRESS)
                models = cell_dir(run_dir, k) / "nerfstudio_models"
                if (progress and progress["node_id"] == second_id and progress["state"] == "training"
                        and any(models.glob("step-*.ckpt"))):
                    return k, progress

        k, _ = _wait_for(on_second_node_with_checkpoint, driver, log)
        second.kill()
        # What the cell had saved when its node died (progress.json lags the steps by up to a report period,
        # so the checkpoints on disk, read once every process of the node is gone, are the reference).
        saved_at_kill = [int(m.group(1)) for m in (re.fullmatch(r"step-(\d+)\.ckpt", p.name)
                                                   for p in (cell_dir(run_dir, k) / "nerfstudio_models").iterdir()) if m]
        assert driver.wait(timeout=300) == 0, log.read_text()[-4000:]
    finally:
        if driver.poll() is None:
            driver.kill()
    seconds = time.monotonic() - started

    attempts = read_attempts(cell_dir(run_dir, k))
    assert [a["node_id"] for a in attempts] == [second_id, head_id], attempts
    # Resumed after the checkpoint it had when its node died (a save every 10 steps: step 11, 21 or 31).
    assert attempts[0]["start_step"] == 0 and attempts[1]["start_step"] in (11, 21, 31), attempts
    assert attempts[1]["start_step"] == max(saved_at_kill) + 1, (attempts, saved_at_kill)
    other = read_attempts(cell_dir(run_dir, 1 - k))
    assert [a["node_id"] for a in other] == [head_id], other
    for cell in (0, 1):
        done = read_json(cell_dir(run_dir, cell) / DONE)
        assert done is not None and done["step"] == STEPS - 1 and done["implementation"] == "torch"
        # Measured 18.3 and 18.7 dB (test_train_cells.py: TRAIN_PSNR_RANGE, same data and steps).
        assert 15.6 < done["train_psnr"] < 25.0, done
    assert (run_dir / ASSEMBLED).is_file()
    output = " ".join(log.read_text().split())
    # The assembled run was loaded back by a Ray task (a cell's resources), not by the driver's process.
    checked = re.search(r"Assembled 2 cells into \S+ \(loaded back by pid (\d+) on", output)
    assert checked is not None and int(checked.group(1)) != driver.pid, output[-3000:]
    record = json.loads((run_dir / "cell_implementation.json").read_text())
    assert record["implementation"] == "torch" and record["device"] == "cpu"
    print(f"cluster start {cluster['start_seconds']:.1f} s, run with the kill {seconds:.1f} s")
