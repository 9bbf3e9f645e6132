"""The clock offset of a depth track: ``pose(t_depth) = TPF(t_depth + offset)``, estimated from the depth.

A depth sensor's stamps often disagree with the camera's clock by a constant (driver and transport
latency, exposure vs scan time, a LiDAR stamping the end of its sweep). Placed at ``TPF(t + o)``
with the wrong ``o``, each depth frame sits where the camera was a little earlier or later. Frames
that see the same surface then disagree about it, except where the error is the same for both
(a straight flight at constant speed moves every frame by the same vector): turns, speed changes
and rotations make the offset observable, hovering or constant motion does not.

The estimator is a 1-D search that maximises the geometric consistency of overlapping depth frames
(no field, no RGB, no training: it runs in stage 1, before the shards are written):

1. pairs: every frame with its next ``max_frames_apart`` frames of the track (both directions) whose
   measured points land in the other frame's image at the given offset (``min_overlap``);
2. cost(o): the points of frame i, placed at TPF(t_i + o), are projected into frame j at
   TPF(t_j + o); the relative difference between their distance from j's camera and j's measured
   distance at that pixel, truncated at ``residual_cap`` (occlusions, edges), averaged per pair, then
   over pairs;
3. a coarse grid over ``given +- search_range_s``, then a fine grid around its best, and a parabola
   through the fine minimum; the uncertainty is the spread of the minimum over bootstrap resamples
   of the pairs (the pairs are the independent observations);
4. the estimate is used when it is well determined and differs from the given offset by more than
   ``significance`` standard errors and ``min_change_s``; otherwise the given offset is kept, with the reason: too few
   overlapping frames, a flat cost (static or constant-velocity sensor), a minimum at the edge of the
   search range (the offset may be larger than the range), or too uncertain.

The search (steps 1, 3 and 4) is `search_time_offset`, on any track prepared as `PreparedFrames` (its
pairs' costs and overlaps at a list of offsets); step 2 above is the depth images' cost, and
trajectory/lidar_offset.py gives LiDAR tracks theirs (points at their own times, point-to-plane).

Why this and not the depth loss of a field: it is available before any field exists, costs seconds
(measured in examples/bench_time_offset.py), and is the same for every process of a cluster run.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Protocol, Sequence, Tuple

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

PoseFunction = Callable[[np.ndarray], Float[Tensor, "m 3 4"]]
"""Timestamps (M,) float64 seconds -> camera-to-world poses (M, 3, 4), OpenGL camera axes."""


@dataclass(frozen=True)
class TimeOffsetConfig:
    """Estimating a depth or LiDAR track's clock offset to the RGB clock (stage 1; LiDAR: lidar_offset.py)."""

    estimate: bool = True
    """Estimate each depth track's offset from its depth frames and use it when it is significant (see
    significance); False: use the given offsets (--pipeline.datamanager.depth-time-offset) as they are."""
    search_range_s: float = 0.25
    """Offsets searched: the given offset plus or minus this many seconds."""
    coarse_steps: int = 21
    """Offsets of the coarse grid over the whole search range."""
    fine_step_s: float = 0.002
    """Spacing of the fine grid, searched over two coarse steps around the coarse minimum."""
    max_frames_apart: int = 4
    """Each depth frame is compared with its next this many frames of the track (in time order)."""
    min_overlap: float = 0.3
    """A pair counts when at least this fraction of one frame's points land on measured pixels of the other."""
    points_per_frame: int = 512
    """Measured pixels of each frame projected into the others (drawn with seed); of a LiDAR scan, the
    points compared with the other scans' surfaces (4x as many make up its own surface)."""
    max_map_width: int = 160
    """Depth maps wider than this are reduced (the nearest of each block) for the look-ups: bounds memory."""
    residual_cap: float = 0.03
    """Relative depth disagreements are truncated at this value (occlusions and edges do not dominate).
    Keep it a few times above the sensor's relative depth noise."""
    min_pairs: int = 6
    """Fewer overlapping pairs than this: the offset is not estimated."""
    min_relief: float = 0.02
    """The cost must vary by at least this fraction of its minimum over the search range, else the
    offset is unobservable (a static or constant-velocity sensor)."""
    max_std_s: float = 0.01
    """An estimate less certain than this (bootstrap standard deviation, seconds) is not used."""
    significance: float = 3.0
    """The estimate replaces the given offset only if they differ by more than this many standard deviations."""
    min_change_s: float = 0.002
    """... and by more than this many seconds. The bootstrap deviation is statistical only: on the
    generated example scenes the estimate's systematic error was 0.1 ms (64x48 depth) to 0.7 ms (48x36),
    from occlusion edges and pixel sampling, so smaller differences are not applied."""
    bootstrap: int = 200
    """Bootstrap resamples of the pairs for the uncertainty."""
    pairs_per_chunk: int = 64
    """Pairs evaluated at once (memory: pairs x points x offsets x a few floats)."""
    seed: int = 0
    """Seed of the point and bootstrap draws."""


@dataclass
class TimeOffsetEstimate:
    """What the estimator found for one track (JSON-ready through ``as_dict``)."""

    track: str
    given_s: float
    """The offset the user gave (0 by default)."""
    applied_s: float
    """The offset used: the estimate when status is "estimated", else the given one."""
    status: str
    """estimated | not significant | unobservable | at range edge | too uncertain | not estimated"""
    message: str
    estimate_s: Optional[float] = None
    std_s: Optional[float] = None
    pairs: int = 0
    seconds: float = 0.0
    curve_offsets_s: List[float] = field(default_factory=list)
    curve_costs: List[float] = field(default_factory=list)

    def as_dict(self) -> Dict:
        return dataclasses.asdict(self)


class PreparedFrames(Protocol):
    """A track prepared for the search: what `search_time_offset` needs of any kind of track (depth
    images here, LiDAR scans in trajectory/lidar_offset.py)."""

    times: np.ndarray
    """(N,) float64: the frames' stamps, seconds, in time order (pairs index them)."""

    def costs(
        self, pairs: Tensor, offsets: np.ndarray, poses_at: PoseFunction, config: TimeOffsetConfig
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Each pair's cost and overlap at each offset.

        Args:
            pairs: (Q, 2) long, frame indices (i: the frame whose points are compared, j: the frame
                they are compared with).
            offsets: (G,) float64 seconds added to every stamp.
        Returns:
            costs (G, Q) float64 (lower: more consistent), overlap (G, Q): the fraction of frame i's
            points that met frame j's data.
        """
        ...


@dataclass(frozen=True)
class TrackWords:
    """How the messages name a kind of track and its frames."""

    track: str
    """e.g. "depth track": a message begins "depth track 'NAME': ..."."""
    frames: str
    """e.g. "depth frames": "only 3 pairs of depth frames overlap", "the depth frames agree ..."."""


DEPTH_WORDS = TrackWords("depth track", "depth frames")


@dataclass
class _Frames:
    """A track's frames prepared for the search (scene units, OpenGL camera axes)."""

    times: np.ndarray
    points: Tensor
    """(N, P, 3) measured points of each frame in its camera frame; padded rows have ``valid`` False."""
    valid: Tensor
    """(N, P)."""
    maps: Tensor
    """(N, H, W) measured ray distances at the reduced resolution, 0 where none."""
    intrinsics: Tensor
    """(N, 4) fx, fy, cx, cy at the reduced resolution."""

    def costs(self, pairs: Tensor, offsets: np.ndarray, poses_at: PoseFunction, config: TimeOffsetConfig):
        """`PreparedFrames.costs`: the pairs' mean truncated relative depth disagreement (`_pair_costs`)."""
        times = (self.times[None, :] + offsets[:, None]).reshape(-1)
        with torch.no_grad():
            poses = poses_at(times).float().cpu().reshape(len(offsets), len(self.times), 3, 4)
            chunks = [
                _pair_costs(self, pairs[start : start + config.pairs_per_chunk], poses, config.residual_cap)
                for start in range(0, len(pairs), config.pairs_per_chunk)
            ]
        return torch.cat([c for c, _ in chunks], dim=1).double().numpy(), torch.cat([o for _, o in chunks], dim=1).numpy()


def _camera_directions(intrinsics: Tensor, height: int, width: int) -> Tensor:
    """(H, W, 3) unit directions of the pixel centres in camera axes (x right, y up, looking along -z)."""
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    rows, cols = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    directions = torch.stack([(cols - cx) / fx, -(rows - cy) / fy, -torch.ones_like(cols)], dim=-1)
    return torch.nn.functional.normalize(directions, dim=-1)


def _prepare(
    times: np.ndarray, intrinsics: Tensor, distances: Sequence[Tensor], config: TimeOffsetConfig
) -> _Frames:
    generator = torch.Generator().manual_seed(config.seed)
    height = max(int(d.shape[0]) for d in distances)
    width = max(int(d.shape[1]) for d in distances)
    factor = max(1, int(np.ceil(width / config.max_map_width)))
    maps = torch.zeros(len(distances), -(-height // factor), -(-width // factor))
    points = torch.zeros(len(distances), config.points_per_frame, 3)
    valid = torch.zeros(len(distances), config.points_per_frame, dtype=torch.bool)
    reduced = intrinsics.double().clone()
    for i, distance in enumerate(distances):
        distance = torch.nan_to_num(distance.float(), nan=0.0, posinf=0.0).clamp(min=0.0)
        h, w = distance.shape
        measured = torch.nonzero(distance > 0)
        if len(measured):
            chosen = measured[torch.randperm(len(measured), generator=generator)[: config.points_per_frame]]
            directions = _camera_directions(intrinsics[i], h, w)[chosen[:, 0], chosen[:, 1]]
            points[i, : len(chosen)] = directions * distance[chosen[:, 0], chosen[:, 1], None]
            valid[i, : len(chosen)] = True
        small = distance[::factor, ::factor]  # the pixel at each block's corner: nearest, no mixing of depths
        maps[i, : small.shape[0], : small.shape[1]] = small
        reduced[i] = intrinsics[i].double() / factor
    return _Frames(np.asarray(times, dtype=np.float64), points, valid, maps, reduced.float())


def _pair_costs(frames: _Frames, pairs: Tensor, poses: Tensor, cap: float) -> Tuple[Tensor, Tensor]:
    """Mean truncated relative disagreement of each pair at each offset, and the fraction of points
    that landed on measured pixels.

    Args:
        pairs: (Q, 2) frame indices (i: projected, j: looked up).
        poses: (G, N, 3, 4) every frame's pose at each of G offsets.
    Returns:
        costs (G, Q), overlap (G, Q).
    """
    i, j = pairs[:, 0], pairs[:, 1]
    rotation_i, translation_i = poses[:, i, :, :3], poses[:, i, :, 3]  # (G, Q, 3, 3), (G, Q, 3)
    rotation_j, translation_j = poses[:, j, :, :3], poses[:, j, :, 3]
    world = torch.einsum("gqab,qpb->gqpa", rotation_i, frames.points[i]) + translation_i[:, :, None]
    camera = torch.einsum("gqba,gqpb->gqpa", rotation_j, world - translation_j[:, :, None])  # R^T (X - t)
    depth_axis = -camera[..., 2]  # OpenGL: the camera looks along -z
    k = frames.intrinsics[j]  # (Q, 4)
    safe = depth_axis.clamp(min=1e-6)
    # Continuous pixel coordinates with pixel centres at integers; measured distances interpolated
    # bilinearly between the four surrounding centres (nearest-pixel look-ups biased the minimum by ~1 ms).
    x = k[None, :, None, 2] + k[None, :, None, 0] * camera[..., 0] / safe - 0.5
    y = k[None, :, None, 3] - k[None, :, None, 1] * camera[..., 1] / safe - 0.5
    _, height, width = frames.maps.shape
    x0, y0 = torch.floor(x), torch.floor(y)
    wx, wy = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    inside = (depth_axis > 1e-6) & (x0 >= 0) & (x0 < width - 1) & (y0 >= 0) & (y0 < height - 1) & frames.valid[i][None]
    base = j[None, :, None] * (height * width) + y0.clamp(0, height - 2) * width + x0.clamp(0, width - 2)
    flat_maps = frames.maps.reshape(-1)
    corners = [flat_maps[base], flat_maps[base + 1], flat_maps[base + width], flat_maps[base + width + 1]]
    measured = (corners[0] * (1 - wx) + corners[1] * wx) * (1 - wy) + (corners[2] * (1 - wx) + corners[3] * wx) * wy
    # Only where all four neighbours measured: no blending of a surface with "no measurement".
    landed = inside & (corners[0] > 0) & (corners[1] > 0) & (corners[2] > 0) & (corners[3] > 0)
    relative = ((camera.norm(dim=-1) - measured).abs() / measured.clamp(min=1e-6)).clamp(max=cap)
    weights = landed.float()
    count = weights.sum(dim=-1)
    costs = torch.where(count > 0, (relative * weights).sum(dim=-1) / count.clamp(min=1.0), torch.full_like(count, cap))
    overlap = count / frames.valid[i].float().sum(dim=-1).clamp(min=1.0)[None]
    return costs, overlap


def _parabola_minimum(offsets: np.ndarray, curve: np.ndarray) -> float:
    """The vertex of the parabola through the grid minimum and its neighbours (the minimum at an end: itself)."""
    k = int(np.argmin(curve))
    if k == 0 or k == len(curve) - 1:
        return float(offsets[k])
    y0, y1, y2 = curve[k - 1], curve[k], curve[k + 1]
    denominator = y0 - 2 * y1 + y2
    step = offsets[k + 1] - offsets[k]
    shift = 0.5 * (y0 - y2) / denominator if denominator > 0 else 0.0
    return float(offsets[k] + np.clip(shift, -1.0, 1.0) * step)


def estimate_time_offset(
    name: str,
    times: np.ndarray,
    intrinsics: Tensor,
    distances: Sequence[Tensor],
    poses_at: PoseFunction,
    config: TimeOffsetConfig,
    given_s: float = 0.0,
) -> TimeOffsetEstimate:
    """The clock offset of one depth track (see the module docstring).

    Args:
        name: the track (for messages).
        times: (N,) the frames' stamps, seconds, in time order.
        intrinsics: (N, 4) fx, fy, cx, cy of each frame's depth map.
        distances: per frame, the measured distance along each pixel's ray (H, W), in the units of the
            poses (scene units); 0 or non-finite where there is no measurement.
        poses_at: the time-pose function.
        given_s: the offset given by the user; the search is centred on it and it is the fallback.
    """
    return search_time_offset(name, lambda: _prepare(times, intrinsics, distances, config), poses_at, config, given_s)


def search_time_offset(
    name: str,
    prepare: Callable[[], PreparedFrames],
    poses_at: PoseFunction,
    config: TimeOffsetConfig,
    given_s: float = 0.0,
    words: TrackWords = DEPTH_WORDS,
) -> TimeOffsetEstimate:
    """Steps 1-4 of the module docstring on any kind of track (its cost is the prepared frames' own).

    Args:
        name: the track (for messages).
        prepare: makes the prepared frames; called only when ``config.estimate`` (its time is counted).
        poses_at: the time-pose function.
        given_s: the offset given by the user; the search is centred on it and it is the fallback.
        words: how the messages name the track and its frames.
    """
    started = time.perf_counter()

    def result(status: str, message: str, **kwargs) -> TimeOffsetEstimate:
        applied = kwargs.pop("applied_s", given_s)
        return TimeOffsetEstimate(name, given_s, applied, status, message, seconds=time.perf_counter() - started, **kwargs)

    track, given = f"{words.track} '{name}'", f"using the given {given_s * 1000:+.1f} ms"
    if not config.estimate:
        return result("not estimated", f"{track}: offset {given_s * 1000:+.1f} ms as given (estimation off)")
    frames = prepare()
    pairs = _pairs_that_overlap(frames, len(frames.times), given_s, poses_at, config)
    if len(pairs) < config.min_pairs:
        return result("unobservable", f"{track}: only {len(pairs)} pairs of {words.frames} overlap (need "
                      f"{config.min_pairs}): the clock offset cannot be estimated; {given}", pairs=len(pairs))
    coarse, coarse_curve = _coarse_search(frames, pairs, given_s, poses_at, config)
    curve = {"curve_offsets_s": coarse.tolist(), "curve_costs": coarse_curve.tolist(), "pairs": len(pairs)}
    best = int(np.argmin(coarse_curve))
    relief = (coarse_curve.max() - coarse_curve.min()) / max(coarse_curve.min(), 1e-12)
    radius = config.search_range_s
    if relief < config.min_relief:
        return result("unobservable", f"{track}: the {words.frames} agree equally well at every offset within "
                      f"{radius * 1000:.0f} ms (the cost varies by {relief:.1%}): a static or constant-velocity sensor "
                      f"does not determine its clock offset; {given}", **curve)
    if best in (0, len(coarse) - 1):
        return result("at range edge", f"{track}: the best offset lies at the edge of the search range "
                      f"({coarse[best] * 1000:+.0f} ms, range {given_s * 1000:+.0f} +- {radius * 1000:.0f} ms): the "
                      "offset may be larger than the range; widen --pipeline.datamanager.time-offset.search-range-s or "
                      f"give the offset; {given}", **curve)
    estimate, std, curve = _fine_search(frames, pairs, coarse, coarse_curve, best, poses_at, config, curve)
    found = {"estimate_s": estimate, "std_s": std, **curve}
    text = f"{estimate * 1000:+.1f} +- {std * 1000:.1f} ms from {len(pairs)} pairs of {words.frames}"
    if std > config.max_std_s:
        return result("too uncertain", f"{track}: clock offset {text}: too uncertain (more than "
                      f"{config.max_std_s * 1000:.0f} ms); {given}", **found)
    threshold = max(config.significance * std, config.min_change_s)
    if abs(estimate - given_s) <= threshold:
        return result("not significant", f"{track}: clock offset {text}: within {threshold * 1000:.1f} ms of the "
                      f"given {given_s * 1000:+.1f} ms, which is kept", **found)
    return result("estimated", f"{track}: clock offset {text}: used", applied_s=estimate, **found)


def _pairs_that_overlap(frames: PreparedFrames, n: int, given_s: float, poses_at: PoseFunction, config: TimeOffsetConfig) -> Tensor:
    """(P, 2) ordered pairs of frames at most ``max_frames_apart`` apart (both orders) whose views overlap
    by at least ``min_overlap`` at the given offset."""
    candidates = [(a, a + k) for k in range(1, config.max_frames_apart + 1) for a in range(n - k)]
    candidates += [(b, a) for a, b in candidates]
    pairs = torch.tensor(candidates, dtype=torch.long).reshape(-1, 2)
    if len(pairs):
        _, overlap = frames.costs(pairs, np.array([given_s]), poses_at, config)
        pairs = pairs[torch.from_numpy(overlap[0] >= config.min_overlap)]
    return pairs


def _coarse_search(frames: PreparedFrames, pairs: Tensor, given_s: float, poses_at: PoseFunction, config: TimeOffsetConfig):
    """The offsets of the coarse grid (given +- search range) and the mean cost over the pairs at each."""
    radius = config.search_range_s
    coarse = given_s + np.linspace(-radius, radius, config.coarse_steps)
    coarse_costs, _ = frames.costs(pairs, coarse, poses_at, config)
    return coarse, coarse_costs.mean(axis=1)


def _fine_search(frames: PreparedFrames, pairs: Tensor, coarse, coarse_curve, best: int, poses_at: PoseFunction,
                 config: TimeOffsetConfig, curve: dict):
    """Around the coarse minimum: the parabola's minimum of the fine costs, its bootstrap standard deviation
    over the pairs, and the cost curve with the fine offsets merged in."""
    coarse_step = coarse[1] - coarse[0]
    fine = np.arange(coarse[best] - 2 * coarse_step, coarse[best] + 2 * coarse_step + 1e-12, config.fine_step_s)
    fine_costs, _ = frames.costs(pairs, fine, poses_at, config)
    estimate = _parabola_minimum(fine, fine_costs.mean(axis=1))
    rng = np.random.default_rng(config.seed)
    samples = [
        _parabola_minimum(fine, fine_costs[:, rng.integers(0, len(pairs), len(pairs))].mean(axis=1))
        for _ in range(config.bootstrap)
    ]
    order = np.argsort(np.concatenate([coarse, fine]))
    curve = {**curve, "curve_offsets_s": np.concatenate([coarse, fine])[order].tolist(),
             "curve_costs": np.concatenate([coarse_curve, fine_costs.mean(axis=1)])[order].tolist()}
    return estimate, float(np.std(samples)), curve
