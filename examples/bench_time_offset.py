"""The depth clock offset: how well it is estimated, what it is worth, and what it costs.

    python examples/bench_time_offset.py [--offsets-ms -40 0 25 80] [--train-steps 2000] [--long-frames 1000]

For each injected offset the example town (``SceneSpec`` defaults: 160 RGB frames at 96x72, lidar
64x48 at 2.5 Hz) is generated with its depth clock that much behind the RGB clock, and:
- stage 1 alone: the estimate and its error, and the train/val depth-frame pose errors (m / deg,
  against pose_gt) with the estimate applied and without it (the TPF at the stamps);
- with ``--train-steps N``: ``ns-train async-nerf-small`` for N steps with the estimate (the default)
  and with ``--pipeline.datamanager.time-offset.estimate False``, then ``ns-eval``: val PSNR and depth
  RMSE (each run a separate process with one torch thread, one after the other);
- ``--long-frames M``: the estimator's time on an M-frame lidar track (a longer flight, lidar at 10 Hz).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from examples.bench_common import markdown_table, write_results  # noqa: E402
from examples.make_scene import SceneSpec, generate_scene  # noqa: E402


def stage1(data: Path) -> Dict[str, Any]:
    """The estimate on the train split and the depth-frame pose errors with and without it."""
    import torch

    from async_nerf_ns.data.dataparser import METADATA_KEY, AsyncNerfDataParserConfig
    from async_nerf_ns.data.depth_frames import ray_distance
    from async_nerf_ns.trajectory.fit import fit_tpf
    from async_nerf_ns.trajectory.metrics import pose_errors
    from async_nerf_ns.trajectory.time_offset import TimeOffsetConfig, estimate_time_offset
    from async_nerf_ns.trajectory.tpf import TimePoseFunctionConfig

    parser = AsyncNerfDataParserConfig(data=data).setup()
    train = parser.get_dataparser_outputs("train")
    meta = train.metadata[METADATA_KEY]
    tpf = fit_tpf(meta.rgb_timestamps.numpy(), train.cameras.camera_to_worlds, TimePoseFunctionConfig(), progress=False)
    track = meta.depth_tracks["lidar"]
    distances = [ray_distance(track, i, meta.pose_scale_factor) for i in range(len(track))]
    started = time.perf_counter()
    estimate = estimate_time_offset("lidar", track.timestamps.numpy(), track.intrinsics, distances, tpf.poses, TimeOffsetConfig())
    seconds = time.perf_counter() - started
    row: Dict[str, Any] = {"estimate_ms": None if estimate.estimate_s is None else estimate.estimate_s * 1000,
                           "std_ms": None if estimate.std_s is None else estimate.std_s * 1000,
                           "applied_ms": estimate.applied_s * 1000, "status": estimate.status, "frames": len(track),
                           "estimator_s": seconds}
    for split in ("train", "val"):
        split_track = parser.get_dataparser_outputs(split).metadata[METADATA_KEY].depth_tracks["lidar"]
        for label, offset in (("with", estimate.applied_s), ("without", 0.0)):
            with torch.no_grad():
                poses = tpf.poses(split_track.timestamps.numpy() + offset)
            errors = pose_errors(poses, split_track.gt_c2w, meta.pose_scale_factor)
            row[f"{split}_{label}"] = (errors["translation_m"]["mean"], errors["rotation_deg"]["mean"])
    return row


def train_and_eval(data: Path, out: Path, name: str, steps: int, estimate: bool) -> Dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    binaries = Path(sys.executable).parent
    subprocess.run(
        [str(binaries / "ns-train"), "async-nerf-small", "--data", str(data), "--output-dir", str(out),
         "--experiment-name", "offset", "--timestamp", name, "--max-num-iterations", str(steps),
         "--logging.local-writer.enable", "False", "--pipeline.datamanager.time-offset.estimate", str(estimate)],
        check=True, env=env, capture_output=True,
    )
    config = out / "offset" / "async-nerf-small" / name / "config.yml"
    subprocess.run([str(binaries / "ns-eval"), "--load-config", str(config), "--output-path", str(config.parent / "eval.json")],
                   check=True, env=env, capture_output=True)
    results = json.loads((config.parent / "eval.json").read_text())["results"]
    return {"psnr": results["psnr"], "depth_rmse_m": results["depth_rmse_m"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--offsets-ms", type=int, nargs="+", default=[-40, 0, 25, 80])
    parser.add_argument("--train-steps", type=int, default=0, help="0: stage 1 only")
    parser.add_argument("--long-frames", type=int, default=0, help="0: no timing on a long track")
    parser.add_argument("--output", type=Path, default=Path("bench_out/time_offset"))
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    rows: List[Dict[str, Any]] = []
    for offset in args.offsets_ms:
        data = args.output / f"town_{offset}"
        if not (data / "coordinates.pt").is_file():
            generate_scene(data, SceneSpec(depth_clock_offset_ms=offset, write_preview=False))
        row = {"offset_ms": offset, **stage1(data)}
        if args.train_steps:
            for label, estimate in (("with", True), ("without", False)):
                row[f"trained_{label}"] = train_and_eval(data, args.output / "runs", f"{offset}-{label}", args.train_steps, estimate)
        rows.append(row)
        print(json.dumps(row), flush=True)

    def err(key):
        return lambda r: f"{r[key][0]:.3f} / {r[key][1]:.2f}"

    columns = [
        ("injected offset (ms)", lambda r: str(r["offset_ms"])),
        ("estimate (ms)", lambda r: "-" if r["estimate_ms"] is None else f"{r['estimate_ms']:+.2f} +- {r['std_ms']:.2f}"),
        ("applied (ms)", lambda r: f"{r['applied_ms']:+.2f} ({r['status']})"),
        ("train depth-pose err. with / without (m / deg)", lambda r: err("train_with")(r) + "  |  " + err("train_without")(r)),
        ("val depth-pose err. with / without", lambda r: err("val_with")(r) + "  |  " + err("val_without")(r)),
        ("estimator (s)", lambda r: f"{r['estimator_s']:.1f}"),
    ]
    if args.train_steps:
        columns += [
            ("val PSNR with / without", lambda r: f"{r['trained_with']['psnr']:.2f} / {r['trained_without']['psnr']:.2f}"),
            ("depth RMSE (m) with / without", lambda r: f"{r['trained_with']['depth_rmse_m']:.2f} / {r['trained_without']['depth_rmse_m']:.2f}"),
        ]
    text = markdown_table(rows, columns)
    if args.long_frames:
        frames = args.long_frames
        spec = dataclasses.replace(SceneSpec(), num_rgb=int(frames / 2) + 2, depth_rate_hz=10.0, depth_offset_s=0.03,
                                   val_every=1000, depth_clock_offset_ms=37, write_preview=False)
        data = args.output / f"town_long_{frames}"
        if not (data / "coordinates.pt").is_file():
            generate_scene(data, spec)
        long_row = stage1(data)
        text += (f"\n\nEstimator on a {long_row['frames']}-frame lidar track (64x48, 10 Hz, injected 37 ms): "
                 f"{long_row['estimator_s']:.1f} s, estimate {long_row['estimate_ms']:+.2f} +- {long_row['std_ms']:.2f} ms")
        rows.append({"long_track": long_row})
    print(text)
    write_results(args.output, {"rows": rows}, text)


if __name__ == "__main__":
    main()
