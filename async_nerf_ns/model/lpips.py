"""LPIPS only where it can be built offline.

torchmetrics' LPIPS builds torchvision's AlexNet with pretrained weights, which downloads them on
first use; offline that crashes model construction (nerfstudio's stock models do). The LPIPS
linear heads ship inside torchmetrics; only the backbone may be missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from nerfstudio.utils.rich_utils import CONSOLE

_warned = False


def alexnet_weights_path() -> Path:
    """Where torchvision caches the AlexNet weights LPIPS needs."""
    from torchvision.models import AlexNet_Weights

    filename = AlexNet_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def build_lpips_if_available() -> Optional[torch.nn.Module]:
    """torchmetrics LPIPS (AlexNet) when its backbone weights are on disk, else None and one warning."""
    global _warned
    path = alexnet_weights_path()
    if path.exists():
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        return LearnedPerceptualImagePatchSimilarity(normalize=True)
    if not _warned:
        CONSOLE.print(
            f"[yellow]LPIPS skipped: its AlexNet weights are not at {path} and cannot be downloaded here. "
            "Put alexnet-owt-7be5be79.pth there to get LPIPS in ns-eval.[/yellow]"
        )
        _warned = True
    return None
