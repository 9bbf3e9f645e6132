"""What a cluster cell task trains with, decided on its own node, without training or Ray: the preset
from the resources, mixed precision and the field implementation per device (a GPU task is simulated by
passing its device and whether tinycudann imports there), one implementation for every cell of a run,
the train metrics a task reports, and the driver's message when Ray refuses its connection."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import List, Sequence, Tuple

import pytest
import torch

from async_nerf_ns.cluster.cell_task import (
    IMPLEMENTATION,
    RUN_CONFIG,
    NodeCannotTrainCell,
    TrainMetricsReport,
    load_config,
    task_config,
)
from async_nerf_ns.cluster.assemble_run import assembled_config
from async_nerf_ns.cluster.driver import ClusterError, TrainCells, cli
from async_nerf_ns.cluster.ray_backend import auth_failure, ray_auth_help


def _run(tmp_path: Path, own: Sequence[str] = (), ns_train: Sequence[str] = (), name: str = "run") -> Tuple[TrainCells, Path]:
    """A run folder with its run_config.yml, as the driver writes it before any task starts."""
    run_dir = (tmp_path / name).resolve()
    command = cli(["--data", "D", "--run-dir", str(run_dir), *own, "--", "--max-num-iterations", "8", *ns_train])
    command.run_config(run_dir)
    return command, run_dir


def _decided(run_dir: Path, k: int, device: str, tcnn: bool, host: str = "node") -> Tuple[bool, str, str]:
    config, _ = task_config(run_dir, k, device, tcnn, host)
    return config.mixed_precision, config.pipeline.model.implementation, config.machine.device_type


def test_the_method_follows_the_resources_unless_given(tmp_path: Path):
    def method(*own: str) -> str:
        return cli(["--data", "D", "--run-dir", str(tmp_path / "r"), *own]).method_name

    assert method() == "async-nerf-small"
    assert method("--gpus-per-cell", "0.5") == "async-nerf"
    assert method("--gpus-per-cell", "1", "--method", "async-nerf-small") == "async-nerf-small"
    assert method("--method", "async-nerf") == "async-nerf"
    gpu, gpu_dir = _run(tmp_path, ["--gpus-per-cell", "1"], name="gpu")
    cpu, cpu_dir = _run(tmp_path, name="cpu")
    # The presets' batch sizes (method.py): the GPU preset's, or the CPU one's.
    assert load_config(gpu_dir / RUN_CONFIG).pipeline.datamanager.train_num_rays_per_batch == 4096
    assert load_config(cpu_dir / RUN_CONFIG).pipeline.datamanager.train_num_rays_per_batch == 384
    assert load_config(gpu_dir / RUN_CONFIG).method_name == "async-nerf"


def test_the_run_config_leaves_precision_implementation_and_device_to_the_tasks(tmp_path: Path):
    _, run_dir = _run(tmp_path, ["--gpus-per-cell", "1"])
    text = (run_dir / RUN_CONFIG).read_text()
    assert text.startswith("# async-nerf-train-cells")
    config = load_config(run_dir / RUN_CONFIG)
    assert (config.mixed_precision, config.pipeline.model.implementation, config.machine.device_type) == (None, None, None)
    _, given_dir = _run(tmp_path, ns_train=["--mixed_precision=False", "--pipeline.model.implementation", "torch"], name="given")
    config = load_config(given_dir / RUN_CONFIG)
    assert (config.mixed_precision, config.pipeline.model.implementation) == (False, "torch")
    # Given or not is part of the run: on this CPU machine the preset's mixed_precision is False too,
    # but a rerun that gives it explicitly would change what GPU tasks do.
    again = cli(["--data", "D", "--run-dir", str(run_dir), "--gpus-per-cell", "1", "--", "--max-num-iterations", "8",
                 "--mixed-precision", "False"])
    with pytest.raises(ClusterError, match="was started with other options"):
        again.run_config(run_dir)


def test_a_gpu_task_decides_tcnn_and_mixed_precision_and_every_later_task_follows(tmp_path: Path):
    _, run_dir = _run(tmp_path, ["--gpus-per-cell", "1"])
    assert _decided(run_dir, 0, "cuda", True, "gpu-a") == (True, "tcnn", "cuda")
    record = json.loads((run_dir / IMPLEMENTATION).read_text())
    assert record["implementation"] == "tcnn" and record["host"] == "gpu-a" and record["decided_by"] == "the task of cell 0"
    assert _decided(run_dir, 1, "cuda", True, "gpu-b") == (True, "tcnn", "cuda")  # the record, not a new decision
    # A node that cannot run tcnn fails clearly instead of training torch fields into a tcnn run.
    with pytest.raises(NodeCannotTrainCell, match=r"cell 1 on gpu-c: .*tiny-cuda-nn .*decided by the task of cell 0 on gpu-a .*tinycudann does not import here"):
        _decided(run_dir, 1, "cuda", False, "gpu-c")
    with pytest.raises(NodeCannotTrainCell, match=r"this task trains on the CPU .*--pipeline.model.implementation torch"):
        _decided(run_dir, 1, "cpu", False, "cpu-d")
    assert json.loads((run_dir / IMPLEMENTATION).read_text()) == record  # unchanged by the later tasks


def test_a_run_whose_first_task_had_no_tcnn_stays_torch_on_every_node(tmp_path: Path):
    _, cpu_first = _run(tmp_path, ["--gpus-per-cell", "1"], name="cpu_first")
    assert _decided(cpu_first, 0, "cpu", False) == (False, "torch", "cpu")  # a GPU task on a node without CUDA
    assert _decided(cpu_first, 1, "cuda", True) == (True, "torch", "cuda")
    _, no_tcnn = _run(tmp_path, ["--gpus-per-cell", "1"], name="no_tcnn")
    assert _decided(no_tcnn, 0, "cuda", False) == (True, "torch", "cuda")
    assert _decided(no_tcnn, 1, "cuda", True) == (True, "torch", "cuda")


def test_options_given_after_the_separator_are_respected(tmp_path: Path):
    _, run_dir = _run(tmp_path, ["--gpus-per-cell", "1"], ["--mixed-precision", "False", "--pipeline.model.implementation", "torch"])
    assert _decided(run_dir, 0, "cuda", True) == (False, "torch", "cuda")
    assert json.loads((run_dir / IMPLEMENTATION).read_text())["decided_by"] == "ns-train option"
    _, tcnn_dir = _run(tmp_path, [], ["--pipeline.model.implementation", "tcnn"], name="tcnn")
    # nerfstudio would silently build torch fields without tinycudann; a task refuses.
    with pytest.raises(NodeCannotTrainCell, match=r"--pipeline.model.implementation tcnn; .*trains on the CPU"):
        _decided(tcnn_dir, 0, "cpu", False)
    assert _decided(tcnn_dir, 0, "cuda", True) == (True, "tcnn", "cuda")


def test_the_assembled_config_holds_what_the_tasks_decided(tmp_path: Path):
    _, run_dir = _run(tmp_path, ["--gpus-per-cell", "1"])
    task_config(run_dir, 0, "cuda", True, "gpu-a")
    done = {"implementation": "tcnn", "mixed_precision": True, "device": "cuda"}
    config = assembled_config(run_dir, load_config(run_dir / RUN_CONFIG), done)
    assert (config.mixed_precision, config.pipeline.model.implementation, config.machine.device_type) == (True, "tcnn", "cuda")
    (run_dir / IMPLEMENTATION).unlink()
    with pytest.raises(ClusterError, match=IMPLEMENTATION):
        assembled_config(run_dir, load_config(run_dir / RUN_CONFIG), {"device": "cpu"})


def test_the_train_metrics_report_averages_the_steps_between_reports_and_reads_back_only_then(monkeypatch):
    reads: List[int] = []
    item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: reads.append(1) or item(self))
    trainer = types.SimpleNamespace(last_train_step=-1, last_train_metrics={})
    reports: List[Tuple[int, dict]] = []
    metrics: dict = {"train_psnr": None, "train_loss": None}
    reporter = TrainMetricsReport(trainer, lambda step: reports.append((step, dict(metrics))), metrics, every=10)  # type: ignore[arg-type]
    for step in range(26):
        trainer.last_train_step = step
        trainer.last_train_metrics = {"psnr": torch.tensor(float(step)), "loss": torch.tensor(2.0 * step)}
        reporter.run_callback(step)
        if step == 9:
            assert len(reads) == 2  # the report at step 0 only: no read-back between reports
    reporter.flush()
    assert [step for step, _ in reports] == [0, 10, 20]
    assert [m["train_psnr"] for _, m in reports] == [0.0, 5.5, 15.5]  # steps 0; 1..10; 11..20
    assert [m["train_loss"] for _, m in reports] == [0.0, 11.0, 31.0]
    assert metrics == {"train_psnr": 23.0, "train_loss": 46.0}  # steps 21..25, for DONE.json
    assert len(reads) == 2 * 4  # two metrics at each of 3 reports and the final flush
    # A step without new metrics (the trainer's last step is another) is not counted again.
    reporter.run_callback(30)
    assert reports[-1] == (30, {"train_psnr": 23.0, "train_loss": 46.0})


def test_a_refused_connection_names_the_cause_and_the_fix(tmp_path: Path, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    # ray.init's chain as measured against a token cluster with RAY_AUTH_MODE unset (test_cluster_two_nodes.py).
    try:
        try:
            try:
                raise ray.exceptions.AuthenticationError("RPC error: InvalidAuthToken: Authentication token is missing or incorrect")
            except Exception as inner:
                raise RuntimeError("Failed to connect to GCS. Last connection error: ...") from inner
        except RuntimeError as middle:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379") from middle
    except ConnectionError as error:
        refused = error
    reason = auth_failure(refused)
    assert reason is not None and "InvalidAuthToken" in reason
    assert auth_failure(ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379")) is None
    message = ray_auth_help("10.0.0.1:6379", reason)
    assert "the Ray cluster at 10.0.0.1:6379 refused this driver" in message and "RAY_AUTH_MODE=unset" in message
    assert "no token on this machine" in message
    assert "set RAY_AUTH_MODE=token" in message and "RAY_AUTH_MODE=disabled" in message
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("x" * 64)
    assert f"tokens here: {tmp_path / '.ray' / 'auth_token'}" in ray_auth_help("10.0.0.1:6379", reason)
