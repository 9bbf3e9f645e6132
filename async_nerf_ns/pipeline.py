"""The async-nerf pipeline: the stage schedule around nerfstudio's training loop.

Stage 1 (at set-up, before the radiance field): the time-pose function (TPF) is fitted to the
training RGB frames' (timestamp, pose) pairs and gives every depth frame a pose (the datamanager).
Stage 2: the cells of the partition are trained on RGB rays plus depth rays at those poses.
Stage 3 (from ``model.depth_pose_refine_start``): per-depth-frame pose corrections are optimised
jointly with the field through the depth loss, and with ``finetune_tpf`` the TPF itself too.
``datamanager.depth_poses`` picks where depth poses come from: ``tpf`` (Async-NeRF), ``prior``
(the metadata pose, the naive pipeline) or ``gt`` (an upper bound, needs pose_gt files).

Data flows one way: the datamanager is built first, and the model gets what it needs from it
(centroids, number of depth frames, where their poses come from) as constructor arguments.
"""

from __future__ import annotations

import copy
import fnmatch
import typing

import numpy as np
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Type

import torch
import torch.distributed as dist
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.models.base_model import Model
from nerfstudio.pipelines.base_pipeline import Pipeline, VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils.rich_utils import CONSOLE
from torch.cuda.amp.grad_scaler import GradScaler
from torch.nn.parallel import DistributedDataParallel as DDP

from async_nerf_ns.data.datamanager import AsyncNerfDataManager, AsyncNerfDataManagerConfig, DepthPoseSource, frame_poses
from async_nerf_ns.data.dataparser import METADATA_KEY
from async_nerf_ns.data.depth_frames import DepthFrameSet, concat_tracks, frame_time_offsets
from async_nerf_ns.data.ray_keys import CELL_BATCH_KEY
from async_nerf_ns.evaluation.appearance import LeftHalfFitted
from async_nerf_ns.evaluation.depth import evaluate_depth_frames
from async_nerf_ns.evaluation.poses import flat_pose_errors
from async_nerf_ns.model.implementation import checkpoint_implementation, mismatch_message
from async_nerf_ns.model.model import AsyncNerfModelConfig
from async_nerf_ns.model.param_groups import TPF_GROUP, group_cell
from async_nerf_ns.partition.geometry import PartitionGeometry
from async_nerf_ns.trajectory.finetune import TPFRayCorrections
from async_nerf_ns.trajectory.tpf import FittedTPF
from async_nerf_ns.viewer.partition_view import PartitionView, refresh_callback

TIME_OFFSETS_KEY = "depth_time_offsets"
"""(tracks, 3) float64 buffer, tracks in name order: the clock offset applied to each training depth
track, its estimate and the estimate's standard deviation, seconds (NaN: not estimated)."""
KEYS_ADDED_SINCE_4D66AAC = (TIME_OFFSETS_KEY, "_model.cells.*.train_psnr", "_model.cells.*.training_pixels")
"""State keys that checkpoints written before 4d66aac's successor lack; loading one fills them (no clock
offset; the cells' status as this pipeline has it), so older runs still load strictly."""
LPIPS_STATE_PREFIX = "_model.lpips."
"""State of LPIPS' pretrained network, in checkpoints of runs that had it built (constant weights,
never trained): not part of our model's state, ignored when loading."""


@dataclass
class AsyncNerfPipelineConfig(VanillaPipelineConfig):
    """The datamanager (partition, stage 1, shards), the model (cells, depth loss, stage 3) and options
    of stage 3 that involve both."""

    _target: Type = field(default_factory=lambda: AsyncNerfPipeline)
    datamanager: AsyncNerfDataManagerConfig = field(default_factory=AsyncNerfDataManagerConfig)
    model: AsyncNerfModelConfig = field(default_factory=AsyncNerfModelConfig)
    finetune_tpf: bool = False
    """Stage 3 also fine-tunes the TPF through the depth loss (optimizer group 'tpf'), besides the
    per-frame corrections; needs depth_poses=tpf. The stage-1 TPF is kept (as stage1_tpf) for ns-eval."""
    viewer_max_depth_frustums: int = 200
    """The viewer draws at most this many depth-frame frustums (every n-th frame; nerfstudio's own
    --viewer.max-num-display-images bounds the RGB ones), so a long capture opens without freezing."""
    viewer_refresh_steps: int = 100
    """During ns-train with the viewer, the cells panel is rewritten every this many steps."""


class AsyncNerfPipeline(VanillaPipeline):
    config: AsyncNerfPipelineConfig
    datamanager: AsyncNerfDataManager

    def __init__(
        self,
        config: AsyncNerfPipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler: Optional[GradScaler] = None,
    ):
        if config.finetune_tpf and config.datamanager.depth_poses != "tpf":
            raise ValueError(
                f"--pipeline.finetune-tpf needs --pipeline.datamanager.depth-poses tpf (got {config.datamanager.depth_poses})"
            )
        # VanillaPipeline's construction, with the model's data handed over explicitly.
        Pipeline.__init__(self)
        self.config = config
        self.test_mode = test_mode
        self.datamanager = config.datamanager.setup(device=device, test_mode=test_mode, world_size=world_size, local_rank=local_rank)
        self.datamanager.to(device)
        data = self.datamanager
        self.geometry: PartitionGeometry = data.geometry
        self.trained_cell_list = data.trained_cells
        self.depth_track = data.depth_track
        self.register_buffer("trained_cells", self._cell_mask(self.trained_cell_list, self.geometry.num_cells))
        self.track_names = sorted(data.scene.depth_tracks)
        self.register_buffer(TIME_OFFSETS_KEY, self._offset_table(data.stage1.time_offsets))
        self.tpf: Optional[FittedTPF] = data.stage1.tpf
        """Stage 1's TPF when training, or rebuilt from a checkpoint by load_pipeline; fine-tuned in
        stage 3 with finetune_tpf."""
        self.stage1_tpf: Optional[FittedTPF] = None
        """With finetune_tpf: a frozen copy of the TPF as stage 1 fitted it (the depth rays' poses)."""
        self.tpf_corrections: Optional[TPFRayCorrections] = None
        """With finetune_tpf: the depth rays' move from the stage-1 TPF's poses to the fine-tuned TPF's."""
        if config.finetune_tpf and self.depth_track is not None:
            self.tpf_corrections = TPFRayCorrections(self._depth_times(self.depth_track))
            if self.tpf is not None:
                self.tpf = copy.deepcopy(self.tpf).to(device)
                self._set_stage1_tpf(copy.deepcopy(self.tpf))
        self._grad_scaler = grad_scaler
        self._device = device
        self._model = self._build_model()
        self.partition = PartitionView(
            self, config.datamanager.partition.boundary_margin, config.viewer_max_depth_frustums, config.viewer_refresh_steps
        )
        """What the viewer shows of the partition (found by nerfstudio's viewer under Custom Elements)."""
        self.to(device)  # the pipeline's own buffers too (cells trained, clock offsets): nerfstudio moves only its parts
        self.world_size = world_size
        if world_size > 1:
            self._model = typing.cast(Model, DDP(self._model, device_ids=[local_rank], find_unused_parameters=True))
            dist.barrier(device_ids=[local_rank])

    def _build_model(self) -> Model:
        """The model, from the config and what the datamanager found, on the pipeline's device."""
        data = self.datamanager
        model = self.config.model.setup(
            scene_box=data.train_dataset.scene_box,
            num_train_data=len(data.train_dataset),
            metadata=data.train_dataset.metadata,
            device=self._device,
            grad_scaler=self._grad_scaler,
            centroids=self.geometry.centroids,
            num_depth_frames=0 if self.depth_track is None else len(self.depth_track),
            depth_pose_source=self.config.datamanager.depth_poses,
            depth_trajectory=self.tpf_corrections,
            cell_training_pixels=data.cell_training_pixels(),
        )
        return model.to(self._device)

    def _match_field_implementation(self, loaded_state: Dict[str, torch.Tensor]) -> None:
        """Rebuilds the fields as the checkpoint holds them when they differ from the config's (a run whose
        config.yml says tcnn but whose fields are torch's, written before the implementation was resolved),
        for ns-eval, ns-render and the viewer; raises a clear error where that cannot be done here."""
        prefix = "_model.cells."
        saved = checkpoint_implementation(loaded_state, prefix)
        built = checkpoint_implementation(self.state_dict(), prefix)
        if saved == built:
            return
        hint = f"config.yml: pipeline.model.implementation is {self.config.model.implementation!r}"
        if saved == "tcnn" or self.test_mode == "val":  # tcnn weights need tinycudann; training holds optimisers
            raise RuntimeError(mismatch_message(hint, saved, built))
        CONSOLE.print(f"[yellow]The checkpoint holds torch fields ({hint}): building torch fields to load it.")
        self.config.model.implementation = "torch"
        self._model = self._build_model()

    @staticmethod
    def _cell_mask(cells: List[int], num_cells: int) -> torch.Tensor:
        mask = torch.zeros(num_cells, dtype=torch.bool)
        mask[cells] = True
        return mask

    def _offset_table(self, estimates) -> torch.Tensor:
        table = torch.full((len(self.track_names), 3), float("nan"), dtype=torch.float64)
        for row, name in enumerate(self.track_names):
            estimate = estimates.get(name)
            table[row, 0] = 0.0 if estimate is None else estimate.applied_s
            if estimate is not None and estimate.estimate_s is not None:
                table[row, 1], table[row, 2] = estimate.estimate_s, estimate.std_s
        return table

    def time_offsets(self) -> Dict[str, float]:
        """The clock offset (seconds) applied to each depth track: TPF(stamp + offset)."""
        table = getattr(self, TIME_OFFSETS_KEY)
        return {name: float(table[row, 0]) for row, name in enumerate(self.track_names)}

    def _depth_times(self, track) -> np.ndarray:
        """The track's frames on the RGB clock: their stamps plus their tracks' offsets."""
        return track.timestamps.numpy() + frame_time_offsets(track, self.time_offsets())

    def _set_stage1_tpf(self, stage1: FittedTPF) -> None:
        """Lets stage 3 move the depth rays from the stage-1 TPF's poses to the (trained) TPF's."""
        assert self.tpf is not None and self.tpf_corrections is not None
        stage1.requires_grad_(False)
        self.stage1_tpf = stage1.to(self.tpf.position_centre.device)
        self.tpf_corrections.retarget(self.tpf, self.stage1_tpf)

    def get_train_loss_dict(self, step: int):
        """VanillaPipeline's step, with the batch's cell handed to the model (it renders with that cell)."""
        # The model's own randomness (proposal sampling jitter) drawn from a function of the step, like
        # the batches: a run resumed at step s continues exactly as the uninterrupted one.
        torch.manual_seed(hash((self.config.datamanager.sampling_seed, step)) & 0x7FFFFFFF)
        ray_bundle, batch = self.datamanager.next_train(step)
        model_outputs = self._model(ray_bundle, cell=batch[CELL_BATCH_KEY], num_rgb=len(batch["image"]))
        metrics_dict = self.model.get_metrics_dict(model_outputs, batch)
        loss_dict = self.model.get_loss_dict(model_outputs, batch, metrics_dict)
        return model_outputs, loss_dict, metrics_dict

    # --- depth frames and their poses ----------------------------------------------------------
    def depth_frame_poses(self, track, source: DepthPoseSource) -> torch.Tensor:
        """World-frame poses (N,3,4) of a track's frames from ``source`` as given in stage 1 (for tpf:
        the TPF as fitted, before any fine-tuning; the pose optimiser's corrected_depth_poses for after)."""
        return frame_poses(track, source, self.stage1_tpf if self.stage1_tpf is not None else self.tpf, self.time_offsets())

    def depth_frame_set(self, track, source: DepthPoseSource) -> DepthFrameSet:
        return DepthFrameSet(track, self.depth_frame_poses(track, source), self.datamanager.scene.pose_scale_factor)

    # --- evaluation (ns-eval) ------------------------------------------------------------------
    def get_average_eval_image_metrics(
        self, step: Optional[int] = None, output_path=None, get_std: bool = False
    ) -> Dict[str, float]:
        """nerfstudio's image metrics on val RGB frames (whole images with the average appearance, or
        Mega-NeRF's right halves after fitting the appearance on the left), plus depth metrics and
        depth-frame pose errors."""
        model_config = self.config.model
        if model_config.eval_appearance == "left-half":
            loader = LeftHalfFitted(
                self.datamanager.fixed_indices_eval_dataloader, self.model, model_config.eval_appearance_steps,
                model_config.eval_appearance_rays, model_config.eval_appearance_lr,
            )
            metrics = self.get_average_image_metrics(loader, "eval", step, output_path, get_std)
            # Writers take numbers only: the protocol is in the names.
            metrics["eval_appearance_left_half"] = 1.0
            metrics["eval_appearance_steps"] = float(model_config.eval_appearance_steps)
        else:
            metrics = super().get_average_eval_image_metrics(step, output_path, get_std)
        metrics.update(self.depth_and_pose_metrics())
        return metrics

    @staticmethod
    def _all_gt(track) -> bool:
        return bool(torch.isfinite(track.gt_c2w).all())

    @torch.no_grad()
    def depth_and_pose_metrics(self) -> Dict[str, float]:
        """Depth metrics on val depth frames (rendered at their GT poses when every frame has one, else
        at the configured source) and pose errors of train/val depth frames per pose source."""
        metrics: Dict = {}
        scale = self.datamanager.scene.pose_scale_factor
        val_scene = self.datamanager.eval_dataset.metadata[METADATA_KEY]
        val_track = concat_tracks(val_scene) if val_scene.depth_tracks else None
        was_training = self.model.training
        self.model.eval()
        configured = self.config.datamanager.depth_poses
        table = getattr(self, TIME_OFFSETS_KEY)
        for row, name in enumerate(self.track_names):
            for column, what in enumerate(("depth_time_offset_s", "depth_time_offset_estimate_s", "depth_time_offset_std_s")):
                if torch.isfinite(table[row, column]):
                    metrics[f"{what}_{name}"] = float(table[row, column])
        if val_track is not None:
            source = "gt" if self._all_gt(val_track) else configured
            metrics.update(evaluate_depth_frames(self.model, self.depth_frame_set(val_track, source)))
            # Writers take numbers only: which poses the depth evaluation used is in the name.
            metrics[f"depth_eval_at_{source}_poses"] = 1.0
        for split, track in (("train", self.depth_track), ("val", val_track)):
            if track is None or not self._all_gt(track):
                continue
            poses = {}
            if torch.isfinite(track.prior_c2w).all():
                poses["prior"] = track.prior_c2w
            if self.tpf is not None:
                poses["tpf"] = self.depth_frame_poses(track, "tpf")
                if any(self.time_offsets().values()):  # what the offset is worth
                    stage1 = self.stage1_tpf if self.stage1_tpf is not None else self.tpf
                    poses["tpf_without_offset"] = frame_poses(track, "tpf", stage1)
            if split == "train" and configured in poses:
                base = poses[configured].to(self.device)
                poses[f"{configured}+refine"] = self.model.camera_optimizer.corrected_depth_poses(base).cpu()
            elif split == "val" and self.stage1_tpf is not None and self.tpf is not None:
                # Frames never trained on: only a fine-tuned TPF can have moved them.
                poses["tpf+refine"] = self.tpf.poses(self._depth_times(track)).cpu()
            metrics.update(flat_pose_errors(f"depth_pose_{split}", poses, track.gt_c2w, scale))
        self.model.train(was_training)
        return metrics

    # --- checkpoints -------------------------------------------------------------------------------
    def load_pipeline(self, loaded_state: Dict[str, torch.Tensor], step: int) -> None:
        """Rebuilds the time-pose function(s) to the checkpoint's shapes (chosen when fitted), then loads."""
        loaded_state = {k: v for k, v in loaded_state.items() if not k.startswith(LPIPS_STATE_PREFIX)}
        own = self.state_dict()
        for key in own:
            if key not in loaded_state and any(fnmatch.fnmatchcase(key, p) for p in KEYS_ADDED_SINCE_4D66AAC):
                # A run trained before these existed: no clock offset was applied.
                loaded_state[key] = self._offset_table({}) if key == TIME_OFFSETS_KEY else own[key]
        self._match_field_implementation(loaded_state)
        self.tpf = self._saved_tpf(self.tpf, loaded_state, "tpf.")
        stage1 = self._saved_tpf(self.stage1_tpf, loaded_state, "stage1_tpf.")
        if stage1 is not None:
            self.stage1_tpf = stage1.requires_grad_(False)
        super().load_pipeline(loaded_state, step)
        if stage1 is not None and self.tpf_corrections is not None:
            self.tpf_corrections.timestamps = self._depth_times(self.depth_track)  # the checkpoint's offsets
            self._set_stage1_tpf(stage1)
        data = self.datamanager
        if self.test_mode == "val" and self.depth_track is not None and data.config.depth_poses == "tpf":
            # A resumed run trains its depth rays at the saved stage-1 poses, whatever the cache holds.
            data.set_depth_poses(self.depth_frame_poses(self.depth_track, "tpf"))

    def _saved_tpf(self, current: Optional[FittedTPF], loaded_state: Dict[str, torch.Tensor], prefix: str) -> Optional[FittedTPF]:
        """The TPF saved under `prefix`: loaded into `current` when the shapes match (a resumed training
        run, whose optimiser already holds its parameters), else rebuilt; None when none was saved."""
        state = {k[len(prefix) :]: v for k, v in loaded_state.items() if k.startswith(prefix)}
        if not state:
            return None
        if current is not None and torch.equal(current.shape_info.cpu(), state["shape_info"].cpu()):
            current.load_state_dict(state, strict=True)
            return current
        return FittedTPF.from_state_dict(self.config.datamanager.tpf, state).to(self.device)

    def load_state_dict(self, state_dict, strict: Optional[bool] = True):  # type: ignore[override]
        """Always strict: a checkpoint that does not match (a missing cell, renamed keys) is an error,
        not a silently untrained model (VanillaPipeline retries with strict=False)."""
        return torch.nn.Module.load_state_dict(self, state_dict, strict=True)

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        callbacks = super().get_training_callbacks(training_callback_attributes)
        callbacks.append(TrainingCallback(
            [TrainingCallbackLocation.AFTER_TRAIN_ITERATION], refresh_callback(self.partition),
            update_every_num_iters=max(1, self.config.viewer_refresh_steps),
        ))
        return callbacks

    def get_param_groups(self) -> Dict[str, List[torch.nn.Parameter]]:
        groups = super().get_param_groups()
        if self.config.finetune_tpf and self.tpf is not None:
            groups[TPF_GROUP] = list(self.tpf.parameters())
        trained = set(self.trained_cell_list)
        return {name: params for name, params in groups.items() if group_cell(name) in trained or group_cell(name) is None}
