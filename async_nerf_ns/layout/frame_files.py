"""The layout's image and depth files: headers without decoding, and decoding one frame on demand.

`depth_header`, `lidar_rows` and `open_image` read only what `read_layout` needs to check a frame (size, mode,
default units); `load_rgb` and `load_depth_metres` decode a whole frame when training asks for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from async_nerf_ns.layout.types import MASK_EXTENSIONS, MASK_MODES, DepthFrame, LayoutError, LidarScan, RgbFrame
from async_nerf_ns.layout.values import short_load_error

MILLIMETRES = 0.001
"""Metres per stored unit of 16-bit depth images."""


def open_image(path: Path) -> Image.Image:
    """Open the header only (PIL decodes lazily)."""
    try:
        return Image.open(path)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise LayoutError(path, f"cannot be read as an image ({error})") from error


def _hw(shape: Sequence[int]) -> Optional[Tuple[int, int]]:
    """(H, W) of an HxW, HxWx1 or 1xHxW array, else None."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3 and shape[-1] == 1:
        shape = shape[:2]
    elif len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    return shape if len(shape) == 2 else None  # type: ignore[return-value]


def _depth_scale_for_mode(path: Path, mode: str) -> float:
    """Default metres per stored unit of a depth image, from its PIL mode."""
    if mode.startswith("I;16") or mode == "I":
        return MILLIMETRES
    if mode in ("L", "F"):
        # 8-bit maps are metres per grey level; float TIFFs are metres.
        return 1.0
    raise LayoutError(path, f"depth image has mode {mode}; expected one channel (8-bit, 16-bit or float)")


def _load_depth_tensor(path: Path, mmap: bool) -> torch.Tensor:
    try:
        value = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # torch raises many types for corrupt or foreign files
        if mmap:  # files in torch's legacy (non-zip) format cannot be memory-mapped
            return _load_depth_tensor(path, mmap=False)
        raise LayoutError(path, f"cannot be read by torch.load ({short_load_error(error)})") from error
    if not isinstance(value, torch.Tensor) or value.is_complex() or value.dtype == torch.bool:
        raise LayoutError(path, f"expected a real-valued depth tensor, found {type(value).__name__}")
    return value


def depth_header(path: Path) -> Tuple[Tuple[int, int], float]:
    """((H, W), default metres per unit) of a depth file, without decoding the whole map."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            raise LayoutError(path, f"cannot be read as a .npy array ({error})") from error
        if array.dtype.kind not in "fiu":
            raise LayoutError(path, f"depth array has dtype {array.dtype}; expected a float or integer array")
        shape, scale = array.shape, 1.0
    elif suffix == ".pt":
        shape, scale = _load_depth_tensor(path, mmap=True).shape, 1.0
    else:
        with open_image(path) as image:
            shape, scale = (image.size[1], image.size[0]), _depth_scale_for_mode(path, image.mode)
    hw = _hw(shape)
    if hw is None:
        raise LayoutError(path, f"depth map must be H x W, found shape {tuple(shape)}")
    return hw, scale


def load_rgb(frame: RgbFrame) -> np.ndarray:
    """uint8 (H, W, 3) image of `frame`, resized (bilinear, antialiased) to W x H if the file differs."""
    try:
        with Image.open(frame.image_path) as image:
            image = image.convert("RGB")
            if image.size != (frame.width, frame.height):
                image = image.resize((frame.width, frame.height), resample=Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8).copy()
    except (OSError, ValueError) as error:
        raise LayoutError(frame.image_path, f"cannot be decoded ({error})") from error


def mask_problem(path: Path, size: Tuple[int, int], image_is: str) -> Optional[str]:
    """What is wrong with the mask file ``path`` for an image of ``size`` (W, H), the image named in the message
    by ``image_is`` ("its image a.png is"); None when it is a PNG with one channel of that size (the reader
    and the converter both ask)."""
    if path.suffix.lower() not in MASK_EXTENSIONS:
        return f"masks must be {'/'.join(MASK_EXTENSIONS)} files (lossless, 0 = ignore the pixel)"
    with open_image(path) as mask:
        found, mode = mask.size, mask.mode
    if mode not in MASK_MODES:
        return f"mask has mode {mode}; expected one channel ({' or '.join(MASK_MODES)}: 0 = ignore the pixel)"
    if tuple(found) != tuple(size):
        return f"mask is {found[0]}x{found[1]}, {image_is} {size[0]}x{size[1]}"
    return None


def load_mask(frame: RgbFrame) -> np.ndarray:
    """bool (H, W) of `frame`: True where the pixel counts (its mask is non-zero, or it has no mask); a mask is
    resized to W x H as its image is, by nearest neighbour (no new values at the mask's edges)."""
    if frame.mask_path is None:
        return np.ones((frame.height, frame.width), dtype=bool)
    try:
        with Image.open(frame.mask_path) as mask:
            mask = mask.convert("L")
            if mask.size != (frame.width, frame.height):
                mask = mask.resize((frame.width, frame.height), resample=Image.Resampling.NEAREST)
            return np.asarray(mask) != 0
    except (OSError, ValueError) as error:
        raise LayoutError(frame.mask_path, f"cannot be decoded ({error})") from error


def load_depth_metres(frame: DepthFrame) -> np.ndarray:
    """float32 (H, W) depth in metres; 0 where the file has no measurement (0, negative or non-finite)."""
    path = frame.depth_path
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            raw = np.load(path, allow_pickle=False)
        elif suffix == ".pt":
            raw = _load_depth_tensor(path, mmap=False).to(torch.float64).numpy()
        else:
            with Image.open(path) as image:
                raw = np.asarray(image)
    except (OSError, ValueError) as error:
        raise LayoutError(path, f"cannot be decoded ({error})") from error
    hw = _hw(raw.shape)
    if hw != (frame.height, frame.width):
        raise LayoutError(path, f"depth map has shape {raw.shape}, metadata says H x W = {frame.height}x{frame.width}")
    depth = raw.reshape(hw).astype(np.float64) * frame.depth_scale
    depth[~np.isfinite(depth) | (depth <= 0)] = 0.0
    return depth.astype(np.float32)


def planar_to_ray_factor(intrinsics, width: int, height: int) -> torch.Tensor:
    """Per pixel (H, W), ray distance / planar z for the pixel-centre rays of a pinhole camera
    (nerfstudio's rays go through pixel centres: column + 0.5, row + 0.5)."""
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    y, x = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    return torch.sqrt(((x - cx) / fx) ** 2 + ((y - cy) / fy) ** 2 + 1.0)


def load_ray_distance_metres(frame: DepthFrame) -> torch.Tensor:
    """float32 (H, W) distance along each pixel's ray in metres (planar depth converted); 0 where none."""
    metres = torch.from_numpy(np.ascontiguousarray(load_depth_metres(frame)))
    if not frame.depth_is_ray:
        metres = metres * planar_to_ray_factor(frame.intrinsics, frame.width, frame.height)
    return metres


def lidar_rows(path: Path) -> int:
    """Rows of a LiDAR scan file from its .npy header (no decoding); a file that is not an (N, 4) float
    array is a LayoutError naming it."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            shape, _, dtype = np.lib.format._read_array_header(handle, version)  # header only
    except (OSError, ValueError) as error:
        raise LayoutError(path, f"cannot be read as a .npy array ({error})") from error
    _check_lidar_array(path, shape, dtype)
    return int(shape[0])


def _check_lidar_array(path: Path, shape: Tuple[int, ...], dtype: np.dtype) -> None:
    if len(shape) != 2 or shape[1] != 4:
        raise LayoutError(path, f"a LiDAR scan is an (N, 4) array of x, y, z (metres) and t (seconds), found shape {tuple(shape)}")
    if dtype not in (np.float32, np.float64):
        raise LayoutError(path, f"a LiDAR scan is float32 or float64, found {dtype}")


def load_lidar_points(scan: LidarScan) -> np.ndarray:
    """The scan's returns as float64 (M, 4): x, y, z in the LiDAR frame (metres) and t (seconds after the
    scan's stamp). Rows without a return (x, y, z all 0, or a non-finite number) and returns outside the
    scan's [min_range, max_range] are dropped; row order is kept."""
    try:
        points = np.load(scan.points_path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise LayoutError(scan.points_path, f"cannot be read as a .npy array ({error})") from error
    _check_lidar_array(scan.points_path, points.shape, points.dtype)
    points = points.astype(np.float64, copy=False)
    distance = np.linalg.norm(points[:, :3], axis=1)
    keep = np.isfinite(points).all(axis=1) & (distance > 0) & (distance >= scan.min_range) & (distance <= scan.max_range)
    return points[keep]
