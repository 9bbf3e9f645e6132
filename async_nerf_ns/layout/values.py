"""The numbers in the layout's small files: torch-saved metadata dicts and pose text files.

Each reader checks one value (size, intrinsics, pose, timestamp) and raises `LayoutError` naming
the file and the key when it is missing, of the wrong shape or not finite, so a bad value stops
the parser at the file that holds it rather than deep in training.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple

import numpy as np
import torch

from async_nerf_ns.layout.types import Coordinates, LayoutError

ROTATION_TOLERANCE = 1e-2
"""Largest entry of |R^T R - I| accepted in a pose: loose enough for float32 round-off in
stored poses, tight enough to catch a scaled or sheared matrix."""
TIMESTAMP_RESOLUTION_S = 1e-3
"""Finest timestamp spacing a stored number must resolve (float32 at Unix times cannot)."""


def load_torch_file(path: Path) -> Any:
    """`torch.load` with weights-only unpickling; a failure is a LayoutError with its informative line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or foreign files
        raise LayoutError(path, f"cannot be read by torch.load ({short_load_error(error)})") from error


def short_load_error(error: Exception) -> str:
    """The informative line of a torch.load failure (weights-only errors run to a dozen lines)."""
    text = str(error)
    match = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if match:
        hint = "; store values as tensors or Python numbers" if "numpy" in match.group(1) else ""
        return f"it holds {match.group(1)}, which weights-only loading refuses{hint}"
    if "WeightsUnpickler error:" in text:
        detail = [line.strip() for line in text.split("WeightsUnpickler error:", 1)[1].splitlines() if line.strip()]
        return f"not a torch.save file of tensors and numbers: {detail[0] if detail else 'unpickling failed'}"
    if isinstance(error, EOFError):
        return "empty or truncated file"
    lines = text.strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def load_metadata(path: Path) -> Mapping[str, Any]:
    """A metadata file: a torch-saved dict."""
    data = load_torch_file(path)
    if not isinstance(data, Mapping):
        raise LayoutError(path, f"metadata must be a dict, found {type(data).__name__}")
    return data


def required_value(meta: Mapping[str, Any], key: str, path: Path) -> Any:
    """meta[key]; missing or None is a LayoutError naming the key."""
    if meta.get(key) is None:
        raise LayoutError(path, f"missing key '{key}'")
    return meta[key]


def as_numbers(value: Any, path: Path, key: str) -> np.ndarray:
    """`value` (tensor, number or nested list) as a float64 array."""
    try:
        if isinstance(value, torch.Tensor):
            return value.detach().cpu().to(torch.float64).numpy()
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, RuntimeError) as error:
        raise LayoutError(path, f"'{key}' is not numeric ({error})") from error
    return array


def read_size(meta: Mapping[str, Any], path: Path) -> Tuple[int, int]:
    """(W, H): two positive integers."""
    size = []
    for key in ("W", "H"):
        value = as_numbers(required_value(meta, key, path), path, key).reshape(-1)
        if value.shape != (1,) or not math.isfinite(value[0]) or value[0] < 1 or value[0] != round(value[0]):
            raise LayoutError(path, f"'{key}' must be one positive integer, found {value.tolist()}")
        size.append(int(value[0]))
    return size[0], size[1]


def read_intrinsics(meta: Mapping[str, Any], path: Path) -> np.ndarray:
    """float64 [fx, fy, cx, cy], finite, with fx, fy > 0."""
    value = as_numbers(required_value(meta, "intrinsics", path), path, "intrinsics")
    if value.shape != (4,):
        raise LayoutError(path, f"'intrinsics' must be [fx, fy, cx, cy] (shape (4,)), found shape {value.shape}")
    if not np.all(np.isfinite(value)) or value[0] <= 0 or value[1] <= 0:
        raise LayoutError(path, f"'intrinsics' must be finite with fx, fy > 0, found {value.tolist()}")
    return value


def read_pose(value: Any, path: Path, key: str) -> np.ndarray:
    """float64 (3, 4) from a 3x4 or rigid 4x4 matrix: finite, with a proper rotation."""
    pose = as_numbers(value, path, key)
    if pose.shape == (4, 4) and np.allclose(pose[3], [0, 0, 0, 1]):
        pose = pose[:3]
    if pose.shape != (3, 4):
        raise LayoutError(path, f"'{key}' must be a 3x4 (or 4x4 rigid) matrix, found shape {pose.shape}")
    if not np.all(np.isfinite(pose)):
        raise LayoutError(path, f"'{key}' has non-finite numbers: {pose.tolist()}")
    rotation = pose[:, :3]
    deviation = np.abs(rotation.T @ rotation - np.eye(3)).max()
    det = np.linalg.det(rotation)
    if deviation > ROTATION_TOLERANCE or det <= 0:
        raise LayoutError(
            path, f"'{key}' rotation is not a proper rotation (|R^T R - I| = {deviation:.3g}, det = {det:.3g})"
        )
    return pose


def read_positive_number(value: Any, path: Path, key: str) -> float:
    """One finite positive number (a scale)."""
    array = as_numbers(value, path, key).reshape(-1)
    if array.shape != (1,) or not math.isfinite(array[0]) or array[0] <= 0:
        raise LayoutError(path, f"{key} must be one finite positive number, found {array.tolist()}")
    return float(array[0])


def read_coordinates(path: Path) -> Coordinates:
    """origin_drb and pose_scale_factor from an existing coordinates.pt."""
    data = load_torch_file(path)
    if not isinstance(data, Mapping):
        raise LayoutError(path, f"expected a dict with origin_drb and pose_scale_factor, found {type(data).__name__}")
    for key in ("origin_drb", "pose_scale_factor"):
        if key not in data:
            raise LayoutError(path, f"missing key '{key}'")
    origin = as_numbers(data["origin_drb"], path, "origin_drb").reshape(-1)
    if origin.shape != (3,) or not np.all(np.isfinite(origin)):
        raise LayoutError(path, f"origin_drb must be 3 finite numbers, found {origin.tolist()}")
    scale = read_positive_number(data["pose_scale_factor"], path, "pose_scale_factor")
    return Coordinates(origin_drb=origin, pose_scale_factor=scale)


def read_pose_txt(path: Path) -> np.ndarray:
    """A pose text file (the layout's pose_gt, a raw capture's or upstream's poses): a 3x4 (or 4x4)
    whitespace-separated matrix with a proper rotation, else LayoutError."""
    try:
        pose = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (ValueError, OSError) as error:
        raise LayoutError(path, f"cannot parse a matrix ({error})") from error
    return read_pose(pose, path, "pose")


def read_timestamp(meta: Mapping[str, Any], stem: str, path: Path) -> Optional[float]:
    """Seconds from meta["timestamp"], else from the file stem, else None; a float32 too coarse for it is refused."""
    value = meta.get("timestamp")
    if value is None:
        try:
            parsed = float(stem)
        except ValueError:
            return None
        return parsed if math.isfinite(parsed) else None
    array = as_numbers(value, path, "timestamp").reshape(-1)
    if array.shape != (1,) or not math.isfinite(array[0]):
        raise LayoutError(path, f"'timestamp' must be one finite number (seconds), found {array.tolist()}")
    timestamp = float(array[0])
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float64:
        # torch.tensor(t) defaults to float32, which rounds Unix times to 2 minutes: catch it here,
        # where it can be named, rather than as "duplicate timestamps".
        spacing = float(np.spacing(np.abs(value.detach().cpu().numpy().astype(np.float32).reshape(-1)[0])))
        if spacing > TIMESTAMP_RESOLUTION_S:
            raise LayoutError(
                path,
                f"'timestamp' is stored as {value.dtype}, which resolves only {spacing:.3g} s at {timestamp:.3f}; "
                "store it as a Python float or a float64 tensor",
            )
    return timestamp
