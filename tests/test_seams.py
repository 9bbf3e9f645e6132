"""The seam metric (partition/seams.py) on hand-computed images: steps across and within cells, the
border band, pooling over images as ns-eval averages them, and masked pixels."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.scene_box import SceneBox

from async_nerf_ns.method import async_nerf_small_config
from async_nerf_ns.model.model import OWNER_KEY
from async_nerf_ns.partition.seams import SUM_PREFIX, border_band, pooled_seam_metrics, seam_sums


def _image(offset_cell_1: float = 0.1, ramp: float = 0.01):
    """4x4 px, cell 0 on columns 0-1 and cell 1 on columns 2-3; the rendering's error is offset_cell_1 on
    cell 1 plus ramp x column (the same in R, G and B)."""
    truth = torch.rand(4, 4, 3, generator=torch.Generator().manual_seed(0)) * 0.5
    column = torch.arange(4.0)[None, :, None].expand(4, 4, 1)
    cells = (column[..., 0] >= 2).long()
    error = offset_cell_1 * (column >= 2) + ramp * column
    return truth + error, truth, cells


def _means(*images) -> dict:
    """What nerfstudio's get_average_image_metrics makes of per-image metrics: the mean of each key."""
    return {key: sum(m[key] for m in images) / len(images) for key in images[0]}


def test_steps_across_and_within_cells_and_the_border_band():
    predicted, truth, cells = _image()
    metrics = pooled_seam_metrics(_means(seam_sums(predicted, truth, cells, band_px=1)))
    # Across: 4 right-neighbour pairs (column 1 -> 2), step 0.1 + 0.01. Within: 8 right pairs of step 0.01
    # and 12 down pairs of step 0.
    assert metrics["seam_step_across_cells"] == pytest.approx(0.11, abs=1e-6)
    assert metrics["seam_step_within_cells"] == pytest.approx(8 * 0.01 / 20, abs=1e-6)
    assert metrics["seam_step_ratio"] == pytest.approx(0.11 / 0.004, rel=1e-4)
    # Band (1 px): columns 1 and 2 (errors 0.01 and 0.12); inside: columns 0 and 3 (errors 0 and 0.13).
    assert metrics["psnr_border_band"] == pytest.approx(-10 * math.log10((0.01**2 + 0.12**2) / 2), abs=1e-4)
    assert metrics["psnr_cell_interior"] == pytest.approx(-10 * math.log10(0.13**2 / 2), abs=1e-4)
    assert not any(key.startswith(SUM_PREFIX) for key in metrics)
    # A band 2 px wide covers the whole 4 px image: nothing inside to measure, so no interior PSNR.
    wide = pooled_seam_metrics(_means(seam_sums(predicted, truth, cells, band_px=2)))
    assert "psnr_cell_interior" not in wide and border_band(cells, 2).all()


def test_pooled_over_images_as_totals_and_masked_pixels_take_no_part():
    predicted, truth, cells = _image()
    one_cell = torch.zeros_like(cells)  # an image inside one cell: pairs within only
    metrics = pooled_seam_metrics(_means(seam_sums(predicted, truth, cells), seam_sums(predicted, truth, one_cell)))
    assert metrics["seam_step_across_cells"] == pytest.approx(0.11, abs=1e-6)  # only the first image has any
    within = (8 * 0.01 + (8 * 0.01 + 4 * 0.11)) / (20 + 24)
    assert metrics["seam_step_within_cells"] == pytest.approx(within, abs=1e-6)
    keep = torch.ones(4, 4, 1, dtype=torch.bool)
    keep[0, 2] = False  # one pixel of cell 1 on the border: its across pair and its 2 within pairs go
    masked = pooled_seam_metrics(_means(seam_sums(predicted, truth, cells, keep)))
    assert masked["seam_step_across_cells"] == pytest.approx(0.11, abs=1e-6)
    assert masked["seam_step_within_cells"] == pytest.approx(7 * 0.01 / 18, abs=1e-6)
    # No seam: the same error everywhere steps nowhere.
    flat = pooled_seam_metrics(_means(seam_sums(torch.full((4, 4, 3), 0.5), torch.zeros(4, 4, 3), cells)))
    assert flat["seam_step_across_cells"] == 0.0 and flat["seam_step_within_cells"] == 0.0
    assert "seam_step_ratio" not in flat  # 0 / 0: no ratio


def test_a_merged_render_says_which_cell_owns_each_pixel_and_ns_eval_reports_the_seams():
    """A 2-cell model's merged render of a camera looking straight down across the border: the owning cell
    of each pixel is the cell of its surface point, and the image metrics carry the seam sums."""
    config = dataclasses.replace(async_nerf_small_config().pipeline.model, implementation="torch")
    centroids = torch.tensor([[-0.5, 0.0, 0.0], [0.5, 0.0, 0.0]])
    torch.manual_seed(0)
    model = config.setup(scene_box=SceneBox(aabb=torch.tensor([[-1.5] * 3, [1.5] * 3])), num_train_data=2,
                         metadata={}, centroids=centroids, device="cpu").eval()
    camera = Cameras(camera_to_worlds=torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1.0]])[None],
                     fx=8.0, fy=8.0, cx=8.0, cy=6.0, width=16, height=12)
    with torch.no_grad():
        outputs = model.get_outputs_for_camera(camera)
    bundle = camera.generate_rays(camera_indices=0, keep_shape=True)
    surface = bundle.origins + bundle.directions * outputs["depth"]
    assert torch.equal(outputs[OWNER_KEY][..., 0].long(), (surface[..., 0] > 0).long())
    assert 0 < int(outputs[OWNER_KEY].sum()) < 16 * 12  # the border crosses the image
    metrics, _ = model.get_image_metrics_and_images(outputs, {"image": torch.rand(12, 16, 3)})
    pooled = pooled_seam_metrics(metrics)
    assert {"seam_step_across_cells", "seam_step_within_cells", "psnr_border_band"} <= set(pooled)
