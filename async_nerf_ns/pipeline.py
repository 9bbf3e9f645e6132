"""The async-nerf pipeline: the stage schedule around nerfstudio's training loop.

Stage 1 (at set-up, before the radiance field): the time-pose function (TPF) is fitted to the
training RGB frames' (timestamp, pose) pairs and gives every depth frame a pose (the datamanager); the
pipeline holds the result as one module, ``Stage1`` (`data/stage1.py`), and hands it down.
Stage 2: the cells of the partition are trained on RGB rays plus depth rays at those poses.
Stage 3 (from ``model.depth_pose_refine_start``): per-depth-frame pose corrections are optimised
jointly with the field through the depth loss, and with ``finetune_tpf`` the TPF itself too.
``datamanager.depth_poses`` picks where depth poses come from: ``tpf`` (Async-NeRF), ``prior``
(the metadata pose, the naive pipeline) or ``gt`` (an upper bound, needs pose_gt files).

Data flows one way: the datamanager is built first, and the model gets what it needs from it
(centroids, number of depth frames, where their poses come from) as constructor arguments.
"""

from __future__ import annotations

import fnmatch
import typing

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

from async_nerf_ns.data.datamanager import AsyncNerfDataManager, AsyncNerfDataManagerConfig
from async_nerf_ns.data.ray_keys import CELL_BATCH_KEY
from async_nerf_ns.data.stage1 import STATE_NAMES, TIME_OFFSETS_KEY, Stage1, offset_table
from async_nerf_ns.evaluation.appearance import LeftHalfFitted
from async_nerf_ns.evaluation.depth_frames import depth_and_pose_metrics
from async_nerf_ns.model.appearance_matching import fit_colour_transforms
from async_nerf_ns.model.colour_match import MatchReport
from async_nerf_ns.model.implementation import checkpoint_implementation, mismatch_message
from async_nerf_ns.model.model import AsyncNerfModelConfig
from async_nerf_ns.model.param_groups import TPF_GROUP, group_cell
from async_nerf_ns.partition.geometry import PartitionGeometry
from async_nerf_ns.partition.seams import pooled_seam_metrics
from async_nerf_ns.viewer.partition_view import PartitionView, refresh_callback

KEYS_ADDED_SINCE_4D66AAC = (TIME_OFFSETS_KEY, "_model.cells.*.train_psnr", "_model.cells.*.training_pixels")
"""State keys that checkpoints written before 4d66aac's successor lack; loading one fills them (no clock
offset; the cells' status as this pipeline has it), so older runs still load strictly."""
KEYS_ADDED_WITH_APPEARANCE_MATCHING = ("_model.cells.*.colour_transform",)
"""Checkpoints written before appearance matching lack the cells' colour transforms: they load with the identity."""
STAGE1_PREFIX = "stage1."
"""Where the pipeline holds its ``Stage1``; its keys are saved without this prefix."""
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
    match_appearance: bool = True
    """After training (the last step of an ns-train run that trains every cell, or the assembly of
    async-nerf-train-cells / async-nerf-merge): fit each cell's colour transform so that neighbouring
    cells render the rays both trained on (their margin) alike, chained from the cell with the most
    rays (model/appearance_matching.py); printed per cell, saved with the checkpoint."""
    appearance_match_rays: int = 4096
    """Shared rays per pair of neighbouring cells that appearance matching renders (twice: once per cell)."""
    appearance_match_min_reduction: float = 0.15
    """A cell's colour transform is kept only where it takes at least this fraction of the colour residual on
    the shared rays away; else the cell stays as trained. Measured: light drifting along the flight
    (examples/bench_appearance.py) 22-58 % on 11 of 12 cells (one 9 %); a town in constant light (the demo)
    4-7 %, where the transforms only moved colours (val PSNR 27.09 -> 26.97 dB when kept)."""


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
        self.lidar_scans = data.lidar_scans
        self.stage1 = Stage1(
            data.stage1, sorted({*data.scene.depth_tracks, *data.scene.lidar_tracks}), self.depth_track,
            config.datamanager.tpf, config.finetune_tpf, device, lidar_scans=self.lidar_scans,
        )
        """The TPF(s) and clock offsets; its checkpoint keys stay at the pipeline's level (``tpf.*``, ...)."""
        self.register_state_dict_post_hook(_stage1_keys_unprefixed)
        self.register_load_state_dict_pre_hook(_stage1_keys_prefixed)
        self._grad_scaler = grad_scaler
        self._device = device
        self._model = self._build_model()
        self.partition = PartitionView(
            self, config.datamanager.partition.boundary_margin, config.viewer_max_depth_frustums, config.viewer_refresh_steps
        )
        """What the viewer shows of the partition (found by nerfstudio's viewer under Custom Elements)."""
        self.to(device)  # the pipeline's own buffer too (cells trained): nerfstudio moves only its parts
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
            depth_trajectory=self.stage1.corrections,
            lidar_trajectory=self.stage1.lidar_corrections,
            cell_training_pixels=data.cell_training_pixels(),
            boundary_margin=self.config.datamanager.partition.boundary_margin,
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

    def get_train_loss_dict(self, step: int):
        """VanillaPipeline's step, with the batch handed to the model (its cell renders it alone); the cell's
        clock advanced before it (the model's `CellSchedule` callback), its train PSNR is kept for the viewer."""
        # The model's own randomness (proposal sampling jitter) drawn from a function of the step, like
        # the batches: a run resumed at step s continues exactly as the uninterrupted one.
        torch.manual_seed(hash((self.config.datamanager.sampling_seed, step)) & 0x7FFFFFFF)
        ray_bundle, batch = self.datamanager.next_train(step)
        model_outputs = self._model(ray_bundle, batch=batch)
        metrics_dict = self.model.get_metrics_dict(model_outputs, batch)
        loss_dict = self.model.get_loss_dict(model_outputs, batch, metrics_dict)
        self.model.cells[batch[CELL_BATCH_KEY]].train_psnr.copy_(metrics_dict["psnr"].detach())
        return model_outputs, loss_dict, metrics_dict

    # --- evaluation (ns-eval) ------------------------------------------------------------------
    def get_average_eval_image_metrics(
        self, step: Optional[int] = None, output_path=None, get_std: bool = False
    ) -> Dict[str, float]:
        """nerfstudio's image metrics on val RGB frames (whole images with the average appearance, or
        Mega-NeRF's right halves after fitting the appearance on the left), the seams between cells, plus
        depth metrics and depth-frame pose errors."""
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
        metrics = pooled_seam_metrics(metrics)  # per-image sums -> the seam metrics (partition/seams.py)
        metrics.update(depth_and_pose_metrics(self.model, self.stage1, self.datamanager))
        return metrics

    # --- after training ---------------------------------------------------------------------------
    def match_appearance(self) -> Optional[MatchReport]:
        """Appearance matching across cells (``match_appearance``): sets the cells' colour transforms and
        prints the report; None (nothing changed) when it is off, with one cell, or while some cells are
        not trained in this run (cells trained apart are matched when they are assembled)."""
        num_cells = self.geometry.num_cells
        if not self.config.match_appearance or num_cells < 2 or len(self.trained_cell_list) < num_cells:
            return None
        shard_set = self.datamanager.write_shards(existing_only=True)["rgb"]
        if shard_set is None:
            CONSOLE.print("[yellow]Appearance matching skipped: the run's RGB shards are not on this machine.")
            return None
        report = fit_colour_transforms(
            self.model, shard_set, self.datamanager.rgb_rays_for, self.config.appearance_match_rays,
            seed=self.config.datamanager.sampling_seed, min_reduction=self.config.appearance_match_min_reduction,
        )
        for line in report.lines():
            CONSOLE.print(line)
        return report

    # --- checkpoints -------------------------------------------------------------------------------
    def load_pipeline(self, loaded_state: Dict[str, torch.Tensor], step: int) -> None:
        """Loads strictly (stage 1 rebuilds its TPFs to the checkpoint's shapes), filling the keys older
        checkpoints lack; a training run then trains its depth rays at the loaded stage-1 poses."""
        loaded_state = {k: v for k, v in loaded_state.items() if not k.startswith(LPIPS_STATE_PREFIX)}
        own = self.state_dict()
        for key in own:
            if key not in loaded_state and any(
                fnmatch.fnmatchcase(key, p) for p in KEYS_ADDED_SINCE_4D66AAC + KEYS_ADDED_WITH_APPEARANCE_MATCHING
            ):
                # A run trained before these existed: no clock offset was applied.
                loaded_state[key] = offset_table(self.stage1.track_names, {}) if key == TIME_OFFSETS_KEY else own[key]
        self._match_field_implementation(loaded_state)
        super().load_pipeline(loaded_state, step)
        data = self.datamanager
        if self.test_mode == "val" and self.depth_track is not None and data.config.depth_poses == "tpf":
            # A resumed run trains its depth rays at the saved stage-1 poses, whatever the cache holds.
            data.set_depth_poses(self.stage1.depth_poses(self.depth_track, "tpf"))
        if self.test_mode == "val" and self.lidar_scans is not None and self.stage1.fitted is not None:
            data.set_lidar_poses(self.stage1.fitted, self.stage1.time_offsets())  # the same for LiDAR rays

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
        if self.config.finetune_tpf and self.stage1.tpf is not None:
            groups[TPF_GROUP] = list(self.stage1.tpf.parameters())
        trained = set(self.trained_cell_list)
        return {name: params for name, params in groups.items() if group_cell(name) in trained or group_cell(name) is None}


def _stage1_keys_unprefixed(pipeline: AsyncNerfPipeline, state: Dict[str, torch.Tensor], prefix: str, _metadata) -> None:
    """state_dict: stage 1's keys at the pipeline's level (``tpf.*``, not ``stage1.tpf.*``), as checkpoints
    have always held them; in place, in order."""
    inner = prefix + STAGE1_PREFIX
    items = [(prefix + key[len(inner) :] if key.startswith(inner) else key, value) for key, value in state.items()]
    state.clear()
    state.update(items)


def _stage1_keys_prefixed(pipeline: AsyncNerfPipeline, state: Dict[str, torch.Tensor], prefix: str, *_) -> None:
    """load_state_dict: a checkpoint's stage-1 keys to the module's (``tpf.*`` -> ``stage1.tpf.*``)."""
    for key in [k for k in state if k.startswith(prefix) and k[len(prefix) :].split(".", 1)[0] in STATE_NAMES]:
        state[prefix + STAGE1_PREFIX + key[len(prefix) :]] = state.pop(key)
