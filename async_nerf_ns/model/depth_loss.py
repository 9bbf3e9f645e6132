"""Depth supervision: expected ray termination against measured depth, both as ray distance in scene units;
and, for LiDAR rays, the free space a beam crossed before its return."""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

DepthLossKind = Literal["l1", "log_l1", "huber"]


def depth_loss(
    predicted: Float[Tensor, "n 1"],
    target: Float[Tensor, "n 1"],
    kind: DepthLossKind = "l1",
    huber_delta: float = 0.01,
) -> Tensor:
    """Robust depth loss, the mean over valid targets (> 0; 0 without any). l1: scene units; log_l1:
    relative; huber: smooth L1.

    The caller converts measured planar z-depth to distance along the ray and metres to scene units.
    A masked mean rather than boolean indexing: no host synchronisation in the training step.
    """
    valid = target > 0
    safe_target = torch.where(valid, target, torch.ones_like(target))
    if kind == "l1":
        errors = torch.abs(predicted - safe_target)
    elif kind == "log_l1":
        errors = torch.abs(torch.log(predicted.clamp_min(1e-6)) - torch.log(safe_target))
    elif kind == "huber":
        errors = torch.nn.functional.smooth_l1_loss(predicted, safe_target, beta=huber_delta, reduction="none")
    else:
        raise ValueError(f"unknown depth loss kind {kind!r}; expected one of l1, log_l1, huber")
    weights = valid.to(errors.dtype)
    return (errors * weights).sum() / weights.sum().clamp_min(1.0)


def free_space_loss(
    weights: Float[Tensor, "n s 1"],
    sample_ends: Float[Tensor, "n s 1"],
    ranges: Float[Tensor, "n 1"],
    margin: float,
) -> Tensor:
    """The rendering weight each ray puts on samples that end before ``(1 - margin) x`` its return's range,
    averaged over the rays: a LiDAR beam saw nothing there, so a field that puts density there is wrong
    even where its expected depth is right (a floater in front balanced by mass behind the surface).

    Directions must be unit length (sample ends are then distances, as the ranges are). Only rays with a
    return reach here (LiDAR shards hold returns only); a masked sum, no host synchronisation.
    """
    before = (sample_ends < ranges[:, None, :].to(sample_ends.dtype) * (1.0 - margin)).to(weights.dtype)
    return (weights * before).sum(dim=(1, 2)).mean()
