"""Training rays from (image, row, column) indices, on the training device, without waiting for it.

nerfstudio's `RayGenerator` calls `Cameras.generate_rays`, which is general (fisheye, equirectangular,
distortion, jagged batches) and pays for it on every batch: `is_jagged` and the camera-type dispatch read
device tensors back (`.item()`, `torch.unique`), and the per-type selection uses `masked_select` and
boolean-mask assignment (about 16 waits for the GPU per call, counted by tests/cuda_emulation.py). Its
`image_coords` buffer is also made on the CPU, so a generator built after `.to(device)` indexes host memory
with device indices. An undistorted pinhole camera needs none of that: the poses and intrinsics are
gathered by the batch's image indices, and the ray through pixel centre (x + 0.5, y + 0.5) is
R (x', -y', -1) normalised, with x' = (x + 0.5 - cx) / fx, y' = (y + 0.5 - cy) / fy (OpenGL camera axes,
the same math as `partition/masks.py` and nerfstudio; tests/test_ray_generator.py compares the three).

Cameras of other models, or with distortion, keep nerfstudio's generator.
"""

from __future__ import annotations

from typing import Union

import torch
from jaxtyping import Float, Int
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.model_components.ray_generators import RayGenerator
from torch import Tensor, nn


def is_undistorted_pinhole(cameras: Cameras) -> bool:
    """Whether every camera is a perspective camera without distortion (set-up time: reads the host)."""
    perspective = bool((cameras.camera_type.reshape(-1).cpu() == CameraType.PERSPECTIVE.value).all())
    if cameras.distortion_params is None:
        return perspective
    return perspective and not bool(cameras.distortion_params.cpu().any())


class PinholeRayGenerator(nn.Module):
    """Rays of undistorted pinhole cameras: poses (N, 3, 4) and intrinsics (N, 4: fx, fy, cx, cy) are
    buffers, so they follow the module to the device, and new poses are copied into them (``set_poses``)."""

    c2w: Tensor
    intrinsics: Tensor

    def __init__(self, cameras: Cameras) -> None:
        super().__init__()
        assert cameras.ndim == 1, "a 1-D batch of cameras"
        intrinsics = torch.cat([cameras.fx, cameras.fy, cameras.cx, cameras.cy], dim=-1).float()
        self.register_buffer("c2w", cameras.camera_to_worlds.float().clone(), persistent=False)
        self.register_buffer("intrinsics", intrinsics, persistent=False)

    @torch.no_grad()
    def set_poses(self, c2w: Float[Tensor, "num 3 4"]) -> None:
        """New poses for the same cameras, copied into the buffer (which stays where it is)."""
        self.c2w.copy_(c2w.float())

    def forward(self, ray_indices: Int[Tensor, "num_rays 3"]) -> RayBundle:
        image, row, column = ray_indices.unbind(-1)
        fx, fy, cx, cy = self.intrinsics[image].unbind(-1)
        c2w = self.c2w[image]
        x = (column.float() + 0.5 - cx) / fx
        y = -(row.float() + 0.5 - cy) / fy

        def world(dx: Tensor, dy: Tensor) -> Tensor:
            camera = torch.stack([dx, dy, -torch.ones_like(dx)], dim=-1)
            return torch.sum(camera[:, None, :] * c2w[:, :, :3], dim=-1)

        directions = world(x, y)
        norm = directions.norm(dim=-1, keepdim=True)
        directions = directions / norm
        # nerfstudio's pixel area: the distance to the unit directions of the next pixel in x and in y.
        dx = (directions - nn.functional.normalize(world(x + 1.0 / fx, y), dim=-1)).norm(dim=-1)
        dy = (directions - nn.functional.normalize(world(x, y - 1.0 / fy), dim=-1)).norm(dim=-1)
        return RayBundle(
            origins=c2w[:, :, 3],
            directions=directions,
            pixel_area=(dx * dy)[:, None],
            camera_indices=image[:, None],
            metadata={"directions_norm": norm.detach()},
        )


def training_ray_generator(cameras: Cameras) -> Union[PinholeRayGenerator, RayGenerator]:
    """Ours for undistorted pinhole cameras (no waits); nerfstudio's for every other camera model."""
    return PinholeRayGenerator(cameras) if is_undistorted_pinhole(cameras) else RayGenerator(cameras)
