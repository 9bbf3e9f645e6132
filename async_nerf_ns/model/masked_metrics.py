"""Image metrics that leave out the pixels a user's mask ignores (masks/STEM.png, 0 = ignore).

nerfstudio hands the mask to ``get_image_metrics_and_images`` in ``batch["mask"]`` but nerfacto's
metrics score every pixel. PSNR here is over the kept pixels alone; SSIM and LPIPS work on windows
of whole images, so the masked pixels of the prediction are set to the ground truth before them
(equal there, they add no error; windows that straddle a mask edge still see the kept pixels).
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor


def masked_prediction(predicted: Tensor, ground_truth: Tensor, keep: Tensor) -> Tensor:
    """(H, W, 3) ``predicted`` with the ground truth where ``keep`` (H, W, 1) is False."""
    return torch.where(keep.to(predicted.device), predicted, ground_truth)


def kept_psnr(predicted: Tensor, ground_truth: Tensor, keep: Tensor) -> Tuple[float, float]:
    """PSNR (dB, colours in [0, 1]) over the kept pixels, and the fraction of pixels kept (NaN PSNR when none is)."""
    keep = keep.to(predicted.device).reshape(-1)
    kept = int(keep.sum())
    if kept == 0:
        return float("nan"), 0.0
    error = (predicted.reshape(-1, predicted.shape[-1])[keep] - ground_truth.reshape(-1, ground_truth.shape[-1])[keep]) ** 2
    return float(-10.0 * torch.log10(error.mean())), kept / len(keep)
