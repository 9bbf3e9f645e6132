"""The partitioned model: merged field = cell field inside the cell, one cell per training batch."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.field_components.field_heads import FieldHeadNames

from async_nerf_ns.data.ray_keys import CELL_BATCH_KEY, DEPTH_FRAME_KEY
from async_nerf_ns.method import async_nerf_small_config
from async_nerf_ns.model.merged import MergedDensityFn, MergedField
from async_nerf_ns.model.model import AsyncNerfModel
from async_nerf_ns.partition.routing import border_blend, route_to_cells

# A 2x2 grid of centroids on the ground plane (world x-y); routing uses x-y only.
CENTROIDS = torch.tensor([[-0.5, -0.5, 0.0], [-0.5, 0.5, 0.0], [0.5, -0.5, 0.0], [0.5, 0.5, 0.0]])
NUM_IMAGES = 5


@pytest.fixture(scope="module")
def model() -> AsyncNerfModel:
    torch.manual_seed(0)
    config = dataclasses.replace(async_nerf_small_config().pipeline.model, implementation="torch")
    model = config.setup(
        scene_box=SceneBox(aabb=torch.tensor([[-1.5] * 3, [1.5] * 3])),
        num_train_data=NUM_IMAGES,
        metadata={},
        centroids=CENTROIDS,
        num_depth_frames=3,
        device="cpu",
    )
    # Different random weights per cell, so that routing to the wrong cell would show.
    with torch.no_grad():
        for k, cell in enumerate(model.cells):
            for p in cell.parameters():
                p.add_(0.05 * (k + 1) * torch.randn_like(p))
    return model.eval()


def _bundle(n: int, seed: int) -> RayBundle:
    g = torch.Generator().manual_seed(seed)
    origins = torch.rand(n, 3, generator=g) * 1.6 - 0.8
    origins[:, 2] = 0.6
    directions = torch.nn.functional.normalize(torch.randn(n, 3, generator=g) * 0.3 + torch.tensor([0, 0, -1.0]), dim=-1)
    return RayBundle(
        origins=origins,
        directions=directions,
        pixel_area=torch.full((n, 1), 1e-4),
        camera_indices=torch.randint(NUM_IMAGES, (n, 1), generator=g),
        nears=torch.full((n, 1), 0.05),
        fars=torch.full((n, 1), 2.0),
    )


def test_model_has_one_cell_per_centroid_and_groups_per_cell(model: AsyncNerfModel):
    assert model.num_cells == 4
    groups = model.get_param_groups()
    assert {f"cell{k}.fields" for k in range(4)} <= set(groups)
    assert {f"cell{k}.proposal_networks" for k in range(4)} <= set(groups)
    # The small preset refines depth poses (SO3xR3) and not RGB poses.
    assert "depth_pose_opt" in groups and "camera_opt" not in groups


def test_merged_density_equals_each_cells_density_inside_its_cell(model: AsyncNerfModel):
    points = torch.rand(4000, 3) * 2.0 - 1.0
    cells = route_to_cells(points, CENTROIDS)
    with torch.no_grad():
        for iteration in range(model.config.num_proposal_iterations):
            merged = MergedDensityFn(model.router, iteration)(points)
            for k in range(4):
                inside = cells == k
                assert inside.sum() > 500  # the random points cover every cell
                own = model.cells[k].density_fns[iteration](points[inside])
                assert torch.equal(merged[inside], own), f"cell {k}, proposal {iteration}"
                other = model.cells[(k + 1) % 4].density_fns[iteration](points[inside])
                assert not torch.allclose(merged[inside], other)


def test_merged_field_equals_cell_field_on_ray_samples_inside_the_cell(model: AsyncNerfModel):
    bundle = _bundle(64, seed=1)
    with torch.no_grad():
        samples, _, _ = model.proposal_sampler(bundle, density_fns=model.density_fns)
        merged = MergedField(model.router)(samples)
        cells = route_to_cells(samples.frustums.get_positions(), CENTROIDS)
        for k in range(4):
            inside = cells == k
            own = model.cells[k].field.forward(samples[inside])
            for name, value in own.items():
                assert torch.equal(merged[name][inside], value), f"{name} differs in cell {k}"


def test_border_blend_weights_by_hand():
    # Centroids at x = -0.5 and 0.5, margin 1.15: on the border (x = 0) the two cells weigh 1/2 each; the
    # band ends where the distance ratio reaches 1.15: 0.5 - x = 1.15 (x + 0.5), x = -0.075 / 2.15.
    edge = -0.075 / 2.15
    points = torch.tensor([[0.0, 0.3, 0.0], [edge / 2, 0.0, 0.0], [edge * 1.01, 0.0, 0.0], [0.2, -0.1, 0.5]])
    first, second, weight = border_blend(points, torch.tensor([[-0.5, 0.0, 0.0], [0.5, 0.0, 0.0]]), 1.15)
    assert first.tolist() == [0, 0, 0, 1] and second.tolist() == [1, 1, 1, 0]
    ratio_half = (0.5 - edge / 2) / (edge / 2 + 0.5)
    expected = [0.5, 0.5 * (1 - (ratio_half - 1) / 0.15), 0.0, 0.0]
    assert torch.allclose(weight, torch.tensor(expected), atol=1e-6)


def test_blended_merged_field_mixes_the_two_nearest_cells_in_the_band(model: AsyncNerfModel, monkeypatch):
    bundle = _bundle(64, seed=3)
    with torch.no_grad():
        samples, _, _ = model.proposal_sampler(bundle, density_fns=model.density_fns)
        flat = samples.flatten()
        hard = MergedField(model.router)(flat)
        monkeypatch.setattr(model.router, "blend_margin", 1.15)
        blended = MergedField(model.router)(flat)
        first, second, weight = border_blend(flat.frustums.get_positions(), CENTROIDS, 1.15)
        band = weight > 0
        assert 50 < int(band.sum()) < len(flat) // 2  # the random rays cross borders
        every_cell = [cell.field.forward(flat) for cell in model.cells]  # each cell on every sample
        rows = torch.arange(len(flat))
        for name in (FieldHeadNames.DENSITY, FieldHeadNames.RGB):
            assert torch.equal(blended[name][~band], hard[name][~band])  # outside the band: the nearest cell
            by_cell = torch.stack([outputs[name] for outputs in every_cell])  # (cells, samples, channels)
            mine, theirs = by_cell[first, rows], by_cell[second, rows]
            w = weight[:, None]
            expected = (1 - w) * mine + w * theirs
            assert torch.allclose(blended[name][band], expected[band], atol=1e-5), name


def test_training_batch_renders_and_steps_only_its_cell(model: AsyncNerfModel):
    model.train()
    try:
        bundle = _bundle(32, seed=2)
        model.zero_grad(set_to_none=True)
        steps = [cell.step_count for cell in model.cells]
        batch = {CELL_BATCH_KEY: 2, "image": torch.rand(32, 3)}
        outputs = model(bundle, batch=batch)
        model.get_metrics_dict(outputs, batch)
        # Rendering and scoring change no state: no clock (CellSchedule does), no train PSNR (the pipeline's step).
        assert [cell.step_count for cell in model.cells] == steps and torch.isnan(model.cells[2].train_psnr)
        outputs["rgb"].sum().backward()
        with_grad = {k for k, cell in enumerate(model.cells) if any(p.grad is not None for p in cell.parameters())}
        assert with_grad == {2}
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_depth_rays_get_depth_pose_corrections_only_once_refinement_started(model: AsyncNerfModel):
    """The batch's last rays are its depth rays (data/ray_keys.py); stage 3 starts on the cell's own clock."""
    rig = model.camera_optimizer
    with torch.no_grad():
        rig.depth.pose_adjustment[1] = torch.tensor([0.1, 0.0, 0.0, 0.0, 0.0, 0.0])
    cell = model.cells[0]
    try:
        bundle = _bundle(4, seed=3)
        batch = {CELL_BATCH_KEY: 0, DEPTH_FRAME_KEY: torch.tensor([1, 1, 0])}  # rays 1..3: depth rays
        before = bundle.origins.clone()
        cell.step_count = model.config.depth_pose_refine_start
        model.training_view(batch).camera_optimizer.apply_to_raybundle(bundle)
        assert torch.equal(bundle.origins, before)
        cell.step_count += 1
        model.training_view(batch).camera_optimizer.apply_to_raybundle(bundle)
        shift = bundle.origins - before
        assert torch.allclose(shift[1], torch.tensor([0.1, 0.0, 0.0])) and torch.allclose(shift[2], shift[1])
        assert torch.equal(shift[0], torch.zeros(3)) and torch.equal(shift[3], torch.zeros(3))
    finally:
        cell.step_count = 0
        with torch.no_grad():
            rig.depth.pose_adjustment.zero_()


def test_the_schedule_callbacks_advance_and_anneal_only_the_cell_that_trains(model: AsyncNerfModel):
    """nerfacto's schedules as training callbacks (`CellSchedule`): step s trains cell_of_step(s), on its own clock."""
    from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation

    data = SimpleNamespace(datamanager=SimpleNamespace(cell_of_step=lambda step: 3))
    callbacks = model.get_training_callbacks(TrainingCallbackAttributes(None, None, data, None))  # type: ignore[arg-type]
    anneals, merged_anneal = [cell.sampler._anneal for cell in model.cells], model.proposal_sampler._anneal
    try:
        for where in (TrainingCallbackLocation.BEFORE_TRAIN_ITERATION, TrainingCallbackLocation.AFTER_TRAIN_ITERATION):
            for callback in callbacks:
                callback.run_callback_at_location(100, where)  # the global step: not the cell's
        assert [cell.step_count for cell in model.cells] == [0, 0, 0, 1] and int(model.cells[3].steps) == 1
        assert [cell.sampler._anneal for cell in model.cells][:3] == anneals[:3]
        x, b = 1 / model.config.proposal_weights_anneal_max_num_iters, model.config.proposal_weights_anneal_slope
        assert model.cells[3].sampler._step == 1  # step_cb on the cell's step, not the global one
        assert model.cells[3].sampler._anneal == pytest.approx(b * x / ((b - 1) * x + 1))  # nerfacto's anneal at step 1
        assert model.proposal_sampler._anneal == model.cells[3].sampler._anneal  # merged: the least-trained cell's
    finally:  # the module's model as it was
        model.cells[3].step_count = 0
        model.cells[3].steps.fill_(0)
        model.cells[3].sampler.restore(0, 0)
        model.cells[3].sampler.set_anneal(anneals[3])
        model.proposal_sampler.set_anneal(merged_anneal)
