"""The partition in the viewer (async_nerf_ns/viewer): its elements and their values, the render modes,
the region outlines. (The end-to-end test reads them from a running ns-viewer.)"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.viewer.utils import parse_object
from nerfstudio.viewer.viewer_elements import ViewerControl, ViewerElement

from async_nerf_ns.method import async_nerf_small_config
from async_nerf_ns.model import merged
from async_nerf_ns.model.merged import ViewMode
from async_nerf_ns.partition.routing import route_to_cells
from async_nerf_ns.shards.format import read_manifest
from async_nerf_ns.viewer.cells_panel import with_cluster_progress
from async_nerf_ns.viewer.outlines import cell_outlines
from async_nerf_ns.viewer.partition_view import render_modes, view_mode
from examples.make_scene import SceneSpec, generate_scene

SPEC = SceneSpec(num_rgb=32, width=32, height=24, depth_width=24, depth_height=18, write_preview=False)
STEPS = 8


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    scene = generate_scene(tmp_path_factory.mktemp("viewer") / "scene", SPEC)
    config = async_nerf_small_config()
    config.machine.device_type = "cpu"
    config.pipeline.datamanager.data = scene
    config.pipeline.model.implementation = "torch"
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    pipeline.train()
    callbacks = pipeline.get_training_callbacks(TrainingCallbackAttributes(None, None, pipeline, None))
    for step in range(STEPS):  # as nerfstudio's trainer runs a step: the callbacks advance each cell's clock
        for callback in callbacks:
            callback.run_callback_at_location(step, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        _, losses, _ = pipeline.get_train_loss_dict(step)
        sum(losses.values()).backward()
        for callback in callbacks:
            callback.run_callback_at_location(step, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
    return pipeline.eval()


def test_the_viewer_finds_the_partition_elements_with_the_runs_values(pipeline):
    elements = dict(parse_object(pipeline, ViewerElement, "Custom Elements"))
    assert {"Custom Elements/partition/render_mode", "Custom Elements/partition/show_cells",
            "Custom Elements/partition/show_depth_frames", "Custom Elements/partition/depth_every",
            "Custom Elements/partition/cells_panel"} <= set(elements)
    assert elements["Custom Elements/partition/render_mode"].options == ["merged", "colour by cell"] + [f"cell {k} only" for k in range(4)]
    assert [c for _, c in parse_object(pipeline, ViewerControl, "Custom Elements")] == [pipeline.partition.scene_control]
    # The cells panel: each cell's own steps (round-robin: 8 steps over 4 cells), its last train PSNR and
    # its training data as counted in the ray shards.
    sampler = pipeline.datamanager.train_pixel_sampler
    rgb = {c["cell"]: c["records"] for c in read_manifest(sampler.rgb_set)["cells"]}
    depth = {c["cell"]: c["records"] for c in read_manifest(sampler.depth_set)["cells"]}
    statuses = pipeline.partition.statuses()
    assert [s.steps for s in statuses] == [STEPS // 4] * 4
    assert [s.rgb_rays for s in statuses] == [rgb[k] for k in range(4)] and all(v > 0 for v in rgb.values())
    assert [s.depth_rays for s in statuses] == [depth[k] for k in range(4)]
    assert all(s.train_psnr is not None and 5 < s.train_psnr < 40 for s in statuses)
    table = pipeline.partition.refresh()
    assert table.count("\n") == 1 + 4 and f"| 2 | {STEPS // 4} |" in table
    # Depth frames drawn: every n-th, at most max_depth_frustums.
    frames = len(pipeline.depth_track)
    pipeline.partition._max_frustums = 5
    assert len(pipeline.partition.drawn_depth_frames()) <= 5 and pipeline.partition.drawn_depth_frames()[0] == 0
    pipeline.partition._max_frustums = 200
    assert len(pipeline.partition.drawn_depth_frames()) == frames


def test_cluster_progress_files_update_the_panel(pipeline, tmp_path):
    run = tmp_path / "run"
    (run / "cells" / "cell_001").mkdir(parents=True)
    (run / "cells" / "cell_002").mkdir(parents=True)
    (run / "run_config.yml").write_text("")
    (run / "cells" / "cell_001" / "progress.json").write_text(json.dumps({"step": 37, "state": "training", "host": "n2", "attempt": 2, "train_psnr": 21.5}))
    (run / "cells" / "cell_002" / "DONE.json").write_text(json.dumps({"step": 99, "host": "n1", "train_psnr": 24.0}))
    statuses = with_cluster_progress(pipeline.partition.statuses(), run)
    assert [(s.steps, s.state) for s in statuses] == [
        (0, "not started"), (37, "training on n2 (attempt 2)"), (100, "done on n1"), (0, "not started")]
    assert statuses[1].train_psnr == 21.5 and statuses[2].train_psnr == 24.0


def _vertical_rays(xy: torch.Tensor, top: float, bottom: float) -> RayBundle:
    n = len(xy)
    return RayBundle(
        origins=torch.cat([xy, torch.full((n, 1), top)], dim=1),
        directions=torch.tensor([[0.0, 0.0, -1.0]]).repeat(n, 1),
        pixel_area=torch.full((n, 1), 1e-5),
        camera_indices=torch.zeros(n, 1, dtype=torch.long),
        nears=torch.full((n, 1), 0.05),
        fars=torch.full((n, 1), top - bottom),
    )


def _render(model, rays: RayBundle, mode: ViewMode, monkeypatch) -> dict:
    monkeypatch.setattr(merged, "in_viewer_thread", lambda: True)  # what the viewer's render thread sees
    model.router.view = mode
    try:
        torch.manual_seed(0)
        with torch.no_grad():
            return model(rays)
    finally:
        model.router.view = ViewMode()


def test_cell_k_only_renders_nothing_outside_cell_k_and_the_merged_field_inside(pipeline, monkeypatch):
    model = pipeline.model
    centroids = model.centroids.detach()
    # Straight-down rays: every sample of a ray has the ray's ground position, so it routes to one cell.
    generator = torch.Generator().manual_seed(3)
    xy = (torch.rand(200, 2, generator=generator) * 2 - 1) * centroids[:, :2].abs().max() * 1.5
    cell_of_ray = route_to_cells(torch.cat([xy, torch.zeros(200, 1)], dim=1), centroids)
    rays = _vertical_rays(xy, top=float(centroids[0, 2]) + 0.4, bottom=-1.0)
    merged_outputs = _render(model, rays, ViewMode(), monkeypatch)
    for k in range(model.num_cells):
        alone = _render(model, rays, ViewMode(only_cell=k), monkeypatch)
        inside, outside = cell_of_ray == k, cell_of_ray != k
        assert inside.sum() > 10 and outside.sum() > 10
        assert torch.equal(alone["accumulation"][outside], torch.zeros_like(alone["accumulation"][outside]))
        torch.testing.assert_close(alone["rgb"][inside], merged_outputs["rgb"][inside], atol=1e-5, rtol=0)
        torch.testing.assert_close(alone["accumulation"][inside], merged_outputs["accumulation"][inside], atol=1e-5, rtol=0)
    assert merged_outputs["accumulation"].min() > 0.01  # the cells did render something there


def test_colour_by_cell_changes_colours_only_and_never_outside_the_viewer(pipeline, monkeypatch):
    model = pipeline.model
    xy = torch.tensor([[0.1, 0.2], [-0.3, 0.1], [0.25, -0.3], [-0.2, -0.2]])
    rays = _vertical_rays(xy, top=float(model.centroids[0, 2]) + 0.4, bottom=-1.0)
    plain = _render(model, rays, ViewMode(), monkeypatch)
    tinted = _render(model, rays, ViewMode(tint=True), monkeypatch)
    assert torch.equal(tinted["accumulation"], plain["accumulation"])
    assert torch.equal(tinted["depth"], plain["depth"])
    assert (tinted["rgb"] - plain["rgb"]).abs().max() > 0.05
    # Outside the viewer's thread (ns-eval, ns-render, training) the mode is never applied.
    monkeypatch.setattr(merged, "in_viewer_thread", lambda: False)
    model.router.view = ViewMode(tint=True)
    try:
        torch.manual_seed(0)
        with torch.no_grad():
            assert torch.equal(model(rays)["rgb"], plain["rgb"])
    finally:
        model.router.view = ViewMode()


def test_render_mode_names():
    assert render_modes(2) == ["merged", "colour by cell", "cell 0 only", "cell 1 only"]
    assert view_mode("cell 1 only") == ViewMode(only_cell=1)
    assert view_mode("colour by cell") == ViewMode(tint=True)
    assert view_mode("merged") == ViewMode()


def test_outlines_of_two_cells_are_their_bisector_and_the_margins_apollonius_circles():
    """Centroids at x = -1 and +1: the regions meet at x = 0; with margin m, cell 0's region extends to
    |p - c0| <= m |p - c1|, whose edge crosses the x axis at (m - 1) / (m + 1) (+0.0698 for m = 1.15)."""
    centroids = np.array([[-1.0, 0.0], [1.0, 0.0]])
    regions = cell_outlines(centroids, 1.0, (-3, 3, -2, 2), resolution=301)
    boundary = np.concatenate(regions[0])
    inner = boundary[(np.abs(boundary[:, 0]) < 2.9) & (np.abs(boundary[:, 1]) < 1.9)]
    np.testing.assert_allclose(inner[:, 0], 0.0, atol=1e-9)
    margin = np.concatenate(cell_outlines(centroids, 1.15, (-3, 3, -2, 2), resolution=601)[0])
    on_axis = margin[np.abs(margin[:, 1]) < 0.01]
    assert np.abs(on_axis[:, 0] - 0.15 / 2.15).min() < 0.01
