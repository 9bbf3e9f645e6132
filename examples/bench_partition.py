"""Cost and quality of the Mega-NeRF partition: 1x1, 2x2, 3x3 and 4x4 grids of async-nerf-small.

    python examples/bench_partition.py [--iterations 2000] [--grids 1x1 2x2 3x3 4x4] [--quick]
                                       [--scene example_data/town] [--output bench_out/partition]

Every grid is the ``async-nerf-small`` preset (384 RGB + 128 depth rays per step, TPF depth
poses) with only ``pipeline.datamanager.partition.grid_dim`` changed, trained for the same total number of
iterations in a fresh process each. Each step trains one cell (round-robin), so a KxK grid gives
every cell iterations/K^2 steps; the rays per step do not change with the grid.

What is measured and how to read it:

(i)   **train rays/s** (rays per step / s/iter, set-up excluded) and **peak RSS** per grid: a
      step renders its rays with one cell only, so per-ray cost should stay flat as the grid
      grows; memory grows with the number of cells (every cell's parameters and Adam state
      stay in memory), plus the cluster masks (one bit per pixel and cell). **set-up s**
      includes the TPF fit and the cluster masks of the RGB and depth frames ("masks+pixels s").
(ii)  **render rays/s** of the merged field: after training, ``model.get_outputs_for_camera``
      over every val RGB camera (full images, eval mode, no grad), timed in the same process.
      Every sample is routed to its nearest centroid's cell and each cell evaluates only its own
      samples, so the merged field should cost about the same per ray as a single field; the
      routing (grouping samples by cell and scattering back) is the overhead. The line under the
      table compares 2x2 with 1x1.
(iii) **val PSNR** (and SSIM, depth RMSE on the val depth frames) of each grid at equal total
      iterations: same runs as (i). With few iterations per cell, more cells can be worse; the
      benefit of cells is capacity at a fixed per-cell size on large scenes.
(iv)  **mask computation time per megapixel**: ``async_nerf_ns.partition.masks.compute_cluster_masks``
      on the scene's train RGB cameras with the preset's membership rule (``exact`` by default;
      ``sampled`` at its ``samples_per_ray``), per grid, best of
      ``--mask-repeats`` (this process, no training running), with the mean number of cells per
      pixel. examples/bench_partition_masks.py measures the same on synthetic larger images.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from examples import bench_common as bc  # noqa: E402

if TYPE_CHECKING:
    from async_nerf_ns.partition.config import PartitionConfig


def parse_grid(text: str) -> Tuple[int, int]:
    rows, cols = text.lower().split("x")
    return int(rows), int(cols)


def run_row(grid: List[int], scene: str, iterations: int, output: str, threads: Optional[int] = None) -> Dict[str, Any]:
    """One grid, trained and evaluated in the calling process; render speed in ``extras``."""
    bc.set_threads(threads)
    config = bc.small_preset(iterations)
    partition = config.pipeline.datamanager.partition
    config.pipeline.datamanager.partition = dataclasses.replace(partition, grid_dim=(int(grid[0]), int(grid[1])))

    def render_speed(trainer) -> Dict[str, Any]:
        pipeline = trainer.pipeline
        timing = bc.time_rendering(pipeline.model, pipeline.datamanager.eval_dataset.cameras)
        timing["cells"] = pipeline.geometry.num_cells
        timing["cells_with_pixels"] = len(pipeline.datamanager.train_pixel_sampler.cells)
        return timing

    name = f"grid-{grid[0]}x{grid[1]}"
    return bc.train_in_process(config, Path(scene), iterations, Path(output), name=name, after_train=render_speed)  # type: ignore[return-value]


def mask_timing(scene: Path, grids: List[Tuple[int, int]], preset: PartitionConfig, repeats: int) -> List[Dict[str, Any]]:
    """(iv): compute_cluster_masks on the train RGB cameras, best of ``repeats``, per grid."""
    from async_nerf_ns.data.dataparser import METADATA_KEY, AsyncNerfDataParserConfig
    from async_nerf_ns.partition.geometry import resolve_geometry
    from async_nerf_ns.partition.masks import compute_cluster_masks

    outputs = AsyncNerfDataParserConfig(data=scene).setup().get_dataparser_outputs(split="train")
    cameras = outputs.cameras
    meta = outputs.metadata[METADATA_KEY]
    megapixels = float((cameras.width * cameras.height).sum()) / 1e6
    results = []
    for grid in grids:
        if grid == (1, 1):
            continue  # one cell: no masks (every pixel trains the only cell)
        config = dataclasses.replace(preset, grid_dim=grid)
        geometry = resolve_geometry(
            config, cameras.camera_to_worlds[:, :, 3], meta.origin_drb, meta.pose_scale_factor, meta.drb_to_world
        )
        seconds = math.inf
        masks = []
        for _ in range(repeats):
            started = time.perf_counter()
            masks = compute_cluster_masks(cameras, geometry, config, show_progress=False)
            seconds = min(seconds, time.perf_counter() - started)
        import torch

        per_pixel = torch.cat([m.reshape(-1, m.shape[-1]) for m in masks]).sum(dim=-1).float().mean()
        results.append({
            "grid": f"{grid[0]}x{grid[1]}", "images": len(cameras), "megapixels": megapixels, "seconds": seconds,
            "s_per_mp": seconds / megapixels, "cells_per_pixel": float(per_pixel),
        })
    return results


COLUMNS = [
    ("grid", lambda r: r["label"]),
    ("cells (with pixels)", lambda r: f"{r['extras']['cells']} ({r['extras']['cells_with_pixels']})"),
    ("steps per cell", lambda r: bc.fmt(r["iterations"] / max(1, r["extras"]["cells_with_pixels"]))),
    ("rays/step", lambda r: str(r["rays_per_step"])),
    ("s/iter", lambda r: bc.fmt(r["s_per_iter"])),
    ("train rays/s", lambda r: bc.fmt(r["rays_per_s"], ".0f")),
    ("render rays/s", lambda r: bc.fmt(r["extras"]["render_rays_per_s"], ".0f")),
    ("set-up s (masks+pixels s)", lambda r: f"{r['setup_s']:.1f} ({r['prepare_s']:.1f})"),
    ("val PSNR", lambda r: bc.fmt(r["psnr"], ".2f")),
    ("SSIM", lambda r: bc.fmt(r["ssim"], ".3f")),
    ("depth RMSE (m)", lambda r: bc.fmt(r["depth_rmse_m"])),
    ("peak RSS train / all (MB)", lambda r: f"{r['peak_rss_train_mb']:.0f} / {r['peak_rss_mb']:.0f}"),
]


def main() -> None:
    parser = bc.base_parser(__doc__.split("\n")[0], "partition")
    parser.add_argument("--grids", nargs="+", default=["1x1", "2x2", "3x3", "4x4"], help="grids to train, e.g. 2x2")
    parser.add_argument("--mask-repeats", type=int, default=3, help="(iv): timings per grid, the fastest is kept")
    parser.add_argument("--skip-training", action="store_true", help="only (iv), the mask timing")
    args = bc.resolve_common(parser.parse_args())
    grids = [parse_grid(g) for g in args.grids]
    preset_partition = bc.small_preset(args.iterations).pipeline.datamanager.partition

    rows: List[Dict[str, Any]] = []
    if not args.skip_training:
        kwargs = {
            f"{g[0]}x{g[1]}": {"grid": list(g), "scene": str(args.scene), "iterations": args.iterations,
                               "output": str(args.output), "threads": args.threads}
            for g in grids
        }
        rows = bc.run_rows("examples.bench_partition:run_row", kwargs, args.output)

    print(f"\n[{time.strftime('%H:%M:%S')}] (iv) timing cluster masks ...", flush=True)
    bc.set_threads(args.threads)
    masks = mask_timing(args.scene, grids, preset_partition, args.mask_repeats)

    lines = [
        f"scene {args.scene}, async-nerf-small, {args.iterations} iterations per grid (one cell per step, "
        "round-robin), set-up excluded from s/iter",
        "",
        bc.markdown_table(rows, COLUMNS) if rows else "(no training: --skip-training)",
        "",
    ]
    by_grid = {r["label"]: r for r in rows if "error" not in r}
    if "1x1" in by_grid and "2x2" in by_grid:
        one, four = by_grid["1x1"]["extras"], by_grid["2x2"]["extras"]
        lines.append(
            f"(ii) merged render, val cameras: 2x2 {four['render_rays_per_s']:.0f} rays/s vs single field (1x1) "
            f"{one['render_rays_per_s']:.0f} rays/s ({four['render_rays_per_s'] / one['render_rays_per_s']:.2f}x)"
        )
    else:
        lines.append("(ii) merged render 2x2 vs 1x1: needs both grids in --grids")
    if masks:
        lines.append(
            f"(iv) cluster masks, {masks[0]['images']} train RGB frames ({masks[0]['megapixels']:.2f} MP), "
            f"{preset_partition.membership} membership"
            + (f" ({preset_partition.samples_per_ray} samples/ray)" if preset_partition.membership == "sampled" else "")
            + f", best of {args.mask_repeats}: "
            + ", ".join(f"{m['grid']} {m['s_per_mp']:.3f} s/MP ({m['cells_per_pixel']:.2f} cells/pixel)" for m in masks)
        )
    else:
        lines.append("(iv) cluster masks: no grid with more than one cell in --grids")
    if args.quick:
        lines.append("--quick: a smoke run on a tiny scene; the numbers mean nothing.")
    text = "\n".join(lines)
    print()
    print(text)
    bc.write_results(args.output, {"args": {k: str(v) for k, v in vars(args).items()}, "machine": bc.machine_info(),
                                   "rows": rows, "mask_timing": masks}, text)


if __name__ == "__main__":
    main()
