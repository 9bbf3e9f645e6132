"""Mega-NeRF's evaluation protocol: each val image's appearance fitted on its left half, scored on its right.

A val image was never trained on, so it has no appearance embedding of its own; nerfstudio renders
it with the average embedding (the default here too: ``eval_appearance="average"``). Mega-NeRF and
Switch-NeRF report their tables with a per-image embedding optimised on the left half of each test
image (the fields frozen) and the metrics computed on the right half. With
``--pipeline.model.eval-appearance left-half`` ns-eval does the same: for each val image and each cell,
an embedding starting at the cell's average is fitted by Adam on random batches of the image's
left-half rays (``eval_appearance_steps`` steps of ``eval_appearance_rays`` rays), then the image is
rendered with it and PSNR/SSIM/LPIPS are computed on the right half only.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Literal, Optional, Tuple

import torch
from nerfstudio.cameras.cameras import Cameras
from torch import Tensor

EvalAppearance = Literal["average", "left-half"]


def left_columns(width: int) -> int:
    """Columns of the left half (the fitted part); the right half starts there."""
    return width // 2


@contextlib.contextmanager
def frozen(model) -> Iterator[None]:
    """The model's parameters do not require gradients inside (only the fitted embeddings learn)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def fit_left_half(
    model, camera, image: Tensor, steps: int, rays_per_step: int, lr: float, seed: int = 0, keep: Optional[Tensor] = None
) -> List[Tensor]:
    """Fits each cell's appearance embedding to the left half of ``image`` (H, W, 3) seen by ``camera``,
    on its pixels where ``keep`` (H, W, 1; the image's mask) is True; the fitted embeddings are left set
    on the cells (``clear_fitted`` removes them) and returned."""
    embeddings = [cell.field.embedding_appearance for cell in model.cells if cell.field.embedding_appearance is not None]
    if not embeddings or steps <= 0:
        return []
    for embedding in embeddings:
        embedding.fitted = None
    fitted = [embedding.mean(dim=0).detach().clone().requires_grad_(True) for embedding in embeddings]
    for embedding, vector in zip(embeddings, fitted):
        embedding.fitted = vector
    camera = camera.to(model.device)
    rays = camera.generate_rays(camera_indices=0, keep_shape=True)
    columns = left_columns(int(camera.width.reshape(-1)[0]))
    rays = rays[:, :columns].flatten()
    target = image[:, :columns, :3].reshape(-1, 3).to(model.device)
    if keep is not None:
        kept = keep[:, :columns].reshape(-1).to(model.device)
        rays, target = rays[kept], target[kept]
    if len(target) == 0:  # the left half is masked out: the average appearance stays
        clear_fitted(model)
        return []
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(fitted, lr=lr)
    was_training = model.training
    model.eval()
    try:
        with frozen(model), torch.enable_grad():
            for _ in range(steps):
                index = torch.randint(len(rays), (min(rays_per_step, len(rays)),), generator=generator).to(model.device)
                outputs = model(rays[index])
                loss = torch.nn.functional.mse_loss(outputs["rgb"], target[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    finally:
        model.train(was_training)
    for embedding, vector in zip(embeddings, fitted):
        embedding.fitted = vector.detach()
    return [vector.detach() for vector in fitted]


def clear_fitted(model) -> None:
    for cell in model.cells:
        if cell.field.embedding_appearance is not None:
            cell.field.embedding_appearance.fitted = None


def right_half(camera: Cameras, batch: Dict) -> Tuple[Cameras, Dict]:
    """The camera of the image's right half (the same pinhole, its principal point shifted) and the
    batch's image cropped to it: rendering and metrics then cover the right half only."""
    start = left_columns(int(camera.width.reshape(-1)[0]))
    cropped = Cameras(
        camera_to_worlds=camera.camera_to_worlds, fx=camera.fx, fy=camera.fy, cx=camera.cx - start, cy=camera.cy,
        width=camera.width - start, height=camera.height, distortion_params=camera.distortion_params,
        camera_type=camera.camera_type, times=camera.times, metadata=camera.metadata,
    )
    return cropped, {**batch, **{key: batch[key][:, start:] for key in ("image", "mask") if key in batch}}


class LeftHalfFitted:
    """The eval dataloader's (camera, batch) pairs, each image's appearance fitted on its left half
    before it is handed on, as the camera and image of its right half: nerfstudio's evaluation loop then
    renders and scores the right half with the fitted embeddings (and times only the rendering)."""

    def __init__(self, loader, model, steps: int, rays_per_step: int, lr: float) -> None:
        self.loader, self.model = loader, model
        self.steps, self.rays_per_step, self.lr = steps, rays_per_step, lr

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        try:
            for index, (camera, batch) in enumerate(self.loader):
                fit_left_half(
                    self.model, camera, batch["image"], self.steps, self.rays_per_step, self.lr, seed=index, keep=batch.get("mask")
                )
                yield right_half(camera, batch)
        finally:
            clear_fitted(self.model)
