"""Stage 1 of a run as one module: the time-pose function (TPF) and the depth tracks' clock offsets.

The datamanager fits stage 1 at set-up (``Stage1Fit``: the TPF fitted to the training RGB frames, each
depth track's clock offset) and writes the depth shards at its poses; the pipeline wraps that fit in a
``Stage1`` module, owns it (checkpoint keys ``tpf.*``, ``stage1_tpf.*``, ``depth_time_offsets``) and
hands it down: its ray corrections to the model, its poses to the datamanager and the evaluation.
With ``finetune`` the TPF is trained in stage 3 and the fitted one is kept frozen beside it: the depth
rays stay at the fitted TPF's poses and ``corrections`` move them to the fine-tuned TPF's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from async_nerf_ns.data.depth_frames import frame_time_offsets
from async_nerf_ns.data.scene_metadata import DepthTrackData
from async_nerf_ns.lidar.corrections import LidarRayCorrections
from async_nerf_ns.lidar.scans import LidarScanSet
from async_nerf_ns.trajectory.finetune import TPFRayCorrections
from async_nerf_ns.trajectory.time_offset import TimeOffsetEstimate
from async_nerf_ns.trajectory.tpf import FittedTPF, TimePoseFunctionConfig

TIME_OFFSETS_KEY = "depth_time_offsets"
"""(tracks, 3) float64 buffer, depth and LiDAR tracks together in name order: the clock offset applied to each training depth
track, its estimate and the estimate's standard deviation, seconds (NaN: not estimated)."""
STATE_NAMES = (TIME_OFFSETS_KEY, "tpf", "stage1_tpf")
"""A ``Stage1``'s buffer and submodules: the first part of each of its state keys."""

DepthPoseSource = Literal["tpf", "prior", "gt"]


@dataclass
class Stage1Fit:
    """What the datamanager's set-up fitted (training with depth_poses=tpf), for the pipeline's ``Stage1``."""

    tpf: Optional[FittedTPF] = None
    """The time-pose function fitted to the training RGB frames, or read from the fit cache."""
    time_offsets: Dict[str, TimeOffsetEstimate] = field(default_factory=dict)
    """Per depth track, its clock offset (given or estimated)."""

    def applied_offsets(self) -> Dict[str, float]:
        return {name: estimate.applied_s for name, estimate in self.time_offsets.items()}


def frame_poses(
    track: DepthTrackData, source: DepthPoseSource, tpf: Optional[FittedTPF], offsets: Optional[Mapping[str, float]] = None
) -> Tensor:
    """World-frame poses (N,3,4) of a track's frames from ``source`` (for tpf: of the given TPF, at each
    frame's stamp plus its track's clock offset in seconds)."""
    if source == "tpf":
        assert tpf is not None, "depth_poses=tpf without a time-pose function"
        with torch.no_grad():
            return tpf.poses(track.timestamps.numpy() + frame_time_offsets(track, offsets)).cpu()
    poses = track.prior_c2w if source == "prior" else track.gt_c2w
    missing = np.flatnonzero(~np.isfinite(poses.numpy()).reshape(len(track), -1).all(axis=1))
    if len(missing):
        frame = track.frames[int(missing[0])]
        what = "a prior c2w in its metadata" if source == "prior" else "a pose_gt file"
        raise ValueError(f"depth_poses={source}: {frame.metadata_path} (and {len(missing) - 1} more) has no {what}")
    return poses


def offset_table(track_names: Sequence[str], estimates: Mapping[str, TimeOffsetEstimate]) -> Tensor:
    """The ``depth_time_offsets`` table of ``estimates`` (a track without one: offset 0, not estimated)."""
    table = torch.full((len(track_names), 3), float("nan"), dtype=torch.float64)
    for row, name in enumerate(track_names):
        estimate = estimates.get(name)
        table[row, 0] = 0.0 if estimate is None else estimate.applied_s
        if estimate is not None and estimate.estimate_s is not None:
            table[row, 1], table[row, 2] = estimate.estimate_s, estimate.std_s
    return table


class Stage1(nn.Module):
    """The run's time-pose function(s) and clock offsets, with the state_dict a checkpoint holds.

    ``tpf``: the TPF in use (fine-tuned in stage 3 with ``finetune``); ``stage1_tpf``: with ``finetune``,
    the TPF as fitted, frozen; ``depth_time_offsets``: the clock-offset table; ``corrections``: with
    ``finetune``, the training depth rays' moves from the fitted TPF's poses to ``tpf``'s. Loading a
    state rebuilds a TPF whose saved shapes (chosen when it was fitted) differ from the one held.
    """

    tpf: Optional[FittedTPF]
    stage1_tpf: Optional[FittedTPF]

    def __init__(
        self,
        fit: Stage1Fit,
        track_names: Sequence[str],
        depth_track: Optional[DepthTrackData],
        tpf_config: TimePoseFunctionConfig,
        finetune: bool,
        device: torch.device | str,
        lidar_scans: Optional[LidarScanSet] = None,
    ) -> None:
        super().__init__()
        self.track_names: List[str] = list(track_names)
        self.register_buffer(TIME_OFFSETS_KEY, offset_table(self.track_names, fit.time_offsets).to(device))
        self._tpf_config = tpf_config
        self._depth_track = depth_track
        self.register_module("tpf", None if fit.tpf is None else fit.tpf.to(device))
        self.register_module("stage1_tpf", None)
        self._lidar_scans = lidar_scans
        self.corrections: Optional[TPFRayCorrections] = None
        self.lidar_corrections: Optional[LidarRayCorrections] = None
        """With ``finetune`` and LiDAR tracks: the training LiDAR rays' moves to the fine-tuned TPF."""
        if finetune and depth_track is not None:
            self.corrections = TPFRayCorrections(self.depth_times(depth_track))
        if finetune and lidar_scans is not None:
            self.lidar_corrections = LidarRayCorrections(lidar_scans.scan_times(self.time_offsets()))
        if finetune and (depth_track is not None or lidar_scans is not None):
            if self.tpf is not None:
                self.stage1_tpf, self.tpf = self.tpf, copy.deepcopy(self.tpf)
                self._retarget()
        self.register_load_state_dict_pre_hook(Stage1._take_saved_shapes)
        self.register_load_state_dict_post_hook(Stage1._after_load)

    @property
    def fitted(self) -> Optional[FittedTPF]:
        """The TPF as stage 1 fitted it (the training depth rays' poses)."""
        return self.stage1_tpf if self.stage1_tpf is not None else self.tpf

    def time_offsets(self) -> Dict[str, float]:
        """The clock offset (seconds) applied to each depth and LiDAR track: TPF(stamp + offset)."""
        table = getattr(self, TIME_OFFSETS_KEY)
        return {name: float(table[row, 0]) for row, name in enumerate(self.track_names)}

    def depth_times(self, track: DepthTrackData) -> np.ndarray:
        """The track's frames on the RGB clock: their stamps plus their tracks' offsets."""
        return track.timestamps.numpy() + frame_time_offsets(track, self.time_offsets())

    def depth_poses(self, track: DepthTrackData, source: DepthPoseSource) -> Tensor:
        """World-frame poses (N,3,4) of a track's frames from ``source`` as given in stage 1 (for tpf: the
        fitted TPF's, before any fine-tuning; the pose optimiser's corrected_depth_poses for after)."""
        return frame_poses(track, source, self.fitted, self.time_offsets())

    def _retarget(self) -> None:
        """Freezes the fitted TPF and points the corrections from its poses to ``tpf``'s, on ``tpf``'s device."""
        assert self.tpf is not None and self.stage1_tpf is not None
        self.stage1_tpf.requires_grad_(False)
        self.stage1_tpf.to(self.tpf.position_centre.device)
        if self.corrections is not None:
            self.corrections.retarget(self.tpf, self.stage1_tpf)
        if self.lidar_corrections is not None:
            self.lidar_corrections.retarget(self.tpf, self.stage1_tpf)

    def _take_saved_shapes(self, state_dict: Dict[str, Tensor], prefix: str, *_) -> None:
        """Before loading: each saved TPF is loaded into the one held when the shapes match (a resumed
        training run, whose optimiser holds its parameters), else into one rebuilt to its shapes; a
        ``tpf`` the state lacks is dropped."""
        for name in ("tpf", "stage1_tpf"):
            saved = {k[len(prefix + name) + 1 :]: v for k, v in state_dict.items() if k.startswith(f"{prefix}{name}.")}
            held: Optional[FittedTPF] = getattr(self, name)
            if not saved:
                if name == "tpf":
                    self.tpf = None
            elif held is None or not torch.equal(held.shape_info.cpu(), saved["shape_info"].cpu()):
                rebuilt = FittedTPF.from_state_dict(self._tpf_config, saved)
                setattr(self, name, rebuilt.to(getattr(self, TIME_OFFSETS_KEY).device))

    def _after_load(self, _incompatible_keys) -> None:
        """After loading: the fitted TPF frozen, the corrections following the loaded TPFs and clock offsets."""
        if self.stage1_tpf is not None:
            self.stage1_tpf.requires_grad_(False)
        if self.stage1_tpf is not None and self.tpf is not None:
            if self.corrections is not None:
                assert self._depth_track is not None, "corrections are built for the training depth track"
                self.corrections.timestamps = self.depth_times(self._depth_track)
            if self.lidar_corrections is not None:
                assert self._lidar_scans is not None
                self.lidar_corrections.scan_times = self._lidar_scans.scan_times(self.time_offsets())
            if self.corrections is not None or self.lidar_corrections is not None:
                self._retarget()
