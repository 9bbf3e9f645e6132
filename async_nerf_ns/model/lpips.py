"""LPIPS only where it can be built offline: a metric object that takes the place of nerfacto's.

torchmetrics' LPIPS builds torchvision's AlexNet with pretrained weights, which downloads them at
construction; offline that crashes ``NerfactoModel.populate_modules`` (stock nerfstudio models
crash there). ``OptionalLPIPS`` is what our model's ``self.lpips`` holds instead: it builds the real
metric on first use when the AlexNet weights are on disk, and otherwise answers NaN once warned, so
nerfacto's ``get_image_metrics_and_images`` runs unchanged (the model drops a NaN ``lpips``).
The real network is never a registered submodule: its constant weights stay out of checkpoints.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, List

import torch
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor, nn

_warned = False


def alexnet_weights_path() -> Path:
    """Where torchvision caches the AlexNet weights LPIPS needs."""
    from torchvision.models import AlexNet_Weights

    filename = AlexNet_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def lpips_available() -> bool:
    """True when LPIPS can be built without a download; otherwise warns once (per process)."""
    global _warned
    path = alexnet_weights_path()
    if path.exists():
        return True
    if not _warned:
        CONSOLE.print(
            f"[yellow]LPIPS skipped: its AlexNet weights are not at {path} and cannot be downloaded here. "
            "Put alexnet-owt-7be5be79.pth there to get LPIPS in ns-eval.[/yellow]"
        )
        _warned = True
    return False


class OptionalLPIPS(nn.Module):
    """torchmetrics' LPIPS (AlexNet, inputs in [0, 1]) when its weights are on disk, else NaN."""

    def __init__(self, **lpips_kwargs) -> None:
        super().__init__()
        self._kwargs = {"normalize": True, **lpips_kwargs}
        self._metric: List[nn.Module] = []
        """The real metric once built (in a list, so that it is not a submodule)."""

    @property
    def available(self) -> bool:
        return bool(self._metric) or lpips_available()

    def forward(self, preds: Tensor, target: Tensor) -> Tensor:
        if not self._metric:
            if not lpips_available():
                return torch.tensor(float("nan"))
            from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

            self._metric.append(LearnedPerceptualImagePatchSimilarity(**self._kwargs))
        metric = self._metric[0].to(preds.device)
        return metric(preds, target)


@contextlib.contextmanager
def offline_lpips() -> Iterator[None]:
    """While active, nerfacto's ``LearnedPerceptualImagePatchSimilarity(...)`` builds an OptionalLPIPS.

    nerfacto imports the class inside ``populate_modules`` (``from torchmetrics.image.lpip import
    ...``), so it is looked up on that module at call time; this swaps it for the duration of the call
    only. It is the one place where we reach into a library, because nerfacto builds the metric in the
    middle of the set-up we reuse, and its construction is what fails offline.
    """
    import torchmetrics.image.lpip as lpip_module

    original = lpip_module.LearnedPerceptualImagePatchSimilarity
    lpip_module.LearnedPerceptualImagePatchSimilarity = OptionalLPIPS  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        lpip_module.LearnedPerceptualImagePatchSimilarity = original  # type: ignore[misc]
