"""Occupancy-grid rendering of the merged field (model/occupancy.py), as far as a CPU can test it.

What runs here for real: the grid filling (pure torch), the choice of path, the packed median depth,
and the rendering code around nerfacc. nerfacc's ray traversal and packed transmittance are CUDA
kernels; to test the code around them, `cpu_nerfacc` swaps in pure-torch stand-ins written from
nerfacc 0.5.2's documented semantics (constant steps, samples kept where their midpoint's voxel is
occupied, then nerfacc's visibility rule). They test our wiring, not nerfacc's kernels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from types import SimpleNamespace

import nerfacc
import pytest
import torch
from nerfacc.grid import _query, _ray_aabb_intersect
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.model_components.renderers import AccumulationRenderer, DepthRenderer, RGBRenderer
from nerfstudio.model_components.shaders import NormalsShader

from async_nerf_ns.data.ray_keys import CELL_BATCH_KEY
from async_nerf_ns.method import async_nerf_small_config
from async_nerf_ns.model import occupancy
from async_nerf_ns.model.model import AsyncNerfModel, AsyncNerfModelConfig
from async_nerf_ns.model.occupancy import (
    OccupancyConfig,
    OccupancyGrid,
    OccupancyUnavailable,
    fill_grid,
    pack_info,
    packed_median_depth,
    use_occupancy,
)

UNIT_BOX = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
CUDA = torch.device("cuda")  # a device name only: nothing is allocated on it


def _box(x: torch.Tensor, low, high) -> torch.Tensor:
    return ((x >= torch.tensor(low)) & (x < torch.tensor(high))).all(dim=-1)


def _occupied(grid: OccupancyGrid) -> set:
    return {tuple(index) for index in torch.nonzero(grid.binaries).tolist()}


# --- filling ---------------------------------------------------------------------------------------
# Grid: unit box, 8^3, 2 levels. Level 0 voxels are 0.25 wide ([-1, 1]), level 1 voxels 0.5 ([-2, 2]).
# Voxel index i covers [low + i*w, low + (i+1)*w).


def _dense_box(x: torch.Tensor) -> torch.Tensor:
    """Density 100 in [0, 0.5) x [0, 0.5) x [-0.25, 0), 0 elsewhere."""
    return (100.0 * _box(x, [0.0, 0.0, -0.25], [0.5, 0.5, 0.0]).float())[:, None]


def test_fill_marks_exactly_the_voxels_where_the_density_is_high():
    grid = OccupancyGrid(UNIT_BOX, 8, 2, 1e-4)
    fill_grid(grid, _dense_box, step_size=0.01, threshold=0.01, samples_per_axis=2, dilation=0)
    # Hand-computed: level 0, x and y in [0, 0.5) are voxels 4 and 5, z in [-0.25, 0) is voxel 3.
    # Level 1: x, y voxel 4 ([0, 0.5)), z voxel 3 ([-0.5, 0)): its sub-voxel samples at z = -0.375
    # and -0.125 include one inside the box, so the voxel is occupied.
    expected = {(0, i, j, 3) for i in (4, 5) for j in (4, 5)} | {(1, 4, 4, 3)}
    assert _occupied(grid) == expected
    # occupancy = max density x step = 1.0 in those voxels, 0 elsewhere
    assert float(grid.occs.max()) == pytest.approx(1.0) and float(grid.occs.sum()) == pytest.approx(5.0)
    # nerfacc's own lookup (what its traversal reads) agrees with our indexing at voxel centres.
    inside = torch.tensor([[0.125, 0.375, -0.125], [1.25, 1.25, -0.25]])  # level-0 voxel (4,5,3); level 1 (6,6,3)
    values, _ = _query(inside, grid.binaries, grid.aabbs[0])
    assert values.tolist() == [True, False]


def test_threshold_is_nerfaccs_min_of_mean_and_threshold():
    """Density x step: 1.0 below z = 0 (half the grid: the mean is ~0.5, far above the threshold, so the
    threshold 0.01 applies), 0.015 (occupied) in one box above, 0.005 (empty) in another, 0 elsewhere."""

    def density(x):
        d = torch.where(x[:, 2] < 0, 100.0, 0.0)
        d = torch.where(_box(x, [0.0, 0.0, 0.5], [0.25, 0.25, 0.75]), 1.5, d)
        d = torch.where(_box(x, [-0.5, -0.5, 0.5], [-0.25, -0.25, 0.75]), 0.5, d)
        return d[:, None]

    grid = OccupancyGrid(UNIT_BOX, 8, 1, 1e-4)
    fill_grid(grid, density, step_size=0.01, threshold=0.01, samples_per_axis=2, dilation=0)
    assert float(grid.occs.mean()) > 0.4  # so a mean-only rule would leave the 0.015 box empty
    below_ground = {(0, i, j, k) for i in range(8) for j in range(8) for k in range(4)}
    assert _occupied(grid) == below_ground | {(0, 4, 4, 6)}  # the 0.015 box; the 0.005 box (2, 2, 6) is empty


def test_dilation_adds_the_neighbours_of_each_level():
    grid = OccupancyGrid(UNIT_BOX, 8, 2, 1e-4)
    fill_grid(grid, _dense_box, step_size=0.01, threshold=0.01, samples_per_axis=2, dilation=1)
    level0 = {(0, i, j, k) for i in range(3, 7) for j in range(3, 7) for k in range(2, 5)}
    level1 = {(1, i, j, k) for i in range(3, 6) for j in range(3, 6) for k in range(2, 5)}
    assert _occupied(grid) == level0 | level1  # 48 + 27 voxels


def test_fill_evaluates_in_chunks_with_the_same_result():
    sizes = []

    def recording(x):
        sizes.append(len(x))
        return _dense_box(x)

    whole, chunked = OccupancyGrid(UNIT_BOX, 8, 2, 1e-4), OccupancyGrid(UNIT_BOX, 8, 2, 1e-4)
    fill_grid(whole, _dense_box, 0.01, 0.01, samples_per_axis=2)
    fill_grid(chunked, recording, 0.01, 0.01, samples_per_axis=2, chunk=100)
    assert max(sizes) <= 100 and sum(sizes) == 2 * 8**3 * 8  # every sub-voxel point once, 100 at most a call
    assert torch.equal(whole.occs, chunked.occs) and torch.equal(whole.binaries, chunked.binaries)


def test_a_single_sample_per_voxel_misses_what_the_sub_voxel_samples_find():
    """A slab z in [-0.1, -0.05) lies between level-0 voxel 3's centre (-0.125) and its top: one sample
    per voxel (at the centre) misses it; 2 per axis (at -0.1875 and -0.0625) find it."""

    def slab(x):
        return (100.0 * ((x[:, 2] >= -0.1) & (x[:, 2] < -0.05)).float())[:, None]

    grids = {s: OccupancyGrid(UNIT_BOX, 8, 1, 1e-4) for s in (1, 2)}
    for s, grid in grids.items():
        fill_grid(grid, slab, 0.01, 0.01, samples_per_axis=s)
    assert not grids[1].binaries.any()
    assert _occupied(grids[2]) == {(0, i, j, 3) for i in range(8) for j in range(8)}


# --- which path --------------------------------------------------------------------------------------
def test_auto_renders_with_the_proposal_sampler_off_cuda_and_the_grid_on_cuda():
    assert use_occupancy("auto", torch.device("cpu"), kernels_available=lambda: True) is False
    assert use_occupancy("auto", CUDA, kernels_available=lambda: True) is True
    # auto: the viewer's renders only; ns-eval and ns-render keep the sampler the cells were trained with.
    assert use_occupancy("auto", CUDA, viewer=False, kernels_available=lambda: True) is False
    assert use_occupancy("occupancy", CUDA, viewer=False, kernels_available=lambda: True) is True
    assert use_occupancy("proposal", CUDA, kernels_available=lambda: True) is False
    assert use_occupancy("occupancy", CUDA, kernels_available=lambda: True) is True
    occupancy._warn_fallback.cache_clear()  # the warning is given once per process
    with pytest.warns(UserWarning, match="proposal sampler"):
        assert use_occupancy("auto", CUDA, kernels_available=lambda: False) is False


def test_asking_for_occupancy_where_it_cannot_run_says_why():
    with pytest.raises(OccupancyUnavailable, match="CUDA.*on cpu"):
        use_occupancy("occupancy", torch.device("cpu"))
    with pytest.raises(OccupancyUnavailable, match="nvcc"):
        use_occupancy("occupancy", CUDA, kernels_available=lambda: False)
    with pytest.raises(ValueError, match="auto, proposal or occupancy"):
        use_occupancy("grid", CUDA)


# --- the model ---------------------------------------------------------------------------------------
def test_a_config_yml_written_before_these_fields_reads_their_defaults():
    """config.yml files are read with yaml.Loader, which sets only the fields they hold: the others are
    class attributes (plain defaults) or, for the nested occupancy options, built by ``__setstate__``."""
    from pathlib import Path

    import yaml

    old = yaml.load(
        (Path(__file__).parent / "fixtures" / "main_4d66aac_small_a_config.yml").read_text(), Loader=yaml.Loader
    )
    model_config = old.pipeline.model
    assert model_config.eval_sampler == "auto" and "eval_sampler" not in vars(model_config)
    assert model_config.occupancy == OccupancyConfig()


CENTROIDS = torch.tensor([[-0.5, -0.5, 0.0], [-0.5, 0.5, 0.0], [0.5, -0.5, 0.0], [0.5, 0.5, 0.0]])


@pytest.fixture(scope="module")
def model() -> AsyncNerfModel:
    torch.manual_seed(0)
    config = dataclasses.replace(
        async_nerf_small_config().pipeline.model,
        implementation="torch",
        occupancy=OccupancyConfig(grid_resolution=8, grid_levels=2, cone_angle=0.0),
    )
    model = config.setup(
        scene_box=SceneBox(aabb=torch.tensor([[-1.5] * 3, [1.5] * 3])),
        num_train_data=5,
        metadata={},
        centroids=CENTROIDS,
        num_depth_frames=0,
        device="cpu",
    )
    with torch.no_grad():  # different weights per cell, so that routing shows
        for k, cell in enumerate(model.cells):
            for p in cell.parameters():
                p.add_(0.05 * (k + 1) * torch.randn_like(p))
    return model.eval()


@contextlib.contextmanager
def _sampler(model: AsyncNerfModel, setting: str):
    previous, model.config.eval_sampler = model.config.eval_sampler, setting
    try:
        yield
    finally:
        model.config.eval_sampler = previous


def _bundle(n: int, seed: int = 0) -> RayBundle:
    g = torch.Generator().manual_seed(seed)
    origins = torch.rand(n, 3, generator=g) * 1.6 - 0.8
    origins[:, 2] = 0.6
    directions = torch.nn.functional.normalize(
        torch.randn(n, 3, generator=g) * 0.3 + torch.tensor([0, 0, -1.0]), dim=-1
    )
    return RayBundle(
        origins=origins,
        directions=directions,
        pixel_area=torch.full((n, 1), 1e-4),
        camera_indices=torch.zeros((n, 1), dtype=torch.long),
    )


def test_model_on_cpu_renders_with_the_proposal_sampler_unless_told_occupancy(model: AsyncNerfModel, monkeypatch):
    def no_grid(*args, **kwargs):
        raise AssertionError("the occupancy path was taken")

    monkeypatch.setattr(occupancy.OccupancyRenderer, "render", no_grid)
    with torch.no_grad():
        with _sampler(model, "auto"):
            auto = model(_bundle(32))
        with _sampler(model, "proposal"):
            proposal = model(_bundle(32))
        assert torch.equal(auto["rgb"], proposal["rgb"])
        with (
            _sampler(model, "occupancy"),
            pytest.raises(OccupancyUnavailable, match="eval_sampler to auto or proposal.*config.yml"),
        ):
            model(_bundle(32))


def test_training_batches_use_the_proposal_sampler_whatever_eval_sampler_says(model: AsyncNerfModel):
    model.train()
    try:
        with _sampler(model, "occupancy"):
            outputs = model(_bundle(16), batch={CELL_BATCH_KEY: 1})
        assert "weights_list" in outputs  # nerfacto's proposal outputs
    finally:
        model.eval()


def test_the_grid_is_filled_from_the_merged_density_and_is_in_no_state_dict(model: AsyncNerfModel):
    keys = set(model.state_dict())
    grid = model.occupancy_renderer.fill()
    assert set(model.state_dict()) == keys  # checkpoints keep their keys (tests/test_compat.py)
    # Level 0's voxel (1, 6, 2) of the 8^3 grid over the scene box [-1.5, 1.5]^3 (voxels 0.375 wide),
    # sampled at its 8 sub-voxel centres, against the merged field's density there.
    step = occupancy.auto_render_step_size(model.scene_box.aabb)
    assert step == pytest.approx(math.sqrt(27) / 1000)
    offsets = torch.tensor([[a, b, c] for a in (0.25, 0.75) for b in (0.25, 0.75) for c in (0.25, 0.75)])
    points = -1.5 + (torch.tensor([1.0, 6.0, 2.0]) + offsets) * 0.375
    with torch.no_grad():
        expected = model.field.density_fn(points).max() * step
    assert float(grid.occs[1 * 64 + 6 * 8 + 2]) == pytest.approx(float(expected), rel=1e-5)
    assert float(grid.occs[1 * 64 + 6 * 8 + 2]) > 0


# --- rendering, with nerfacc's CUDA parts replaced by pure-torch stand-ins ----------------------------
def _exclusive_sum_per_ray(values: torch.Tensor, packed_info: torch.Tensor) -> torch.Tensor:
    total = torch.cumsum(values.double(), 0)
    before = (total - values.double())[packed_info[:, 0].clamp(max=max(len(values) - 1, 0))]
    ray = torch.repeat_interleave(torch.arange(len(packed_info)), packed_info[:, 1])
    return (total - values.double() - before[ray]).to(values.dtype)


def _weights(t_starts, t_ends, sigmas, packed_info=None, ray_indices=None, n_rays=None, prefix_trans=None):
    """nerfacc.render_weight_from_density for packed samples: w = T (1 - exp(-sigma dt))."""
    sigmas_dt = sigmas * (t_ends - t_starts)
    trans = torch.exp(-_exclusive_sum_per_ray(sigmas_dt, packed_info))
    alphas = 1.0 - torch.exp(-sigmas_dt)
    return trans * alphas, trans, alphas


def _sampling(
    self,
    rays_o,
    rays_d,
    sigma_fn=None,
    alpha_fn=None,
    near_plane=0.0,
    far_plane=1e10,
    t_min=None,
    t_max=None,
    render_step_size=1e-3,
    early_stop_eps=1e-4,
    alpha_thre=0.0,
    stratified=False,
    cone_angle=0.0,
):
    """OccGridEstimator.sampling for constant steps: march from the near plane to the outer level's exit,
    keep steps whose midpoint's voxel is occupied, then nerfacc's visibility (transmittance >= eps,
    alpha >= min(alpha_thre, mean occupancy))."""
    assert cone_angle == 0.0 and not stratified and alpha_fn is None
    near = torch.full_like(rays_o[:, 0], near_plane) if t_min is None else t_min.clamp(min=near_plane)
    far = torch.full_like(rays_o[:, 0], far_plane) if t_max is None else t_max.clamp(max=far_plane)
    _, exit_outer, _ = _ray_aabb_intersect(rays_o, rays_d, self.aabbs[-1:])
    far = torch.minimum(far, exit_outer[:, 0])
    steps = int(torch.ceil((far - near).max() / render_step_size))
    t_starts = near[:, None] + render_step_size * torch.arange(steps)[None]
    t_ends = t_starts + render_step_size
    mids = rays_o[:, None] + rays_d[:, None] * ((t_starts + t_ends) / 2)[..., None]
    occupied, _ = _query(mids.reshape(-1, 3), self.binaries, self.aabbs[0])
    keep = occupied.reshape(t_starts.shape) & (t_ends <= far[:, None])
    ray_indices = torch.arange(len(rays_o))[:, None].expand_as(keep)[keep]
    t_starts, t_ends = t_starts[keep], t_ends[keep]
    if sigma_fn is not None and (alpha_thre > 0 or early_stop_eps > 0):
        alpha_thre = min(alpha_thre, self.occs.mean().item())
        _, trans, alphas = _weights(
            t_starts, t_ends, sigma_fn(t_starts, t_ends, ray_indices), pack_info(ray_indices, len(rays_o))
        )
        visible = trans >= early_stop_eps
        if alpha_thre > 0:
            visible &= alphas >= alpha_thre
        ray_indices, t_starts, t_ends = ray_indices[visible], t_starts[visible], t_ends[visible]
    return ray_indices, t_starts, t_ends


@pytest.fixture
def cpu_nerfacc(monkeypatch):
    monkeypatch.setattr(nerfacc.OccGridEstimator, "sampling", _sampling)
    monkeypatch.setattr(nerfacc, "render_weight_from_density", _weights)


RED, BLUE = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])


class SlabField:
    """Density ``sigma`` and colour red in the slab |x|, |y| < 0.5, -0.25 <= z <= 0; empty and blue elsewhere."""

    def __init__(self, sigma: float) -> None:
        self.sigma = sigma
        self.evaluated = 0

    def inside(self, x):
        return (x[..., :2].abs() < 0.5).all(-1) & (x[..., 2] >= -0.25) & (x[..., 2] <= 0.0)

    def density_fn(self, positions, times=None):
        return (self.sigma * self.inside(positions).float())[..., None]

    def __call__(self, ray_samples, compute_normals=False):
        x = ray_samples.frustums.get_positions()
        self.evaluated += x.shape[0]
        rgb = torch.where(self.inside(x)[..., None], RED, BLUE)
        return {FieldHeadNames.DENSITY: self.density_fn(x), FieldHeadNames.RGB: rgb}


def _slab_model(sigma: float, **options):
    """What OccupancyRenderer reads of a model, around a SlabField: nerfacto's renderers and config."""
    config = dataclasses.replace(
        AsyncNerfModelConfig(),
        occupancy=OccupancyConfig(grid_resolution=8, grid_levels=2, render_step_size=0.005, cone_angle=0.0),
        **options,
    )
    return SimpleNamespace(
        config=config,
        field=SlabField(sigma),
        cells=[],
        router=SimpleNamespace(rendering=lambda cell: contextlib.nullcontext()),
        scene_box=SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3])),
        renderer_rgb=RGBRenderer(background_color="last_sample").eval(),
        renderer_accumulation=AccumulationRenderer().eval(),
        renderer_depth=DepthRenderer(method="median").eval(),
        renderer_expected_depth=DepthRenderer(method="expected").eval(),
        normals_shader=NormalsShader(),
        device=torch.device("cpu"),
    )


def _renderer(model) -> occupancy.OccupancyRenderer:
    return occupancy.OccupancyRenderer(model.config.occupancy, model)


def _down_rays(xy) -> RayBundle:
    """Vertical rays from z = 0.5 (they cross the slab for t in [0.5, 0.75]), near 0, far 2 (NearFarCollider's)."""
    n = len(xy)
    origins = torch.cat([torch.tensor(xy, dtype=torch.float32), torch.full((n, 1), 0.5)], dim=1)
    return RayBundle(
        origins=origins,
        directions=torch.tensor([[0.0, 0.0, -1.0]]).repeat(n, 1),
        pixel_area=torch.full((n, 1), 1e-4),
        camera_indices=torch.zeros((n, 1), dtype=torch.long),
        nears=torch.zeros((n, 1)),
        fars=torch.full((n, 1), 2.0),
    )


def test_rendering_a_slab_gives_the_analytic_opacity_colour_and_depths(cpu_nerfacc):
    sigma = 4.0
    renderer = _renderer(_slab_model(sigma))
    out = renderer.render(_down_rays([[0.1, 0.2], [-0.3, 0.0], [0.8, 0.1]]))  # two through the slab, one beside it
    # Steps of 0.005 from t = 0 put exactly 50 sample midpoints in the slab (t in [0.5, 0.75]), so the
    # discrete sums equal the integrals: opacity 1 - exp(-sigma L), L = 0.25.
    opacity = 1 - math.exp(-sigma * 0.25)
    assert out["accumulation"][:, 0].tolist() == pytest.approx([opacity, opacity, 0.0], abs=1e-5)
    # "last_sample" background: the field's colour at the far end (blue) fills what the slab leaves.
    assert out["rgb"][0].tolist() == pytest.approx((opacity * RED + (1 - opacity) * BLUE).tolist(), abs=1e-5)
    assert out["rgb"][2].tolist() == pytest.approx(BLUE.tolist(), abs=1e-6)
    # Median depth: 1 - exp(-sigma (t - 0.5)) = 0.5 at t = 0.5 + ln 2 / sigma, within a step (the median
    # is a sample's midpoint); the ray that misses the slab gets its far end (2.0).
    assert float(out["depth"][0]) == pytest.approx(0.5 + math.log(2) / sigma, abs=0.005)
    assert float(out["depth"][2]) == pytest.approx(2.0)
    # Expected depth of a constant density on [a, a + L]: a + 1/sigma - L exp(-sigma L) / (1 - exp(-sigma L)).
    expected = 0.5 + 1 / sigma - 0.25 * math.exp(-sigma * 0.25) / opacity
    assert float(out["expected_depth"][0]) == pytest.approx(expected, abs=1e-4)
    assert set(out) == {"rgb", "accumulation", "depth", "expected_depth", "prop_depth_0", "prop_depth_1"}


def test_rays_stop_early_in_an_opaque_slab(cpu_nerfacc):
    """sigma = 1000: the transmittance after k steps of 0.005 is exp(-5k), below 1e-4 from k = 2, so two
    samples per ray reach the field. Without the density check when rendering (nerfstudio's
    VolumetricSampler runs it only in training) all 50 slab samples, and the empty ones of the
    occupied voxels, would."""
    model = _slab_model(1000.0)
    renderer = _renderer(model)
    out = renderer.render(_down_rays([[0.1, 0.2], [-0.3, 0.0]]))
    assert renderer.num_samples == 4
    assert out["accumulation"][:, 0].tolist() == pytest.approx([1 - math.exp(-10)] * 2, abs=1e-6)
    # The sampler's density check saw every sample of the occupied voxels along the rays, the field only 4.
    assert renderer.sampler.num_density_evaluations > 50 * 2
    assert model.field.evaluated == 4 + 2  # the 4 samples and the 2 rays' far-end background colours


def test_the_model_renders_through_the_grid_with_nerfactos_outputs(model: AsyncNerfModel, cpu_nerfacc, monkeypatch):
    monkeypatch.setattr(occupancy, "use_occupancy", lambda *args, **kwargs: True)  # as on CUDA
    renderer = model.occupancy_renderer
    fills = []
    monkeypatch.setattr(renderer, "fill", lambda device, fill=renderer.fill: fills.append(device) or fill(device))
    renderer.sampler = None
    bundle = _bundle(144, seed=3)  # a 12 x 12 image for ns-eval's metrics (SSIM's window is 11)
    with torch.no_grad():
        with _sampler(model, "occupancy"):
            first = model(bundle)
            model(bundle)
        assert len(fills) == 1  # filled when first needed, then reused
        with _sampler(model, "proposal"):
            proposal = model(bundle)
    tensors = {k for k, v in proposal.items() if isinstance(v, torch.Tensor)}
    assert tensors <= set(first)
    for key in tensors:
        assert first[key].shape == proposal[key].shape, key
        assert torch.isfinite(first[key]).all(), key
    # ns-eval's metrics and images take the occupancy outputs (prop_depth_i included).
    image = {k: v.reshape(12, 12, -1) for k, v in first.items()}
    metrics, images = model.get_image_metrics_and_images(image, {"image": torch.rand(12, 12, 3)})
    assert "psnr" in metrics and "prop_depth_0" in images
    # After occupancy.refresh_steps more cell steps the next render refills the grid.
    model.cells[0].step_count += model.config.occupancy.refresh_steps
    try:
        with torch.no_grad(), _sampler(model, "occupancy"):
            model(bundle)
    finally:
        model.cells[0].step_count -= model.config.occupancy.refresh_steps
    assert len(fills) == 2


def test_packed_median_depth_matches_nerfactos_median_on_the_same_samples():
    torch.manual_seed(1)
    weights = torch.rand(5, 7) * torch.tensor([[0.3], [0.05], [0.2], [0.0], [0.25]])  # ray 1 and 3 never reach 0.5
    steps = torch.sort(torch.rand(5, 7), dim=1).values
    from nerfstudio.cameras.rays import Frustums, RaySamples

    samples = RaySamples(
        Frustums(torch.zeros(5, 7, 3), torch.zeros(5, 7, 3), steps[..., None], steps[..., None], torch.ones(5, 7, 1))
    )
    nerfacto = DepthRenderer(method="median")(weights[..., None], samples)
    ray_indices = torch.arange(5).repeat_interleave(7)
    far = torch.full((5, 1), 9.0)
    packed = packed_median_depth(
        weights.reshape(-1, 1), steps.reshape(-1, 1), ray_indices, pack_info(ray_indices, 5), far
    )
    reaches = weights.sum(1) >= 0.5
    assert reaches.tolist() == [True, False, True, False, True]
    assert torch.equal(packed[reaches], nerfacto[reaches])
    assert packed[~reaches].tolist() == [[9.0], [9.0]]  # nerfacto: its last sample; here the ray's far end
