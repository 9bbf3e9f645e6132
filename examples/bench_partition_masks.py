"""Benchmark: cluster-mask computation time per megapixel for 2x2, 3x3 and 4x4 grids, exact and sampled.

Synthetic drone capture: cameras on a circle of radius 1 at height 0.5, pitched 30 degrees off
nadir; the default altitude band (from half the cameras' ground extent below them up to them) and the
default ray length. For each grid: the exact rule (the default) and the sampled one at
``--samples-per-ray``, each timed ``--repeats`` times (fastest run reported: the machine may be shared),
with the time of the thread's CPU beside the wall time, and how well the sampled masks agree with the
exact ones. Prints a markdown table. Run:

    python examples/bench_partition_masks.py [--width 640 --height 480 --num-cameras 4 --threads 1]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from nerfstudio.cameras.cameras import Cameras

from async_nerf_ns.partition.config import PartitionConfig
from async_nerf_ns.partition.geometry import resolve_geometry
from async_nerf_ns.partition.masks import compute_cluster_masks, image_rays, ray_band_segments


def synthetic_cameras(num_cameras: int, width: int, height: int) -> Cameras:
    """Cameras on a circle of radius 1 at z = 0.5, tilted 30 degrees off nadir towards world +x."""
    angles = 2.0 * math.pi * torch.arange(num_cameras) / num_cameras + math.pi / 4.0
    tilt = math.radians(30.0)
    # Camera axes (OpenGL, looks along -z) in world: x right = world +y, z back = up, tilted towards -x.
    back = torch.tensor([-math.sin(tilt), 0.0, math.cos(tilt)])
    right = torch.tensor([0.0, 1.0, 0.0])
    up = torch.linalg.cross(back, right)
    c2w = torch.zeros(num_cameras, 3, 4)
    c2w[:, :, :3] = torch.stack([right, up, back], dim=1)
    c2w[:, 0, 3] = torch.cos(angles)
    c2w[:, 1, 3] = torch.sin(angles)
    c2w[:, 2, 3] = 0.5
    focal = 0.8 * width
    return Cameras(
        camera_to_worlds=c2w, fx=focal, fy=focal, cx=width / 2.0, cy=height / 2.0, width=width, height=height
    )


def all_cells_all_samples(cameras: Cameras, centroids, z_range, far, margin: float, samples: int, chunk: int):
    """The sampled rule without the bounds of masks.py: every cell at every sample (for comparison)."""
    masks = []
    for index in range(len(cameras)):
        origins, directions = (x.reshape(-1, 3) for x in image_rays(cameras, index))
        parts = []
        for b in range(0, origins.shape[0], chunk):
            o, d = origins[b : b + chunk], directions[b : b + chunk]
            start, end, valid = ray_band_segments(o, d, z_range, 0.0, far)
            t = start[:, None] + (end - start)[:, None] * torch.linspace(0, 1, samples)
            points = o[:, None, :2] + t[..., None] * d[:, None, :2]
            dist2 = (points[:, :, None, :] - centroids[:, :2]).square().sum(dim=-1)
            parts.append((dist2 <= margin**2 * dist2.amin(dim=-1, keepdim=True)).any(dim=1) & valid[:, None])
        masks.append(torch.cat(parts))
    return masks


def timed(compute, repeats: int):
    """(fastest wall seconds, fastest thread CPU seconds, result)."""
    wall = cpu = math.inf
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.thread_time()
        result = compute()
        wall, cpu = min(wall, time.perf_counter() - started), min(cpu, time.thread_time() - started_cpu)
    return wall, cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--num-cameras", type=int, default=4)
    parser.add_argument("--samples-per-ray", type=int, default=PartitionConfig.samples_per_ray)
    parser.add_argument("--chunk-rays", type=int, default=PartitionConfig.chunk_rays)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference", action="store_true", help="also time sampling all cells (no bounds), once")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cameras = synthetic_cameras(args.num_cameras, args.width, args.height)
    megapixels = args.num_cameras * args.width * args.height / 1e6
    ray_seconds, _, _ = timed(lambda: [image_rays(cameras, index) for index in range(len(cameras))], args.repeats)
    print(
        f"{args.num_cameras} cameras of {args.width}x{args.height} ({megapixels:.2f} MP), "
        f"chunk {args.chunk_rays} rays, torch {torch.__version__}, {torch.get_num_threads()} threads, CPU"
    )
    print(f"unit rays through nerfstudio-equal math alone: {ray_seconds / megapixels:.3f} s/MP\n")
    print(
        f"| grid | cells | exact s/MP (CPU s/MP) | sampled at {args.samples_per_ray} s/MP (CPU s/MP) "
        "| sampled = exact, entries | sampled / exact, lowest cell count | mean cells per pixel "
        "| s/MP, all cells sampled (reference) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for grid in ((2, 2), (3, 3), (4, 4)):
        results = {}
        for membership in ("exact", "sampled"):
            config = PartitionConfig(
                grid_dim=grid, samples_per_ray=args.samples_per_ray, chunk_rays=args.chunk_rays, membership=membership
            )
            geometry = resolve_geometry(
                config, cameras.camera_to_worlds[:, :, 3], origin_drb=torch.zeros(3), pose_scale_factor=1.0
            )
            results[membership] = timed(
                lambda: compute_cluster_masks(cameras, geometry, config, show_progress=False, device="cpu"), args.repeats
            )
        exact = torch.cat([m.reshape(-1, m.shape[-1]) for m in results["exact"][2]])
        sampled = torch.cat([m.reshape(-1, m.shape[-1]) for m in results["sampled"][2]])
        reference = "-"
        if args.reference:
            start = time.perf_counter()
            plain = all_cells_all_samples(
                cameras, geometry.centroids, geometry.z_range, geometry.max_ray_length, config.boundary_margin,
                config.samples_per_ray, args.chunk_rays // 16,
            )
            reference = f"{(time.perf_counter() - start) / megapixels:.2f}"
            assert torch.equal(torch.cat([p.reshape(-1, p.shape[-1]) for p in plain]), sampled), "sampled masks differ"
        ratio = (sampled.sum(dim=0).double() / exact.sum(dim=0).double().clamp_min(1)).min()
        (ew, ec, _), (sw, sc, _) = results["exact"], results["sampled"]
        print(
            f"| {grid[0]}x{grid[1]} | {geometry.num_cells} | {ew / megapixels:.3f} ({ec / megapixels:.3f}) "
            f"| {sw / megapixels:.3f} ({sc / megapixels:.3f}) | {(sampled == exact).double().mean():.6f} "
            f"| {ratio:.5f} | {exact.sum(dim=-1).double().mean():.2f} | {reference} |"
        )


if __name__ == "__main__":
    main()
