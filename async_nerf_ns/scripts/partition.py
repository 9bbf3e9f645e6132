"""async-nerf-partition: the Mega-NeRF partition of a dataset, computed once (e.g. before cluster training).

    async-nerf-partition DATA --output OUT [--grid-dim 3 3 --boundary-margin 1.15 ...]

Reads DATA's train split with the async-nerf dataparser, lays the cell grid over the RGB
cameras and writes, under OUT:

- ``masks/rgb/STEM.npz``: per RGB frame, which cells each pixel's ray crosses;
- ``masks/depth_TRACK/STEM.npz``: the same per depth frame, at its prior pose (or true pose with
  ``--depth-poses gt``); frames without such a pose are skipped and listed in partition.json;
- ``partition.json``: the grid, margin, altitude band (metres and scene units), centroids in the
  layout's normalised DRB frame, per cell RGB/depth pixel and image counts, and every mask file;
- ``partition.png``: a top view of cells, overlaps, centroids, cameras and per-cell counts.

Mask files hold a bool (H, W, K) array, bit-packed: arrays ``bits`` (uint8,
``numpy.packbits(mask.reshape(-1))``) and ``shape`` ([H, W, K]); read them with
`async_nerf_ns.partition.storage.load_mask` (format in that module's docstring).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Tuple

import torch
import tyro
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.utils.rich_utils import CONSOLE
from typing_extensions import Annotated

from async_nerf_ns.data.dataparser import METADATA_KEY, AsyncNerfDataParserConfig
from async_nerf_ns.data.scene_metadata import AsyncNerfMetadata, DepthTrackData
from async_nerf_ns.partition.config import PartitionConfig
from async_nerf_ns.partition.geometry import PartitionGeometry, resolve_geometry
from async_nerf_ns.partition.masks import compute_cluster_masks
from async_nerf_ns.partition.plot import plot_partition
from async_nerf_ns.partition.storage import save_mask

PARTITION_JSON_FORMAT = "async-nerf-partition/1"
"""Written into partition.json so readers can tell which layout of the file they have."""


@dataclass
class PartitionCommand:
    """Compute the Mega-NeRF partition of an async-nerf dataset: cluster masks, partition.json, partition.png."""

    data: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="DATA")]
    """Dataset root (the folder holding coordinates.pt, train/ and val/)."""
    output: Path
    """Folder that receives masks/, partition.json and partition.png."""
    partition: Annotated[PartitionConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=PartitionConfig)
    """The partition parameters."""
    depth_poses: Literal["prior", "gt"] = "prior"
    """Poses for the depth frames' masks: the prior poses of their metadata (what training starts
    from), or the true poses of pose_gt_TRACK/ (evaluation data; for comparisons)."""
    overwrite: bool = False
    """Replace OUT/masks if it already holds files (by default that is an error)."""

    def main(self) -> Dict[str, Any]:
        """Runs the command; returns what it wrote to partition.json."""
        masks_dir = self.output / "masks"
        if masks_dir.exists() and any(masks_dir.iterdir()):
            if not self.overwrite:
                raise FileExistsError(f"{masks_dir} already holds files; pass --overwrite to replace them")
            shutil.rmtree(masks_dir)

        outputs = AsyncNerfDataParserConfig(data=self.data).setup().get_dataparser_outputs("train")
        metadata: AsyncNerfMetadata = outputs.metadata[METADATA_KEY]
        rgb_cameras = outputs.cameras
        geometry = resolve_geometry(
            self.partition,
            rgb_cameras.camera_to_worlds[:, :, 3],
            metadata.origin_drb,
            metadata.pose_scale_factor,
            metadata.drb_to_world,
        )
        started = time.perf_counter()
        megapixels = 0.0

        rgb_names = [Path(name).stem for name in outputs.image_filenames]
        rgb_masks = self._masks(rgb_cameras, geometry, "RGB")
        megapixels += sum(m.shape[0] * m.shape[1] for m in rgb_masks) / 1e6
        images: Dict[str, List[Dict[str, Any]]] = {"rgb": self._write(masks_dir / "rgb", rgb_names, rgb_masks)}

        depth_masks: Dict[str, List[torch.Tensor]] = {}
        depth_positions: Dict[str, torch.Tensor] = {}
        skipped: Dict[str, List[str]] = {}
        for name, track in metadata.depth_tracks.items():
            cameras, kept = self._depth_cameras(track)
            skipped[name] = [track.filenames[i].stem for i in sorted(set(range(len(track))) - set(kept))]
            if skipped[name]:
                CONSOLE.print(
                    f"[yellow]depth track '{name}': {len(skipped[name])} of {len(track)} frames have no "
                    f"{self.depth_poses} pose and get no mask"
                )
            if not kept:
                continue
            depth_masks[name] = self._masks(cameras, geometry, f"depth '{name}'")
            depth_positions[name] = cameras.camera_to_worlds[:, :, 3]
            megapixels += sum(m.shape[0] * m.shape[1] for m in depth_masks[name]) / 1e6
            names = [track.filenames[i].stem for i in kept]
            images[f"depth_{name}"] = self._write(masks_dir / f"depth_{name}", names, depth_masks[name])
        seconds = time.perf_counter() - started

        summary = self._summary(geometry, rgb_masks, depth_masks, images, skipped, seconds, megapixels)
        self.output.mkdir(parents=True, exist_ok=True)
        (self.output / "partition.json").write_text(json.dumps(summary, indent=2))
        labels = [
            f"RGB {cell['rgb_pixels']:,} px / {cell['rgb_images']} img\ndepth {cell['depth_pixels']:,} px"
            for cell in summary["cells"]
        ]
        plot_partition(
            self.output / "partition.png",
            geometry,
            self.partition.boundary_margin,
            rgb_cameras.camera_to_worlds[:, :, 3],
            depth_positions,
            labels,
            title=f"partition of {self.data}",
        )
        CONSOLE.print(
            f"Partition of {len(rgb_masks)} RGB and {sum(len(m) for m in depth_masks.values())} depth frames "
            f"({megapixels:.2f} MP) in {seconds:.1f} s ({seconds / max(megapixels, 1e-9):.2f} s/MP); "
            f"wrote {self.output / 'partition.json'}, {self.output / 'partition.png'} and {masks_dir}"
        )
        return summary

    def _masks(self, cameras: Cameras, geometry: PartitionGeometry, what: str) -> List[torch.Tensor]:
        return compute_cluster_masks(
            cameras,
            geometry.centroids,
            self.partition,
            geometry.z_range,
            max_ray_length=geometry.max_ray_length,
            description=f"cluster masks, {what}",
        )

    def _depth_cameras(self, track: DepthTrackData) -> Tuple[Cameras, List[int]]:
        """The track's frames that have a pose of the chosen kind, as nerfstudio Cameras."""
        poses = track.prior_c2w if self.depth_poses == "prior" else track.gt_c2w
        kept = [i for i in range(len(track)) if bool(torch.isfinite(poses[i]).all())]
        index = torch.tensor(kept, dtype=torch.long)
        intrinsics = track.intrinsics[index]
        cameras = Cameras(
            camera_to_worlds=poses[index],
            fx=intrinsics[:, 0:1],
            fy=intrinsics[:, 1:2],
            cx=intrinsics[:, 2:3],
            cy=intrinsics[:, 3:4],
            width=track.widths[index][:, None],
            height=track.heights[index][:, None],
            camera_type=CameraType.PERSPECTIVE,
        )
        return cameras, kept

    def _write(self, folder: Path, names: List[str], masks: List[torch.Tensor]) -> List[Dict[str, Any]]:
        entries = []
        for name, mask in zip(names, masks):
            path = folder / f"{name}.npz"
            save_mask(path, mask)
            entries.append(
                {
                    "name": name,
                    "mask": str(path.relative_to(self.output)),
                    "height": int(mask.shape[0]),
                    "width": int(mask.shape[1]),
                    "cells": [int(k) for k in mask.reshape(-1, mask.shape[-1]).any(dim=0).nonzero().flatten()],
                }
            )
        return entries

    def _summary(
        self,
        geometry: PartitionGeometry,
        rgb_masks: List[torch.Tensor],
        depth_masks: Dict[str, List[torch.Tensor]],
        images: Dict[str, List[Dict[str, Any]]],
        skipped: Dict[str, List[str]],
        seconds: float,
        megapixels: float,
    ) -> Dict[str, Any]:
        def pixels(masks: List[torch.Tensor]) -> torch.Tensor:
            total = torch.zeros(geometry.num_cells, dtype=torch.long)
            for mask in masks:
                total += mask.reshape(-1, mask.shape[-1]).sum(dim=0)
            return total

        def touching(masks: List[torch.Tensor]) -> torch.Tensor:
            total = torch.zeros(geometry.num_cells, dtype=torch.long)
            for mask in masks:
                total += mask.reshape(-1, mask.shape[-1]).any(dim=0).long()
            return total

        all_depth = [m for masks in depth_masks.values() for m in masks]
        rgb_pixels, depth_pixels = pixels(rgb_masks), pixels(all_depth)
        rgb_images, depth_frames = touching(rgb_masks), touching(all_depth)
        centroids_drb = geometry.centroids_drb()
        n1 = geometry.grid_dim[1]
        cells = [
            {
                "index": k,
                "grid_index": [k // n1, k % n1],
                "centroid_drb": [float(v) for v in centroids_drb[k]],
                "centroid_world": [float(v) for v in geometry.centroids[k]],
                "rgb_pixels": int(rgb_pixels[k]),
                "depth_pixels": int(depth_pixels[k]),
                "rgb_images": int(rgb_images[k]),
                "depth_frames": int(depth_frames[k]),
            }
            for k in range(geometry.num_cells)
        ]
        lo_m, hi_m = geometry.altitude_range_m
        return {
            "format": PARTITION_JSON_FORMAT,
            "data": str(self.data),
            "grid_dim": list(geometry.grid_dim),
            "cell_order": "row-major: cell = i * grid_dim[1] + j, i along world x (= DRB y), "
            "j along world y (= DRB -z)",
            "boundary_margin": self.partition.boundary_margin,
            "samples_per_ray": self.partition.samples_per_ray,
            "altitude_range_m": [lo_m, hi_m],
            "altitude_range_note": "metres of layout altitude: absolute -x of the real-world DRB frame of origin_drb",
            "altitude_range_world_z": list(geometry.z_range),
            "max_ray_length_world": geometry.max_ray_length,
            "max_ray_length_m": geometry.max_ray_length * geometry.pose_scale_factor,
            "origin_drb": [float(v) for v in geometry.origin_drb],
            "pose_scale_factor": geometry.pose_scale_factor,
            "centroid_frame": "centroid_drb: the layout's normalised DRB frame (as metadata c2w); "
            "centroid_world: the dataparser's z-up world",
            "depth_poses": self.depth_poses,
            "mask_format": "npz: bits = numpy.packbits(mask.reshape(-1)) of a bool (H, W, K) mask, "
            "shape = [H, W, K]",
            "cells": cells,
            "images": images,
            "skipped_depth_frames": skipped,
            "timing": {
                "seconds": seconds,
                "megapixels": megapixels,
                "seconds_per_megapixel": seconds / megapixels if megapixels > 0 else None,
            },
        }


def entrypoint() -> None:
    """Console entry point: async-nerf-partition."""
    tyro.extras.set_accent_color("bright_yellow")
    tyro.cli(PartitionCommand, prog="async-nerf-partition").main()


if __name__ == "__main__":
    entrypoint()
