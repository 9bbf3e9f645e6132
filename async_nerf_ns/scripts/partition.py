"""async-nerf-partition: the shard step. Cuts the scene into cells and writes every cell's ray shards,
exactly as ``ns-train`` with the same options would on its first step (same code, same defaults),
e.g. before training cells on a cluster:

    async-nerf-partition async-nerf-small --data DATA [--pipeline.datamanager.partition.grid-dim 3 3 ...]

Takes the command line of ``ns-train`` (method, then any of its options; those that do not concern
the data are ignored) and writes, in the shard folder (``--pipeline.datamanager.shards.shard-dir``,
default DATA/.async_nerf_cache/shards):

- ``rgb-KEY/``, ``depth-KEY/`` and ``lidar-KEY/``: the shard sets training reads (format: async_nerf_ns/shards/format.py);
- ``partition.json``: the grid, margin, altitude band (metres and scene units), centroids in the
  layout's normalised DRB frame, per cell its RGB/depth records and images, and the shard folders;
- ``partition.png``: a top view of cells, overlaps, centroids, cameras and per-cell counts.

This is the partition command rather than a separate shard command because the shards *are* the
partition's output: one command, one set of options, one on-disk format that training reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import tyro
from nerfstudio.utils.rich_utils import CONSOLE

from async_nerf_ns.data.prepare import prepare_training_data
from async_nerf_ns.method import preset_descriptions, presets
from async_nerf_ns.partition.plot import plot_partition
from async_nerf_ns.shards.format import read_manifest
from async_nerf_ns.shards.sets import image_counts

PARTITION_JSON_FORMAT = "async-nerf-partition/2"
"""Written into partition.json so readers can tell which layout of the file they have."""


def _per_cell(shard_set) -> Dict[str, Any]:
    counts = image_counts(shard_set)
    manifest = read_manifest(shard_set)
    return {
        "records": counts.sum(axis=0).astype(int).tolist(),
        "images": (counts > 0).sum(axis=0).astype(int).tolist(),
        "bytes": [sum(Path(shard_set, c["file"]).stat().st_size for c in cell["chunks"]) for cell in manifest["cells"]],
        "write_megapixels_per_second": manifest["megapixels_written_per_second"],
    }


def partition(config) -> Dict[str, Any]:
    """Writes the shards and the summary for a TrainerConfig of an async-nerf method; returns the summary."""
    prepared = prepare_training_data(config)
    datamanager = prepared["datamanager"]
    geometry = datamanager.geometry
    rgb = _per_cell(prepared["rgb_shards"])
    depth = _per_cell(prepared["depth_shards"]) if prepared["depth_shards"] is not None else None
    lidar = _per_cell(prepared["lidar_shards"]) if prepared["lidar_shards"] is not None else None
    zeros = [0] * geometry.num_cells
    centroids_drb = geometry.centroids_drb()
    n1 = geometry.grid_dim[1]
    cells = [
        {
            "index": k,
            "grid_index": [k // n1, k % n1],
            "centroid_drb": [float(v) for v in centroids_drb[k]],
            "centroid_world": [float(v) for v in geometry.centroids[k]],
            "rgb_pixels": rgb["records"][k],
            "rgb_images": rgb["images"][k],
            "rgb_shard_bytes": rgb["bytes"][k],
            "depth_pixels": (depth["records"] if depth else zeros)[k],
            "depth_frames": (depth["images"] if depth else zeros)[k],
            "lidar_returns": (lidar["records"] if lidar else zeros)[k],
            "lidar_scans": (lidar["images"] if lidar else zeros)[k],
        }
        for k in range(geometry.num_cells)
    ]
    part = config.pipeline.datamanager.partition
    lo_m, hi_m = geometry.altitude_range_m
    summary = {
        "format": PARTITION_JSON_FORMAT,
        "data": str(config.pipeline.datamanager.dataparser.data),
        "grid_dim": list(geometry.grid_dim),
        "cell_order": "row-major: cell = i * grid_dim[1] + j, i along world x (= DRB y), j along world y (= DRB -z)",
        "boundary_margin": part.boundary_margin,
        "membership": part.membership,
        **({"samples_per_ray": part.samples_per_ray} if part.membership == "sampled" else {}),
        "altitude_range_m": [lo_m, hi_m],
        "altitude_range_note": "metres of layout altitude: absolute -x of the real-world DRB frame of origin_drb",
        "altitude_range_world_z": list(geometry.z_range),
        "max_ray_length_world": geometry.max_ray_length,
        "origin_drb": [float(v) for v in geometry.origin_drb],
        "pose_scale_factor": geometry.pose_scale_factor,
        "depth_poses": config.pipeline.datamanager.depth_poses,
        "rgb_shards": str(prepared["rgb_shards"]),
        "depth_shards": None if prepared["depth_shards"] is None else str(prepared["depth_shards"]),
        "lidar_shards": None if prepared["lidar_shards"] is None else str(prepared["lidar_shards"]),
        "rgb_write_megapixels_per_second": rgb["write_megapixels_per_second"],
        "cells": cells,
        "empty_cells": prepared["empty_cells"],
    }
    out = Path(prepared["rgb_shards"]).parent
    (out / "partition.json").write_text(json.dumps(summary, indent=2))
    frames = datamanager.depth_frames
    plot_partition(
        out / "partition.png",
        geometry,
        part.boundary_margin,
        datamanager.train_dataset.cameras.camera_to_worlds[:, :, 3],
        None if frames is None else {frames.track.name: frames.c2w[:, :, 3]},
        [f"RGB {c['rgb_pixels']:,} px / {c['rgb_images']} img\ndepth {c['depth_pixels']:,} px" for c in cells],
        title=f"partition of {summary['data']}",
    )
    CONSOLE.print(f"Wrote {out / 'partition.json'} and {out / 'partition.png'}; shards in {out}")
    return summary


def entrypoint() -> None:
    """Console entry point: async-nerf-partition (takes ns-train's command line, for the async-nerf methods)."""
    tyro.extras.set_accent_color("bright_yellow")
    methods = tyro.conf.SuppressFixed[  # as nerfstudio's ns-train, over the methods the shards are for
        tyro.conf.FlagConversionOff[tyro.extras.subcommand_type_from_defaults(defaults=presets(), descriptions=preset_descriptions())]
    ]
    partition(tyro.cli(methods, prog="async-nerf-partition", description=__doc__))


if __name__ == "__main__":
    entrypoint()
