"""The async-nerf pipeline: the stage schedule around nerfstudio's training loop.

Stage 1 (at set-up, before the radiance field): the time-pose function (TPF) is fitted to the
training RGB frames' (timestamp, pose) pairs and gives every depth frame a pose.
Stage 2: the cells of the partition are trained on RGB rays plus depth rays at those poses.
Stage 3 (from ``model.depth_pose_refine_start``): per-depth-frame pose corrections are optimised
jointly with the field through the depth loss, and with ``finetune_tpf`` the TPF itself too.
``depth_poses`` picks where depth poses come from: ``tpf`` (Async-NeRF), ``prior`` (the metadata
pose, the naive pipeline) or ``gt`` (an upper bound, needs pose_gt files).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Type

import torch
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from torch.cuda.amp.grad_scaler import GradScaler

from async_nerf_ns.data.datamanager import AsyncNerfDataManager, AsyncNerfDataManagerConfig, DepthPoseSource
from async_nerf_ns.data.dataparser import METADATA_KEY
from async_nerf_ns.data.depth_frames import DepthFrameSet, concat_tracks
from async_nerf_ns.evaluation import evaluate_depth_frames, flat_pose_errors
from async_nerf_ns.model.model import AsyncNerfModelConfig
from async_nerf_ns.partition.geometry import PartitionGeometry
from async_nerf_ns.trajectory.finetune import TPFRayCorrections
from async_nerf_ns.trajectory.tpf import FittedTPF

TPF_GROUP = "tpf"
"""Optimizer group of the TPF's parameters when it is fine-tuned in stage 3."""


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
        # The datamanager resolves the partition and runs stage 1; the model reads the centroids and
        # the number of depth frames from the training dataset's metadata.
        super().__init__(config, device, test_mode, world_size, local_rank, grad_scaler)
        data = self.datamanager
        self.geometry: PartitionGeometry = data.geometry
        self.trained_cell_list = data.trained_cells
        self.register_buffer("trained_cells", self._cell_mask(self.trained_cell_list, self.geometry.num_cells))
        self.depth_track = data.depth_track
        self.tpf: Optional[FittedTPF] = data.stage1.tpf
        """Stage 1's TPF when training, or rebuilt from a checkpoint by load_pipeline; fine-tuned in
        stage 3 with finetune_tpf."""
        self.stage1_tpf: Optional[FittedTPF] = None
        """With finetune_tpf: a frozen copy of the TPF as stage 1 fitted it (the depth rays' poses)."""
        if self.tpf is not None and config.finetune_tpf:
            self.tpf = copy.deepcopy(self.tpf)
            stage1 = copy.deepcopy(self.tpf)
            stage1.requires_grad_(False)
            self._attach_tpf_finetuning(stage1)

    @staticmethod
    def _cell_mask(cells: List[int], num_cells: int) -> torch.Tensor:
        mask = torch.zeros(num_cells, dtype=torch.bool)
        mask[cells] = True
        return mask

    def get_train_loss_dict(self, step: int):
        # The model's own randomness (proposal sampling jitter) drawn from a function of the step, like
        # the batches: a run resumed at step s continues exactly as the uninterrupted one.
        torch.manual_seed(hash((self.config.datamanager.sampling_seed, step)) & 0x7FFFFFFF)
        return super().get_train_loss_dict(step)

    # --- stage 1 and 3: poses of depth frames ------------------------------------------------------
    def _attach_tpf_finetuning(self, stage1: FittedTPF) -> None:
        """Lets stage 3 move the depth rays from the stage-1 TPF's poses to the (trained) TPF's."""
        assert self.tpf is not None and self.depth_track is not None
        self.stage1_tpf = stage1
        timestamps = self.depth_track.timestamps.numpy()
        with torch.no_grad():
            stage1_c2w = stage1.poses(timestamps)
        self.model.camera_optimizer.trajectory = TPFRayCorrections(self.tpf, timestamps, stage1_c2w, self.model.device)

    def depth_poses(self, track, source: DepthPoseSource) -> torch.Tensor:
        """World-frame poses (N,3,4) of a track's frames from ``source`` as given in stage 1 (for tpf:
        the TPF as fitted, before any fine-tuning; the pose optimiser's corrected_depth_poses for after)."""
        return self.datamanager.depth_poses(track, source, self.stage1_tpf if self.stage1_tpf is not None else self.tpf)

    def depth_frame_set(self, track, source: DepthPoseSource) -> DepthFrameSet:
        return DepthFrameSet(track, self.depth_poses(track, source), self.datamanager.scene.pose_scale_factor)

    # --- evaluation (ns-eval) ------------------------------------------------------------------
    def get_average_eval_image_metrics(
        self, step: Optional[int] = None, output_path=None, get_std: bool = False
    ) -> Dict[str, float]:
        """nerfstudio's image metrics on val RGB frames, plus depth metrics and depth-frame pose errors."""
        metrics = super().get_average_eval_image_metrics(step, output_path, get_std)
        metrics.update(self.depth_and_pose_metrics())
        return metrics

    def _all_gt(self, track) -> bool:
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
        if val_track is not None:
            source = "gt" if self._all_gt(val_track) else self.config.datamanager.depth_poses
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
                poses["tpf"] = self.depth_poses(track, "tpf")
            if split == "train" and self.config.datamanager.depth_poses in poses:
                base = poses[self.config.datamanager.depth_poses].to(self.device)
                refined = self.model.camera_optimizer.corrected_depth_poses(base).cpu()
                poses[f"{self.config.datamanager.depth_poses}+refine"] = refined
            elif split == "val" and self.stage1_tpf is not None and self.tpf is not None:
                # Frames never trained on: only a fine-tuned TPF can have moved them.
                poses["tpf+refine"] = self.tpf.poses(track.timestamps.numpy()).cpu()
            metrics.update(flat_pose_errors(f"depth_pose_{split}", poses, track.gt_c2w, scale))
        self.model.train(was_training)
        return metrics

    # --- checkpoints -------------------------------------------------------------------------------
    def load_pipeline(self, loaded_state: Dict[str, torch.Tensor], step: int) -> None:
        """Rebuilds the time-pose function(s) to the checkpoint's shapes (chosen when fitted), then loads."""
        self.tpf = self._saved_tpf(self.tpf, loaded_state, "tpf.")
        stage1 = self._saved_tpf(self.stage1_tpf, loaded_state, "stage1_tpf.")
        if stage1 is not None:
            stage1.requires_grad_(False)
            self._attach_tpf_finetuning(stage1)
        super().load_pipeline(loaded_state, step)
        data = self.datamanager
        if self.test_mode == "val" and self.depth_track is not None and data.config.depth_poses == "tpf":
            # A resumed run trains its depth rays at the saved stage-1 poses, whatever the cache holds.
            data.set_depth_poses(self.depth_poses(self.depth_track, "tpf"))

    def _saved_tpf(self, current: Optional[FittedTPF], loaded_state: Dict[str, torch.Tensor], prefix: str) -> Optional[FittedTPF]:
        """The TPF saved under `prefix`: loaded into `current` when the shapes match (a resumed training
        run, whose optimiser already holds its parameters), else rebuilt; None when none was saved."""
        state = {k[len(prefix) :]: v for k, v in loaded_state.items() if k.startswith(prefix)}
        if not state:
            return None
        if current is not None and torch.equal(current.shape_info.cpu(), state["shape_info"].cpu()):
            current.load_state_dict(state, strict=True)
            return current
        return FittedTPF.from_state_dict(self.config.datamanager.tpf, state)

    def load_state_dict(self, state_dict, strict: Optional[bool] = True):  # type: ignore[override]
        """Always strict: a checkpoint that does not match (a missing cell, renamed keys) is an error,
        not a silently untrained model (VanillaPipeline retries with strict=False)."""
        return torch.nn.Module.load_state_dict(self, state_dict, strict=True)

    def get_param_groups(self) -> Dict[str, List[torch.nn.Parameter]]:
        groups = super().get_param_groups()
        if self.config.finetune_tpf and self.tpf is not None:
            groups[TPF_GROUP] = list(self.tpf.parameters())
        untrained = [k for k in range(self.geometry.num_cells) if k not in self.trained_cell_list]
        return {name: params for name, params in groups.items() if not any(name.startswith(f"cell{k}.") for k in untrained)}
