"""Merged rendering on CUDA: the proposal sampler vs the occupancy grid, on the same checkpoint.

    python examples/bench_occupancy.py --load-config outputs/.../config.yml [--images N]
                                       [--set grid_levels=5 ...] [--output occupancy.json]

Needs a CUDA GPU and nerfacc's CUDA extension (nerfacc builds it on first use with nvcc; minutes,
once per machine). Without them it says so and exits with status 2, having measured nothing.
``examples/gpu_check.sh`` runs it on each run it trains.

What it does: loads the run as ns-eval does (``eval_setup``), then for each path (eval_sampler
proposal, then occupancy) renders every val image (or the first N) with
``model.get_outputs_for_camera`` and scores it with the model's own ``get_image_metrics_and_images``
(what ns-eval averages). For the occupancy path the grid is filled first, timed on its own.

Columns:
- **rays/s**: val pixels / render wall time, GPU synchronised after each image; one untimed warm-up
  image before each path's timed pass. The grid fill is not in it (it happens once per model).
- **val PSNR / SSIM**: means over the rendered val images; **dPSNR**: occupancy minus proposal.
- **evals/ray**: network evaluations per ray. Proposal: nerfacto's fixed proposal samples + field
  samples. Occupancy: density evaluations of the sampler's check (skipping, early stop) + field
  evaluations of the samples that survive it + 1 (the "last_sample" background colour, when used).
- **peak MB**: ``torch.cuda.max_memory_allocated`` during the timed pass.
The goal line compares against the issue's target (>= 3x rays/s at <= 0.1 dB PSNR loss).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

GOAL_SPEEDUP = 3.0
GOAL_PSNR_LOSS_DB = 0.1


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load-config", type=Path, required=True, help="a run's config.yml (as for ns-eval)")
    parser.add_argument("--images", type=int, default=None, help="render only the first N val images")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override an option of the model's occupancy config, e.g. grid_levels=5 (repeatable)",
    )
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON here")
    return parser.parse_args()


def _needs_cuda(reason: str) -> None:
    print(f"bench_occupancy needs CUDA: {reason}. Nothing was measured.", file=sys.stderr)
    sys.exit(2)


def _overrides(occupancy_config, assignments: List[str]) -> Dict[str, Any]:
    """``NAME=VALUE`` strings as typed values of existing fields of the occupancy config."""
    fields = {f.name for f in dataclasses.fields(occupancy_config)}
    values: Dict[str, Any] = {}
    for assignment in assignments:
        name, _, text = assignment.partition("=")
        if name not in fields:
            raise SystemExit(f"--set {assignment}: not a field of the occupancy config ({sorted(fields)})")
        current = getattr(occupancy_config, name)
        if text == "None":
            values[name] = None
        elif isinstance(current, bool):
            values[name] = text.lower() in ("1", "true", "yes")
        elif isinstance(current, int):
            values[name] = int(text)
        else:
            values[name] = float(text)
    return values


def _render_pass(pipeline, images: int, sampler: str) -> Dict[str, Any]:
    import torch

    model = pipeline.model
    model.config.eval_sampler = sampler
    loader = pipeline.datamanager.fixed_indices_eval_dataloader
    chosen = [item for index, item in enumerate(loader) if images is None or index < images]
    if not chosen:
        raise SystemExit("the run has no val images")
    camera, _ = chosen[0]
    model.get_outputs_for_camera(camera=camera)  # warm-up (kernels, allocator), not timed
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    seconds, rays, metrics = 0.0, 0, []
    for camera, batch in chosen:
        torch.cuda.synchronize()
        started = time.perf_counter()
        outputs = model.get_outputs_for_camera(camera=camera)
        torch.cuda.synchronize()
        seconds += time.perf_counter() - started
        rays += int(camera.height) * int(camera.width)
        image_metrics, _ = model.get_image_metrics_and_images(outputs, batch)
        metrics.append(image_metrics)
    return {
        "sampler": sampler,
        "images": len(chosen),
        "rays": rays,
        "seconds": seconds,
        "rays_per_s": rays / seconds,
        "psnr": sum(m["psnr"] for m in metrics) / len(metrics),
        "ssim": sum(m["ssim"] for m in metrics) / len(metrics),
        "peak_mb": torch.cuda.max_memory_allocated() / 2**20,
    }


def main() -> None:
    args = _parse_args()
    import torch

    if not torch.cuda.is_available():
        _needs_cuda("torch sees no CUDA device (occupancy rendering uses nerfacc's CUDA ray marching)")
    from async_nerf_ns.model import occupancy

    if not occupancy.nerfacc_kernels_available():
        _needs_cuda("nerfacc's CUDA extension did not load (it is built on first use, which needs nvcc)")
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, checkpoint, step = eval_setup(args.load_config, test_mode="test")
    model = pipeline.model
    model.eval()
    for name, value in _overrides(model.config.occupancy, args.set).items():
        setattr(model.config.occupancy, name, value)
    config = model.config
    print(f"device: {torch.cuda.get_device_name(0)}; checkpoint {checkpoint} (step {step}); {model.num_cells} cells")

    with torch.no_grad():
        proposal = _render_pass(pipeline, args.images, "proposal")
        proposal["evals_per_ray"] = float(sum(config.num_proposal_samples_per_ray) + config.num_nerf_samples_per_ray)

        torch.cuda.synchronize()
        started = time.perf_counter()
        renderer = model.occupancy_renderer
        grid = renderer.fill()
        torch.cuda.synchronize()
        fill_s = time.perf_counter() - started
        renderer.num_rays = renderer.num_samples = renderer.sampler.num_density_evaluations = 0
        grid_rows = _render_pass(pipeline, args.images, "occupancy")
    if renderer.num_rays == 0:
        raise SystemExit("the occupancy pass rendered nothing through the grid (eval_sampler not honoured?)")
    counts = renderer.samples_per_ray()
    background = 1.0 if model.renderer_rgb.background_color == "last_sample" else 0.0
    grid_rows["evals_per_ray"] = (
        counts["density_evaluations_per_ray"] + counts["field_evaluations_per_ray"] + background
    )
    grid_rows["field_evals_per_ray"] = counts["field_evaluations_per_ray"]
    grid_rows["fill_s"] = fill_s
    grid_rows["occupied_fraction"] = float(grid.binaries.float().mean())

    speedup = grid_rows["rays_per_s"] / proposal["rays_per_s"]
    loss_db = proposal["psnr"] - grid_rows["psnr"]
    met = speedup >= GOAL_SPEEDUP and loss_db <= GOAL_PSNR_LOSS_DB
    grid_settings = dataclasses.asdict(config.occupancy)
    print(f"\n{proposal['images']} val images, {proposal['rays']} rays; occupancy grid: {grid_settings}")
    print(f"grid filled in {fill_s:.2f} s, {100 * grid_rows['occupied_fraction']:.2f}% of voxels occupied\n")
    print("| path | rays/s | speed-up | val PSNR (dB) | dPSNR (dB) | SSIM | evals/ray | peak MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in (proposal, grid_rows):
        print(
            f"| {row['sampler']} | {row['rays_per_s']:,.0f} | {row['rays_per_s'] / proposal['rays_per_s']:.2f}x "
            f"| {row['psnr']:.3f} | {row['psnr'] - proposal['psnr']:+.3f} | {row['ssim']:.4f} "
            f"| {row['evals_per_ray']:.1f} | {row['peak_mb']:,.0f} |"
        )
    print(
        f"\ngoal (>= {GOAL_SPEEDUP:g}x rays/s at <= {GOAL_PSNR_LOSS_DB:g} dB PSNR loss): "
        f"{'met' if met else 'NOT met'} ({speedup:.2f}x, {loss_db:+.3f} dB loss)"
    )
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "device": torch.cuda.get_device_name(0),
            "checkpoint": str(checkpoint),
            "step": step,
            "proposal": proposal,
            "occupancy": grid_rows,
            "speedup": speedup,
            "psnr_loss_db": loss_db,
            "goal_met": met,
            "settings": grid_settings,
        }
        args.output.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
