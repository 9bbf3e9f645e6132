"""The async-nerf Model: nerfacto over partition cells, plus depth supervision and depth-frame poses.

It is to nerfacto what nerfstudio's DepthNerfactoModel is: a subclass that calls ``super()`` and
overrides only what differs.

- **Cells** (``populate_modules``): nerfacto's own set-up runs once per cell, and each run's field,
  proposal networks and sampler become one `Cell`; the model itself renders with a field and density
  functions that route to the cells (`merged.py`): the viewer, ns-eval and ns-render see the merged field.
- **A training batch** (``forward(bundle, batch)``) is rendered and scored by nerfacto's own code run on
  a `TrainingView`: the batch's cell's parts and the rig's corrections for the batch. The cell flows
  down as that argument; no "current cell" is set, and rendering changes no state of the model.
- **Per-cell schedules** are training callbacks (`CellSchedule`): at each step the cell that trains
  advances its clock, and nerfacto's schedule callbacks (proposal weight annealing, sampler steps) run
  on that clock; the depth warm-up and stage 3 read it too.
- **Depth**: the loss on the depth rays of a batch (they follow its RGB rays, `data/ray_keys.py`);
  depth-frame pose corrections in the rig optimiser (`pose_refinement.py`).
- **LPIPS** is optional: the metric object is replaced (`lpips.py`), not the method using it.

What the model needs from the data comes as constructor arguments from the pipeline (``centroids``,
``num_depth_frames``, ``depth_pose_source``, ``depth_trajectory``), as nerfstudio hands it the scene box.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Tuple, Type

import torch
from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.field_components.encodings import HashEncoding
from nerfstudio.models.nerfacto import NerfactoModel, NerfactoModelConfig
from torch import Tensor, nn
from torch.nn import Parameter

from async_nerf_ns.data.ray_keys import (
    CELL_BATCH_KEY,
    DEPTH_BATCH_KEY,
    DEPTH_FRAME_KEY,
    LIDAR_DT_KEY,
    LIDAR_RANGE_KEY,
    LIDAR_SCAN_KEY,
    depth_ray_start,
    lidar_ray_start,
)
from async_nerf_ns.model import occupancy
from async_nerf_ns.model.occupancy import OccupancyConfig, OccupancyRenderer
from async_nerf_ns.model.cells import Cell, CellSampler, CellSchedule, TrainingView
from async_nerf_ns.model.depth_loss import DepthLossKind, depth_loss, free_space_loss
from async_nerf_ns.model.lpips import offline_lpips
from async_nerf_ns.model.masked_metrics import kept_psnr, masked_prediction
from async_nerf_ns.model.merged import CellRouter, MergedDensityFn, MergedField, in_viewer_thread
from async_nerf_ns.model.param_groups import cell_group_name
from async_nerf_ns.model.pose_refinement import RigPoseOptimizer
from async_nerf_ns.partition.seams import seam_sums

OWNER_KEY = "cell"
"""Output of a merged render: the cell each ray's rendered surface belongs to (for the seam metric)."""
ACCURATE_DEPTH_POSES = ("tpf", "gt")
"""Depth-pose sources whose per-frame corrections stay off unless refine_accurate_depth_poses."""


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
    lidar_loss_mult: float = 0.1
    """Weight of the depth loss on LiDAR rays (after depth_loss_warmup_steps; depth_loss_type's loss between
    each LiDAR ray's expected termination and its return's range). Only rays with a return are trained on."""
    lidar_free_space_mult: float = 0.1
    """Weight of the free-space term on LiDAR rays: the rendering weight a ray puts before its return (a LiDAR
    beam crossed that space unobstructed), summed per ray and averaged; 0: off. Measured (examples/bench_lidar.py,
    the example town, 800 steps, 2 seeds): +0.65 dB val PSNR and LiDAR range RMSE 6.80 -> 6.04 m against 0."""
    lidar_free_space_margin: float = 0.05
    """The free-space term counts samples ending before (1 - this) x the return's range: the margin keeps the
    surface itself (and the sampling's width around it) out of the penalty."""
    eval_appearance: Literal["average", "left-half"] = "average"
    """How ns-eval renders val images, which have no appearance embedding of their own: average (nerfstudio's:
    each cell's mean embedding) or left-half (Mega-NeRF's protocol: an embedding per image and cell fitted
    on the image's left half, metrics on the right half; evaluation/appearance.py). For a finished run, set
    pipeline.model.eval_appearance in its config.yml."""
    border_blend: bool = False
    """How the merged field hands a sample from one cell to the next (ns-viewer, ns-eval, ns-render): False,
    by its nearest cell (Mega-NeRF's hard switch at the border); True, samples within the partition's
    boundary margin of a border are rendered by both nearest cells, density and colour blended with weights
    1/2 at the border falling to 0 at the margin's edge (where the other cell stops having training data).
    Costs a second field evaluation for the samples in the band."""
    seam_band_px: int = 2
    """ns-eval's seam metrics: the border band is every pixel within this many pixels of a pixel whose
    surface belongs to another cell (PSNR in the band vs inside cells; partition/seams.py)."""
    eval_appearance_steps: int = 200
    """left-half: Adam steps fitting each val image's embeddings."""
    eval_appearance_rays: int = 1024
    """left-half: rays of the left half per fitting step."""
    eval_appearance_lr: float = 0.05
    """left-half: Adam's learning rate for the embeddings (measured on the example town with a tinted val
    split: 50 steps of 256 rays at 0.05 recovered +1.0 dB on the right halves, 100 steps at 0.01 +0.4 dB)."""
    eval_sampler: occupancy.EvalSampler = "auto"
    """How the merged field is rendered (ns-viewer, ns-eval, ns-render; training always uses the proposal
    sampler): occupancy (a nerfacc occupancy grid skips empty space and stops rays early; CUDA only),
    proposal (nerfacto's sampler), auto (the occupancy grid for the viewer's renders on CUDA when nerfacc's
    kernels load, for interactive speed; the proposal sampler for ns-eval and ns-render, which report what
    the cells were trained to render, and on CPU). The occupancy path's speed and PSNR are not measured yet
    on a GPU (examples/bench_occupancy.py measures them)."""
    occupancy: OccupancyConfig = field(default_factory=OccupancyConfig)
    """The occupancy grid of eval_sampler's occupancy path."""

    def __setstate__(self, state: Dict) -> None:
        """config.yml is read with yaml.Loader, which sets the fields a file holds without ``__init__``: a file
        written before ``occupancy`` was one option (its 11 flat ``occupancy_*`` fields, or none) gets them
        nested here; fields newer than the file (with plain defaults) are read from the class."""
        state = dict(state)
        if "occupancy" not in state:
            state["occupancy"] = OccupancyConfig.from_flat(state)
        self.__dict__.update(state)


class AsyncNerfModel(NerfactoModel):
    """Nerfacto over partition cells.

    Constructor arguments beyond nerfstudio's (``config.setup(..., centroids=...)``):
        centroids: (K, 3) world-frame centroids of the cells (default: one cell at the origin).
        num_depth_frames: training depth frames (rows of the per-frame depth-pose corrections).
        depth_pose_source: where the depth frames' poses come from (tpf, prior, gt).
        depth_trajectory: with TPF fine-tuning, the corrections from stage-1 to current TPF poses.
        cell_training_pixels: (K, 3) RGB rays, depth rays and images of each cell's training data.
        boundary_margin: the partition's boundary margin (the band ``border_blend`` blends in).
    """

    config: AsyncNerfModelConfig

    def populate_modules(self) -> None:
        centroids = torch.as_tensor(self.kwargs.get("centroids", torch.zeros(1, 3)), dtype=torch.float32)
        cells = []
        for _ in range(len(centroids)):
            with offline_lpips():
                super().populate_modules()
            cells.append(self._cell_from_nerfacto_parts())
        merged_sampler = CellSampler.like(self.proposal_sampler)
        # nerfacto's last set-up left one cell's parts on the model: they are the cell's, not the model's.
        del self.field, self.proposal_networks, self.proposal_sampler
        self.cells = nn.ModuleList(cells)
        pixels = self.kwargs.get("cell_training_pixels")
        if pixels is not None:
            for cell, counts in zip(self.cells, torch.as_tensor(pixels, dtype=torch.long)):
                cell.training_pixels.copy_(counts)
        self.register_buffer("centroids", centroids.clone())
        margin = float(self.kwargs.get("boundary_margin", 1.0))
        self.router = CellRouter(self.cells, lambda: self.centroids, margin if self.config.border_blend else None)
        self.field = MergedField(self.router)  # type: ignore[assignment]
        self.density_fns = [MergedDensityFn(self.router, i) for i in range(self.config.num_proposal_iterations)]
        self.proposal_sampler = merged_sampler
        self.camera_optimizer = self._rig_pose_optimizer()  # type: ignore[assignment]
        self.occupancy_renderer = OccupancyRenderer(self.config.occupancy, self)
        self.register_load_state_dict_post_hook(lambda model, _: model.anneal_merged_sampler())

    def _apply(self, fn, recurse: bool = True):
        """``.to(device)`` and friends, plus the tensors that nerfstudio's torch `HashEncoding` keeps as plain
        attributes (``scalings``, ``hash_offset``): left in host memory, they are copied to the device on every
        call of its hash function (27 copies per step of async-nerf-small, counted by tests/cuda_emulation.py)."""
        super()._apply(fn, recurse)
        for module in self.modules():
            if isinstance(module, HashEncoding):
                for name in ("scalings", "hash_offset"):
                    value = getattr(module, name, None)
                    if isinstance(value, Tensor):
                        setattr(module, name, fn(value).to(value.dtype))
        return self

    def _cell_from_nerfacto_parts(self) -> Cell:
        appearance_dim = self.config.appearance_embed_dim if self.config.use_appearance_embedding else 0
        return Cell(
            self.field,
            self.proposal_networks,
            list(self.density_fns),
            CellSampler.like(self.proposal_sampler),
            appearance_dim,
            self.num_train_data,
        )

    def _rig_pose_optimizer(self) -> RigPoseOptimizer:
        depth_config = self.config.depth_pose_optimizer
        if self.kwargs.get("depth_pose_source") in ACCURATE_DEPTH_POSES and not self.config.refine_accurate_depth_poses:
            depth_config = dataclasses.replace(depth_config, mode="off")
        return RigPoseOptimizer(
            self.config.camera_optimizer,
            depth_config,
            num_rgb=self.num_train_data,
            num_depth=int(self.kwargs.get("num_depth_frames", 0)),
            trajectory=self.kwargs.get("depth_trajectory"),
            lidar_trajectory=self.kwargs.get("lidar_trajectory"),
        )

    @property
    def num_cells(self) -> int:
        return len(self.cells)

    # --- rendering -------------------------------------------------------------------------------
    def training_view(self, batch: Dict) -> TrainingView:
        """The view a training batch is rendered and scored through: its cell at the cell's step (stage 3
        starts on the cell's own clock, like its schedules: a 4x4 grid does not start refining depth poses
        when each cell has had 1/16 of the start step), and the rig's corrections for its depth rays."""
        cell = self.cells[batch[CELL_BATCH_KEY]]
        stage3 = cell.step_count > self.config.depth_pose_refine_start
        lidar = (batch[LIDAR_SCAN_KEY], batch[LIDAR_DT_KEY]) if LIDAR_SCAN_KEY in batch else None
        return TrainingView(self, cell, self.camera_optimizer.for_batch(batch.get(DEPTH_FRAME_KEY), stage3, lidar))

    def _nerfacto_for(self, batch: Optional[Dict]) -> "AsyncNerfModel | TrainingView":
        """What nerfacto's code runs on: a training batch's view in training, else the merged model."""
        return self.training_view(batch) if self.training and batch is not None and CELL_BATCH_KEY in batch else self

    def forward(self, ray_bundle: RayBundle, batch: Optional[Dict] = None):  # type: ignore[override]
        """nerfacto's rendering of a training ``batch``'s rays by its cell alone; else merged (by the occupancy
        grid where ``eval_sampler`` says so)."""
        if self.collider is not None:
            ray_bundle = self.collider(ray_bundle)
        if not self.training and occupancy.use_occupancy(self.config.eval_sampler, ray_bundle.origins.device, in_viewer_thread()):
            return self.occupancy_renderer.render(ray_bundle)
        outputs = NerfactoModel.get_outputs(self._nerfacto_for(batch), ray_bundle)  # type: ignore[arg-type]
        if not self.training and self.num_cells > 1:
            outputs[OWNER_KEY] = self._owning_cells(ray_bundle, outputs["depth"])
        return outputs

    def _owning_cells(self, ray_bundle: RayBundle, depth: Tensor) -> Tensor:
        """(N, 1) the cell each ray's rendered surface (the ray at its depth) belongs to, as a float (nerfstudio
        concatenates outputs as images): the seam metric's ownership; the viewer can show it as an output."""
        surface = ray_bundle.origins + ray_bundle.directions * depth
        return self.router.cell_ids(surface)[..., None].to(depth.dtype)

    def anneal_merged_sampler(self) -> None:
        """Merged rendering anneals the proposal weights as the least-trained trained cell does (set after
        every training step and every load, when the cells' clocks change)."""
        trained = [cell.step_count for cell in self.cells if cell.step_count > 0]
        if trained:
            for callback in NerfactoModel.get_training_callbacks(self, None):  # type: ignore[arg-type]
                callback.run_callback_at_location(min(trained), TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)

    # --- parameters and schedule ---------------------------------------------------------------
    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        groups: Dict[str, List[Parameter]] = {}
        for k, cell in enumerate(self.cells):
            groups[cell_group_name(k, "fields")] = list(cell.field.parameters())
            groups[cell_group_name(k, "proposal_networks")] = list(cell.proposal_networks.parameters())
        self.camera_optimizer.get_param_groups(param_groups=groups)
        return groups

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        """nerfacto's schedules per cell, on the cell's own steps (`CellSchedule`); the datamanager says which
        cell trains at a step."""
        cell_of_step = training_callback_attributes.pipeline.datamanager.cell_of_step  # type: ignore[union-attr]
        return CellSchedule(self, cell_of_step).callbacks()

    # --- losses and metrics ----------------------------------------------------------------------
    @staticmethod
    def _rgb_part(outputs: Dict, batch: Dict) -> Dict:
        """Outputs restricted to the RGB rays of a batch (they come first; depth rays follow)."""
        n = depth_ray_start(batch)
        return {**outputs, "rgb": outputs["rgb"][:n], "accumulation": outputs["accumulation"][:n]}

    def get_metrics_dict(self, outputs, batch):
        return NerfactoModel.get_metrics_dict(self._nerfacto_for(batch), self._rgb_part(outputs, batch), batch)

    def depth_loss_weight(self, cell_step: int) -> float:
        warmup = max(1, self.config.depth_loss_warmup_steps)
        return self.config.depth_loss_mult * min(1.0, cell_step / warmup)

    def get_loss_dict(self, outputs, batch, metrics_dict=None):
        nerfacto = self._nerfacto_for(batch)
        loss_dict = NerfactoModel.get_loss_dict(nerfacto, self._rgb_part(outputs, batch), batch, metrics_dict)
        if not isinstance(nerfacto, TrainingView):
            return loss_dict
        target = batch.get(DEPTH_BATCH_KEY)
        if target is not None and len(target) and self.config.depth_loss_mult > 0:
            predicted = outputs["expected_depth"][depth_ray_start(batch) : lidar_ray_start(batch)]
            loss = depth_loss(predicted, target.to(predicted.device), self.config.depth_loss_type, self.config.huber_delta)
            loss_dict["depth_loss"] = self.depth_loss_weight(nerfacto.cell.step_count) * loss
        ranges = batch.get(LIDAR_RANGE_KEY)
        if ranges is not None and len(ranges):
            start = lidar_ray_start(batch)
            warmup = min(1.0, nerfacto.cell.step_count / max(1, self.config.depth_loss_warmup_steps))
            if self.config.lidar_loss_mult > 0:
                predicted = outputs["expected_depth"][start:]
                loss = depth_loss(predicted, ranges.to(predicted.device), self.config.depth_loss_type, self.config.huber_delta)
                loss_dict["lidar_loss"] = self.config.lidar_loss_mult * warmup * loss
            if self.config.lidar_free_space_mult > 0 and "weights_list" in outputs:
                samples, weights = outputs["ray_samples_list"][-1][start:], outputs["weights_list"][-1][start:]
                free = free_space_loss(weights, samples.frustums.ends, ranges, self.config.lidar_free_space_margin)
                loss_dict["lidar_free_space_loss"] = self.config.lidar_free_space_mult * warmup * free
        return loss_dict

    def get_image_metrics_and_images(
        self, outputs: Dict[str, Tensor], batch: Dict[str, Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        keep = batch.get("mask")  # masks/STEM.png: its zeros are left out of the metrics (masked_metrics.py)
        truth = self.renderer_rgb.blend_background(batch["image"].to(self.device))
        rendered = outputs["rgb"]
        if keep is not None:
            outputs = {**outputs, "rgb": masked_prediction(rendered, truth, keep)}
        metrics, images = super().get_image_metrics_and_images(outputs, batch)
        if keep is not None:
            metrics["psnr"], metrics["kept_pixel_fraction"] = kept_psnr(rendered, truth, keep)
            images["img"] = torch.cat([truth, rendered], dim=1)  # the rendering as it is, masked pixels too
        if OWNER_KEY in outputs:  # seams between cells (partition/seams.py; pooled by the pipeline)
            metrics.update(seam_sums(rendered, truth, outputs[OWNER_KEY].long(), keep, self.config.seam_band_px))
        if math.isnan(metrics.get("lpips", 0.0)):
            del metrics["lpips"]  # its weights are not on disk (see lpips.py)
        return metrics, images
