"""Training rays from data/ray_generator.py are nerfstudio's rays: the same origins, unit directions,
pixel areas and direction norms as `RayGenerator` (and as the partition's own pinhole rays), for cameras
of different sizes and intrinsics in one batch; other camera models keep nerfstudio's generator."""

from __future__ import annotations

import torch
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.model_components.ray_generators import RayGenerator

from async_nerf_ns.data.ray_generator import PinholeRayGenerator, training_ray_generator
from async_nerf_ns.partition.masks import image_rays

TOLERANCE = 1e-5
"""float32 rounding of the two computations (measured differences up to 1e-6)."""


def _cameras() -> Cameras:
    generator = torch.Generator().manual_seed(0)
    n = 5
    angles = torch.rand(n, 3, generator=generator) * 6.0
    rotation = torch.linalg.matrix_exp(torch.cross(torch.eye(3)[None].expand(n, 3, 3), angles[:, None, :].expand(n, 3, 3), dim=-1))
    c2w = torch.cat([rotation, torch.randn(n, 3, 1, generator=generator) * 10], dim=-1)
    return Cameras(
        camera_to_worlds=c2w,
        fx=torch.tensor([[40.0], [55.0], [40.0], [80.0], [33.0]]), fy=torch.tensor([[42.0], [50.0], [44.0], [81.0], [30.0]]),
        cx=torch.tensor([[16.0], [20.5], [15.0], [31.0], [12.0]]), cy=torch.tensor([[12.0], [14.0], [11.5], [24.0], [9.0]]),
        width=torch.tensor([[32], [40], [32], [64], [24]]), height=torch.tensor([[24], [30], [24], [48], [18]]),
        camera_type=CameraType.PERSPECTIVE,
    )


def _indices(cameras: Cameras, count: int = 500) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    image = torch.randint(0, len(cameras), (count,), generator=generator)
    row = (torch.rand(count, generator=generator) * cameras.height[image, 0]).long()
    column = (torch.rand(count, generator=generator) * cameras.width[image, 0]).long()
    return torch.stack([image, row, column], dim=-1)


def test_pinhole_rays_are_nerfstudios():
    cameras = _cameras()
    indices = _indices(cameras)
    ours = PinholeRayGenerator(cameras)(indices)
    theirs = RayGenerator(cameras)(indices)
    for name in ("origins", "directions", "pixel_area", "camera_indices"):
        torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), atol=TOLERANCE, rtol=TOLERANCE)
    torch.testing.assert_close(ours.metadata["directions_norm"], theirs.metadata["directions_norm"], atol=TOLERANCE, rtol=0)
    # ... and the partition's rays through the same pixels.
    for image in range(len(cameras)):
        origins, directions = image_rays(cameras, image)
        mine = indices[:, 0] == image
        rows, columns = indices[mine, 1], indices[mine, 2]
        torch.testing.assert_close(ours.directions[mine], directions[rows, columns], atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(ours.origins[mine], origins[rows, columns], atol=TOLERANCE, rtol=0)


def test_new_poses_are_copied_into_the_same_buffer():
    cameras = _cameras()
    generator = PinholeRayGenerator(cameras)
    buffer = generator.c2w
    moved = cameras.camera_to_worlds.clone()
    moved[:, :, 3] += 1.0
    generator.set_poses(moved)
    assert generator.c2w is buffer
    indices = _indices(cameras, 20)
    shifted = generator(indices).origins - PinholeRayGenerator(cameras)(indices).origins
    torch.testing.assert_close(shifted, torch.ones_like(shifted))


def test_distorted_or_fisheye_cameras_keep_nerfstudios_generator():
    cameras = _cameras()
    assert isinstance(training_ray_generator(cameras), PinholeRayGenerator)
    distorted = _cameras()
    distorted.distortion_params = torch.zeros(len(distorted), 6)
    distorted.distortion_params[2, 0] = 0.1
    assert isinstance(training_ray_generator(distorted), RayGenerator)
    fisheye = _cameras()
    fisheye.camera_type = torch.full_like(fisheye.camera_type, CameraType.FISHEYE.value)
    assert isinstance(training_ray_generator(fisheye), RayGenerator)
