"""Occupancy-grid rendering of the merged field on CUDA: empty space skipped, rays stopped early.

Training renders one cell with nerfacto's proposal sampler (CPU and CUDA alike). Rendering the
trained, merged field (ns-viewer, ns-eval, ns-render) can instead march rays through a nerfacc
occupancy grid, as nerfstudio's instant-ngp model does (``nerfstudio/models/instant_ngp.py``):

- **One grid over the whole partition**, filled from the merged density (``model.field.density_fn``,
  which routes every point to its cell). Not one grid per cell: the cells are Voronoi regions on
  the ground plane, not boxes, so per-cell grids would overlap in their boxes, and a ray would be
  marched through several of them and its samples merged and re-sorted before its transmittance
  (and so its early stop) could be computed. One grid is one nerfacc traversal per ray, and its
  occupancy is, by construction, the occupancy of the field that is rendered.
- **World space, over the scene box, in nerfacc's levels**: the cells' fields contract space
  (``SceneContraction``, inf norm); nerfacc >= 0.4 has no contraction and marches straight rays in
  world space. As nerfstudio's instant-ngp model does, the grid's finest level is the scene box and
  each further level doubles it (same resolution, so voxels grow with distance, as the
  contraction's cells do); the field evaluates its density with its own contraction. Content beyond
  the outermost level (box half-size x 2**(levels-1)) is not sampled; with nerfacto's default
  "last_sample" background those rays end on the field's colour at their far end, see below.
- **Options** in one `OccupancyConfig` (``--pipeline.model.occupancy.*``); the model builds its
  `OccupancyRenderer` in ``populate_modules``, as instant-ngp builds its grid.
- **Filled once** when first needed (the first render on CUDA), or on request (`OccupancyRenderer.fill`);
  again when the cells have trained ``refresh_steps`` more steps (a viewer during
  training). The fill is deterministic: every voxel's occupancy is its largest density at
  ``fill_samples``**3 points inside it times the render step (instant-ngp's
  ``density * render_step_size``), binarised as nerfacc does (above min(mean, threshold)), then dilated
  by ``dilation`` voxels. nerfacc's own ``update_every_n_steps`` is a training-time EMA over
  one random point per voxel per call, evaluated for the whole grid at once; here density is
  evaluated in chunks of ``fill_chunk`` points.
- **Rendering** follows instant-ngp's ``get_outputs``: nerfstudio's `VolumetricSampler` (here with its
  density check on when rendering too, which is what stops rays early: nerfstudio's runs it only in
  training), the merged field on the surviving packed samples, nerfacc's weights, nerfstudio's
  renderers. Outputs have nerfacto's keys: ``depth`` is the median depth as nerfacto's, computed for
  packed samples here; ``prop_depth_i`` (nerfacto's proposal depths, which ns-eval's images show)
  repeat ``depth``, as there are no proposal stages; nerfacto's default background "last_sample"
  (not implemented for packed samples in nerfstudio) is the field's colour at the ray's far end.

What needs CUDA: nerfacc's ray traversal and its packed scans (transmittance, weights) are CUDA
kernels (nerfacc builds them on first use; that needs nvcc, once per machine). The grid filling, the
packed median depth and the choice of path are pure torch and run (and are tested) on the CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Dict, Literal, Optional

import nerfacc
import torch
import tyro
import torch.nn.functional as F
from nerfacc import OccGridEstimator
from nerfstudio.cameras.rays import Frustums, RayBundle, RaySamples
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.model_components.ray_samplers import VolumetricSampler
from nerfstudio.utils.math import safe_normalize
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

EvalSampler = Literal["auto", "proposal", "occupancy"]
"""How the merged field is rendered: auto (occupancy grid on CUDA, proposal sampler on CPU)."""

DensityFn = Callable[[Tensor], Tensor]

HOW_TO_SET = (
    "ns-train: --pipeline.model.eval-sampler; ns-eval, ns-render, ns-viewer: pipeline.model.eval_sampler in the run's "
    "config.yml"
)


def _flat_flag(name: str):
    """The option's flag from before it moved into `OccupancyConfig` (``--pipeline.model.occupancy-NAME``),
    kept as an alias; config.yml files with the flat fields are read by ``AsyncNerfModelConfig.__setstate__``."""
    return tyro.conf.arg(aliases=(f"--pipeline.model.occupancy-{name.replace('_', '-')}",))


@dataclass
class OccupancyConfig:
    """The nerfacc occupancy grid that renders the merged field (``--pipeline.model.occupancy.*``; the old
    flat flags ``--pipeline.model.occupancy-*`` are aliases)."""

    grid_resolution: Annotated[int, _flat_flag("grid_resolution")] = 128
    """Voxels along each axis of every level of the occupancy grid."""
    grid_levels: Annotated[int, _flat_flag("grid_levels")] = 4
    """Levels of the grid: the first covers the scene box, each next one twice the previous extent.
    Nothing beyond the last (box half-size x 2**(levels-1)) is sampled."""
    render_step_size: Annotated[Optional[float], _flat_flag("render_step_size")] = None
    """Smallest step along a ray (scene units); None: the scene box's diagonal / 1000 (instant-ngp's)."""
    cone_angle: Annotated[float, _flat_flag("cone_angle")] = 0.004
    """Steps grow as distance x this (instant-ngp's value for real scenes; 0: constant steps)."""
    alpha_threshold: Annotated[float, _flat_flag("alpha_threshold")] = 0.01
    """Samples whose opacity is below this are skipped (capped by the grid's mean occupancy, as nerfacc does)."""
    early_stop_eps: Annotated[float, _flat_flag("early_stop_eps")] = 1e-4
    """A ray stops once its transmittance is below this."""
    threshold: Annotated[float, _flat_flag("threshold")] = 0.01
    """A voxel is occupied where max density x render step exceeds min(this, the mean over all voxels)."""
    fill_samples: Annotated[int, _flat_flag("fill_samples")] = 2
    """Density samples per voxel and axis when the grid is filled (this**3 per voxel; the voxel's max counts)."""
    dilation: Annotated[int, _flat_flag("dilation")] = 1
    """Voxels added around every occupied voxel after the fill: a margin for surfaces the fill's samples
    only graze (costs a few density samples per ray in front of each surface)."""
    fill_chunk: Annotated[int, _flat_flag("fill_chunk")] = 1 << 20
    """Points per density evaluation while the grid is filled (bounds its memory)."""
    refresh_steps: Annotated[int, _flat_flag("refresh_steps")] = 1000
    """The grid is refilled when the cells have trained this many steps (all cells together) since it was
    filled, e.g. in a viewer during training; 0: never (``OccupancyRenderer.fill`` refills on request)."""

    @classmethod
    def from_flat(cls, state: Dict[str, Any]) -> "OccupancyConfig":
        """The options among a model config's flat ``occupancy_*`` fields (popped from ``state``), over the defaults."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{name: state.pop(f"occupancy_{name}") for name in names if f"occupancy_{name}" in state})


class OccupancyUnavailable(RuntimeError):
    """``eval_sampler="occupancy"`` where nerfacc's CUDA kernels cannot run."""


# --- which path ----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def nerfacc_kernels_available() -> bool:
    """Whether nerfacc's CUDA extension loads. The first call on a machine may build it (minutes)."""
    try:
        from nerfacc.cuda._backend import _C
    except Exception as error:  # a failed JIT build raises whatever the compiler's failure raises
        warnings.warn(f"nerfacc's CUDA extension did not load: {error}")
        return False
    return _C is not None


@functools.lru_cache(maxsize=None)
def _warn_fallback() -> None:
    warnings.warn(
        "eval_sampler=auto: nerfacc's CUDA kernels are not available (building them needs nvcc), so the "
        "merged field is rendered with the proposal sampler"
    )


def use_occupancy(
    setting: str, device: torch.device, viewer: bool = True, kernels_available: Callable[[], bool] = nerfacc_kernels_available
) -> bool:
    """Whether rendering the merged field on ``device`` goes through the occupancy grid.

    auto: for the viewer's renders (``viewer``) on CUDA when nerfacc's kernels load (else the proposal
    sampler, with a warning); the proposal sampler for other renders (ns-eval, ns-render) and on any other
    device. occupancy: the grid, or `OccupancyUnavailable` saying why not.
    """
    if setting == "proposal" or (setting == "auto" and not viewer):
        return False
    if setting not in ("auto", "occupancy"):
        raise ValueError(f"eval_sampler must be auto, proposal or occupancy, got {setting!r}")
    if torch.device(device).type != "cuda":
        if setting == "occupancy":
            raise OccupancyUnavailable(
                f"eval_sampler=occupancy renders with nerfacc's CUDA ray marching, and the model is on {device}; "
                f"set eval_sampler to auto or proposal there ({HOW_TO_SET})"
            )
        return False
    if kernels_available():
        return True
    if setting == "occupancy":
        raise OccupancyUnavailable(
            "eval_sampler=occupancy: nerfacc's CUDA extension did not load (nerfacc builds it on first use, "
            f"which needs nvcc from a CUDA toolkit matching torch's CUDA version); set eval_sampler to auto or "
            f"proposal ({HOW_TO_SET})"
        )
    _warn_fallback()
    return False


# --- the grid ------------------------------------------------------------------------------------
def auto_render_step_size(aabb: Tensor) -> float:
    """instant-ngp's default: the scene box's diagonal / 1000 (~1000 steps across the finest level)."""
    return float(torch.linalg.norm(aabb[1] - aabb[0])) / 1000.0


class OccupancyGrid(OccGridEstimator):
    """nerfacc's grid, whose sampling stops rays at the configured transmittance."""

    def __init__(self, roi_aabb: Tensor, resolution: int, levels: int, early_stop_eps: float) -> None:
        super().__init__(roi_aabb=roi_aabb, resolution=resolution, levels=levels)
        self.early_stop_eps = early_stop_eps

    def sampling(self, *args, **kwargs):  # type: ignore[override]
        kwargs.setdefault("early_stop_eps", self.early_stop_eps)
        return super().sampling(*args, **kwargs)


@torch.no_grad()
def fill_grid(
    grid: OccGridEstimator,
    density_fn: DensityFn,
    step_size: float,
    threshold: float,
    samples_per_axis: int = 2,
    dilation: int = 0,
    chunk: int = 1 << 20,
) -> None:
    """Set ``grid``'s occupancies from ``density_fn`` (world positions (N, 3) -> (N, 1)).

    A voxel's occupancy is max(density) over ``samples_per_axis``**3 points at the centres of its
    sub-voxels, times ``step_size``; it is occupied above min(mean occupancy, ``threshold``) (nerfacc's
    rule in ``OccGridEstimator._update``), or within ``dilation`` voxels of an occupied voxel of its
    level. At most ``chunk`` points are evaluated at a time.
    """
    if samples_per_axis < 1 or dilation < 0 or chunk < 1:
        raise ValueError(
            f"occupancy fill: samples per axis must be >= 1, dilation >= 0, chunk >= 1 "
            f"(got {samples_per_axis}, {dilation}, {chunk})"
        )
    device = grid.occs.device
    resolution = grid.resolution.to(device=device, dtype=torch.float32)
    axis = (torch.arange(samples_per_axis, device=device, dtype=torch.float32) + 0.5) / samples_per_axis
    offsets = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    voxels_per_chunk = max(1, chunk // len(offsets))
    occs = torch.zeros(grid.levels * grid.cells_per_lvl, device=device)
    for level in range(grid.levels):
        low, high = grid.aabbs[level, :3], grid.aabbs[level, 3:]
        for start in range(0, grid.cells_per_lvl, voxels_per_chunk):
            coords = grid.grid_coords[start : start + voxels_per_chunk].to(device=device, dtype=torch.float32)
            unit = (coords[:, None, :] + offsets[None]) / resolution  # voxel coordinates -> [0, 1]^3
            density = density_fn((low + unit * (high - low)).reshape(-1, 3))
            first = level * grid.cells_per_lvl + start
            occs[first : first + len(coords)] = density.reshape(len(coords), -1).amax(dim=1).float() * step_size
    binaries = (occs > torch.clamp(occs.mean(), max=threshold)).view(grid.binaries.shape)
    if dilation > 0:
        size = 2 * dilation + 1
        binaries = F.max_pool3d(binaries[:, None].float(), kernel_size=size, stride=1, padding=dilation)[:, 0] > 0
    grid.occs.copy_(occs)
    grid.binaries.copy_(binaries)


# --- rendering -----------------------------------------------------------------------------------
class RenderingVolumetricSampler(VolumetricSampler):
    """nerfstudio's `VolumetricSampler` with its density check (skip samples of alpha below the
    threshold, stop rays at the early-stop transmittance) also when rendering; counts the density
    evaluations it asks for."""

    def __init__(self, occupancy_grid: OccGridEstimator, density_fn: DensityFn) -> None:
        super().__init__(occupancy_grid=occupancy_grid, density_fn=density_fn)
        self.num_density_evaluations = 0

    def get_sigma_fn(self, origins, directions, times=None) -> Optional[Callable]:
        density_fn = self.density_fn
        if density_fn is None:
            return None

        def sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
            self.num_density_evaluations += len(t_starts)
            positions = origins[ray_indices] + directions[ray_indices] * (t_starts + t_ends)[:, None] / 2.0
            if times is None:
                return density_fn(positions).squeeze(-1).float()
            return density_fn(positions, times[ray_indices]).squeeze(-1).float()  # type: ignore[call-arg]

        return sigma_fn


def pack_info(ray_indices: Tensor, num_rays: int) -> Tensor:
    """nerfacc's ``pack_info`` (start, count of each ray's samples), on any device (nerfacc's: CUDA only)."""
    counts = torch.bincount(ray_indices, minlength=num_rays)
    return torch.stack([torch.cumsum(counts, 0) - counts, counts], dim=-1)


def packed_median_depth(
    weights: Tensor, steps: Tensor, ray_indices: Tensor, packed_info: Tensor, beyond: Tensor
) -> Tensor:
    """nerfacto's median depth (`DepthRenderer(method="median")`) for packed samples, sorted by ray.

    The depth of each ray's first sample where the cumulative weight reaches 0.5; ``beyond`` (N, 1) for
    rays whose weights never do (nerfacto: its last sample, which for such rays lies near the far plane).
    """
    w = weights.reshape(-1).double()
    if len(w) == 0:
        return beyond
    inclusive = torch.cumsum(w, 0)
    before_ray = (inclusive - w)[packed_info[:, 0].clamp(max=max(len(w) - 1, 0))]  # weight before each ray
    cumulative = inclusive - before_ray[ray_indices]
    below = torch.bincount(ray_indices, weights=(cumulative < 0.5).double(), minlength=len(packed_info)).long()
    found = below < packed_info[:, 1]
    index = (packed_info[:, 0] + below).clamp(max=max(len(w) - 1, 0))
    depth = steps.reshape(-1)[index][:, None]
    return torch.where(found[:, None], depth.to(beyond.dtype), beyond)


class OccupancyRenderer:
    """A model's occupancy grid and its rendering of the merged field (see the module docstring).

    Built in the model's ``populate_modules``, as instant-ngp builds its grid, but not an ``nn.Module``:
    nothing of it is in the model's state_dict (checkpoints keep their keys). The grid lives on the device
    of the rays it renders, built there when first needed.
    """

    def __init__(self, config: OccupancyConfig, model) -> None:
        self.config = config
        self.model = model
        """The model whose merged field, nerfacto renderers and planes render the packed samples."""
        self.sampler: Optional[RenderingVolumetricSampler] = None
        self.filled_at_steps = 0
        self.num_rays = 0
        self.num_samples = 0

    @property
    def grid(self) -> Optional[OccupancyGrid]:
        return None if self.sampler is None else self.sampler.occupancy_grid  # type: ignore[return-value]

    @property
    def render_step_size(self) -> float:
        step = self.config.render_step_size
        return auto_render_step_size(self.model.scene_box.aabb) if step is None else float(step)

    def trained_steps(self) -> int:
        return sum(cell.step_count for cell in self.model.cells)

    def is_stale(self, device: torch.device) -> bool:
        """No grid on ``device`` yet, or the cells trained ``refresh_steps`` since the fill."""
        grid = self.grid
        if grid is None or grid.occs.device != torch.device(device):
            return True
        refresh = self.config.refresh_steps
        return refresh > 0 and abs(self.trained_steps() - self.filled_at_steps) >= refresh

    def fill(self, device: Optional[torch.device] = None) -> OccupancyGrid:
        """A new grid on ``device`` (default: the model's), filled from the merged field's density."""
        config, device = self.config, torch.device(device if device is not None else self.model.device)
        if config.grid_resolution < 1 or config.grid_levels < 1 or self.render_step_size <= 0:
            raise ValueError(
                "occupancy grid: occupancy.grid_resolution and occupancy.grid_levels must be >= 1 and "
                f"occupancy.render_step_size > 0 (got {config.grid_resolution}, {config.grid_levels}, "
                f"{self.render_step_size})"
            )
        self.sampler = None  # the old grid's memory is free before the new one is built
        grid = OccupancyGrid(
            roi_aabb=self.model.scene_box.aabb.flatten().float(),
            resolution=config.grid_resolution,
            levels=config.grid_levels,
            early_stop_eps=config.early_stop_eps,
        ).to(device)
        started = time.perf_counter()
        CONSOLE.print(
            f"Filling the occupancy grid ({config.grid_levels} levels of {config.grid_resolution}^3) from the merged field ..."
        )
        density_fn = self.model.field.density_fn
        fill_grid(
            grid, density_fn, self.render_step_size, config.threshold, config.fill_samples, config.dilation, config.fill_chunk
        )
        occupied = float(grid.binaries.float().mean())
        CONSOLE.print(f"  done in {time.perf_counter() - started:.1f} s: {100 * occupied:.1f}% of voxels occupied")
        self.sampler = RenderingVolumetricSampler(grid, density_fn).eval()
        self.filled_at_steps = self.trained_steps()
        return grid

    def samples_per_ray(self) -> Dict[str, float]:
        """Mean density evaluations (the sampler's check) and field evaluations per rendered ray."""
        rays = max(self.num_rays, 1)
        evaluations = 0 if self.sampler is None else self.sampler.num_density_evaluations
        return {"density_evaluations_per_ray": evaluations / rays, "field_evaluations_per_ray": self.num_samples / rays}

    def render(self, ray_bundle: RayBundle) -> Dict[str, Tensor]:
        """nerfacto's outputs for ``ray_bundle`` (collider applied), from packed occupancy-grid samples."""
        ray_samples, ray_indices = self._sample(ray_bundle)
        field_outputs = self.model.field(ray_samples, compute_normals=self.model.config.predict_normals)
        packed_info = pack_info(ray_indices, len(ray_bundle))
        weights = nerfacc.render_weight_from_density(
            t_starts=ray_samples.frustums.starts[..., 0],
            t_ends=ray_samples.frustums.ends[..., 0],
            sigmas=field_outputs[FieldHeadNames.DENSITY][..., 0].float(),
            packed_info=packed_info,
        )[0][..., None]
        return self._outputs(ray_bundle, ray_samples, field_outputs, weights, ray_indices, packed_info)

    def _sample(self, ray_bundle: RayBundle):
        """The packed samples of the grid's marching that pass its density check (filling the grid first if stale)."""
        if self.is_stale(ray_bundle.origins.device):
            self.fill(ray_bundle.origins.device)
        assert self.sampler is not None
        with torch.no_grad():
            ray_samples, ray_indices = self.sampler(
                ray_bundle=ray_bundle,
                render_step_size=self.render_step_size,
                near_plane=self.model.config.near_plane,
                far_plane=self.model.config.far_plane,
                alpha_thre=self.config.alpha_threshold,
                cone_angle=self.config.cone_angle,
            )
        self.num_rays += len(ray_bundle)
        self.num_samples += len(ray_indices)
        return ray_samples, ray_indices

    def _outputs(self, ray_bundle, ray_samples, field_outputs, weights, ray_indices, packed_info) -> Dict[str, Tensor]:
        """nerfacto's output keys, by the model's own nerfacto renderers on packed samples."""
        model, num_rays = self.model, len(ray_bundle)
        packed = {"ray_indices": ray_indices, "num_rays": num_rays}
        rgb = model.renderer_rgb(
            rgb=field_outputs[FieldHeadNames.RGB].float(), weights=weights, background_color=self._background(ray_bundle), **packed
        )
        if model.renderer_depth.method == "median":
            steps = (ray_samples.frustums.starts + ray_samples.frustums.ends) / 2
            depth = packed_median_depth(weights, steps, ray_indices, packed_info, self._far(ray_bundle))
        else:
            depth = model.renderer_depth(weights=weights, ray_samples=ray_samples, **packed)
        outputs: Dict[str, Tensor] = {
            "rgb": rgb,
            "accumulation": model.renderer_accumulation(weights=weights, **packed),
            "depth": depth,
            "expected_depth": model.renderer_expected_depth(weights=weights, ray_samples=ray_samples, **packed),
        }
        if model.config.predict_normals:
            for key, head in (("normals", FieldHeadNames.NORMALS), ("pred_normals", FieldHeadNames.PRED_NORMALS)):
                summed = nerfacc.accumulate_along_rays(weights[..., 0], field_outputs[head].float(), ray_indices, num_rays)
                outputs[key] = model.normals_shader(safe_normalize(summed))
        for i in range(model.config.num_proposal_iterations):
            outputs[f"prop_depth_{i}"] = depth  # no proposal stages here; ns-eval's images show these
        return outputs

    def _far(self, ray_bundle: RayBundle) -> Tensor:
        if ray_bundle.fars is not None:
            return ray_bundle.fars.float()
        return torch.full_like(ray_bundle.origins[..., :1], self.model.config.far_plane)

    def _background(self, ray_bundle: RayBundle) -> Optional[Tensor]:
        """nerfacto's "last_sample" background for packed samples: the field's colour at each ray's far end."""
        if self.model.renderer_rgb.background_color != "last_sample":
            return None  # the renderer's own (black, white, random)
        far = self._far(ray_bundle)
        ends = RaySamples(
            frustums=Frustums(
                origins=ray_bundle.origins,
                directions=ray_bundle.directions,
                starts=far,
                ends=far,
                pixel_area=ray_bundle.pixel_area,
            ),
            camera_indices=ray_bundle.camera_indices,
            times=ray_bundle.times,
        )
        return self.model.field(ends)[FieldHeadNames.RGB].float()
