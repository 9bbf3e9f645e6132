"""Shared harness of the training benchmarks (bench_nerfacto.py, bench_partition.py, bench_async_depth.py).

What it does for every benchmark row:

- ``ensure_scene``: the example town (``examples.make_scene``), generated once.
- ``run_isolated``: each row runs in a fresh Python process (``python -m examples.bench_common``
  with JSON in and out). Peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) is process-wide and
  never goes down, so only a fresh process per row gives that row's own peak.
- ``train_in_process``: nerfstudio's Trainer in-process, as ``ns-train`` would run it but without
  a viewer, console logger, profiler or evaluation during training, and one checkpoint at the end.

How the numbers are measured (read the tables with this in mind):

- **s/iter** = wall time of ``trainer.train()`` divided by the iterations, minus the time spent
  writing the final checkpoint. Set-up is excluded and reported separately as **set-up s**:
  building the datasets and model, for async-nerf the stage-1 time-pose-function fit, and the
  ray shards (which async-nerf otherwise writes on the first step; the harness writes them
  before the clock starts). Every run uses its own empty cache
  folder, so cluster masks are computed, never read from an earlier run's cache.
- **rays/s** = rays per training step (RGB + depth rays) / s/iter.
- **val PSNR / SSIM / LPIPS** = ``pipeline.get_average_eval_image_metrics()`` over all val RGB
  frames (full images) after training; for async-nerf it also holds depth RMSE/AbsRel/delta<1.25
  on the val depth frames and depth-frame pose errors (see ``async_nerf_ns/evaluation/``).
- **peak RSS** = the row's process peak resident memory in MB: "train" is read right after
  training (it includes set-up), "all" after the evaluation too. Worker processes (nerfstudio's
  ParallelDataManager) are reported separately when there are any.
- The machine is whatever runs the script: timings are only comparable within one invocation on
  a quiet machine. ``torch.get_num_threads()`` is recorded in the JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python examples/bench_x.py` puts examples/ first, not the repo
    sys.path.insert(0, str(REPO_ROOT))

from examples.make_scene import SceneSpec, generate_scene  # noqa: E402

DEFAULT_SCENE = Path("example_data/town")
"""The example town at ``SceneSpec()`` defaults (160 RGB frames of 96x72, 64x48 lidar)."""
QUICK_SCENE = Path("example_data/town_quick")
QUICK_SPEC = SceneSpec(num_rgb=24, width=32, height=24, depth_width=24, depth_height=18, write_preview=False)
"""A tiny scene for smoke runs (``--quick``): seconds to generate, seconds to train."""
QUICK_ITERATIONS = 5


# --------------------------------------------------------------------------------------- scene
def ensure_scene(path: Path, spec: SceneSpec = SceneSpec()) -> Path:
    """The dataset at ``path``; generated with ``spec`` unless a dataset (coordinates.pt) is already there."""
    path = Path(path)
    if (path / "coordinates.pt").is_file():
        return path
    print(f"generating the example scene in {path} ...", flush=True)
    started = time.perf_counter()
    generate_scene(path, spec)
    print(f"  done in {time.perf_counter() - started:.1f} s", flush=True)
    return path


# --------------------------------------------------------------------------------------- configs
def small_preset(iterations: int):
    """``async-nerf-small`` as its preset would be written for ``iterations`` steps.

    The preset derives its schedule from its 2000 iterations (learning-rate decay over the run,
    depth-pose refinement from the middle, depth-loss warm-up over the first 10 %, proposal
    warm-up over the first 25 %); the same fractions are applied here, so that a shorter or longer
    benchmark run is the same method, not a truncated 2000-step schedule.
    """
    from async_nerf_ns.method import async_nerf_small_config, optimizer_templates

    config = async_nerf_small_config()
    model = config.pipeline.model
    # Per-cell steps (the small preset's 2x2 grid): stage 3 from the middle of each cell's share.
    model.depth_pose_refine_start = max(1, iterations // 8)
    model.depth_loss_warmup_steps = max(1, iterations // 10)
    model.proposal_warmup = max(1, iterations // 4)
    config.optimizers = optimizer_templates(field_steps=iterations, camera_steps=iterations)
    return config


def rays_per_step(pipeline) -> int:
    """RGB rays plus, where the datamanager trains on depth frames, depth rays per training step."""
    datamanager = pipeline.datamanager
    rays = int(datamanager.config.train_num_rays_per_batch)
    depth = int(getattr(datamanager.config, "train_num_depth_rays_per_batch", 0) or 0)
    if depth > 0 and getattr(datamanager, "depth_frames", None) is not None:
        rays += depth
    return rays


# --------------------------------------------------------------------------------------- training
@dataclass
class Result:
    """One trained configuration (JSON-ready through ``dataclasses.asdict``)."""

    name: str
    iterations: int
    rays_per_step: int
    s_per_iter: float
    rays_per_s: float
    setup_s: float
    """Trainer set-up (datasets, model, TPF fit) plus cluster masks and training pixels."""
    prepare_s: float
    """The part of setup_s spent on cluster masks and training pixels (async-nerf only, else 0)."""
    train_s: float
    """Wall time of trainer.train() without the final checkpoint."""
    save_s: float
    eval_s: float
    psnr: Optional[float]
    ssim: Optional[float]
    lpips: Optional[float]
    depth_rmse_m: Optional[float]
    metrics: Dict[str, Any]
    peak_rss_train_mb: float
    peak_rss_mb: float
    peak_rss_workers_mb: Optional[float] = None
    device: str = "cpu"
    torch_threads: int = 1
    base_dir: str = ""
    extras: Dict[str, Any] = field(default_factory=dict)


def _finite_or_none(value: Any) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux reports KiB


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def prepare_config(config, data: Path, iterations: int, output_dir: Path, name: str) -> None:
    """The TrainerConfig changes every benchmark row gets (in place); see the module docstring."""
    import torch

    data = Path(data)
    config.data = None
    config.pipeline.datamanager.data = data
    config.pipeline.datamanager.dataparser.data = data
    if hasattr(config.pipeline.datamanager.dataparser, "cache_dir"):
        # A cache of its own: cluster masks are computed by this run, not read from an earlier one.
        config.pipeline.datamanager.dataparser.cache_dir = Path(output_dir) / name / "cache"
    config.max_num_iterations = iterations
    config.output_dir = Path(output_dir)
    config.experiment_name = name
    config.timestamp = "run"
    config.vis = "tensorboard"  # no viewer (it would take CPU from training)
    config.viewer.quit_on_train_completion = True
    config.logging.local_writer.enable = False
    config.logging.profiler = "none"
    never = 1 << 30
    config.steps_per_eval_batch = never
    config.steps_per_eval_image = never
    config.steps_per_eval_all_images = never
    config.steps_per_save = iterations  # the trainer also saves once after the last step
    config.save_only_latest_checkpoint = True
    config.load_dir = None
    config.load_checkpoint = None
    if not torch.cuda.is_available():
        config.machine.device_type = "cpu"
        config.mixed_precision = False
    config.machine.num_devices = 1


def train_in_process(
    config,
    data: Path,
    iterations: int,
    output_dir: Path,
    name: Optional[str] = None,
    after_train: Optional[Callable[[Any], Dict[str, Any]]] = None,
) -> Result:
    """Trains ``config`` on ``data`` for ``iterations`` steps in this process and evaluates on val.

    ``after_train(trainer) -> dict`` runs after the evaluation (extra measurements, e.g. render
    speed); its dict goes to ``Result.extras``. Run it through ``run_isolated`` to get the row's
    own peak RSS.
    """
    import torch

    name = name or config.method_name
    prepare_config(config, data, iterations, output_dir, name)
    base_dir = config.get_base_dir()
    if base_dir.exists():
        shutil.rmtree(base_dir)
    cache = getattr(config.pipeline.datamanager.dataparser, "cache_dir", None)
    if cache is not None and Path(cache).exists():
        shutil.rmtree(cache)
    config.save_config()
    _seed_everything(config.machine.seed)

    started = time.perf_counter()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    prepare_s = 0.0  # async-nerf writes its ray shards in trainer.setup (set-up time)
    datamanager = trainer.pipeline.datamanager
    queue = getattr(datamanager, "data_queue", None)
    if queue is not None:  # ParallelDataManager: its worker's start-up (spawn, image caching) is set-up too
        deadline = time.perf_counter() + 600
        while queue.empty() and time.perf_counter() < deadline:
            time.sleep(0.05)
    setup_s = time.perf_counter() - started

    device = str(trainer.device)
    save_seconds: List[float] = []
    save_checkpoint = trainer.save_checkpoint

    def timed_save(step: int) -> None:
        save_started = time.perf_counter()
        save_checkpoint(step)
        save_seconds.append(time.perf_counter() - save_started)

    trainer.save_checkpoint = timed_save  # type: ignore[method-assign]
    step_seconds: List[float] = []
    train_iteration = trainer.train_iteration

    def timed_iteration(step: int):
        _sync(device)
        step_started = time.perf_counter()
        out = train_iteration(step)
        _sync(device)
        step_seconds.append(time.perf_counter() - step_started)
        return out

    trainer.train_iteration = timed_iteration  # type: ignore[method-assign]
    _sync(device)
    started = time.perf_counter()
    trainer.train()
    _sync(device)
    train_s = time.perf_counter() - started - sum(save_seconds)
    peak_train = _peak_rss_mb()

    started = time.perf_counter()
    metrics = trainer.pipeline.get_average_eval_image_metrics()
    eval_s = time.perf_counter() - started
    extras = after_train(trainer) if after_train is not None else {}

    workers = getattr(datamanager, "data_procs", None)
    peak_workers = None
    if workers:  # ParallelDataManager: stop its workers so that their peak RSS can be read
        for process in workers:
            process.terminate()
        for process in workers:
            process.join(timeout=30)
        peak_workers = _peak_rss_mb(resource.RUSAGE_CHILDREN)

    rays = rays_per_step(trainer.pipeline)
    steady = step_seconds[2:] or step_seconds
    extras = {
        "first_step_s": step_seconds[0] if step_seconds else None,
        # Forward + backward + optimiser step only (nerfstudio's "train iteration"), after 2 warm-up steps.
        "steady_step_s": sum(steady) / len(steady) if steady else None,
        **extras,
    }
    s_per_iter = train_s / iterations
    return Result(
        name=name,
        iterations=iterations,
        rays_per_step=rays,
        s_per_iter=s_per_iter,
        rays_per_s=rays / s_per_iter,
        setup_s=setup_s,
        prepare_s=prepare_s,
        train_s=train_s,
        save_s=sum(save_seconds),
        eval_s=eval_s,
        psnr=_finite_or_none(metrics.get("psnr")),
        ssim=_finite_or_none(metrics.get("ssim")),
        lpips=_finite_or_none(metrics.get("lpips")),
        depth_rmse_m=_finite_or_none(metrics.get("depth_rmse_m")),
        metrics={k: (v if isinstance(v, str) else _finite_or_none(v)) for k, v in metrics.items()},
        peak_rss_train_mb=peak_train,
        peak_rss_mb=_peak_rss_mb(),
        peak_rss_workers_mb=peak_workers,
        device=device,
        torch_threads=torch.get_num_threads(),
        base_dir=str(base_dir),
        extras=extras,
    )


def time_rendering(model, cameras, repeats: int = 1) -> Dict[str, float]:
    """Rays/s of ``model.get_outputs_for_camera`` over ``cameras`` (full images, eval mode, no grad)."""
    import torch

    was_training = model.training
    model.eval()
    rays, seconds = 0, 0.0
    cameras = cameras.to(model.device)
    with torch.no_grad():
        model.get_outputs_for_camera(cameras[0:1])  # warm-up (first-call allocations)
        for _ in range(repeats):
            for index in range(len(cameras)):
                camera = cameras[index : index + 1]
                _sync(str(model.device))
                started = time.perf_counter()
                model.get_outputs_for_camera(camera)
                _sync(str(model.device))
                seconds += time.perf_counter() - started
                rays += int(camera.width.item()) * int(camera.height.item())
    model.train(was_training)
    return {"render_rays": rays, "render_s": seconds, "render_rays_per_s": rays / seconds}


# --------------------------------------------------------------------------------------- isolation
def run_isolated(fn_name: str, kwargs: Dict[str, Any], log_path: Optional[Path] = None) -> Dict[str, Any]:
    """``module:function`` called with ``kwargs`` (JSON-able) in a fresh Python process; its dict result.

    The child's output goes to ``log_path`` (or is inherited when None). The returned dict gets
    ``child_peak_rss_mb`` (the child's own peak RSS) and ``child_wall_s``. A child that fails
    gives ``{"error": ..., "log": ...}`` instead of raising, so that the other rows still run.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        request, reply = Path(tmp) / "request.json", Path(tmp) / "reply.json"
        request.write_text(json.dumps({"fn": fn_name, "kwargs": kwargs}))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        command = [sys.executable, "-m", "examples.bench_common", "--child", str(request), str(reply)]
        started = time.perf_counter()
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "w") as log:
                code = subprocess.call(command, cwd=os.getcwd(), env=env, stdout=log, stderr=subprocess.STDOUT)
        else:
            code = subprocess.call(command, cwd=os.getcwd(), env=env)
        wall = time.perf_counter() - started
        if code != 0 or not reply.exists():
            tail = ""
            if log_path is not None and log_path.exists():
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
            return {"error": f"{fn_name} exited with status {code}", "log": str(log_path), "log_tail": tail}
        result = json.loads(reply.read_text())
        result["child_wall_s"] = wall
        return result


def _child_main(request_path: str, reply_path: str) -> None:
    request = json.loads(Path(request_path).read_text())
    module_name, function_name = request["fn"].split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    result = function(**request["kwargs"])
    if dataclasses.is_dataclass(result):
        result = dataclasses.asdict(result)
    result = dict(result)
    result["child_peak_rss_mb"] = _peak_rss_mb()
    Path(reply_path).write_text(json.dumps(result, indent=2, default=str))


# --------------------------------------------------------------------------------------- output
def fmt(value: Any, spec: Optional[str] = None) -> str:
    """A table cell: ``n/a`` for None/NaN; ``spec`` (e.g. ".2f") or 3 significant digits (integers
    from 1000 up)."""
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    value = float(value)
    if not math.isfinite(value):
        return "n/a"
    if spec is not None:
        return format(value, spec)
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"


Column = Tuple[str, Callable[[Dict[str, Any]], Any]]
"""(header, row -> cell); a cell is formatted with ``fmt`` unless it is already a string."""


def markdown_table(rows: List[Dict[str, Any]], columns: Sequence[Column]) -> str:
    """A markdown table with one line per row dict; a row with ``error`` shows it instead of numbers."""
    lines = ["| " + " | ".join(header for header, _ in columns) + " |"]
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|")
    for row in rows:
        cells = []
        for i, (_, getter) in enumerate(columns):
            if "error" in row and i > 0:
                cells.append("failed" if i == 1 else "")
                continue
            try:
                value = getter(row)
            except (KeyError, TypeError):
                value = None
            cells.append(value if isinstance(value, str) else fmt(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(output: Path, payload: Dict[str, Any], text: str) -> None:
    """``output/results.json`` (everything) and ``output/results.md`` (the printed tables)."""
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.json").write_text(json.dumps(payload, indent=2, default=str))
    (output / "results.md").write_text(text + "\n")
    print(f"\nresults: {output / 'results.json'}, {output / 'results.md'}")


# --------------------------------------------------------------------------------------- CLI
def base_parser(description: str, name: str, default_iterations: int = 2000) -> argparse.ArgumentParser:
    """--iterations, --scene, --output, --quick (and --threads), shared by every benchmark."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=None,
                        help=f"training steps per configuration (default {default_iterations}; "
                             f"{QUICK_ITERATIONS} with --quick)")
    parser.add_argument("--scene", type=Path, default=None,
                        help=f"dataset; generated with SceneSpec() defaults if missing (default {DEFAULT_SCENE}; "
                             f"{QUICK_SCENE} at a tiny size with --quick)")
    parser.add_argument("--output", type=Path, default=Path("bench_out") / name,
                        help="folder for runs, logs, results.json and results.md")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: a tiny scene and a handful of iterations (numbers meaningless)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads in each run (default: torch's)")
    parser.set_defaults(_default_iterations=default_iterations)
    return parser


def resolve_common(args: argparse.Namespace) -> argparse.Namespace:
    """Fills the defaults that depend on --quick and makes sure the scene exists."""
    if args.iterations is None:
        args.iterations = QUICK_ITERATIONS if args.quick else args._default_iterations
    spec = QUICK_SPEC if args.quick else SceneSpec()
    if args.scene is None:
        args.scene = QUICK_SCENE if args.quick else DEFAULT_SCENE
    args.scene = ensure_scene(args.scene, spec).resolve()
    load = os.getloadavg()[0]
    if load > 0.5:
        print(
            f"WARNING: load average {load:.1f} on {os.cpu_count()} CPUs before starting: timings are not reliable. "
            "On a busy machine torch's multi-threaded kernels can run an order of magnitude slower "
            "(--threads 1 is far less affected); measure on a quiet machine.",
            flush=True,
        )
    args.output = args.output.resolve()
    return args


def set_threads(threads: Optional[int]) -> None:
    import torch

    if threads:
        torch.set_num_threads(int(threads))


def run_rows(fn_name: str, row_kwargs: Dict[str, Dict[str, Any]], output: Path) -> List[Dict[str, Any]]:
    """Each row through ``run_isolated`` one after the other (never two trainings at once)."""
    rows = []
    for label, kwargs in row_kwargs.items():
        log = output / "logs" / f"{label.replace(' ', '_').replace('/', '_')}.log"
        print(f"[{time.strftime('%H:%M:%S')}] {label}: running (log: {log})", flush=True)
        result = run_isolated(fn_name, kwargs, log_path=log)
        result["label"] = label
        if "error" in result:
            print(f"  FAILED: {result['error']}\n{result.get('log_tail', '')}", flush=True)
        else:
            print(f"  {result['s_per_iter']:.3g} s/iter, set-up {result['setup_s']:.1f} s, "
                  f"val PSNR {fmt(result['psnr'])}, child wall {result['child_wall_s']:.0f} s", flush=True)
        rows.append(result)
    return rows


def machine_info() -> Dict[str, Any]:
    import platform

    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        try:
            _child_main(sys.argv[2], sys.argv[3])
        except BaseException:
            traceback.print_exc()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        # Worker processes of nerfstudio's datamanagers or torch threads must not keep the child alive.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    print(__doc__)
