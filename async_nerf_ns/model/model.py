"""The async-nerf Model: nerfacto's rendering and losses over partition cells, plus depth supervision.

Subclasses NerfactoModel and keeps its ``get_outputs``/losses: the only differences are *which*
field and proposal density functions it renders with (``field``/``density_fns`` are properties:
the cell named by a training batch, or all cells merged by the router at eval/render time), the
depth loss on rays of depth frames, the depth-frame pose corrections, and LPIPS being optional.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Type

import numpy as np
import torch
from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.field_components.spatial_distortions import SceneContraction
from nerfstudio.model_components.losses import MSELoss
from nerfstudio.model_components.ray_samplers import ProposalNetworkSampler, UniformSampler
from nerfstudio.model_components.renderers import AccumulationRenderer, DepthRenderer, NormalsRenderer, RGBRenderer
from nerfstudio.model_components.scene_colliders import NearFarCollider
from nerfstudio.model_components.shaders import NormalsShader
from nerfstudio.models.base_model import Model
from nerfstudio.models.nerfacto import NerfactoModel, NerfactoModelConfig
from nerfstudio.utils import colormaps
from torch import Tensor, nn
from torch.nn import Parameter

from async_nerf_ns.data.ray_keys import CELL_KEY, DATA_SETUP_KEY
from async_nerf_ns.engine.optimizers import cell_group_name
from async_nerf_ns.model.cells import Cell
from async_nerf_ns.model.depth_loss import DepthLossKind, depth_loss
from async_nerf_ns.model.lpips import build_lpips_if_available
from async_nerf_ns.model.merged import MergedField, merged_density_fns
from async_nerf_ns.model.pose_refinement import RigPoseOptimizer



@dataclass
class AsyncNerfModelConfig(NerfactoModelConfig):
    """Nerfacto options (applied to every cell) plus depth supervision and depth pose refinement."""

    _target: Type = field(default_factory=lambda: AsyncNerfModel)
    depth_loss_mult: float = 0.1
    """Weight of the depth loss (after warm-up)."""
    depth_loss_type: DepthLossKind = "log_l1"
    """Robust depth loss: l1 (scene units), log_l1 (relative error), huber."""
    depth_loss_warmup_steps: int = 500
    """The depth loss weight ramps linearly from 0 over a cell's first this many steps."""
    depth_pose_optimizer: CameraOptimizerConfig = field(
        default_factory=lambda: CameraOptimizerConfig(mode="SO3xR3")
    )
    """Per-depth-frame pose corrections for joint refinement (mode "off" disables them)."""
    refine_accurate_depth_poses: bool = False
    """Train the per-frame corrections also when depth poses come from the TPF or ground truth. Off by
    default: those poses are right to a millimetre on a clean trajectory, and the young field's depth
    errors only pull them away (example town: TPF 0.3 mm -> 0.32 m after 400 steps, 0.4 mm -> 0.10 m
    after 2000); from the metadata prior (2.3 m off) they reduced the error by 10% in 2000 steps."""
    depth_pose_refine_start: int = 1000
    """Stage 3: depth-frame pose corrections are applied and optimised on the steps of a cell after
    it has had this many steps itself (each cell counts its own steps, as its schedules do)."""
    huber_delta: float = 0.01
    """With depth_loss_type huber: the error (scene units) where the loss turns from quadratic to linear."""


class AsyncNerfModel(NerfactoModel):
    """Nerfacto over partition cells.

    The cells' centroids and the number of depth frames come with the training dataset's metadata
    (``metadata[DATA_SETUP_KEY]``, set by the datamanager).
    """

    config: AsyncNerfModelConfig

    def populate_modules(self) -> None:
        Model.populate_modules(self)
        setup = (self.kwargs.get("metadata") or {}).get(DATA_SETUP_KEY, {})
        centroids = setup.get("centroids")
        if centroids is None:
            centroids = torch.zeros(1, 3)
        self.register_buffer("centroids", torch.as_tensor(centroids, dtype=torch.float32).clone())
        distortion = None if self.config.disable_scene_contraction else SceneContraction(order=float("inf"))
        self.cells = nn.ModuleList(
            Cell(self.config, self.scene_box.aabb, self.num_train_data, distortion) for _ in range(len(centroids))
        )
        depth_pose_optimizer = self.config.depth_pose_optimizer
        if setup.get("depth_poses") in ("tpf", "gt") and not self.config.refine_accurate_depth_poses:
            depth_pose_optimizer = dataclasses.replace(depth_pose_optimizer, mode="off")
        self.camera_optimizer = RigPoseOptimizer(
            self.config.camera_optimizer,
            depth_pose_optimizer,
            num_rgb=self.num_train_data,
            num_depth=int(setup.get("num_depth_frames", 0)),
        )
        self._schedule_step = 0
        # Each cell runs nerfacto's step schedules (proposal update/anneal, depth warm-up) on its own
        # clock, as if it were trained alone: one proposal sampler per cell (the sampler keeps its
        # update counters), plus one for merged rendering.
        self.cell_samplers = [self._make_sampler() for _ in range(len(centroids))]
        self.merged_sampler = self._make_sampler()
        self.collider = NearFarCollider(near_plane=self.config.near_plane, far_plane=self.config.far_plane)
        self.renderer_rgb = RGBRenderer(background_color=self.config.background_color)
        self.renderer_accumulation = AccumulationRenderer()
        self.renderer_depth = DepthRenderer(method="median")
        self.renderer_expected_depth = DepthRenderer(method="expected")
        self.renderer_normals = NormalsRenderer()
        self.normals_shader = NormalsShader()
        self.rgb_loss = MSELoss()
        self.step = 0

        from torchmetrics.functional import structural_similarity_index_measure
        from torchmetrics.image import PeakSignalNoiseRatio

        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.ssim = structural_similarity_index_measure
        self.lpips = build_lpips_if_available()

    def _make_sampler(self) -> ProposalNetworkSampler:
        def update_schedule(step):
            return np.clip(
                np.interp(step, [0, self.config.proposal_warmup], [0, self.config.proposal_update_every]),
                1,
                self.config.proposal_update_every,
            )

        initial_sampler = None
        if self.config.proposal_initial_sampler == "uniform":
            initial_sampler = UniformSampler(single_jitter=self.config.use_single_jitter)
        return ProposalNetworkSampler(
            num_nerf_samples_per_ray=self.config.num_nerf_samples_per_ray,
            num_proposal_samples_per_ray=self.config.num_proposal_samples_per_ray,
            num_proposal_network_iterations=self.config.num_proposal_iterations,
            single_jitter=self.config.use_single_jitter,
            update_sched=update_schedule,
            initial_sampler=initial_sampler,
        )

    def _anneal(self, step: int) -> float:
        """nerfacto's proposal-weight annealing (Mip-NeRF 360, eq. 18) at a schedule step."""
        if not self.config.use_proposal_weight_anneal:
            return 1.0
        x = float(np.clip(step / self.config.proposal_weights_anneal_max_num_iters, 0, 1))
        b = self.config.proposal_weights_anneal_slope
        return b * x / ((b - 1) * x + 1)

    def _tick(self, cell: int) -> None:
        """One training batch rendered by ``cell``: advance its clock and its sampler's schedules."""
        self.cells[cell].steps += 1
        self._schedule_step = int(self.cells[cell].steps)
        # Stage 3 starts on the cell's own clock, like its schedules: a 4x4 grid does not start refining
        # depth poses when each cell has had 1/16 of the start step.
        self.camera_optimizer.depth_active = self._schedule_step > self.config.depth_pose_refine_start
        sampler = self.cell_samplers[cell]
        sampler._steps_since_update = int(self.cells[cell].proposal_steps_since_update)
        sampler.set_anneal(self._anneal(self._schedule_step))
        sampler.step_cb(self._schedule_step)

    # --- which field renders -------------------------------------------------------------------
    @property
    def num_cells(self) -> int:
        return len(self.cells)

    @property
    def field(self) -> MergedField:
        """All cells behind the nearest-centroid router: what the viewer, ns-eval and ns-render see."""
        return MergedField(self.cells, self.centroids)

    def _renderer(self, cell: Optional[int]) -> "_FieldsOf":
        """The model with the fields ``cell`` renders with (None: all cells merged)."""
        if cell is not None:
            chosen = self.cells[cell]
            return _FieldsOf(self, chosen.field, chosen.density_fns, self.cell_samplers[cell])
        trained = [int(c.steps) for c in self.cells if int(c.steps) > 0]
        self.merged_sampler.set_anneal(self._anneal(min(trained)) if trained else 1.0)
        density_fns = merged_density_fns(self.cells, self.centroids, self.config.num_proposal_iterations)
        return _FieldsOf(self, self.field, density_fns, self.merged_sampler)

    def _cell_of(self, ray_bundle: RayBundle) -> Optional[int]:
        cells = ray_bundle.metadata.get(CELL_KEY) if self.training else None
        if cells is None:
            return None
        cell = int(cells.reshape(-1)[0])
        assert bool(torch.all(cells == cell)), "a training batch must come from one cell"
        return cell

    def get_outputs(self, ray_bundle: RayBundle):
        """NerfactoModel's rendering, with the fields of the batch's cell (training) or all cells merged."""
        cell = self._cell_of(ray_bundle)
        if cell is not None:
            self._tick(cell)
        outputs = NerfactoModel.get_outputs(self._renderer(cell), ray_bundle)  # type: ignore[arg-type]
        if cell is not None:
            self.cells[cell].proposal_steps_since_update.fill_(self.cell_samplers[cell]._steps_since_update)
        return outputs

    # --- parameters and schedule ---------------------------------------------------------------
    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        groups: Dict[str, List[Parameter]] = {}
        for k, cell in enumerate(self.cells):
            groups[cell_group_name(k, "fields")] = list(cell.field.parameters())
            groups[cell_group_name(k, "proposal_networks")] = list(cell.proposal_networks.parameters())
        self.camera_optimizer.get_param_groups(param_groups=groups)
        return groups

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        # Not NerfactoModel's callbacks: they drive one shared sampler on the global step; ours are
        # driven per cell in get_outputs (_tick).
        def set_stage(step: int) -> None:
            self.step = step

        return [TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], set_stage, update_every_num_iters=1)]

    # --- losses and metrics ----------------------------------------------------------------------
    @staticmethod
    def _rgb_part(outputs: Dict, batch: Dict) -> Dict:
        """Outputs restricted to the RGB rays of a batch (they come first; depth rays follow)."""
        n = len(batch["image"])
        return {**outputs, "rgb": outputs["rgb"][:n], "accumulation": outputs["accumulation"][:n]}

    def get_metrics_dict(self, outputs, batch):
        return super().get_metrics_dict(self._rgb_part(outputs, batch), batch)

    def depth_loss_weight(self) -> float:
        warmup = max(1, self.config.depth_loss_warmup_steps)
        return self.config.depth_loss_mult * min(1.0, self._schedule_step / warmup)

    def get_loss_dict(self, outputs, batch, metrics_dict=None):
        loss_dict = super().get_loss_dict(self._rgb_part(outputs, batch), batch, metrics_dict)
        target = batch.get("depth")
        if self.training and target is not None and len(target) and self.config.depth_loss_mult > 0:
            predicted = outputs["expected_depth"][len(batch["image"]) :]
            loss = depth_loss(predicted, target.to(predicted.device), self.config.depth_loss_type, self.config.huber_delta)
            loss_dict["depth_loss"] = self.depth_loss_weight() * loss
        return loss_dict

    def get_image_metrics_and_images(
        self, outputs: Dict[str, Tensor], batch: Dict[str, Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        gt_rgb = self.renderer_rgb.blend_background(batch["image"].to(self.device))
        predicted_rgb = outputs["rgb"]
        gt, pred = torch.moveaxis(gt_rgb, -1, 0)[None], torch.moveaxis(predicted_rgb, -1, 0)[None]
        metrics = {"psnr": float(self.psnr(gt, pred).item()), "ssim": float(self.ssim(gt, pred))}
        if self.lpips is not None:
            metrics["lpips"] = float(self.lpips(gt, pred))
        images = {
            "img": torch.cat([gt_rgb, predicted_rgb], dim=1),
            "accumulation": colormaps.apply_colormap(outputs["accumulation"]),
            "depth": colormaps.apply_depth_colormap(outputs["depth"], accumulation=outputs["accumulation"]),
        }
        return metrics, images


class _FieldsOf:
    """The model as NerfactoModel.get_outputs sees it for one ray bundle: explicit ``field``,
    ``density_fns`` and ``proposal_sampler`` (a cell's, or the merged ones); every other attribute is
    the model's. get_outputs only reads from ``self``, so it runs unchanged on this view."""

    def __init__(self, model: "AsyncNerfModel", field, density_fns, proposal_sampler: ProposalNetworkSampler) -> None:
        self._model = model
        self.field = field
        self.density_fns = density_fns
        self.proposal_sampler = proposal_sampler

    def __getattr__(self, name: str):
        return getattr(self._model, name)
