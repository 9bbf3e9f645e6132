"""What asynchronous depth brings, and what each way of posing the depth frames is worth.

    python examples/bench_async_depth.py [--iterations 2000] [--rows 1 2 3 4 5 6 7] [--quick]
                                         [--scene example_data/town] [--output bench_out/async_depth]

Part 1: seven trainings of ``async-nerf-small`` on the example scene, same iterations, each in a
fresh process, evaluated on all val RGB frames and all val depth frames (rendered at their true
poses, so every row is judged against the same geometry):

1. RGB only: ``train_num_depth_rays_per_batch=0``. The RGB rays per step stay at the preset's 384;
   the 128 depth rays are dropped, not given to RGB, so this row sees fewer rays per step.
2. depth at prior poses: ``depth_poses="prior"`` (the metadata c2w: in the example scene, the pose
   of the nearest RGB frame in time, the naive pipeline), depth-pose refinement off
   (``model.depth_pose_optimizer.mode="off"``).
3. depth at TPF poses: ``depth_poses="tpf"`` (stage 1, the time-pose function), refinement off.
4. TPF + joint refinement: the preset as shipped (refinement from the middle of the run).
5. depth at ground-truth poses (an upper bound), refinement off.
6. TPF + joint refinement + TPF fine-tuning (``finetune_tpf=True``): stage 3 also trains the
   time-pose function through the depth loss.
7. prior + joint refinement: what stage 3 alone makes of the naive poses (no TPF).

Columns: val PSNR/SSIM (RGB), depth RMSE (m), AbsRel and delta<1.25 on val depth frames, and the
pose error (mean translation in m / rotation in deg, against pose_gt) of the train depth frames at
the poses the row actually trained with: prior, TPF, TPF after refinement, or 0 for GT. They are
the pipeline's evaluation keys ``depth_pose_train_<source>_{translation_m,rotation_deg}_mean``.
The val depth frames are never trained on; their pose column shows where the row's pose source puts
them (per-frame corrections cannot move them; a fine-tuned TPF can).
Iteration-dependent settings follow --iterations as the preset derives them (bench_common.small_preset).

Part 2 (no training): pose errors of the depth frames (train and val, against pose_gt) for the
time-pose function, linear + SLERP, cubic spline and the metadata prior, each fitted to the
scene's train RGB frames, once with their clean poses and once with SfM-like noise added
(3 cm per axis, 0.3 deg per axis, seeded). This is what ``async-nerf-tpf`` computes, with
its functions (async_nerf_ns/scripts/tpf.py); the prior does not depend on the fit, so it is
listed for the clean case only.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from examples import bench_common as bc  # noqa: E402

NOISE_M, NOISE_DEG = 0.03, 0.3

ROWS = {
    "1": ("RGB only (384 RGB rays, no depth)", None),
    "2": ("depth @ prior poses, no refinement", "prior"),
    "3": ("depth @ TPF poses, no refinement", "tpf"),
    "4": ("depth @ TPF + joint refinement (preset)", "tpf+refine"),
    "5": ("depth @ GT poses, no refinement", "gt"),
    "6": ("depth @ TPF + joint refinement + TPF fine-tuning", "tpf+refine"),
    "7": ("depth @ prior poses + joint refinement", "prior+refine"),
}
"""Row id -> (label, pose source whose train-frame errors are reported)."""


def run_row(row: str, scene: str, iterations: int, output: str, threads: Optional[int] = None) -> Dict[str, Any]:
    """One configuration of part 1, trained and evaluated in the calling process."""
    from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig

    bc.set_threads(threads)
    config = bc.small_preset(iterations)
    pipeline = config.pipeline
    if row not in ("4", "6", "7"):
        pipeline.model.depth_pose_optimizer = CameraOptimizerConfig(mode="off")
    pipeline.model.refine_accurate_depth_poses = row in ("4", "6")  # rows that refine TPF poses on purpose
    pipeline.finetune_tpf = row == "6"
    if row == "1":
        pipeline.datamanager.train_num_depth_rays_per_batch = 0
        pipeline.datamanager.depth_poses = "prior"  # no depth is trained: skip the TPF fit
    else:
        pipeline.datamanager.depth_poses = {"2": "prior", "3": "tpf", "4": "tpf", "5": "gt", "6": "tpf", "7": "prior"}[row]
    names = {"1": "rgb-only", "2": "prior", "3": "tpf", "4": "tpf-refine", "5": "gt", "6": "tpf-refine-finetune", "7": "prior-refine"}
    name = f"depth-{row}-{names[row]}"
    return bc.train_in_process(config, Path(scene), iterations, Path(output), name=name)  # type: ignore[return-value]


def pose_cell(row: Dict[str, Any], quantity: str, split: str = "train") -> str:
    source = row.get("source")
    if source is None:
        return "n/a (no depth)"
    if source == "gt":
        return "0"
    metrics = row["metrics"]
    key = f"depth_pose_{split}_{source}_{quantity}_mean"
    if key not in metrics:  # val frames without a fine-tuned TPF: at their stage-1 poses
        key = f"depth_pose_{split}_{source.split('+')[0]}_{quantity}_mean"
    return bc.fmt(metrics.get(key), ".3f" if quantity == "translation_m" else ".2f")


COLUMNS = [
    ("configuration", lambda r: r["label"]),
    ("val PSNR", lambda r: bc.fmt(r["psnr"], ".2f")),
    ("SSIM", lambda r: bc.fmt(r["ssim"], ".3f")),
    ("depth RMSE (m)", lambda r: bc.fmt(r["depth_rmse_m"], ".2f")),
    ("AbsRel", lambda r: bc.fmt(r["metrics"].get("depth_abs_rel"), ".3f")),
    ("δ<1.25", lambda r: bc.fmt(r["metrics"].get("depth_delta_1_25"), ".3f")),
    ("train depth-pose err. (m)", lambda r: pose_cell(r, "translation_m")),
    ("train (deg)", lambda r: pose_cell(r, "rotation_deg")),
    ("val depth-pose err. (m)", lambda r: pose_cell(r, "translation_m", "val")),
    ("val (deg)", lambda r: pose_cell(r, "rotation_deg", "val")),
    ("s/iter", lambda r: bc.fmt(r["s_per_iter"])),
]


# --------------------------------------------------------------------------------------- part 2
def tpf_pose_table(scene: Path, seed: int = 1) -> List[Dict[str, Any]]:
    """Depth-frame pose errors of TPF, the baselines and the prior, clean and with noisy RGB poses."""
    import numpy as np
    import torch

    from async_nerf_ns.layout import read_layout
    from async_nerf_ns.scripts.tpf import METHODS, layout_problem, method_errors
    from examples import trajectories as synthetic
    from async_nerf_ns.trajectory.baselines import CubicSplineInterp, LinearSlerp
    from async_nerf_ns.trajectory.fit import fit_tpf
    from async_nerf_ns.trajectory.tpf import TimePoseFunctionConfig

    problem = layout_problem(read_layout(scene))
    psf = problem.metres_per_unit
    depth_sets = [s for s in problem.sets if s.write_dir is not None]  # train/<track>, val/<track>
    rows = []
    for case in ("clean", "noisy"):
        poses = problem.train_c2w
        if case == "noisy":
            poses = synthetic.add_pose_noise(poses, NOISE_M / psf, np.radians(NOISE_DEG), seed=seed)
        started = time.perf_counter()
        fitted = fit_tpf(problem.train_timestamps, poses, TimePoseFunctionConfig(), progress=False)
        fit_s = time.perf_counter() - started
        baselines = {
            "linear_slerp": LinearSlerp().fit(problem.train_timestamps, poses),
            "cubic_spline": CubicSplineInterp().fit(problem.train_timestamps, poses),
        }
        for pose_set in depth_sets:
            with torch.no_grad():
                predicted = fitted.poses(pose_set.timestamps).double().numpy()
            errors = method_errors(pose_set, predicted, baselines, psf)
            for method in METHODS:
                if method not in errors or (method == "prior" and case == "noisy"):
                    continue
                rows.append({"case": case, "set": pose_set.name, "method": method, "fit_s": fit_s if method == "tpf" else None,
                             **errors[method]})
    return rows


def tpf_markdown(rows: List[Dict[str, Any]]) -> str:
    lines = [
        "| case | depth frames | method | frames | transl. mean (m) | median | max | rot. mean (deg) | median | max |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        t, q = r["translation_m"], r["rotation_deg"]
        lines.append(
            f"| {r['case']} | {r['set']} | {r['method']} | {r['count']} | {t['mean']:.3f} | {t['median']:.3f} | "
            f"{t['max']:.3f} | {q['mean']:.2f} | {q['median']:.2f} | {q['max']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = bc.base_parser(__doc__.split("\n")[0], "async_depth")
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=sorted(ROWS), help="part-1 rows to run")
    parser.add_argument("--skip-training", action="store_true", help="only part 2 (the pose error table)")
    args = bc.resolve_common(parser.parse_args())

    rows: List[Dict[str, Any]] = []
    if not args.skip_training:
        kwargs = {
            ROWS[k][0]: {"row": k, "scene": str(args.scene), "iterations": args.iterations,
                         "output": str(args.output), "threads": args.threads}
            for k in args.rows
        }
        rows = bc.run_rows("examples.bench_async_depth:run_row", kwargs, args.output)
        for key, row in zip(args.rows, rows):
            row["source"] = ROWS[key][1]

    print(f"\n[{time.strftime('%H:%M:%S')}] part 2: fitting the time-pose function and the baselines ...", flush=True)
    bc.set_threads(args.threads)
    pose_rows = tpf_pose_table(args.scene)

    preset = bc.small_preset(args.iterations).pipeline.datamanager
    fits = {r["case"]: r["fit_s"] for r in pose_rows if r["method"] == "tpf"}
    fit_times = ", ".join(f"{case} {seconds:.1f} s" for case, seconds in fits.items())
    lines = [
        f"scene {args.scene}, async-nerf-small, {args.iterations} iterations per row; "
        f"{preset.train_num_rays_per_batch} RGB rays per step in every row, plus "
        f"{preset.train_num_depth_rays_per_batch} depth rays except in the RGB-only row. "
        "Depth metrics: val depth frames at their true poses.",
        "",
        bc.markdown_table(rows, COLUMNS) if rows else "(no training: --skip-training)",
        "",
        f"Depth-frame pose errors vs pose_gt, fitted to the train RGB frames (noisy: + {NOISE_M * 100:.0f} cm / "
        f"{NOISE_DEG} deg per axis on the RGB poses; prior = nearest RGB frame's pose from the metadata, clean only). "
        f"TPF fit: {fit_times}.",
        "",
        tpf_markdown(pose_rows),
    ]
    if args.quick:
        lines.append("\n--quick: a smoke run on a tiny scene; the numbers mean nothing.")
    text = "\n".join(lines)
    print()
    print(text)
    bc.write_results(args.output, {"args": {k: str(v) for k, v in vars(args).items()}, "machine": bc.machine_info(),
                                   "rows": rows, "pose_errors": pose_rows}, text)


if __name__ == "__main__":
    main()
