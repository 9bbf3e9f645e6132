"""The clock offset of a LiDAR track: ``pose(stamp + t) = TPF(stamp + t + offset)``, estimated from its scans.

The search is the depth tracks' (trajectory/time_offset.py: pairs, coarse grid, fine grid, parabola,
bootstrap, the same decisions and messages); only the cost differs. A LiDAR point has its own time
(a spinning LiDAR sweeps for ~100 ms, in which a drone at 6 m/s moves 0.6 m), so a scan is not a
rigid frame with one pose: every point is placed in the world at its own time,
``c2w(stamp + t + o) @ (lidar_to_camera @ p) / metres_per_unit``.

Cost of a pair (i, j) at offset o: ``points_per_frame`` points of scan i (a seeded draw) against the
local surface of scan j (``SURFACE_FACTOR`` times as many of j's points), all placed at their own
times: the distance of each i-point from the plane through its nearest j-point (normal: PCA of that
j-point's ``NORMAL_NEIGHBOURS`` nearest j-points), divided by the i-point's range and truncated at
``residual_cap``, averaged over the i-points that met j's surface (a j-point within
``residual_cap x range`` plus the j-point's neighbourhood radius). The overlap is the fraction of
i-points that met it. Nearest j-points come from one k-d tree per scan, built at a few anchor offsets
(``ANCHOR_SPACING_S``), not at every offset.

Why point-to-plane, measured on tests/test_lidar_offset.py's scene (30 scans of a 16-beam LiDAR,
five offsets and seeds): point-to-plane misses the truth by 0.03-0.08 ms (bootstrap std 0.03-0.04
ms); point-to-point, even with a tree search at every offset, by 0.4-0.7 ms (std 0.6-0.7 ms). A
sparse scan's nearest point is mostly a sampling gap (rings 2 degrees apart, 0.7 m at 20 m), which
does not vanish at the true offset and jumps as points slide past each other; the distance to j's
local plane is ~0 at the truth whatever the sampling. Point-to-point with correspondences kept from
an anchor is worse still: it is smallest at the anchor, which biased the estimate by up to 19 ms.
Points whose neighbourhood is not a plane (edges, corners, foliage, a single ring) keep the
point-to-point distance. On the generated aerial example with a LiDAR (examples/make_scene.py,
109 scans, the TPF fitted to the RGB frames, stamps at the start or the end of the sweep, offsets
-45, 0 and +30 ms) the estimate was 0.02-0.27 ms off.

Why the cap is relative to range: a wrong offset moves a point by ``v * do`` (translation) plus
``w * do * range`` (rotation), so the displacement, like the depth images' relative disagreement,
grows with range; a relative cap truncates near and far points alike, the cost is in the same unit
as the depth tracks' (one plot), and ``residual_cap`` keeps its meaning (a LiDAR's ~1-3 cm range noise
is 0.1 % at 20 m, well below the default 3 %).

Speed (one thread of a shared 2-core machine, default options): 100 scans of ~4,600 points (774
pairs) 11-16 s, 30 scans 3-4 s, 109 scans of the example 16-21 s: about half in the tree searches
(12 anchors x 400,000 queries at ~1 us), the rest placing the points and measuring the distances at
the 74 offsets of a search.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from nerfstudio.utils.rich_utils import CONSOLE
from scipy.spatial import cKDTree
from torch import Tensor

from async_nerf_ns.files.keys import content_key, file_identity
from async_nerf_ns.layout import LidarScan, load_lidar_points
from async_nerf_ns.trajectory.fit_cache import cached_estimate
from async_nerf_ns.trajectory.time_offset import (
    PoseFunction,
    TimeOffsetConfig,
    TimeOffsetEstimate,
    TrackWords,
    search_time_offset,
)

LIDAR_WORDS = TrackWords("LiDAR track", "scans")
LIDAR_TIME_OFFSET_FORMAT = "stage1-lidar-time-offset-v1"

SURFACE_FACTOR = 4
"""Scan j's surface: this many times ``points_per_frame`` of its points (the i-points are the first of them)."""
NORMAL_NEIGHBOURS = 10
"""Points of j (itself included) whose PCA gives a surface normal."""
PLANARITY = 0.1
"""A neighbourhood is a plane when its smallest covariance eigenvalue is below this times the middle one
(a line, e.g. one ring, or a volume, e.g. foliage, is not; those points use point-to-point distances)."""
KNOT_SPACING_S = 0.005
"""Poses are evaluated at knots this far apart across each sweep and interpolated linearly to each point's
time (the TPF is too slow for every point at every offset). The error: at 90 deg/s the rotation turns
8 mrad between knots, and the linear blend of two rotation matrices departs from the true rotation by
~angle^2 / 8 = 8e-6, i.e. 0.4 mm at 50 m; a translation's error is acceleration x spacing^2 / 8, 0.03 mm at 10 m/s^2."""
MAX_REACH = 0.2
"""A point's local surface reaches at most this times its range (an isolated far point is no surface)."""
ANCHOR_SPACING_S = 0.05
"""Correspondences (the j-point each i-point is compared with) are searched at anchor offsets about this
far apart (``given + k * step``, the step a multiple of the coarse grid's: ~11 tree searches for the
~73 offsets of a search with the defaults); at an offset between two anchors, the costs with each
anchor's correspondences (the points placed at the offset itself) are blended linearly, so that the
cost is continuous in the offset. Which j-point is nearest depends on where scans i and j lie
relative to each other, and a change of offset moves that only by the change of velocity between
them times the change of offset (e.g. 2 m/s x 25 ms = 5 cm, against a point spacing of 0.3-1 m).
Measured on the test scene (five offsets): 0.05 s, at most 0.08 ms off, as good as a search at every
offset (0.12 ms, 3-5x slower); 0.1 s, 0.17 ms; 0.25 s, 0.23 ms."""
MATCH_CACHE_BYTES = 256 * 2**20
"""Correspondences of the anchors used last are kept up to this size (~8 MB an anchor for 100 scans with
the defaults), the least recently used dropped first."""
COST_VERSION = (
    f"lidar-p2plane-v1 {SURFACE_FACTOR} {NORMAL_NEIGHBOURS} {PLANARITY} {KNOT_SPACING_S} {MAX_REACH} {ANCHOR_SPACING_S}"
)
"""Part of a cached estimate's key (fit_cache.py): what decides the cost beyond the config."""


class _Matches(NamedTuple):
    """Correspondences at one anchor: per i-point with a j-point within reach."""

    owner: np.ndarray
    """Its pair."""
    rows: np.ndarray
    """The i-point's row."""
    hits: np.ndarray
    """The j-point's row."""
    inverse_range: np.ndarray
    """1 / the i-point's range."""
    reach_squared: np.ndarray
    """(The j-point's reach + residual_cap x the i-point's range) ** 2: within it, the i-point met j's surface."""
    planar: np.ndarray
    """The j-point's normal holds."""


@dataclass
class _Scans:
    """A LiDAR track prepared for the search (`time_offset.PreparedFrames`). Point arrays are flat over
    (scan, point), S points per scan: scan n's points are rows n * S to n * S + count[n] - 1, its first
    ``queries[n]`` are its i-points; padding rows are never used."""

    times: np.ndarray
    """(N,) float64 stamps."""
    given_s: float
    """The given offset: the normals' and the anchors' origin."""
    surface: int
    """S."""
    camera: np.ndarray
    """(N * S, 4) float32 points in the RGB camera frame, scene units, homogeneous."""
    ranges: np.ndarray
    """(N * S,) distance from the LiDAR, scene units."""
    count: np.ndarray
    """(N,) points of each scan."""
    queries: np.ndarray
    """(N,) i-points of each scan."""
    knots: np.ndarray
    """(N, K) knot times, seconds after the stamp, spanning the scan's point times."""
    knot: np.ndarray
    """(N * S,) flat index (scan * K + k) of the knot at or before each point's time."""
    weight: np.ndarray
    """(N * S,) float32: the point's place between that knot and the next (0..1)."""
    normals: np.ndarray = None
    """(N * S, 3) unit surface normals in the camera frame at each point's own time (given offset)."""
    planar: np.ndarray = None
    """(N * S,) bool: the normal holds (else point-to-point)."""
    reach: np.ndarray = None
    """(N * S,) how far the point's local surface reaches, scene units: the farthest of its normal's
    neighbours, at most ``MAX_REACH`` x its range."""
    _matches: "OrderedDict[Tuple[int, bytes], Optional[_Matches]]" = field(default_factory=OrderedDict)

    def _poses(self, offsets: np.ndarray, poses_at: PoseFunction) -> np.ndarray:
        """(G, N * K, 12) float64 poses at the knots for each offset."""
        knot_times = self.times[None, :, None] + offsets[:, None, None] + self.knots[None]
        with torch.no_grad():
            poses = poses_at(knot_times.reshape(-1)).detach().cpu().double().numpy()
        return poses.reshape(len(offsets), -1, 12)

    def _place(self, poses: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """World points (N * S, 3) and their rotations (N * S, 3, 3), every point at its own time, from
        the knot poses (N * K, 12): the pose blended linearly between the knots around the point's time.

        float32 (a third of float64's time; the TPF's poses are float32), about the knots' mean
        position: the points are only ever compared with points placed by the same call."""
        poses = poses.reshape(len(self.times), -1, 3, 4).copy()
        poses[..., 3] -= poses[..., 3].mean(axis=(0, 1))
        poses = poses.astype(np.float32)
        step = np.zeros_like(poses)
        step[:, :-1] = np.diff(poses, axis=1)  # the last knot never starts an interval
        pose = np.take(poses.reshape(-1, 12), self.knot, axis=0)
        pose += self.weight[:, None] * np.take(step.reshape(-1, 12), self.knot, axis=0)
        pose = pose.reshape(-1, 3, 4)
        return np.einsum("mab,mb->ma", pose, self.camera), pose[:, :, :3]

    def _anchor_step(self, config: TimeOffsetConfig) -> float:
        """The anchors' spacing: a multiple of the coarse grid's step near ``ANCHOR_SPACING_S``, so that
        every coarse offset with an even index (the given one included) is an anchor."""
        if config.coarse_steps < 2 or config.search_range_s <= 0:
            return ANCHOR_SPACING_S
        coarse = 2 * config.search_range_s / (config.coarse_steps - 1)
        return coarse * max(1, round(ANCHOR_SPACING_S / coarse))

    def _find_matches(self, pairs: np.ndarray, anchor: int, poses_at: PoseFunction, config: TimeOffsetConfig) -> "_Matches":
        """For every i-point of every pair: its nearest j-point with the scans placed at the anchor offset
        ``given + anchor * step`` (one k-d tree per scan j), kept where there is one within reach; cached
        per anchor and pairs."""
        key = (anchor, pairs.tobytes())
        if key not in self._matches:
            self._matches[key] = self._subset_of_found(pairs, anchor)
        self._matches.move_to_end(key)
        if self._matches[key] is None:
            offset = self.given_s + anchor * self._anchor_step(config)
            world, _ = self._place(self._poses(np.array([offset]), poses_at)[0])
            s, cap = self.surface, config.residual_cap
            found = []
            for j in np.unique(pairs[:, 1]):
                if self.count[j] == 0:
                    continue
                members = np.nonzero(pairs[:, 1] == j)[0]
                rows = np.concatenate([pairs[q, 0] * s + np.arange(self.queries[pairs[q, 0]]) for q in members])
                owner = np.repeat(members, self.queries[pairs[members, 0]])
                tree = cKDTree(world[j * s : j * s + self.count[j]], balanced_tree=False, compact_nodes=False)
                bound = self.reach[j * s : j * s + self.count[j]].max() + cap * self.ranges[rows].max()
                distance, index = tree.query(world[rows], k=1, distance_upper_bound=bound)
                hit = np.isfinite(distance)
                found.append((owner[hit], rows[hit], j * s + index[hit]))
            owner, rows, hits = (
                np.concatenate([f[a] for f in found]).astype(np.int32) if found else np.zeros(0, np.int32) for a in range(3)
            )
            self._matches[key] = _Matches(
                owner, rows, hits, (1.0 / self.ranges[rows]).astype(np.float32),
                ((self.reach[hits] + cap * self.ranges[rows]) ** 2).astype(np.float32), self.planar[hits],
            )
            self._forget_old_matches()
        return self._matches[key]

    def _forget_old_matches(self) -> None:
        """Drops the least recently used correspondences beyond ``MATCH_CACHE_BYTES`` (the newest stays)."""
        sizes = [sum(a.nbytes for a in m) if m is not None else 0 for m in self._matches.values()]
        while len(self._matches) > 1 and sum(sizes) > MATCH_CACHE_BYTES:
            self._matches.popitem(last=False)
            sizes.pop(0)

    def _subset_of_found(self, pairs: np.ndarray, anchor: int) -> Optional[_Matches]:
        """The matches of ``pairs`` at ``anchor`` taken from those of a superset found before (the pair
        selection's candidates contain the pairs searched later), else None."""
        n = len(self.times)
        wanted = {int(code): q for q, code in enumerate(pairs[:, 0] * n + pairs[:, 1])}
        for (other_anchor, other_bytes), found in self._matches.items():
            if other_anchor != anchor or found is None:
                continue
            other = np.frombuffer(other_bytes, dtype=np.int64).reshape(-1, 2)
            new_index = np.array([wanted.get(int(code), -1) for code in other[:, 0] * n + other[:, 1]])
            if (new_index >= 0).sum() == len(wanted):
                keep = new_index[found.owner] >= 0
                return _Matches(new_index[found.owner[keep]].astype(np.int32), *(array[keep] for array in found[1:]))
        return None

    def _pair_costs(self, matches: "_Matches", world: np.ndarray, normals: np.ndarray, pairs: np.ndarray, cap: float):
        """Each pair's mean truncated relative point-to-plane distance and its overlap, with the points at
        ``world``, the normals (world axes) ``normals`` and the correspondences ``matches``."""
        difference = np.take(world, matches.rows, axis=0)
        difference -= np.take(world, matches.hits, axis=0)
        squared = np.einsum("ma,ma->m", difference, difference)
        plane = np.abs(np.einsum("ma,ma->m", difference, np.take(normals, matches.hits, axis=0)))
        residual = np.where(matches.planar, plane, np.sqrt(squared)) * matches.inverse_range
        landed = squared <= matches.reach_squared
        landed_count = np.bincount(matches.owner, weights=landed, minlength=len(pairs))
        total = np.bincount(matches.owner, weights=np.where(landed, np.minimum(residual, cap), 0.0), minlength=len(pairs))
        costs = np.where(landed_count > 0, total / np.maximum(landed_count, 1.0), cap)
        return costs, landed_count / np.maximum(self.queries[pairs[:, 0]], 1)

    def costs(self, pairs: Tensor, offsets: np.ndarray, poses_at: PoseFunction, config: TimeOffsetConfig):
        """`PreparedFrames.costs` (module docstring): at each offset, the costs with the correspondences
        of the two anchors around it, blended linearly (an anchor's alone at an anchor)."""
        pairs = np.asarray(pairs.cpu().numpy() if isinstance(pairs, Tensor) else pairs, dtype=np.int64).reshape(-1, 2)
        offsets = np.asarray(offsets, dtype=np.float64).reshape(-1)
        costs = np.full((len(offsets), len(pairs)), config.residual_cap)
        overlap = np.zeros((len(offsets), len(pairs)))
        if not len(pairs):
            return costs, overlap
        position = (offsets - self.given_s) / self._anchor_step(config)
        below = np.floor(position + 1e-6).astype(np.int64)
        above_weight = np.clip(position - below, 0.0, 1.0)
        above_weight[above_weight < 1e-6] = 0.0
        for g in range(len(offsets)):
            world, rotation = self._place(self._poses(offsets[g : g + 1], poses_at)[0])
            normals = np.einsum("mab,mb->ma", rotation, self.normals)
            costs[g] = 0.0
            for anchor, weight in ((below[g], 1.0 - above_weight[g]), (below[g] + 1, above_weight[g])):
                if weight > 0:
                    matches = self._find_matches(pairs, int(anchor), poses_at, config)
                    pair_costs, pair_overlap = self._pair_costs(matches, world, normals, pairs, config.residual_cap)
                    costs[g] += weight * pair_costs
                    overlap[g] += weight * pair_overlap
        return costs, overlap


def _prepare(
    stamps: np.ndarray,
    scans: Sequence[np.ndarray],
    lidar_to_camera: np.ndarray,
    metres_per_unit: float,
    poses_at: PoseFunction,
    config: TimeOffsetConfig,
    given_s: float,
) -> _Scans:
    stamps = np.asarray(stamps, dtype=np.float64).reshape(-1)
    if len(scans) != len(stamps):
        raise ValueError(f"{len(scans)} scans but {len(stamps)} stamps")
    if np.any(np.diff(stamps) < 0):
        raise ValueError("LiDAR scans must be in time order")
    extrinsics = np.broadcast_to(np.asarray(lidar_to_camera, dtype=np.float64), (len(stamps), 4, 4))
    n, s = len(stamps), SURFACE_FACTOR * config.points_per_frame
    rng = np.random.default_rng(config.seed)
    camera, point_times, ranges = np.zeros((n, s, 3)), np.zeros((n, s)), np.ones((n, s))
    count, queries = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    for k, scan in enumerate(scans):
        scan = np.asarray(scan, dtype=np.float64).reshape(-1, 4)
        scan = scan[np.isfinite(scan).all(axis=1) & (np.abs(scan[:, :3]).sum(axis=1) > 0)]
        chosen = scan[rng.permutation(len(scan))[:s]]
        m = len(chosen)
        count[k], queries[k] = m, min(m, config.points_per_frame)
        xyz = chosen[:, :3]
        camera[k, :m] = (xyz @ extrinsics[k, :3, :3].T + extrinsics[k, :3, 3]) / metres_per_unit
        point_times[k, :m] = chosen[:, 3]
        ranges[k, :m] = np.linalg.norm(xyz, axis=1) / metres_per_unit
    # Padding rows take the scan's first time, so that they do not widen its knot span.
    valid = np.arange(s)[None, :] < count[:, None]
    point_times = np.where(valid, point_times, point_times[:, :1])
    low, high = point_times.min(axis=1), point_times.max(axis=1)
    knot_count = max(2, int(np.ceil((high - low).max() / KNOT_SPACING_S)) + 1)
    knots = low[:, None] + (high - low)[:, None] * np.linspace(0.0, 1.0, knot_count)[None]
    position = (point_times - low[:, None]) / np.maximum(high - low, 1e-12)[:, None] * (knot_count - 1)
    below = np.clip(np.floor(position), 0, knot_count - 2).astype(np.int64)
    prepared = _Scans(
        times=stamps, given_s=float(given_s), surface=s,
        camera=np.concatenate([camera, np.ones((n, s, 1))], axis=-1).reshape(-1, 4).astype(np.float32),
        ranges=ranges.reshape(-1), count=count, queries=queries, knots=knots,
        knot=(np.arange(n)[:, None] * knot_count + below).reshape(-1),
        weight=np.clip(position - below, 0.0, 1.0).reshape(-1).astype(np.float32),
    )
    _surface_normals(prepared, poses_at)
    return prepared


def _surface_normals(scans: _Scans, poses_at: PoseFunction) -> None:
    """Normals, planarity and reach of every point, from its scan placed at the given offset (deskewed:
    at the sweep's seam, where its first and last points meet, the surface stays one surface); stored
    in the camera frame at each point's own time, so that at any offset they turn with the point."""
    world, rotation = scans._place(scans._poses(np.array([scans.given_s]), poses_at)[0])
    world = world.astype(np.float64)
    s = scans.surface
    scans.normals = np.zeros((len(scans.camera), 3), dtype=np.float32)
    scans.planar = np.zeros(len(scans.camera), dtype=bool)
    scans.reach = np.zeros(len(scans.camera))
    for k in range(len(scans.times)):
        m = int(scans.count[k])
        if m < 3:
            continue
        rows = slice(k * s, k * s + m)
        distance, index = cKDTree(world[rows]).query(world[rows], k=min(NORMAL_NEIGHBOURS, m))
        patch = world[rows][index]  # (m, neighbours, 3)
        centred = patch - patch.mean(axis=1, keepdims=True)
        eigenvalues, eigenvectors = np.linalg.eigh(np.einsum("mpa,mpb->mab", centred, centred))
        scans.normals[rows] = np.einsum("mba,mb->ma", rotation[rows], eigenvectors[..., 0])  # R^T n (smallest eigenvalue's)
        scans.planar[rows] = eigenvalues[:, 0] < PLANARITY * eigenvalues[:, 1]
        scans.reach[rows] = np.minimum(distance[:, -1], MAX_REACH * scans.ranges[rows])


def estimate_lidar_time_offset(
    name: str,
    stamps: np.ndarray,
    scans: Sequence[np.ndarray],
    lidar_to_camera: np.ndarray,
    metres_per_unit: float,
    poses_at: PoseFunction,
    config: TimeOffsetConfig,
    given_s: float = 0.0,
) -> TimeOffsetEstimate:
    """The clock offset of one LiDAR track (module docstring; the search and its decisions are
    `time_offset.search_time_offset`'s).

    Args:
        name: the track (for messages: "LiDAR track 'NAME'").
        stamps: (N,) float64 the scans' stamps, seconds on the LiDAR clock, in time order.
        scans: per scan, (P, 4) x, y, z in the LiDAR frame (metres) and t, seconds after the stamp
            (`layout.load_lidar_points`; rows with non-finite values or x = y = z = 0 are ignored).
        lidar_to_camera: (4, 4) or (N, 4, 4): LiDAR frame -> RGB camera frame (OpenGL axes), metres.
        metres_per_unit: the poses' unit.
        poses_at: the time-pose function (RGB clock).
        given_s: the offset given by the user; the search is centred on it and it is the fallback.
    """
    return search_time_offset(
        name,
        lambda: _prepare(stamps, scans, lidar_to_camera, metres_per_unit, poses_at, config, given_s),
        poses_at,
        config,
        given_s,
        LIDAR_WORDS,
    )


def cached_lidar_time_offset(
    folder: Path,
    fit: str,
    name: str,
    stamps: np.ndarray,
    lidar_to_camera: np.ndarray,
    metres_per_unit: float,
    files: bytes,
    scans: Callable[[], Sequence[np.ndarray]],
    poses_at: PoseFunction,
    config: TimeOffsetConfig,
    given_s: float,
) -> TimeOffsetEstimate:
    """A LiDAR track's clock offset (`estimate_lidar_time_offset`): read from ``folder`` if this estimate
    was stored, else estimated (``scans()`` loads the points only then) and stored (fit_cache.py).

    Args:
        fit: the key of the TPF fit (`fit_cache.fit_key`) the estimate is made with.
        files: what identifies the track's scan files and their metadata (`files.keys.file_identity`).
    """
    key = content_key(
        LIDAR_TIME_OFFSET_FORMAT, fit, name, np.asarray(stamps, dtype=np.float64),
        np.asarray(lidar_to_camera, dtype=np.float64), files, repr(float(metres_per_unit)), repr(given_s),
        repr(sorted(dataclasses.asdict(config).items())), COST_VERSION,
    )
    return cached_estimate(
        Path(folder) / f"lidar-time-offset-{key}.json",
        lambda: estimate_lidar_time_offset(name, stamps, list(scans()), lidar_to_camera, metres_per_unit, poses_at, config, given_s),
    )


def lidar_track_time_offsets(
    tracks: Mapping[str, Sequence[LidarScan]],
    metres_per_unit: float,
    poses_at: PoseFunction,
    config: TimeOffsetConfig,
    given: Mapping[str, float],
    cache: Optional[Tuple[Path, str]] = None,
    label: str = "",
) -> Dict[str, TimeOffsetEstimate]:
    """Each LiDAR track's offset (`estimate_lidar_time_offset`), tracks in the order given, each estimate's
    message printed after ``label`` (as `track_offsets.track_time_offsets` for depth tracks).

    Args:
        tracks: each track's scans, in time order.
        metres_per_unit: the poses' unit (the scans are in metres).
        poses_at: the time-pose function the scans are placed with.
        given: offsets given by the user (seconds; 0 for a track not named), the search's centre.
        cache: (folder, key of the fit, `fit_cache.fit_key`): read the estimate from ``folder`` where it
            was stored, else estimate (loading the points only then) and store it.
    """
    estimates = {}
    for name, scans in tracks.items():
        stamps = np.array([scan.timestamp for scan in scans], dtype=np.float64)
        extrinsics = np.array([scan.lidar_to_camera for scan in scans], dtype=np.float64).reshape(-1, 4, 4)

        def points(scans: Sequence[LidarScan] = scans) -> List[np.ndarray]:
            return [load_lidar_points(scan) for scan in scans]

        given_s = float(given.get(name, 0.0))
        if cache is None:
            estimate = estimate_lidar_time_offset(name, stamps, points(), extrinsics, metres_per_unit, poses_at, config, given_s)
        else:
            files = file_identity([path for scan in scans for path in (scan.points_path, scan.metadata_path)])
            estimate = cached_lidar_time_offset(
                cache[0], cache[1], name, stamps, extrinsics, metres_per_unit, files, points, poses_at, config, given_s
            )
        CONSOLE.print(label + estimate.message)
        estimates[name] = estimate
    return estimates
