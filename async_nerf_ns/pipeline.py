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
import typing
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Tuple, Type

import torch
from nerfstudio.pipelines.base_pipeline import Pipeline, VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils.rich_utils import CONSOLE
from torch.cuda.amp.grad_scaler import GradScaler

from async_nerf_ns.data.datamanager import AsyncNerfDataManager, AsyncNerfDataManagerConfig
from async_nerf_ns.data.dataparser import METADATA_KEY
from async_nerf_ns.data.depth_frames import DepthFrameSet, concat_tracks
from async_nerf_ns.evaluation import evaluate_depth_frames, flat_pose_errors
from async_nerf_ns.model.model import AsyncNerfModel, AsyncNerfModelConfig
from async_nerf_ns.partition.config import PartitionConfig
from async_nerf_ns.partition.geometry import PartitionGeometry, resolve_geometry
from async_nerf_ns.trajectory.finetune import TPFRayCorrections
from async_nerf_ns.trajectory.fit import fit_tpf
from async_nerf_ns.trajectory.tpf import FittedTPF, TimePoseFunctionConfig

DepthPoseSource = Literal["tpf", "prior", "gt"]
TPF_GROUP = "tpf"
"""Optimizer group of the TPF's parameters when it is fine-tuned in stage 3."""


@dataclass
class AsyncNerfPipelineConfig(VanillaPipelineConfig):
    """Partition, time-pose function and depth-pose options around the datamanager and model."""

    _target: Type = field(default_factory=lambda: AsyncNerfPipeline)
    datamanager: AsyncNerfDataManagerConfig = field(default_factory=AsyncNerfDataManagerConfig)
    model: AsyncNerfModelConfig = field(default_factory=AsyncNerfModelConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    """How the scene is cut into cells (Mega-NeRF)."""
    cells: Optional[Tuple[int, ...]] = None
    """Train only these cells (to spread cells over runs, then async-nerf-merge); None: all."""
    depth_poses: DepthPoseSource = "tpf"
    """Where depth frames get their poses: tpf (time-pose function), prior (metadata c2w), gt."""
    tpf: TimePoseFunctionConfig = field(default_factory=TimePoseFunctionConfig)
    """The time-pose function fitted in stage 1."""
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
        # VanillaPipeline.__init__ builds the model right after the datamanager; the partition and
        # stage 1 must run in between, so this is its sequence with those steps inserted.
        Pipeline.__init__(self)
        self.config = config
        self.test_mode = test_mode
        self.world_size = world_size
        self.datamanager = config.datamanager.setup(
            device=device, test_mode=test_mode, world_size=world_size, local_rank=local_rank
        )
        self.datamanager.to(device)
        scene = self.datamanager.scene
        train_cameras = self.datamanager.train_dataset.cameras

        self.geometry: PartitionGeometry = resolve_geometry(
            config.partition,
            train_cameras.camera_to_worlds[:, :, 3],
            scene.origin_drb,
            scene.pose_scale_factor,
            scene.drb_to_world,
        )
        if config.finetune_tpf and config.depth_poses != "tpf":
            raise ValueError(f"--pipeline.finetune-tpf needs --pipeline.depth-poses tpf (got {config.depth_poses})")
        self.trained_cell_list = self._validated_cells(config.cells, self.geometry.num_cells)
        self.register_buffer("trained_cells", self._cell_mask(self.trained_cell_list, self.geometry.num_cells))
        self.datamanager.use_partition(self.geometry, config.partition, self.trained_cell_list)

        self.depth_track = concat_tracks(scene) if scene.depth_tracks else None
        self.tpf: Optional[FittedTPF] = None
        """Fitted in stage 1 when training, or rebuilt from a checkpoint by load_pipeline; fine-tuned in
        stage 3 with finetune_tpf."""
        self.stage1_tpf: Optional[FittedTPF] = None
        """With finetune_tpf: a frozen copy of the TPF as stage 1 fitted it (the depth rays' poses)."""
        if test_mode == "val" and self.depth_track is not None:  # training: run stage 1
            if config.depth_poses == "tpf":
                self._fit_tpf()
            self.datamanager.set_depth_frames(self.depth_frame_set(self.depth_track, config.depth_poses))

        self._model = config.model.setup(
            scene_box=self.datamanager.train_dataset.scene_box,
            num_train_data=len(self.datamanager.train_dataset),
            metadata=self.datamanager.train_dataset.metadata,
            device=device,
            grad_scaler=grad_scaler,
            centroids=self.geometry.centroids,
            num_depth_frames=0 if self.depth_track is None else len(self.depth_track),
        )
        self.model.to(device)
        if self.tpf is not None and config.finetune_tpf:
            stage1 = copy.deepcopy(self.tpf)
            stage1.requires_grad_(False)
            self._attach_tpf_finetuning(stage1)

    @property
    def model(self) -> AsyncNerfModel:
        return typing.cast(AsyncNerfModel, self._model)

    @staticmethod
    def _validated_cells(cells: Optional[Tuple[int, ...]], num_cells: int) -> List[int]:
        if cells is None:
            return list(range(num_cells))
        bad = [c for c in cells if not 0 <= c < num_cells]
        if bad or not cells:
            raise ValueError(f"--pipeline.cells {list(cells)}: cells are numbered 0..{num_cells - 1}")
        return sorted(set(cells))

    @staticmethod
    def _cell_mask(cells: List[int], num_cells: int) -> torch.Tensor:
        mask = torch.zeros(num_cells, dtype=torch.bool)
        mask[cells] = True
        return mask

    # --- stage 1: poses of depth frames ----------------------------------------------------------
    def _fit_tpf(self) -> None:
        scene = self.datamanager.scene
        if scene.rgb_timestamps is None or len(scene.rgb_timestamps) < 2:
            raise ValueError("depth_poses=tpf needs RGB timestamps (metadata 'timestamp' or numeric file names)")
        CONSOLE.print(f"Stage 1: fitting the time-pose function to {len(scene.rgb_timestamps)} RGB frames")
        cameras = self.datamanager.train_dataset.cameras
        self.tpf = fit_tpf(scene.rgb_timestamps.numpy(), cameras.camera_to_worlds.cpu(), self.config.tpf)

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
        if source == "tpf":
            tpf = self.stage1_tpf if self.stage1_tpf is not None else self.tpf
            assert tpf is not None
            with torch.no_grad():
                return tpf.poses(track.timestamps.numpy()).cpu()
        poses = track.prior_c2w if source == "prior" else track.gt_c2w
        missing = (~torch.isfinite(poses).reshape(len(track), -1).all(dim=1)).nonzero()
        if len(missing):
            frame = track.frames[int(missing[0])]
            what = "a prior c2w in its metadata" if source == "prior" else "a pose_gt file"
            raise ValueError(f"depth_poses={source}: {frame.metadata_path} (and {len(missing) - 1} more) has no {what}")
        return poses

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
            source = "gt" if self._all_gt(val_track) else self.config.depth_poses
            metrics.update(evaluate_depth_frames(self.model, self.depth_frame_set(val_track, source)))
            metrics["depth_eval_poses"] = source
        for split, track in (("train", self.depth_track), ("val", val_track)):
            if track is None or not self._all_gt(track):
                continue
            poses = {}
            if torch.isfinite(track.prior_c2w).all():
                poses["prior"] = track.prior_c2w
            if self.tpf is not None:
                poses["tpf"] = self.depth_poses(track, "tpf")
            if split == "train" and self.config.depth_poses in poses:
                base = poses[self.config.depth_poses].to(self.device)
                refined = self.model.camera_optimizer.corrected_depth_poses(base).cpu()
                poses[f"{self.config.depth_poses}+refine"] = refined
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

    def _saved_tpf(self, current: Optional[FittedTPF], loaded_state: Dict[str, torch.Tensor], prefix: str) -> Optional[FittedTPF]:
        """The TPF saved under `prefix`: loaded into `current` when the shapes match (a resumed training
        run, whose optimiser already holds its parameters), else rebuilt; None when none was saved."""
        state = {k[len(prefix) :]: v for k, v in loaded_state.items() if k.startswith(prefix)}
        if not state:
            return None
        if current is not None and torch.equal(current.shape_info.cpu(), state["shape_info"].cpu()):
            current.load_state_dict(state, strict=True)
            return current
        return FittedTPF.from_state_dict(self.config.tpf, state)

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
