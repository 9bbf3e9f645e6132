"""Timed poses as the trajectory code takes them: checked, sorted, float64; the nearest frame in time;
held-out frames for measuring interpolation."""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
from jaxtyping import Float


def prepare_trajectory(timestamps, c2w) -> Tuple[np.ndarray, np.ndarray]:
    """Checks and sorts (timestamps (N,), c2w (N, 3|4, 4)) into float64 numpy arrays.

    Raises ValueError for mismatched shapes, fewer than two frames, non-finite values or
    duplicate timestamps (which no interpolator can represent).
    """
    times = np.asarray(timestamps.detach().cpu().numpy() if isinstance(timestamps, torch.Tensor) else timestamps)
    poses = np.asarray(c2w.detach().cpu().numpy() if isinstance(c2w, torch.Tensor) else c2w)
    times, poses = times.astype(np.float64).reshape(-1), poses.astype(np.float64)
    if poses.ndim != 3 or poses.shape[1:] not in ((3, 4), (4, 4)):
        raise ValueError(f"expected poses of shape (N, 3, 4) or (N, 4, 4), got {poses.shape}")
    if poses.shape[0] != times.shape[0]:
        raise ValueError(f"{times.shape[0]} timestamps but {poses.shape[0]} poses")
    if times.shape[0] < 2:
        raise ValueError(f"a trajectory needs at least two timed poses, got {times.shape[0]}")
    if not (np.isfinite(times).all() and np.isfinite(poses).all()):
        raise ValueError("timestamps and poses must be finite")
    order = np.argsort(times, kind="stable")
    times, poses = times[order], poses[order, :3, :4]
    duplicates = times[1:][np.diff(times) <= 0]
    if duplicates.size:
        raise ValueError(f"duplicate timestamps in the trajectory, e.g. {duplicates[0]!r}")
    return times, poses


def nearest_in_time(times: Float[np.ndarray, " m"], reference: Float[np.ndarray, " n"]) -> np.ndarray:
    """Index into the increasing `reference` of the time nearest to each of `times` (ties: the earlier)."""
    times, reference = np.asarray(times, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if len(reference) == 1:
        return np.zeros(len(times), dtype=int)
    right = np.clip(np.searchsorted(reference, times), 1, len(reference) - 1)
    left = right - 1
    return np.where(np.abs(reference[right] - times) < np.abs(times - reference[left]), right, left)


def split_every(count: int, every: int) -> Tuple[np.ndarray, np.ndarray]:
    """Indices (train, held_out): every `every`-th frame is held out, never the first or last
    (held-out frames must lie inside the training span to measure interpolation)."""
    index = np.arange(count)
    held_out = (index % every == every // 2) & (index > 0) & (index < count - 1)
    return index[~held_out], index[held_out]
