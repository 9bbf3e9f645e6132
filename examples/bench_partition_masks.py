"""Benchmark: cluster-mask computation time per megapixel for 2x2, 3x3 and 4x4 grids.

Synthetic drone capture: cameras on a circle of radius 1 at height 0.5, pitched 30 degrees off
nadir; the default altitude band (from half the cameras' ground extent below them up to them) and the
default ray length. Each grid is timed ``--repeats`` times and the fastest run is reported (the
machine may be shared). Prints a markdown table. Run:

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
    """The membership rule without the bounds of masks.py: every cell at every sample (for comparison)."""
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
    ray_seconds = math.inf
    for _ in range(args.repeats):
        start = time.perf_counter()
        for index in range(len(cameras)):
            image_rays(cameras, index)
        ray_seconds = min(ray_seconds, time.perf_counter() - start)

    print(
        f"{args.num_cameras} cameras of {args.width}x{args.height} ({megapixels:.2f} MP), "
        f"{args.samples_per_ray} samples/ray, chunk {args.chunk_rays} rays, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU"
    )
    print(f"ray generation alone: {ray_seconds / megapixels:.3f} s/MP\n")
    print("| grid | cells | s/MP (rays + membership) | mean cells per pixel | s/MP, all cells sampled (reference) |")
    print("|---|---|---|---|---|")
    for grid in ((2, 2), (3, 3), (4, 4)):
        config = PartitionConfig(grid_dim=grid, samples_per_ray=args.samples_per_ray, chunk_rays=args.chunk_rays)
        geometry = resolve_geometry(
            config, cameras.camera_to_worlds[:, :, 3], origin_drb=torch.zeros(3), pose_scale_factor=1.0
        )
        seconds = math.inf
        for _ in range(args.repeats):
            start = time.perf_counter()
            masks = compute_cluster_masks(
                cameras, geometry.centroids, config, geometry.z_range, geometry.max_ray_length, show_progress=False
            )
            seconds = min(seconds, time.perf_counter() - start)
        cells_per_pixel = torch.cat([m.reshape(-1, m.shape[-1]) for m in masks]).sum(dim=-1).float().mean()
        reference = "-"
        if args.reference:
            start = time.perf_counter()
            plain = all_cells_all_samples(
                cameras, geometry.centroids, geometry.z_range, geometry.max_ray_length, config.boundary_margin,
                config.samples_per_ray, args.chunk_rays // 4,
            )
            reference = f"{(time.perf_counter() - start) / megapixels:.2f}"
            assert all(torch.equal(a.reshape(b.shape), b) for a, b in zip(plain, masks)), "masks differ"
        print(
            f"| {grid[0]}x{grid[1]} | {geometry.num_cells} | {seconds / megapixels:.2f} | {cells_per_pixel:.2f} "
            f"| {reference} |"
        )


if __name__ == "__main__":
    main()
