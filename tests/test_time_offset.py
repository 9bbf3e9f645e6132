"""A depth track's clock offset, estimated from the depth frames (trajectory/time_offset.py).

Scenes: the generated town (the end-to-end test's size: 64 RGB frames at 64x48, lidar at 48x36)
with the depth clock behind the RGB clock by a known offset, so the truth is exact.
"""

from __future__ import annotations

import dataclasses
from typing import Dict

import numpy as np
import pytest
import torch

from async_nerf_ns.data.dataparser import METADATA_KEY, AsyncNerfDataParserConfig
from async_nerf_ns.data.depth_frames import ray_distance
from async_nerf_ns.trajectory.fit import fit_tpf
from async_nerf_ns.trajectory.metrics import pose_errors
from async_nerf_ns.trajectory.time_offset import TimeOffsetConfig, estimate_time_offset
from async_nerf_ns.trajectory.tpf import TimePoseFunctionConfig
from conftest import E2E_SPEC
from examples.make_scene import generate_scene

OFFSETS_MS = (-40, 0, 25, 80)
ESTIMATE_TOLERANCE_S = 0.002
"""Measured: |estimate - truth| at most 0.65 ms over the four offsets (bootstrap std 0.12 ms); margin 3x."""
POSE_TOLERANCE_M = 0.05
"""Depth-frame translation error at the applied offset: measured 0.013-0.016 m (0.0003 m unshifted; the
offsets alone put them 0.6-2.0 m off); margin 3x."""


@pytest.fixture(scope="module")
def tracks(tmp_path_factory) -> Dict[int, dict]:
    """Per offset: the train lidar track, its ray distances and the TPF fitted to the train RGB frames."""
    result = {}
    for offset in OFFSETS_MS:
        data = generate_scene(tmp_path_factory.mktemp("offset") / f"town_{offset}", dataclasses.replace(E2E_SPEC, depth_clock_offset_ms=offset))
        outputs = AsyncNerfDataParserConfig(data=data).setup().get_dataparser_outputs("train")
        meta = outputs.metadata[METADATA_KEY]
        tpf = fit_tpf(meta.rgb_timestamps.numpy(), outputs.cameras.camera_to_worlds, TimePoseFunctionConfig(), progress=False)
        track = meta.depth_tracks["lidar"]
        distances = [ray_distance(track, i, meta.pose_scale_factor) for i in range(len(track))]
        result[offset] = {"track": track, "distances": distances, "tpf": tpf, "scale": meta.pose_scale_factor, "data": data}
    return result


def _estimate(entry, config=TimeOffsetConfig(), given_s=0.0):
    track = entry["track"]
    return estimate_time_offset("lidar", track.timestamps.numpy(), track.intrinsics, entry["distances"], entry["tpf"].poses, config, given_s)


def _translation_error(entry, offset_s: float) -> float:
    track = entry["track"]
    with torch.no_grad():
        poses = entry["tpf"].poses(track.timestamps.numpy() + offset_s)
    return pose_errors(poses, track.gt_c2w, entry["scale"])["translation_m"]["mean"]


@pytest.mark.parametrize("offset_ms", OFFSETS_MS)
def test_the_estimate_finds_a_known_clock_offset_and_brings_the_depth_poses_back(tracks, offset_ms):
    entry = tracks[offset_ms]
    estimate = _estimate(entry)
    truth = offset_ms / 1000
    assert abs(estimate.estimate_s - truth) < ESTIMATE_TOLERANCE_S, estimate.message
    assert estimate.std_s < 0.001 and estimate.pairs > 100
    if offset_ms == 0:
        # Within the estimator's resolution of the given 0: kept, so unshifted data is left exactly as it was.
        assert estimate.status == "not significant" and estimate.applied_s == 0.0
    else:
        assert estimate.status == "estimated" and estimate.applied_s == estimate.estimate_s
        assert _translation_error(entry, 0.0) > 0.5  # what the offset costs when ignored
    assert _translation_error(entry, estimate.applied_s) < POSE_TOLERANCE_M
    # The search curve is reported, with its minimum where the estimate is.
    offsets, costs = np.array(estimate.curve_offsets_s), np.array(estimate.curve_costs)
    assert abs(offsets[np.argmin(costs)] - estimate.estimate_s) <= 0.002


def test_a_given_offset_centres_the_search_and_is_kept_when_the_data_agrees(tracks):
    estimate = _estimate(tracks[25], given_s=0.0255)
    assert estimate.status == "not significant" and estimate.applied_s == 0.0255
    off = _estimate(tracks[25], TimeOffsetConfig(estimate=False), given_s=0.025)
    assert off.status == "not estimated" and off.applied_s == 0.025


def test_an_offset_beyond_the_search_range_is_reported_not_used(tracks):
    estimate = _estimate(tracks[80], TimeOffsetConfig(search_range_s=0.05))
    assert estimate.status == "at range edge" and estimate.applied_s == 0.0
    assert "may be larger than the range" in estimate.message and "search-range-s" in estimate.message


def test_a_hovering_sensor_does_not_determine_its_offset(tracks):
    """The same pose at every time (a hovering drone): every offset fits equally well."""
    entry = tracks[0]
    fixed = entry["tpf"].poses(entry["track"].timestamps.numpy()[:1]).detach()

    def hovering(times: np.ndarray) -> torch.Tensor:
        return fixed.expand(len(times), 3, 4)

    # The frames are all the first frame's view: they overlap each other completely.
    distances = [entry["distances"][0]] * len(entry["distances"])
    track = entry["track"]
    estimate = estimate_time_offset("lidar", track.timestamps.numpy(), track.intrinsics, distances, hovering, TimeOffsetConfig(), 0.01)
    assert estimate.status == "unobservable" and estimate.applied_s == 0.01
    assert "static or constant-velocity" in estimate.message


def test_too_few_overlapping_frames_are_reported(tracks):
    entry = tracks[0]
    track = entry["track"]
    estimate = estimate_time_offset(
        "lidar", track.timestamps.numpy()[:2], track.intrinsics[:2], entry["distances"][:2], entry["tpf"].poses, TimeOffsetConfig()
    )
    assert estimate.status == "unobservable" and estimate.applied_s == 0.0
    assert "only 2 pairs of depth frames overlap" in estimate.message


def test_the_tpf_command_reports_the_offset_its_search_and_the_errors_with_and_without_it(tracks, tmp_path):
    from async_nerf_ns.scripts.tpf import FitTpf

    report = FitTpf(data=tracks[80]["data"], output=tmp_path, progress=False).main()
    offset = report["time_offsets"]["lidar"]
    assert offset["status"] == "estimated" and abs(offset["applied_s"] - 0.080) < ESTIMATE_TOLERANCE_S
    assert len(offset["curve_offsets_s"]) == len(offset["curve_costs"]) > 20
    assert (tmp_path / "time_offset.png").stat().st_size > 10_000
    for split in ("train", "val"):
        errors = report["sets"][f"{split}/lidar"]["errors"]
        assert errors["tpf"]["translation_m"]["mean"] < POSE_TOLERANCE_M
        assert errors["tpf_without_offset"]["translation_m"]["mean"] > 1.0
