"""What LiDAR depth brings when every point is posed at its own time, and what its clock offset estimate is worth.

    python examples/bench_lidar.py [--iterations 1000] [--seeds 0 1] [--rows 1 2 3 4 5] [--parts 1 2 3]
                                   [--scene example_data/town_lidar] [--output bench_out/lidar] [--quick]

Part 1, deskewing (no training): the example town with a spinning LiDAR (``make_scene --lidar``: 16 beams,
10 Hz, a point time per column) flown at 6 m/s (a survey drone) and at 25 m/s (the example's default).
The time-pose function is fitted to the train RGB frames (stage 1, as training does); every return of every
train scan is placed in the world (a) at the TPF pose of its own time (deskewed) and (b) at the TPF pose
of its scan's stamp (the scan treated as instantaneous), and its distance to the true geometry is measured
(the generator's exact signed distance to the town's boxes, metres): median, 95th percentile and the
fraction of points more than 0.25 m off. Scenes without moving cars, so that every return has a true surface.

Part 2, training (``async-nerf-small``, same iterations and RGB rays in every row, seeds 0 and 1, the
town at its default 25 m/s with a LiDAR track and the depth-image track):
1. no depth: RGB only (no depth-image rays, no LiDAR rays);
2. depth images: the depth-image track at TPF poses (128 rays per step), no LiDAR;
3. LiDAR, deskewed: 128 LiDAR rays per step, each at the TPF pose of its point's time, no depth images;
4. LiDAR at scan stamps: as 3 with ``lidar_deskew=False``;
5. LiDAR, deskewed, + free space: as 3 with the free-space term (``model.lidar_free_space_mult`` 0.1, the
   default; rows 3 and 4 turn it off).
Rows 2-5 keep the preset otherwise (depth-pose refinement off in every row, so rows differ by their depth only).
Columns: val PSNR (RGB), depth RMSE on val depth-image frames at their true poses (m), LiDAR range RMSE
on val scans (m; every row is rendered at the same TPF poses), mean of the seeds and each seed.

Part 3, clock offset (no training): the town (small images) with the LiDAR clock 40 ms behind the RGB clock,
and with no offset; the offset estimated from overlapping scans in stage 1 (``lidar_track_time_offsets``)
against the truth, in ms, and its seconds.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from examples import bench_common as bc  # noqa: E402
from examples.make_scene import M_TOWN_FROM_DRB, SceneSpec, build  # noqa: E402

ROWS = {
    "1": "no depth (RGB only)",
    "2": "depth images (TPF poses)",
    "3": "LiDAR, each point at its own time",
    "4": "LiDAR, every point at its scan's stamp",
    "5": "LiDAR, own time + free-space term",
}
LIDAR_SPEC = SceneSpec(lidar=True)
"""The training scene: the example town (96x72 RGB, 64x48 depth images) with the LiDAR, default speed."""
DESKEW_SPEC = SceneSpec(lidar=True, num_movers=0, write_preview=False)
CLOCK_SPEC = SceneSpec(num_rgb=96, width=48, height=36, depth_width=32, depth_height=24, lidar=True, num_movers=0,
                       write_preview=False)
QUICK_SPEC = SceneSpec(num_rgb=24, width=32, height=24, depth_width=24, depth_height=18, lidar=True,
                       lidar_columns=90, write_preview=False)
OFF_M = 0.25
"""Part 1: a point farther than this from the true surface counts as misplaced."""


# ------------------------------------------------------------------------------------------- part 1
def _world_to_town(points_world: np.ndarray, origin_drb: np.ndarray, scale: float) -> np.ndarray:
    """nerfstudio world (scene units) -> the generator's town frame (metres)."""
    from async_nerf_ns.layout.frames import DRB_TO_WORLD

    drb = origin_drb + scale * (points_world @ DRB_TO_WORLD)  # M^T w, row-wise
    return drb @ M_TOWN_FROM_DRB.T


def deskew_errors(scene_dir: Path, spec: SceneSpec) -> Dict[str, Any]:
    """Part 1 for one generated scene: distances of placed returns to the true surface, deskewed or not."""

    from async_nerf_ns.data.dataparser import METADATA_KEY, AsyncNerfDataParserConfig
    from async_nerf_ns.lidar.poses import cpu_pose_function
    from async_nerf_ns.lidar.rays import scan_rays
    from async_nerf_ns.lidar.scans import LidarScanSet
    from async_nerf_ns.trajectory.fit import fit_tpf
    from async_nerf_ns.trajectory.tpf import TimePoseFunctionConfig

    outputs = AsyncNerfDataParserConfig(data=scene_dir).setup().get_dataparser_outputs("train")
    meta = outputs.metadata[METADATA_KEY]
    started = time.perf_counter()
    tpf = fit_tpf(meta.rgb_timestamps.numpy(), outputs.cameras.camera_to_worlds, TimePoseFunctionConfig(), progress=False)
    fit_s = time.perf_counter() - started
    scans = LidarScanSet.from_tracks(meta.lidar_tracks, meta.pose_scale_factor)
    town, _, _ = build(spec)
    origin, scale = meta.origin_drb.numpy(), float(meta.pose_scale_factor)

    poses_at = cpu_pose_function(tpf)
    distances = {True: [], False: []}
    travel = []
    for index in range(len(scans)):
        points = scans.points(index)
        time_0 = float(scans.stamps[index])
        for deskew in (True, False):
            rays = scan_rays(points, time_0, scans.scans[index].lidar_to_camera, poses_at, scale, deskew)
            distances[deskew].append(np.abs(town.signed_distance(_world_to_town(rays.points, origin, scale))))
        ends = poses_at(np.array([time_0 + points[:, 3].min(), time_0 + points[:, 3].max()])).numpy()[:, :, 3]
        travel.append(float(np.linalg.norm(ends[1] - ends[0])) * scale)
    result: Dict[str, Any] = {"speed_mps": spec.mean_speed_mps, "scans": len(scans), "tpf_fit_s": fit_s,
                              "sweep_travel_m_median": float(np.median(travel))}
    for deskew, name in ((True, "deskewed"), (False, "at_stamp")):
        d = np.concatenate(distances[deskew])
        result[name] = {"points": int(len(d)), "median_m": float(np.median(d)), "p95_m": float(np.percentile(d, 95)),
                        "fraction_off": float(np.mean(d > OFF_M))}
    return result


# ------------------------------------------------------------------------------------------- part 2
def run_row(row: str, seed: int, scene: str, iterations: int, output: str, threads: Optional[int] = None) -> Dict[str, Any]:
    """One configuration of part 2, trained and evaluated in the calling process."""
    from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig

    bc.set_threads(threads)
    config = bc.small_preset(iterations)
    config.machine.seed = seed
    pipeline = config.pipeline
    data = pipeline.datamanager
    data.sampling_seed = seed
    pipeline.model.depth_pose_optimizer = CameraOptimizerConfig(mode="off")
    lidar_rays, depth_rays = data.train_num_lidar_rays_per_batch, data.train_num_depth_rays_per_batch
    data.train_num_depth_rays_per_batch = depth_rays if row == "2" else 0
    data.train_num_lidar_rays_per_batch = lidar_rays if row in ("3", "4", "5") else 0
    data.lidar_deskew = row != "4"
    pipeline.model.lidar_free_space_mult = 0.1 if row == "5" else 0.0
    return bc.train_in_process(config, Path(scene), iterations, Path(output), name=f"lidar-{row}-seed{seed}")  # type: ignore[return-value]


def _mean(rows: List[Dict[str, Any]], key: str) -> Optional[float]:
    values = [r["metrics"].get(key) for r in rows if "metrics" in r and r["metrics"].get(key) is not None]
    return float(np.mean(values)) if values else None


def training_table(rows: Dict[str, List[Dict[str, Any]]]) -> str:
    lines = ["| configuration | val PSNR | depth RMSE (m) | LiDAR range RMSE (m) | s/iter | per seed: PSNR / LiDAR RMSE |",
             "|---|---|---|---|---|---|"]
    for label, runs in rows.items():
        per_seed = "; ".join(f"{bc.fmt(r['metrics'].get('psnr'), '.2f')} / {bc.fmt(r['metrics'].get('lidar_range_rmse_m'), '.2f')}"
                             for r in runs if "metrics" in r)
        s_iter = [r["s_per_iter"] for r in runs if "s_per_iter" in r]
        lines.append(f"| {label} | {bc.fmt(_mean(runs, 'psnr'), '.2f')} | {bc.fmt(_mean(runs, 'depth_rmse_m'), '.2f')} | "
                     f"{bc.fmt(_mean(runs, 'lidar_range_rmse_m'), '.2f')} | {bc.fmt(np.mean(s_iter) if s_iter else None, '.3f')} | {per_seed} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- part 3
def clock_offset_errors(scene_dir: Path, true_offset_ms: int) -> Dict[str, Any]:
    """Part 3 for one scene: the LiDAR track's clock offset estimated in stage 1 against the truth."""
    from async_nerf_ns.data.dataparser import METADATA_KEY, AsyncNerfDataParserConfig
    from async_nerf_ns.trajectory.fit import fit_tpf
    from async_nerf_ns.trajectory.lidar_offset import lidar_track_time_offsets
    from async_nerf_ns.trajectory.time_offset import TimeOffsetConfig
    from async_nerf_ns.trajectory.tpf import TimePoseFunctionConfig

    outputs = AsyncNerfDataParserConfig(data=scene_dir).setup().get_dataparser_outputs("train")
    meta = outputs.metadata[METADATA_KEY]
    tpf = fit_tpf(meta.rgb_timestamps.numpy(), outputs.cameras.camera_to_worlds, TimePoseFunctionConfig(), progress=False)
    estimates = lidar_track_time_offsets(meta.lidar_tracks, meta.pose_scale_factor, tpf.poses, TimeOffsetConfig(), {})
    estimate = next(iter(estimates.values()))
    found = estimate.estimate_s
    return {"true_ms": true_offset_ms, "status": estimate.status, "estimate_ms": None if found is None else found * 1000,
            "std_ms": None if estimate.std_s is None else estimate.std_s * 1000, "applied_ms": estimate.applied_s * 1000,
            "error_ms": None if found is None else abs(found * 1000 - true_offset_ms), "seconds": estimate.seconds,
            "pairs": estimate.pairs}


def main() -> None:
    parser = bc.base_parser(__doc__.split("\n")[0], "lidar", default_iterations=1000)
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=sorted(ROWS), help="part-2 rows to run")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="part-2 seeds (training and sampling)")
    parser.add_argument("--parts", nargs="+", choices=["1", "2", "3"], default=["1", "2", "3"])
    args = parser.parse_args()
    if args.iterations is None:
        args.iterations = bc.QUICK_ITERATIONS if args.quick else args._default_iterations
    root = args.output.resolve()
    args.output = root
    scenes = root / "scenes"
    payload: Dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "machine": bc.machine_info()}
    text: List[str] = []
    bc.set_threads(args.threads)

    if "1" in args.parts:
        speeds = [25.0] if args.quick else [6.0, 25.0]
        deskew = []
        for speed in speeds:
            spec = replace(QUICK_SPEC if args.quick else DESKEW_SPEC, mean_speed_mps=speed, num_movers=0)
            scene = bc.ensure_scene(scenes / f"deskew_{speed:g}mps{'_quick' if args.quick else ''}", spec)
            print(f"[{time.strftime('%H:%M:%S')}] part 1 at {speed:g} m/s ...", flush=True)
            deskew.append(deskew_errors(scene, spec))
        payload["deskew"] = deskew
        text += ["Part 1: LiDAR returns placed with the TPF, distance to the true surface (m)", "",
                 "| speed | sensor travel per sweep | deskewed: median / p95 / > 0.25 m | at scan stamp: median / p95 / > 0.25 m |",
                 "|---|---|---|---|"]
        for r in deskew:
            a, b = r["deskewed"], r["at_stamp"]
            text.append(f"| {r['speed_mps']:g} m/s | {r['sweep_travel_m_median']:.2f} m | {a['median_m']:.3f} / {a['p95_m']:.3f} / "
                        f"{a['fraction_off']:.1%} | {b['median_m']:.3f} / {b['p95_m']:.3f} / {b['fraction_off']:.1%} |")
        text.append("")

    if "2" in args.parts:
        scene = bc.ensure_scene(args.scene or (scenes / ("town_quick" if args.quick else "town")), QUICK_SPEC if args.quick else LIDAR_SPEC)
        kwargs = {
            f"{ROWS[row]} (seed {seed})": {"row": row, "seed": seed, "scene": str(scene), "iterations": args.iterations,
                                            "output": str(root), "threads": args.threads}
            for row in args.rows for seed in args.seeds
        }
        results = bc.run_rows("examples.bench_lidar:run_row", kwargs, root)
        grouped: Dict[str, List[Dict[str, Any]]] = {}
        for (label, _), result in zip(kwargs.items(), results):
            grouped.setdefault(label.rsplit(" (seed", 1)[0], []).append(result)
        payload["training"] = results
        text += [f"Part 2: async-nerf-small, {args.iterations} iterations, seeds {args.seeds}, scene {scene}", "",
                 training_table(grouped), ""]

    if "3" in args.parts:
        clock = []
        for offset_ms in (40, 0):
            spec = replace(QUICK_SPEC if args.quick else CLOCK_SPEC, lidar_clock_offset_ms=offset_ms)
            scene = bc.ensure_scene(scenes / f"clock_{offset_ms}ms{'_quick' if args.quick else ''}", spec)
            print(f"[{time.strftime('%H:%M:%S')}] part 3, LiDAR clock {offset_ms} ms behind ...", flush=True)
            clock.append(clock_offset_errors(scene, offset_ms))
        payload["clock_offset"] = clock
        text += ["Part 3: the LiDAR track's clock offset estimated in stage 1", "",
                 "| true offset | estimate | error | status | pairs of scans | seconds |", "|---|---|---|---|---|---|"]
        for r in clock:
            text.append(f"| {r['true_ms']} ms | {bc.fmt(r['estimate_ms'], '.1f')} +- {bc.fmt(r['std_ms'], '.1f')} ms | "
                        f"{bc.fmt(r['error_ms'], '.1f')} ms | {r['status']} | {r['pairs']} | {r['seconds']:.1f} |")
    if args.quick:
        text.append("\n--quick: a smoke run on tiny scenes; the numbers mean nothing.")
    report = "\n".join(text)
    print()
    print(report)
    bc.write_results(root, payload, report)


if __name__ == "__main__":
    main()
