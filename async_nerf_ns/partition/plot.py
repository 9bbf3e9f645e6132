"""Top-view figure of a partition: cell regions, their overlaps, centroids, cameras, pixel counts."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from torch import Tensor

from async_nerf_ns.partition.geometry import PartitionGeometry
from async_nerf_ns.partition.routing import route_to_cells


def plot_partition(
    path: Path,
    geometry: PartitionGeometry,
    boundary_margin: float,
    rgb_positions: Tensor,
    depth_positions: Optional[Dict[str, Tensor]] = None,
    cell_labels: Optional[Sequence[str]] = None,
    title: str = "partition",
    resolution: int = 400,
) -> None:
    """Writes a PNG of the ground plane (world x-y, seen from above) to ``path``.

    Each cell's region (nearest centroid) has its colour; ground points inside the boundary
    margin of two or more cells are hatched. Centroids are stars with their index, RGB camera
    centres dots, depth frame centres crosses; ``cell_labels`` is written beside each centroid.
    """
    rgb = rgb_positions.detach().cpu().double().numpy()
    depth = {name: p.detach().cpu().double().numpy() for name, p in (depth_positions or {}).items()}
    centroids = geometry.centroids.detach().cpu().double()
    everything = np.concatenate([rgb[:, :2], centroids[:, :2].numpy(), *[p[:, :2] for p in depth.values()]])
    # A square view around everything, with room for the cells beyond the outermost cameras.
    centre = 0.5 * (everything.min(axis=0) + everything.max(axis=0))
    half = 0.65 * max(float((everything.max(axis=0) - everything.min(axis=0)).max()), 1e-6)
    lo, hi = centre - half, centre + half

    xs = np.linspace(lo[0], hi[0], resolution)
    ys = np.linspace(lo[1], hi[1], resolution)
    grid = torch.from_numpy(np.stack(np.meshgrid(xs, ys, indexing="xy"), axis=-1))  # (ny, nx, 2)
    points = torch.cat([grid, torch.zeros_like(grid[..., :1])], dim=-1)
    region = route_to_cells(points, centroids).numpy()
    dist2 = (grid[..., None, :] - centroids[:, :2]).square().sum(dim=-1)
    in_margin = (dist2 <= boundary_margin**2 * dist2.amin(dim=-1, keepdim=True)).sum(dim=-1).numpy()

    num_cells = geometry.num_cells
    colours = colormaps["tab20" if num_cells > 10 else "tab10"](np.arange(num_cells) % 20)
    # A bare Figure draws with the Agg canvas: no pyplot state, no display needed.
    fig = Figure(figsize=(9, 8), dpi=110)
    ax = fig.add_subplot()
    extent = (lo[0], hi[0], lo[1], hi[1])
    ax.imshow(region, origin="lower", extent=extent, cmap=ListedColormap(colours), alpha=0.35, interpolation="nearest",
              vmin=-0.5, vmax=num_cells - 0.5)
    overlap = np.ma.masked_where(in_margin < 2, in_margin)
    ax.contourf(xs, ys, overlap, levels=[1.5, num_cells + 0.5], colors="none", hatches=["////"])
    ax.contour(xs, ys, (in_margin >= 2).astype(float), levels=[0.5], colors="0.35", linewidths=0.6)

    ax.scatter(rgb[:, 0], rgb[:, 1], s=10, c="black", label=f"RGB cameras ({len(rgb)})", zorder=3)
    markers = iter(["x", "+", "1", "2"])
    for name, positions in depth.items():
        ax.scatter(positions[:, 0], positions[:, 1], s=18, marker=next(markers, "x"), c="tab:red", linewidths=0.8,
                   label=f"depth '{name}' ({len(positions)})", zorder=3)
    ax.scatter(centroids[:, 0], centroids[:, 1], s=160, marker="*", c="gold", edgecolors="black", zorder=4,
               label="centroids")
    for k in range(num_cells):
        text = f"cell {k}" + (f"\n{cell_labels[k]}" if cell_labels else "")
        ax.annotate(text, (float(centroids[k, 0]), float(centroids[k, 1])), xytext=(8, -8), textcoords="offset points",
                    fontsize=8, va="top", zorder=5, bbox=dict(boxstyle="round,pad=0.2", fc="white", alpha=0.7, lw=0))

    lo_m, hi_m = geometry.altitude_range_m
    ax.set_title(
        f"{title}\n{geometry.grid_dim[0]}x{geometry.grid_dim[1]} cells, boundary margin {boundary_margin:g} "
        f"(hatched: overlap), altitude band {lo_m:.1f} to {hi_m:.1f} m",
        fontsize=10,
    )
    ax.set_xlabel("world x = layout DRB y, right (scene units)")
    ax.set_ylabel("world y = layout DRB -z, forward (scene units)")
    ax.set_aspect("equal")
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
