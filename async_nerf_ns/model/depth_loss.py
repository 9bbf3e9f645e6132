"""Depth supervision: expected ray termination against measured depth, both as ray distance in scene units."""

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
    """Robust depth loss over valid targets (> 0). l1: scene units; log_l1: relative; huber: smooth L1.

    The caller converts measured planar z-depth to distance along the ray and metres to scene units.
    """
    valid = target > 0
    if not torch.any(valid):
        return predicted.sum() * 0.0
    pred, tgt = predicted[valid], target[valid]
    if kind == "l1":
        return torch.abs(pred - tgt).mean()
    if kind == "log_l1":
        return torch.abs(torch.log(pred.clamp_min(1e-6)) - torch.log(tgt)).mean()
    if kind == "huber":
        return torch.nn.functional.smooth_l1_loss(pred, tgt, beta=huber_delta)
    raise ValueError(f"unknown depth loss kind {kind!r}; expected one of l1, log_l1, huber")
