"""Seams between cells in rendered images: the colour steps the merged field adds where one cell hands a
pixel's surface to the next, and the quality near cell borders against inside cells.

Each pixel is owned by the cell of its rendered surface point (the ray at its expected depth, routed as
the merged field routes samples). For neighbouring pixels (right and down) the *rendering's step* is
``|(pred_a - pred_b) - (gt_a - gt_b)|`` (mean over RGB): the change in colour between them that the
ground truth does not have, so real edges of the scene do not count. A seam shows as a larger mean step
over pairs owned by two cells than over pairs of one cell. The *border band* is every pixel within
``band_px`` pixels of a pixel owned by another cell; PSNR is reported in it and outside it.

ns-eval averages per-image metrics, so `seam_sums` gives per-image sums and counts (their means over
images divide to the pooled value: mean(sum) / mean(count) = total / count) and `pooled_seam_metrics`
turns the averaged sums into the reported numbers. Pixels a mask ignores (masks/STEM.png) take no part.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

SUM_PREFIX = "_seam_sum_"
"""Per-image sums and counts that `pooled_seam_metrics` turns into the reported metrics."""


def _pairs(values: Tensor) -> tuple:
    """(first, second) of every right and down neighbour pair of an (H, W, ...) image, flattened."""
    first = torch.cat([values[:, :-1].reshape(-1, *values.shape[2:]), values[:-1, :].reshape(-1, *values.shape[2:])])
    second = torch.cat([values[:, 1:].reshape(-1, *values.shape[2:]), values[1:, :].reshape(-1, *values.shape[2:])])
    return first, second


def border_band(cells: Tensor, band_px: int) -> Tensor:
    """(H, W) bool: pixels within ``band_px`` pixels (a square window) of a pixel owned by another cell."""
    border = torch.zeros(cells.shape, dtype=torch.bool, device=cells.device)
    step_right = cells[:, 1:] != cells[:, :-1]
    step_down = cells[1:, :] != cells[:-1, :]
    border[:, 1:] |= step_right
    border[:, :-1] |= step_right
    border[1:, :] |= step_down
    border[:-1, :] |= step_down
    if band_px <= 1:
        return border
    size = 2 * (band_px - 1) + 1
    return F.max_pool2d(border[None, None].float(), size, stride=1, padding=band_px - 1)[0, 0] > 0


def seam_sums(
    predicted: Tensor, truth: Tensor, cells: Tensor, keep: Optional[Tensor] = None, band_px: int = 2
) -> Dict[str, float]:
    """Per-image sums and counts (keys start with SUM_PREFIX) of the rendering's colour steps across and
    within cells and of squared errors in and outside the border band. predicted, truth: (H, W, 3) in
    [0, 1]; cells: (H, W) owning cell per pixel; keep: (H, W) or (H, W, 1) bool, False = ignore."""
    cells = cells.reshape(cells.shape[:2]).to(predicted.device)
    keep = torch.ones_like(cells, dtype=torch.bool) if keep is None else keep.reshape(cells.shape).to(predicted.device)
    truth = truth.to(predicted)
    step = (predicted - truth)  # the rendering's step between a and b is |error_a - error_b|
    error_a, error_b = _pairs(step)
    cell_a, cell_b = _pairs(cells)
    keep_a, keep_b = _pairs(keep)
    rendering_step = (error_a - error_b).abs().mean(dim=-1)
    both = keep_a & keep_b
    across = both & (cell_a != cell_b)
    within = both & (cell_a == cell_b)
    band = border_band(cells, band_px)
    squared = step.square().mean(dim=-1)
    sums = {
        "step_across": rendering_step[across].sum(), "pairs_across": across.sum(),
        "step_within": rendering_step[within].sum(), "pairs_within": within.sum(),
        "squared_band": squared[band & keep].sum(), "pixels_band": (band & keep).sum(),
        "squared_inside": squared[~band & keep].sum(), "pixels_inside": (~band & keep).sum(),
    }
    return {SUM_PREFIX + name: float(value) for name, value in sums.items()}


def _ratio(metrics: Dict[str, float], numerator: str, denominator: str) -> float:
    count = metrics[SUM_PREFIX + denominator]
    return metrics[SUM_PREFIX + numerator] / count if count > 0 else math.nan


def _psnr(mse: float) -> float:
    return -10.0 * math.log10(mse) if mse > 0 else math.inf


def pooled_seam_metrics(metrics: Dict[str, float]) -> Dict[str, float]:
    """``metrics`` (nerfstudio's means over images) with the seam sums replaced by the pooled seam metrics:
    seam_step_across_cells / seam_step_within_cells (mean rendering step, RGB in [0, 1]), their ratio, and
    psnr_border_band / psnr_cell_interior (dB, from the pooled squared error); metrics without seam sums
    are returned as they are. A metric with no pixel pair to measure it is left out."""
    if SUM_PREFIX + "pairs_across" not in metrics:
        return metrics
    pooled = {
        "seam_step_across_cells": _ratio(metrics, "step_across", "pairs_across"),
        "seam_step_within_cells": _ratio(metrics, "step_within", "pairs_within"),
        "psnr_border_band": _psnr(_ratio(metrics, "squared_band", "pixels_band")),
        "psnr_cell_interior": _psnr(_ratio(metrics, "squared_inside", "pixels_inside")),
    }
    within = pooled["seam_step_within_cells"]
    pooled["seam_step_ratio"] = pooled["seam_step_across_cells"] / within if within > 0 else math.nan
    kept = {key: value for key, value in metrics.items() if not key.startswith(SUM_PREFIX)}
    kept.update({key: value for key, value in pooled.items() if math.isfinite(value)})
    return kept
