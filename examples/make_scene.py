"""A procedural aerial town, flown over by a drone with an RGB camera and an unsynchronised depth sensor.

The generator writes a dataset in the layout of the async-nerf DataParser (Mega-NeRF frames plus
Async-NeRF depth tracks): RGB frames at ~5 Hz, one depth track named by `SceneSpec.depth_track`
at its own rate, resolution and intrinsics, whose metadata carries the *naive* prior pose (the
pose of the nearest RGB frame in time) while `pose_gt_<track>/` holds its true pose. With
`--lidar`, also a spinning LiDAR on the camera's mount (`LIDAR_TO_CAMERA`), written as the LiDAR
track `SceneSpec.lidar_track`: every point carries its own time within the sweep, on the LiDAR's
own clock (`simulate_lidar_scan`).

Geometry is a union of axis-aligned boxes (the ground slab, low plaza terraces and buildings),
so every image is rendered by exact ray/box intersection and every depth value lies on a
surface: `Scene.signed_distance` is zero there. All scene maths happens in metres in a z-up
"town" frame whose axes are those of the nerfstudio world (x, y horizontal, z up); poses are
converted to the dataset's normalised DRB frame only when written.

    python -m examples.make_scene OUT_DIR [--seed 0] [--num-rgb 160] [--width 96] [--height 72] [--lidar]
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Tuple

from typing_extensions import Annotated, Literal

import numpy as np
import torch
import tyro
from jaxtyping import Float, Int
from PIL import Image
from scipy.spatial.transform import Rotation

# p_town = M @ p_drb: town x = DRB y (right), town y = -DRB z (forward), town z = -DRB x (up).
# Camera axes (OpenGL) are the same in both frames, so c2w_drb = M^T @ c2w_town.
M_TOWN_FROM_DRB = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])

GROUND, TERRACE, BUILDING, MOVER = 0, 1, 2, 3
"""Box kinds (MOVER: a car driving along a street, `Movers`); `Scene.render` labels background (sky)
pixels with SKY."""
SKY = -1

LIDAR_TO_CAMERA = np.array(
    [[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.10], [-1.0, 0.0, 0.0, 0.05], [0.0, 0.0, 0.0, 1.0]]
)
"""The LiDAR's mount, written as lidar_to_camera_TRACK.txt: p_camera = R p_lidar + t (metres; camera axes OpenGL:
x right, y up, z back). The LiDAR sits on the camera's gimbal, 10 cm above and 5 cm behind its optical centre, with
the usual LiDAR axes: x forward (camera -z), y left (camera -x), z up (camera y), so its spin axis is the world's
up when the camera is level. In flight the camera pitches 35-55 deg down and the scan plane tilts with it: the front
quarter of a sweep returns from the ground and buildings 30-160 m away, the sides reach out towards the ground's
edge and the horizon (about half return), the back half looks up into the sky (no returns); with the default
150 m range, about 30 % of the beams return."""


@dataclass(frozen=True)
class SceneSpec:
    """Everything the generator draws; the same spec and seed give byte-identical arrays."""

    seed: int = 0
    """Seed of the town layout, colours, trajectory phases and timestamp jitter."""
    num_rgb: int = 160
    """Number of RGB frames."""
    width: int = 96
    """RGB image width in pixels."""
    height: int = 72
    """RGB image height in pixels."""
    hfov_deg: float = 65.0
    """Horizontal field of view of the RGB camera (square pixels, principal point at the centre)."""
    rgb_rate_hz: float = 5.0
    """Nominal RGB frame rate."""
    rgb_jitter_ms: int = 4
    """RGB timestamps are jittered uniformly by up to this many milliseconds (not the first)."""
    start_time: float = 1667117650.0
    """Timestamp of the first RGB frame, in seconds."""
    supersample: int = 2
    """Each RGB pixel averages supersample x supersample rays (anti-aliasing)."""
    depth_track: str = "lidar"
    """Name of the depth track: files go to depth_<name>/, metadata_depth_<name>/, pose_gt_<name>/."""
    depth_width: int = 64
    """Depth image width in pixels."""
    depth_height: int = 48
    """Depth image height in pixels."""
    depth_hfov_deg: float = 56.0
    """Horizontal field of view of the depth sensor."""
    depth_rate_hz: float = 2.5
    """Nominal depth frame rate. With the default offset every depth frame sits 90 ms after an RGB
    frame, so its nearest-RGB prior pose is wrong by about 0.09 s of motion."""
    depth_offset_s: float = 0.09
    """Time of the first depth frame after the first RGB frame."""
    depth_jitter_ms: int = 2
    """Depth timestamps are jittered uniformly by up to this many milliseconds."""
    depth_clock_offset_ms: int = 0
    """The depth sensor's clock runs this many milliseconds behind the RGB clock: a depth frame taken
    at RGB-clock time t is stamped t - offset, so its pose is TPF(stamp + offset) (the offset
    async-nerf estimates). Its prior pose is the RGB frame nearest to the stamp, as a naive pipeline
    would pick it."""
    depth_max_range_m: float = 250.0
    """Depth is 0 (no measurement) where the ray distance to the hit exceeds this, or at the sky."""
    lidar: bool = False
    """Also simulate a spinning LiDAR on the camera's mount (`LIDAR_TO_CAMERA`) and write it as the LiDAR track
    `lidar_track` (DATA_LAYOUT.md, "LiDAR tracks"), from its own random stream: without it, the dataset is byte for
    byte the one the generator wrote before the LiDAR existed (scene.json leaves out the lidar_* fields)."""
    lidar_track: str = "top"
    """Name of the LiDAR track: files go to lidar_<name>/, metadata_lidar_<name>/, pose_gt_lidar_<name>/ and
    lidar_to_camera_<name>.txt; not `rgb` and not the depth track's name."""
    lidar_rate_hz: float = 10.0
    """Sweeps per second. The LiDAR spins continuously, one sweep after the other; the sweep period is 1000 / rate
    rounded to whole milliseconds (so that every scan stamp is an exact "%.3f" STEM)."""
    lidar_offset_s: float = 0.037
    """Start of the first sweep after the first RGB frame (RGB clock). Only sweeps that lie wholly within the RGB time
    span are written."""
    lidar_beams: int = 16
    """Beams (lasers) fired at once, one per elevation."""
    lidar_vertical_fov_deg: Tuple[float, float] = (-15.0, 15.0)
    """Elevations of the lowest and highest beam above the LiDAR's xy plane, the others evenly in between (a
    VLP-16: 16 beams 2 deg apart)."""
    lidar_columns: int = 360
    """Firings (azimuths) per sweep, evenly spaced in angle and time: a scan has lidar_beams * lidar_columns rows,
    column after column (row = column * lidar_beams + beam). Column k points at azimuth 2 pi k / lidar_columns
    counter-clockwise about the LiDAR's z from its x axis (forward)."""
    lidar_max_range_m: float = 150.0
    """A beam whose hit is farther than this, or which hits nothing (sky, beyond the ground's edge), has no return:
    its row is all zeros (t included)."""
    lidar_noise_m: float = 0.01
    """Standard deviation of the Gaussian range noise added to every return (along its beam)."""
    lidar_clock_offset_ms: int = 0
    """The LiDAR's clock runs this many milliseconds behind the RGB clock: a point measured at RGB-clock time T is
    stamped T - offset (as depth_clock_offset_ms for depth frames), so it is placed with TPF(stamp + offset + t)."""
    lidar_stamp: Literal["start", "end"] = "start"
    """A scan's timestamp is the time of its first column ("start": t = k P / C in [0, P), P the sweep period, C
    lidar_columns) or of its last ("end": t = -(C - 1 - k) P / C in (-P, 0]), k the column."""
    val_every: int = 8
    """Frames val_every/2, val_every/2 + val_every, ... of each stream go to val/, the rest to train/."""
    num_buildings: int = 18
    """Number of buildings (at most two per town block that is not a plaza)."""
    num_terraces: int = 4
    """Number of town blocks that hold a low plaza terrace instead of buildings."""
    building_height_m: Tuple[float, float] = (5.0, 40.0)
    """Range of building heights in metres."""
    terrace_height_m: Tuple[float, float] = (0.8, 3.0)
    """Range of terrace heights in metres."""
    town_half_extent_m: float = 100.0
    """The town (street grid and buildings) covers [-e, e]^2 metres."""
    block_size_m: float = 50.0
    """Street grid spacing; streets run along multiples of it."""
    ground_half_extent_m: float = 200.0
    """The ground slab (town plus surrounding fields) covers [-e, e]^2 metres; beyond it is sky."""
    orbit_radius_m: float = 65.0
    """Radius of the drone's base loop around the town centre."""
    orbit_wobble_m: float = 10.0
    """Amplitude of the three-lobed wobble added to the loop (hypotrochoid)."""
    mean_speed_mps: float = 25.0
    """Mean horizontal ground speed of the drone."""
    speed_variation: float = 0.3
    """Relative amplitude of the sinusoidal speed variation (0 = constant speed)."""
    altitude_m: Tuple[float, float] = (52.0, 78.0)
    """Altitude range above the ground; altitude varies sinusoidally within it."""
    pitch_deg: Tuple[float, float] = (35.0, 55.0)
    """Camera pitch below the horizon; varies sinusoidally within it."""
    yaw_swing_deg: float = 50.0
    """The camera heads towards the town centre plus a sinusoidal swing of this amplitude."""
    appearance_drift: float = 0.0
    """Exposure and tint that change slowly along the flight (sun, clouds, auto-exposure): RGB frame colours
    are multiplied per channel by 1 + appearance_drift * sin(2 pi t / period + phase_c), phases 0, 2pi/3,
    4pi/3 for R, G, B, period = the capture's duration; so parts of the town flown over at different
    times are seen in different light, and cells trained apart disagree. 0: constant light."""
    num_movers: int = 0
    """Cars driving along the streets (4.5 x 2 x 1.6 m boxes at 8-15 m/s), seen by the RGB camera and the LiDAR (each
    LiDAR column sees them where they are at that column's time) but not by the depth track (it stays static, so
    depth supervision is not what moving objects are measured against)."""
    write_masks: bool = True
    """With movers: write masks/STEM.png for RGB frames that see one (0 where a car covers any part of a
    pixel), nerfstudio's convention."""
    write_preview: bool = True
    """Also write preview.png at the dataset root: a contact sheet of RGB and depth frames."""


# ----------------------------------------------------------------------------------- geometry


def _band(dist: np.ndarray, half_width: float, softness: float) -> np.ndarray:
    """1 where |dist| < half_width, 0 outside, with a linear ramp `softness` wide at the edge.

    Patterns are built from these soft bands rather than hard steps so that a small NeRF can fit
    them at 96x72 (no edge sharper than the anti-aliasing can resolve)."""
    return np.clip((half_width - np.abs(dist)) / softness + 0.5, 0.0, 1.0)


def _cell_offset(u: np.ndarray, period: np.ndarray | float) -> np.ndarray:
    """Signed distance from u to the centre of its cell, cells [k*period, (k+1)*period)."""
    return (u / period - np.floor(u / period) - 0.5) * period


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    s = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


class Scene:
    """A union of axis-aligned boxes in the town frame (metres, z up) with view-independent colours."""

    def __init__(
        self,
        lo: Float[np.ndarray, "b 3"],
        hi: Float[np.ndarray, "b 3"],
        kind: Int[np.ndarray, " b"],
        wall_rgb: Float[np.ndarray, "b 3"],
        top_rgb: Float[np.ndarray, "b 3"],
        block_rgb: Float[np.ndarray, "gx gy 3"],
        field_rgb: Float[np.ndarray, "fx fy 3"],
        sun_dir: Float[np.ndarray, " 3"],
        spec: SceneSpec,
    ) -> None:
        assert lo.shape == hi.shape and (hi > lo).all() and kind[0] == GROUND
        self.lo, self.hi, self.kind = lo, hi, kind
        self.wall_rgb, self.top_rgb = wall_rgb, top_rgb
        self.block_rgb, self.field_rgb = block_rgb, field_rgb
        self.sun_dir = sun_dir / np.linalg.norm(sun_dir)
        self.spec = spec

    @classmethod
    def from_spec(cls, spec: SceneSpec, rng: np.random.Generator) -> "Scene":
        """Lays out a street grid; a few blocks become plazas, the others get one or two buildings."""
        e, block, g = spec.town_half_extent_m, spec.block_size_m, spec.ground_half_extent_m
        n_side = int(round(2 * e / block))
        n_blocks = n_side * n_side
        if abs(n_side * block - 2 * e) > 1e-6 or not e < g:
            raise ValueError(
                f"town_half_extent_m={e} must be a multiple of block_size_m/2={block / 2} and smaller "
                f"than ground_half_extent_m={g}"
            )
        n_built = n_blocks - spec.num_terraces
        if not 0 <= spec.num_terraces <= n_blocks or not 1 <= spec.num_buildings <= 2 * n_built:
            raise ValueError(
                f"num_terraces={spec.num_terraces}, num_buildings={spec.num_buildings}: the town has "
                f"{n_blocks} blocks; terraces take whole blocks and every other block holds 1 or 2 "
                f"buildings, so num_buildings must be in [1, {2 * n_built}]"
            )
        # Ground slab: its top face (z = 0) is the terrain; its sides are the plateau's edge.
        lo, hi, kind = [np.array([-g, -g, -10.0])], [np.array([g, g, 0.0])], [GROUND]
        street_clear = 7.0  # street half width (4 m) plus pavement
        order = rng.permutation(n_blocks)
        per_block = np.zeros(n_blocks, dtype=int)
        built = order[spec.num_terraces :]
        per_block[built[: min(spec.num_buildings, n_built)]] = 1
        per_block[built[: spec.num_buildings - min(spec.num_buildings, n_built)]] += 1
        h_lo, h_hi = spec.building_height_m
        for b in range(n_blocks):
            bx0 = -e + (b // n_side) * block + street_clear
            by0 = -e + (b % n_side) * block + street_clear
            inner = block - 2 * street_clear
            if b in order[: spec.num_terraces]:
                size = rng.uniform(0.7, 1.0, 2) * inner
                x0 = bx0 + rng.uniform(0, inner - size[0])
                y0 = by0 + rng.uniform(0, inner - size[1])
                lo.append(np.array([x0, y0, -1.0]))
                hi.append(np.array([x0 + size[0], y0 + size[1], rng.uniform(*spec.terrace_height_m)]))
                kind.append(TERRACE)
                continue
            # One building uses the whole block interior, two split it along a random axis.
            n = per_block[b]
            split_axis = rng.integers(2)
            for i in range(n):
                cell_lo = np.array([bx0, by0])
                cell_size = np.array([inner, inner])
                if n == 2:
                    cell_size[split_axis] = (inner - 3.0) / 2
                    cell_lo[split_axis] += i * (cell_size[split_axis] + 3.0)
                size = rng.uniform(0.55, 1.0, 2) * cell_size
                xy0 = cell_lo + rng.uniform(0, 1, 2) * (cell_size - size)
                # Taller buildings towards the centre, like a town core.
                centre = xy0 + size / 2
                closeness = 1.0 - np.linalg.norm(centre) / (np.sqrt(2) * e)
                height = h_lo + (h_hi - h_lo) * np.clip(rng.uniform(0.0, 0.7) + 0.5 * closeness, 0, 1)
                lo.append(np.array([xy0[0], xy0[1], -1.0]))
                hi.append(np.array([xy0[0] + size[0], xy0[1] + size[1], height]))
                kind.append(BUILDING)
        kind_arr = np.array(kind)
        facades = np.array(
            [[0.82, 0.76, 0.62], [0.88, 0.87, 0.84], [0.66, 0.36, 0.28], [0.45, 0.58, 0.70],
             [0.60, 0.60, 0.62], [0.80, 0.62, 0.35]]
        )
        roofs = np.array(
            [[0.30, 0.30, 0.32], [0.62, 0.33, 0.22], [0.38, 0.42, 0.48], [0.72, 0.72, 0.70],
             [0.35, 0.50, 0.30]]
        )
        n_box = len(kind)
        wall = facades[rng.integers(len(facades), size=n_box)] + rng.uniform(-0.04, 0.04, (n_box, 3))
        top = roofs[rng.integers(len(roofs), size=n_box)] + rng.uniform(-0.04, 0.04, (n_box, 3))
        wall[kind_arr == TERRACE] = [0.55, 0.55, 0.52]
        top[kind_arr == TERRACE] = [0.78, 0.74, 0.66]
        wall[kind_arr == GROUND] = [0.45, 0.36, 0.26]
        blocks = np.array([[0.42, 0.60, 0.30], [0.70, 0.68, 0.62], [0.30, 0.48, 0.25], [0.62, 0.58, 0.50]])
        fields = np.array([[0.50, 0.65, 0.30], [0.78, 0.72, 0.40], [0.58, 0.47, 0.32], [0.36, 0.55, 0.28]])
        n_fields = int(np.ceil(2 * g / 40.0))
        block_rgb = blocks[rng.integers(len(blocks), size=(n_side, n_side))]
        field_rgb = fields[rng.integers(len(fields), size=(n_fields, n_fields))]
        azimuth = rng.uniform(0, 2 * np.pi)
        elevation = np.deg2rad(55.0)
        sun = np.array([np.cos(azimuth) * np.cos(elevation), np.sin(azimuth) * np.cos(elevation), np.sin(elevation)])
        return cls(np.stack(lo), np.stack(hi), kind_arr, wall, top, block_rgb, field_rgb, sun, spec)

    def boxes_in_view(
        self, rotation: Float[np.ndarray, "3 3"], position: Float[np.ndarray, " 3"], intrinsics: np.ndarray,
        width: int, height: int,
    ) -> Int[np.ndarray, " k"]:
        """Indices of the boxes whose bounding sphere meets the camera's view frustum.

        Conservative (never drops a box that some pixel sees), so rendering only these gives the
        same image; it skips about 40% of the boxes of a typical frame."""
        fx, fy, cx, cy = intrinsics
        left, right, top, bottom = cx / fx, (width - cx) / fx, cy / fy, (height - cy) / fy
        # Inward normals (camera axes, looking along -z) of the four side planes and the image plane.
        normals = np.array([[1, 0, -left], [-1, 0, -right], [0, -1, -top], [0, 1, -bottom], [0, 0, -1.0]])
        normals /= np.linalg.norm(normals, axis=1, keepdims=True)
        centres = ((self.lo + self.hi) / 2 - position) @ rotation
        radii = np.linalg.norm((self.hi - self.lo) / 2, axis=1)
        return np.flatnonzero((centres @ normals.T > -radii[:, None]).all(axis=1))

    def intersect(
        self, origins: Float[np.ndarray, "*n 3"], dirs: Float[np.ndarray, "n 3"], boxes: np.ndarray | None = None
    ) -> Tuple[Float[np.ndarray, " n"], Int[np.ndarray, " n"], Int[np.ndarray, " n"]]:
        """Nearest hit of rays o + t d (t > 0) with the boxes: (t or inf, box index or -1, face axis).

        Slab method, vectorised over rays and looped over the few boxes (all, or the indices in
        `boxes`). Origins must lie outside every box; then the nearest entry point is on the
        surface of the union."""
        n = dirs.shape[0]
        t_best = np.full(n, np.inf, dtype=dirs.dtype)
        box = np.full(n, -1, dtype=np.int64)
        axis = np.zeros(n, dtype=np.int64)
        # Per-axis 1-D arrays: numpy reductions over a trailing axis of length 3 are slow.
        o = np.broadcast_to(origins, dirs.shape).T
        lo, hi = self.lo.astype(dirs.dtype), self.hi.astype(dirs.dtype)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = np.ascontiguousarray((1.0 / dirs).T)
            for b in range(len(self.kind)) if boxes is None else boxes:
                t_enter, t_exit = [], []
                for a in range(3):
                    t0 = (lo[b, a] - o[a]) * inv[a]
                    t1 = (hi[b, a] - o[a]) * inv[a]
                    t_enter.append(np.minimum(t0, t1))
                    t_exit.append(np.maximum(t0, t1))
                near = np.maximum(np.maximum(t_enter[0], t_enter[1]), t_enter[2])
                far = np.minimum(np.minimum(t_exit[0], t_exit[1]), t_exit[2])
                hit = (near <= far) & (near > 0) & (near < t_best)
                t_best[hit] = near[hit]
                box[hit] = b
                axis[hit] = np.stack([t[hit] for t in t_enter]).argmax(axis=0)
        return t_best, box, axis

    def signed_distance(self, points: Float[np.ndarray, "n 3"]) -> Float[np.ndarray, " n"]:
        """Signed distance (metres) to the union of boxes: 0 on its surface, negative inside."""
        centre = (self.lo + self.hi) / 2
        half = (self.hi - self.lo) / 2
        q = np.abs(points[:, None, :] - centre[None]) - half[None]
        outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
        inside = np.minimum(q.max(axis=-1), 0.0)
        return (outside + inside).min(axis=1)

    def sky_rgb(self, dirs: Float[np.ndarray, "n 3"]) -> Float[np.ndarray, "n 3"]:
        """Background colour, a smooth function of the ray direction only (sky above, haze below)."""
        d = dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)
        horizon, zenith, haze = np.array([0.80, 0.86, 0.93]), np.array([0.36, 0.56, 0.86]), np.array([0.70, 0.74, 0.72])
        up = _smoothstep(0.0, 0.5, d[:, 2])[:, None]
        down = _smoothstep(0.0, 0.35, -d[:, 2])[:, None]
        glow = np.maximum(d @ self.sun_dir, 0.0)[:, None] ** 8
        return horizon + (zenith - horizon) * up + (haze - horizon) * down + 0.08 * glow

    def surface_rgb(
        self, points: Float[np.ndarray, "n 3"], box: Int[np.ndarray, " n"], axis: Int[np.ndarray, " n"],
        dirs: Float[np.ndarray, "n 3"],
    ) -> Float[np.ndarray, "n 3"]:
        """View-independent colour of surface points: a texture per face kind times a fixed sun shading."""
        p = points
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        kind = self.kind[box]
        sign = -np.sign(np.take_along_axis(dirs, axis[:, None], 1)[:, 0])
        top = (axis == 2) & (sign > 0)
        rgb = np.empty(p.shape, dtype=np.float64)
        s = self.spec

        m = top & (kind == GROUND)
        if m.any():
            gx, gy = x[m], y[m]
            e, block, g = s.town_half_extent_m, s.block_size_m, s.ground_half_extent_m
            in_town = (np.abs(gx) < e) & (np.abs(gy) < e)
            n_side = self.block_rgb.shape[0]
            bi = np.clip(((gx + e) // block).astype(int), 0, n_side - 1)
            bj = np.clip(((gy + e) // block).astype(int), 0, n_side - 1)
            fi = np.clip(((gx + g) // 40.0).astype(int), 0, self.field_rgb.shape[0] - 1)
            fj = np.clip(((gy + g) // 40.0).astype(int), 0, self.field_rgb.shape[1] - 1)
            stripes = 1.0 + 0.06 * np.cos(2 * np.pi * np.where((fi + fj) % 2 == 0, gx, gy) / 8.0)
            base = np.where(in_town[:, None], self.block_rgb[bi, bj], self.field_rgb[fi, fj] * stripes[:, None])
            base = base * (1.0 + 0.08 * np.sin(gx / 31.0 + 1.0) * np.sin(gy / 27.0 + 2.0))[:, None]
            # Streets on the town grid, two main roads running on to the edge of the ground.
            near_town_x = np.abs(gx) <= e + 4.0
            near_town_y = np.abs(gy) <= e + 4.0
            road = np.maximum.reduce([
                _band(_cell_offset(gx + block / 2, block), 4.0, 1.0) * near_town_y,
                _band(_cell_offset(gy + block / 2, block), 4.0, 1.0) * near_town_x,
                _band(gx, 4.0, 1.0), _band(gy, 4.0, 1.0),
            ])
            rgb[m] = base + (np.array([0.33, 0.33, 0.35]) - base) * road[:, None]

        m = top & (kind == TERRACE)
        if m.any():
            b = box[m]
            edge = self._edge_distance(x[m], y[m], b)
            tiles = 1.0 + 0.07 * np.sin(np.pi * x[m] / 5.0) * np.sin(np.pi * y[m] / 5.0)
            rgb[m] = self.top_rgb[b] * (tiles * (1.0 - 0.25 * _band(edge, 1.0, 0.5)))[:, None]

        m = top & (kind == BUILDING)
        if m.any():
            b = box[m]
            edge = self._edge_distance(x[m], y[m], b)
            parapet = _band(edge, 1.2, 0.5)
            tiles = 1.0 + 0.05 * np.sin(np.pi * x[m] / 6.0) * np.sin(np.pi * y[m] / 6.0)
            rgb[m] = self.top_rgb[b] * (tiles * (1.0 - 0.3 * parapet))[:, None]

        m = top & (kind == MOVER)
        if m.any():
            rgb[m] = self.top_rgb[box[m]]

        walls = ~top
        m = walls & (kind == BUILDING)
        if m.any():
            b, ax = box[m], axis[m]
            # Horizontal coordinate along the facade, measured from the box corner.
            along = 1 - ax  # faces normal to x run along y and vice versa
            u = p[m, :][np.arange(len(b)), along] - self.lo[b, along]
            width = self.hi[b, along] - self.lo[b, along]
            height = self.hi[b, 2]
            pitch = width / np.maximum(np.round(width / 4.0), 1.0)
            zb = z[m]
            window = (
                _band(_cell_offset(u, pitch), 0.3 * pitch, 0.3)
                * _band(_cell_offset(zb, 3.5), 0.8, 0.3)
                * (zb > 3.5) * (zb < height - 1.0)
            )
            wall = self.wall_rgb[b] * (0.9 + 0.1 * zb / height)[:, None] * np.where(zb < 3.5, 0.75, 1.0)[:, None]
            glass = np.array([0.16, 0.21, 0.29])
            rgb[m] = wall + (glass - wall) * window[:, None]

        m = walls & (kind != BUILDING)
        if m.any():
            rgb[m] = self.wall_rgb[box[m]] * (1.0 + 0.05 * np.sin(z[m]))[:, None]

        shade = 0.55 + 0.45 * np.maximum(self.sun_dir[axis] * sign, 0.0)
        return rgb * shade[:, None]

    def _edge_distance(self, x: np.ndarray, y: np.ndarray, box: np.ndarray) -> np.ndarray:
        """Distance of points on a box's top face to the nearest edge of that face."""
        lo, hi = self.lo[box], self.hi[box]
        return np.minimum.reduce([x - lo[:, 0], hi[:, 0] - x, y - lo[:, 1], hi[:, 1] - y])

    def render(
        self, origins: Float[np.ndarray, "*n 3"], dirs: Float[np.ndarray, "n 3"], boxes: np.ndarray | None = None
    ) -> Tuple[Float[np.ndarray, "n 3"], Float[np.ndarray, " n"], Int[np.ndarray, " n"]]:
        """Colour, hit parameter t (inf for sky) and label (SKY, GROUND, TERRACE, BUILDING) of each ray."""
        t, box, axis = self.intersect(origins, dirs, boxes)
        hit = box >= 0
        rgb = np.empty(dirs.shape, dtype=np.float64)
        if (~hit).any():
            rgb[~hit] = self.sky_rgb(dirs[~hit])
        if hit.any():
            o = origins if origins.ndim == 1 else origins[hit]
            points = o + t[hit, None] * dirs[hit]
            rgb[hit] = self.surface_rgb(points, box[hit], axis[hit], dirs[hit])
        label = np.where(hit, self.kind[np.maximum(box, 0)], SKY)
        return rgb, t, label


class Movers:
    """Cars driving along the town's streets; ``boxes(t)`` are their boxes at time t (s after the first frame).

    Each car keeps to one street of the grid (the main roads through the centre among them), in a lane
    2 m off its centre line, at a constant speed, wrapping around at the town's edge."""

    SIZE_M = (4.5, 2.0, 1.6)
    COLOURS = np.array([[0.85, 0.12, 0.10], [0.95, 0.95, 0.92], [0.10, 0.12, 0.14], [0.15, 0.30, 0.75], [0.95, 0.75, 0.10]])

    def __init__(self, spec: SceneSpec, rng: np.random.Generator) -> None:
        e, block = spec.town_half_extent_m, spec.block_size_m
        streets = np.arange(-e, e + block / 2, block)  # the street grid's centre lines (main roads at 0 among them)
        n = spec.num_movers
        self.extent = e
        self.axis = rng.integers(2, size=n)  # 0: drives along x, 1: along y
        self.line = rng.choice(streets, size=n) + rng.choice([-2.0, 2.0], size=n)
        self.start = rng.uniform(-e, e, size=n)
        self.speed = rng.uniform(8.0, 15.0, size=n) * rng.choice([-1.0, 1.0], size=n)
        self.colour = self.COLOURS[rng.integers(len(self.COLOURS), size=n)]

    def boxes(self, t: float) -> Tuple[np.ndarray, np.ndarray]:
        """(lo, hi) (n, 3) of the cars at time t."""
        lo, hi = self.boxes_at(np.array([t]))
        return lo[0], hi[0]

    def boxes_at(self, times: Float[np.ndarray, " k"]) -> Tuple[np.ndarray, np.ndarray]:
        """(lo, hi) (k, n, 3) of the cars at each of the times."""
        e, n = self.extent, len(self.axis)
        along = (self.start + self.speed * np.asarray(times, dtype=np.float64)[:, None] + e) % (2 * e) - e
        rows = np.arange(n)
        centre = np.zeros((len(along), n, 3))
        centre[:, rows, self.axis] = along
        centre[:, rows, 1 - self.axis] = self.line
        half = np.zeros_like(centre)
        half[:, rows, self.axis] = self.SIZE_M[0] / 2
        half[:, rows, 1 - self.axis] = self.SIZE_M[1] / 2
        centre[..., 2] = half[..., 2] = self.SIZE_M[2] / 2
        return centre - half, centre + half

    def scene_at(self, scene: "Scene", t: float) -> "Scene":
        """``scene`` with the cars at time t added as boxes of kind MOVER."""
        if len(self.axis) == 0:
            return scene
        lo, hi = self.boxes(t)
        kind = np.full(len(lo), MOVER)
        return Scene(np.concatenate([scene.lo, lo]), np.concatenate([scene.hi, hi]), np.concatenate([scene.kind, kind]),
                     np.concatenate([scene.wall_rgb, self.colour * 0.8]), np.concatenate([scene.top_rgb, self.colour]),
                     scene.block_rgb, scene.field_rgb, scene.sun_dir, scene.spec)


def appearance_gain(spec: SceneSpec, t: np.ndarray, duration: float) -> np.ndarray:
    """(n, 3) per-channel colour gains of RGB frames at times t (s) of a capture lasting ``duration`` s."""
    phases = np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3])
    return 1.0 + spec.appearance_drift * np.sin(2 * np.pi * np.asarray(t)[:, None] / max(duration, 1e-9) + phases)


# ---------------------------------------------------------------------------------- trajectory


class Trajectory:
    """The rig's pose in the town frame as an analytic (C-infinity) function of time.

    Horizontal path: a three-lobed loop (hypotrochoid) around the town centre, traversed at a
    sinusoidally varying speed. Altitude and camera pitch vary sinusoidally within their ranges;
    the camera heads towards the town centre plus a slow yaw swing, with no roll."""

    def __init__(self, spec: SceneSpec, rng: np.random.Generator) -> None:
        self.spec = spec
        self.phase = rng.uniform(0, 2 * np.pi, 6)
        # Angular rate of the loop parameter that gives the requested mean ground speed.
        grid = np.linspace(0, 2 * np.pi, 4096, endpoint=False)
        self.omega = spec.mean_speed_mps / np.linalg.norm(self._path_derivative(grid), axis=-1).mean()
        self.omega_speed = 2 * np.pi / 11.0  # speed-variation, altitude, pitch and yaw periods (s)
        self.omega_alt, self.omega_pitch, self.omega_yaw = 2 * np.pi / 17.0, 2 * np.pi / 7.0, 2 * np.pi / 9.0

    def _path(self, phi: np.ndarray) -> np.ndarray:
        r, w, b = self.spec.orbit_radius_m, self.spec.orbit_wobble_m, self.phase[1]
        return np.stack([r * np.cos(phi) + w * np.cos(-2 * phi + b), r * np.sin(phi) + w * np.sin(-2 * phi + b)], -1)

    def _path_derivative(self, phi: np.ndarray) -> np.ndarray:
        r, w, b = self.spec.orbit_radius_m, self.spec.orbit_wobble_m, self.phase[1]
        return np.stack(
            [-r * np.sin(phi) + 2 * w * np.sin(-2 * phi + b), r * np.cos(phi) - 2 * w * np.cos(-2 * phi + b)], -1
        )

    def loop_parameter(self, tau: Float[np.ndarray, " n"]) -> Float[np.ndarray, " n"]:
        """phi(tau) with dphi/dtau = omega (1 + speed_variation cos(...)): variable speed."""
        a = self.spec.speed_variation * self.omega / self.omega_speed
        return self.phase[0] + self.omega * tau + a * np.sin(self.omega_speed * tau + self.phase[2])

    def pose(self, tau: Float[np.ndarray, " n"]) -> Tuple[Float[np.ndarray, "n 3 3"], Float[np.ndarray, "n 3"]]:
        """Camera-to-town rotation (OpenGL camera axes) and position in metres at times tau (s)."""
        s = self.spec
        xy = self._path(self.loop_parameter(tau))
        alt = np.mean(s.altitude_m) + np.ptp(s.altitude_m) / 2 * np.sin(self.omega_alt * tau + self.phase[3])
        position = np.concatenate([xy, alt[:, None]], -1)
        pitch_swing = np.ptp(s.pitch_deg) / 2 * np.sin(self.omega_pitch * tau + self.phase[4])
        pitch = np.deg2rad(np.mean(s.pitch_deg) + pitch_swing)
        yaw_swing = np.deg2rad(s.yaw_swing_deg) * np.sin(self.omega_yaw * tau + self.phase[5])
        yaw = np.arctan2(-xy[:, 1], -xy[:, 0]) + yaw_swing
        forward = np.stack([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), -np.sin(pitch)], -1)
        right = np.stack([np.sin(yaw), -np.cos(yaw), np.zeros_like(yaw)], -1)
        up = np.cross(right, forward)
        return np.stack([right, up, -forward], -1), position


# ------------------------------------------------------------------------------------ cameras


def intrinsics_for(width: int, height: int, hfov_deg: float) -> np.ndarray:
    """[fx, fy, cx, cy] of a pinhole camera with square pixels and a centred principal point."""
    fx = (width / 2) / np.tan(np.deg2rad(hfov_deg) / 2)
    return np.array([fx, fx, width / 2, height / 2])


@functools.lru_cache(maxsize=4)
def _camera_dirs_cached(width: int, height: int, intrinsics: Tuple[float, ...], supersample: int) -> np.ndarray:
    return camera_dirs(width, height, np.array(intrinsics), supersample)


def camera_dirs(
    width: int, height: int, intrinsics: np.ndarray, supersample: int = 1
) -> Float[np.ndarray, "h w s 3"]:
    """Ray directions in camera axes (OpenGL) scaled so that their z is -1: the hit parameter t of
    such a ray is the planar z-depth. Sub-pixel samples sit on a regular grid; with supersample=1
    the ray goes through the pixel centre (u + 0.5, v + 0.5), as nerfstudio's cameras do."""
    fx, fy, cx, cy = intrinsics
    sub = (np.arange(supersample) + 0.5) / supersample
    u = np.arange(width)[None, :, None, None] + sub[None, None, :, None]
    v = np.arange(height)[:, None, None, None] + sub[None, None, None, :]
    u, v = np.broadcast_arrays(u, v)
    dirs = np.stack([(u - cx) / fx, -(v - cy) / fy, -np.ones_like(u)], -1)
    return dirs.reshape(height, width, supersample * supersample, 3)


def render_rgb(scene: Scene, rotation: np.ndarray, position: np.ndarray, width: int, height: int,
               intrinsics: np.ndarray, supersample: int, gain: np.ndarray | None = None) -> Tuple[np.ndarray, np.ndarray]:
    """An 8-bit RGB image (H, W, 3) and the labels of each pixel's supersample x supersample rays (H, W, S*S);
    ``gain`` (3,) multiplies the colours (the frame's exposure and tint)."""
    d = _camera_dirs_cached(width, height, tuple(intrinsics), supersample).reshape(-1, 3) @ rotation.T
    boxes = scene.boxes_in_view(rotation, position, intrinsics, width, height)
    # float32 is plenty for colour (sub-millimetre hit points); depth frames use float64.
    rgb, _, label = scene.render(position.astype(np.float32), d.astype(np.float32), boxes)
    rgb = rgb.reshape(height, width, supersample * supersample, 3).mean(axis=2)
    if gain is not None:
        rgb = rgb * gain
    image = np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)
    return image, label.reshape(height, width, -1)


def render_depth(scene: Scene, rotation: np.ndarray, position: np.ndarray, width: int, height: int,
                 intrinsics: np.ndarray, max_range: float) -> Tuple[np.ndarray, np.ndarray]:
    """Planar z-depth in metres (float32, 0 = no measurement) and the label of each pixel."""
    d_cam = _camera_dirs_cached(width, height, tuple(intrinsics), 1).reshape(-1, 3)
    boxes = scene.boxes_in_view(rotation, position, intrinsics, width, height)
    t, box, _ = scene.intersect(position, d_cam @ rotation.T, boxes)
    valid = (box >= 0) & (t * np.linalg.norm(d_cam, axis=-1) <= max_range)
    depth = np.where(valid, t, 0.0).astype(np.float32).reshape(height, width)
    label = np.where(box >= 0, scene.kind[np.maximum(box, 0)], SKY).reshape(height, width)
    return depth, label


# -------------------------------------------------------------------------------------- lidar


def lidar_period_ms(spec: SceneSpec) -> int:
    """Duration of one sweep (and time from one scan's stamp to the next) in whole milliseconds."""
    return int(round(1000 / spec.lidar_rate_hz))


def lidar_column_times(spec: SceneSpec) -> Float[np.ndarray, " c"]:
    """Time (s) of each column of a sweep relative to the scan's stamp: [0, P) if stamped at its start, (-P, 0] at
    its end."""
    step = lidar_period_ms(spec) / 1000 / spec.lidar_columns
    k = np.arange(spec.lidar_columns)
    return k * step if spec.lidar_stamp == "start" else -(spec.lidar_columns - 1 - k) * step


def lidar_beam_dirs(spec: SceneSpec) -> Float[np.ndarray, "c b 3"]:
    """Unit beam directions in the LiDAR frame (x forward, y left, z up) per column (azimuth) and beam (elevation)."""
    azimuth = 2 * np.pi * np.arange(spec.lidar_columns) / spec.lidar_columns
    elevation = np.deg2rad(np.linspace(*spec.lidar_vertical_fov_deg, spec.lidar_beams))
    az, el = np.meshgrid(azimuth, elevation, indexing="ij")
    return np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1)


def simulate_lidar_scan(
    scene: Scene, trajectory: Trajectory, movers: Movers | None, spec: SceneSpec, stamp: float, rng: np.random.Generator
) -> Tuple[Float[np.ndarray, "n 4"], Int[np.ndarray, " n"]]:
    """One sweep whose stamp falls at ``stamp`` (s after the first RGB frame, RGB clock): the (C*B, 4) float32 rows
    x, y, z (LiDAR frame, metres, as the sensor measures them: not deskewed), t (s after the stamp), and the label of
    each row (GROUND, TERRACE, BUILDING, MOVER, or SKY for a beam without a return, whose row is all zeros).

    Column k fires at stamp + t_k (`lidar_column_times`) from where the rig is then (`Trajectory.pose`, the RGB
    frames' trajectory, and `LIDAR_TO_CAMERA`); all its beams share that origin and time. Every column of the sweep
    is cast at once (one ray per row, each with its own origin). The cars of ``movers`` are where they are at each
    column's time. Range noise (`lidar_noise_m`) comes from ``rng``, one draw per row, return or not."""
    t_col = lidar_column_times(spec)
    rotation, position = trajectory.pose(stamp + t_col)
    r_lc, t_lc = LIDAR_TO_CAMERA[:3, :3], LIDAR_TO_CAMERA[:3, 3]
    d_lidar = lidar_beam_dirs(spec)
    n_col, n_beam = d_lidar.shape[:2]
    origins = np.repeat(position + rotation @ t_lc, n_beam, axis=0)
    dirs = np.einsum("cij,cbj->cbi", rotation @ r_lc, d_lidar).reshape(-1, 3)
    dist, box, _ = scene.intersect(origins, dirs)
    label = np.where(box >= 0, scene.kind[np.maximum(box, 0)], SKY)
    if movers is not None and len(movers.axis):
        # A car (z in [0, 1.6 m]) can only come before a beam's static hit if that hit lies at car height or
        # below (the ground, a wall's foot) or the beam goes down and hits nothing: only those beams are tested,
        # against every car at once, each car where it is at the beam's column time.
        lo, hi = movers.boxes_at(stamp + t_col)
        column = np.repeat(np.arange(n_col), n_beam)
        below = origins[:, 2] + np.where(np.isfinite(dist), dist, 0.0) * dirs[:, 2] <= Movers.SIZE_M[2] + 1e-6
        beams = np.flatnonzero((dirs[:, 2] < 0) & (below | ~np.isfinite(dist)))
        o, c = origins[beams, None, :], column[beams]
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / dirs[beams, None, :]
            t0, t1 = (lo[c] - o) * inv, (hi[c] - o) * inv
            near = np.minimum(t0, t1).max(axis=-1)
            far = np.maximum(t0, t1).min(axis=-1)
        near = np.where((near <= far) & (near > 0), near, np.inf).min(axis=1)
        closer = near < dist[beams]
        dist[beams[closer]] = near[closer]
        label[beams[closer]] = MOVER
    noise = rng.normal(0.0, spec.lidar_noise_m, size=len(dist))
    returned = (label != SKY) & (dist <= spec.lidar_max_range_m)
    points = np.zeros((len(dist), 4), dtype=np.float32)
    points[returned, :3] = d_lidar.reshape(-1, 3)[returned] * (dist + noise)[returned, None]
    points[returned, 3] = np.repeat(t_col, n_beam)[returned]
    return points, np.where(returned, label, SKY)


# ------------------------------------------------------------------------------------- writing


def _timestamps_ms(rng: np.random.Generator, count: int, rate: float, offset_s: float, jitter_ms: int) -> np.ndarray:
    nominal = np.round((offset_s + np.arange(count) / rate) * 1000).astype(np.int64)
    return nominal + rng.integers(-jitter_ms, jitter_ms + 1, size=count)


def _rotation_error_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.rad2deg(Rotation.from_matrix(np.swapaxes(a, -1, -2) @ b).magnitude())


def _validate(spec: SceneSpec) -> None:
    checks = {
        "num_rgb must be at least 2": spec.num_rgb >= 2,
        "appearance_drift must be in [0, 0.5]": 0.0 <= spec.appearance_drift <= 0.5,
        "num_movers must be non-negative": spec.num_movers >= 0,
        "width, height, depth_width, depth_height must be positive":
            min(spec.width, spec.height, spec.depth_width, spec.depth_height) > 0,
        "supersample must be at least 1": spec.supersample >= 1,
        "rgb_rate_hz and depth_rate_hz must be positive": spec.rgb_rate_hz > 0 and spec.depth_rate_hz > 0,
        "val_every must be at least 2": spec.val_every >= 2,
        "hfov_deg and depth_hfov_deg must be in (0, 180)": 0 < spec.hfov_deg < 180 and 0 < spec.depth_hfov_deg < 180,
        "rgb_jitter_ms must be in [0, a third of the RGB frame period]":
            0 <= spec.rgb_jitter_ms <= 1000 / spec.rgb_rate_hz / 3,
        "depth_jitter_ms must be non-negative": spec.depth_jitter_ms >= 0,
        "altitude_m must lie above the tallest building": spec.altitude_m[0] > spec.building_height_m[1] + 5.0,
        "the loop must stay off the town centre (orbit_radius_m > 2 * orbit_wobble_m + 1)":
            spec.orbit_radius_m > 2 * spec.orbit_wobble_m + 1,
    }
    if spec.lidar:
        track = spec.lidar_track
        fov = spec.lidar_vertical_fov_deg
        checks.update({
            "lidar_track must be a folder-name suffix other than 'rgb' and the depth track's name":
                bool(track) and track != "rgb" and track != spec.depth_track and not set("/\\") & set(track)
                and not track.startswith("."),
            "lidar_rate_hz must be in (0, 1000] (a sweep lasts at least 1 ms)": 0 < spec.lidar_rate_hz <= 1000,
            "lidar_offset_s must be non-negative": spec.lidar_offset_s >= 0,
            "lidar_beams and lidar_columns must be positive": min(spec.lidar_beams, spec.lidar_columns) > 0,
            "lidar_vertical_fov_deg must be (lowest, highest) within (-90, 90)": -90 < fov[0] <= fov[1] < 90,
            "lidar_max_range_m must be positive and lidar_noise_m non-negative":
                spec.lidar_max_range_m > 0 and spec.lidar_noise_m >= 0,
            "lidar_stamp must be 'start' or 'end'": spec.lidar_stamp in ("start", "end"),
        })
    bad = [message for message, ok in checks.items() if not ok]
    if bad:
        raise ValueError(f"invalid SceneSpec: {'; '.join(bad)} (got {spec})")


def build(spec: SceneSpec) -> Tuple[Scene, Trajectory, np.random.Generator]:
    """The scene and trajectory of a spec, and the generator that then draws its timestamp jitter.

    Each part has its own random stream, so e.g. changing the number of frames keeps the town."""
    rng_scene, rng_traj, rng_time = (np.random.default_rng(s) for s in np.random.SeedSequence(spec.seed).spawn(3))
    return Scene.from_spec(spec, rng_scene), Trajectory(spec, rng_traj), rng_time


def build_movers(spec: SceneSpec) -> Movers:
    """The cars of a spec, from a fourth random stream (the town, path and times stay as without them)."""
    return Movers(spec, np.random.default_rng(np.random.SeedSequence(spec.seed).spawn(4)[3]))


def lidar_rng(spec: SceneSpec) -> np.random.Generator:
    """The LiDAR's range noise, from a fifth random stream (everything else stays as without the LiDAR)."""
    return np.random.default_rng(np.random.SeedSequence(spec.seed).spawn(5)[4])


def lidar_schedule_ms(spec: SceneSpec, rgb_end_ms: int) -> np.ndarray:
    """RGB-clock times (ms after the first RGB frame) of the scans' stamps: one sweep per period from
    lidar_offset_s on, each wholly within [0, rgb_end_ms]. The LiDAR's clock says these minus lidar_clock_offset_ms."""
    period = lidar_period_ms(spec)
    first = int(round(spec.lidar_offset_s * 1000))
    count = max((rgb_end_ms - first - period) // period + 1, 0)
    starts = first + period * np.arange(count, dtype=np.int64)
    return starts if spec.lidar_stamp == "start" else starts + period


def generate_scene(out_dir: Path, spec: SceneSpec = SceneSpec(), overwrite: bool = False) -> Path:
    """Renders the scene described by `spec` into `out_dir` (see DATA_LAYOUT.md) and returns out_dir."""
    _validate(spec)
    out_dir = Path(out_dir)
    ours = ["train", "val", "coordinates.pt", "scene.json", "preview.png"]
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
        for name in ours:
            path = out_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    scene, trajectory, rng_time = build(spec)

    # Timestamps in integer milliseconds after start_time, so that STEM = "%.3f" is exact.
    rgb_ms = _timestamps_ms(rng_time, spec.num_rgb, spec.rgb_rate_hz, 0.0, spec.rgb_jitter_ms)
    rgb_ms[0] = 0
    n_depth = int(np.floor((rgb_ms[-1] / 1000 - spec.depth_offset_s) * spec.depth_rate_hz)) + 1
    depth_ms = _timestamps_ms(rng_time, max(n_depth, 0), spec.depth_rate_hz, spec.depth_offset_s, spec.depth_jitter_ms)
    depth_ms = depth_ms[(depth_ms > rgb_ms[0]) & (depth_ms < rgb_ms[-1])]
    if len(depth_ms) == 0 or np.isin(depth_ms, rgb_ms).any() or (np.diff(depth_ms) <= 0).any():
        raise ValueError(
            f"depth_offset_s={spec.depth_offset_s}, depth_rate_hz={spec.depth_rate_hz}, depth_jitter_ms="
            f"{spec.depth_jitter_ms}: depth timestamps must be distinct, increasing, inside the RGB time span "
            "and never equal to an RGB timestamp"
        )
    assert (np.diff(rgb_ms) > 0).all()
    stamp_ms = depth_ms - spec.depth_clock_offset_ms  # what the depth sensor's clock says
    if np.isin(stamp_ms, rgb_ms).any():
        raise ValueError(f"depth_clock_offset_ms={spec.depth_clock_offset_ms}: a depth stamp equals an RGB stamp")
    stems = {k: [f"{spec.start_time + ms / 1000:.3f}" for ms in v] for k, v in (("rgb", rgb_ms), ("depth", stamp_ms))}
    lidar_ms = lidar_schedule_ms(spec, int(rgb_ms[-1])) if spec.lidar else np.zeros(0, dtype=np.int64)
    if spec.lidar and len(lidar_ms) == 0:
        raise ValueError(
            f"lidar_offset_s={spec.lidar_offset_s}, lidar_rate_hz={spec.lidar_rate_hz}: no LiDAR sweep fits in the RGB "
            f"time span ({rgb_ms[-1] / 1000:.3f} s)"
        )
    lidar_stems = [f"{spec.start_time + (ms - spec.lidar_clock_offset_ms) / 1000:.3f}" for ms in lidar_ms]

    rot_rgb, pos_rgb = trajectory.pose(rgb_ms / 1000)
    rot_depth, pos_depth = trajectory.pose(depth_ms / 1000)
    assert (scene.signed_distance(np.concatenate([pos_rgb, pos_depth])) > 1.0).all(), "a camera is inside a box"
    nearest = np.abs(stamp_ms[:, None] - rgb_ms[None, :]).argmin(axis=1)

    # Normalised DRB: c2w[:, 3] = (p_drb - origin_drb) / pose_scale_factor, cameras within the unit ball.
    to_drb = M_TOWN_FROM_DRB.T
    cams_drb = np.concatenate([pos_rgb, pos_depth]) @ to_drb.T
    origin_drb = (cams_drb.min(axis=0) + cams_drb.max(axis=0)) / 2
    scale = float(np.linalg.norm(cams_drb - origin_drb, axis=-1).max())

    def c2w_drb(rot: np.ndarray, pos: np.ndarray) -> np.ndarray:
        return np.concatenate([to_drb @ rot, ((to_drb @ pos) - origin_drb)[:, None] / scale], axis=1)

    def split_of(index: int) -> str:
        return "val" if index % spec.val_every == spec.val_every // 2 else "train"

    k_rgb = intrinsics_for(spec.width, spec.height, spec.hfov_deg)
    k_depth = intrinsics_for(spec.depth_width, spec.depth_height, spec.depth_hfov_deg)
    track = spec.depth_track
    lidar_subs = tuple(f"{sub}_{spec.lidar_track}" for sub in ("lidar", "metadata_lidar", "pose_gt_lidar"))
    for split in ("train", "val"):
        for sub in ("rgbs", "metadata", "pose_gt_rgb", f"depth_{track}", f"metadata_depth_{track}", f"pose_gt_{track}"):
            (out_dir / split / sub).mkdir(parents=True, exist_ok=True)
        for sub in lidar_subs if spec.lidar else ():
            (out_dir / split / sub).mkdir(parents=True, exist_ok=True)
        if spec.lidar:
            np.savetxt(out_dir / split / f"lidar_to_camera_{spec.lidar_track}.txt", LIDAR_TO_CAMERA, fmt="%.17g")
    torch.save({"origin_drb": torch.tensor(origin_drb, dtype=torch.float64), "pose_scale_factor": scale},
               out_dir / "coordinates.pt")

    rgb_c2w, sky_fraction, previews, mover_fraction = [], [], [], []
    movers = build_movers(spec)
    gains = appearance_gain(spec, rgb_ms / 1000, rgb_ms[-1] / 1000)
    for i, stem in enumerate(stems["rgb"]):
        seen = movers.scene_at(scene, rgb_ms[i] / 1000)
        image, label = render_rgb(seen, rot_rgb[i], pos_rgb[i], spec.width, spec.height, k_rgb, spec.supersample,
                                  gains[i] if spec.appearance_drift else None)
        c2w = c2w_drb(rot_rgb[i], pos_rgb[i])
        rgb_c2w.append(torch.tensor(c2w, dtype=torch.float32))
        sky_fraction.append(float((label == SKY).mean()))
        split = out_dir / split_of(i)
        Image.fromarray(image).save(split / "rgbs" / f"{stem}.png")
        covered = (label == MOVER).any(axis=-1)
        mover_fraction.append(float(covered.mean()))
        if covered.any() and spec.write_masks:
            (split / "masks").mkdir(exist_ok=True)
            Image.fromarray(np.where(covered, 0, 255).astype(np.uint8)).save(split / "masks" / f"{stem}.png")
        torch.save({"W": spec.width, "H": spec.height, "intrinsics": torch.tensor(k_rgb, dtype=torch.float32),
                    "c2w": rgb_c2w[-1], "timestamp": float(stem)}, split / "metadata" / f"{stem}.pt")
        np.savetxt(split / "pose_gt_rgb" / f"{stem}.txt", c2w, fmt="%.17g")
        if len(previews) < 8 and i % max(spec.num_rgb // 8, 1) == 0:
            previews.append(image)

    depth_previews, valid_fraction = [], []
    for i, stem in enumerate(stems["depth"]):
        depth, _ = render_depth(scene, rot_depth[i], pos_depth[i], spec.depth_width, spec.depth_height, k_depth,
                                spec.depth_max_range_m)
        valid_fraction.append(float((depth > 0).mean()))
        split = out_dir / split_of(i)
        np.save(split / f"depth_{track}" / f"{stem}.npy", depth)
        meta = {"W": spec.depth_width, "H": spec.depth_height, "intrinsics": torch.tensor(k_depth, dtype=torch.float32),
                "timestamp": float(stem), "c2w": rgb_c2w[nearest[i]]}  # the prior: nearest RGB frame's pose
        torch.save(meta, split / f"metadata_depth_{track}" / f"{stem}.pt")
        np.savetxt(split / f"pose_gt_{track}" / f"{stem}.txt", c2w_drb(rot_depth[i], pos_depth[i]), fmt="%.17g")
        if len(depth_previews) < 4 and i % max(len(depth_ms) // 4, 1) == 0:
            depth_previews.append(depth)

    lidar_labels = []
    if spec.lidar:
        rng_lidar = lidar_rng(spec)
        rot_lidar, pos_lidar = trajectory.pose(lidar_ms / 1000)  # the rig at each scan's stamp (true time)
    for i, stem in enumerate(lidar_stems):
        points, label = simulate_lidar_scan(scene, trajectory, movers, spec, lidar_ms[i] / 1000, rng_lidar)
        lidar_labels.append(label)
        split = out_dir / split_of(i)
        np.save(split / lidar_subs[0] / f"{stem}.npy", points)
        torch.save({"timestamp": float(stem)}, split / lidar_subs[1] / f"{stem}.pt")
        np.savetxt(split / lidar_subs[2] / f"{stem}.txt", c2w_drb(rot_lidar[i], pos_lidar[i]), fmt="%.17g")

    prior_t = np.linalg.norm(pos_depth - pos_rgb[nearest], axis=-1)
    prior_r = _rotation_error_deg(rot_depth, rot_rgb[nearest])
    speed = np.linalg.norm(np.diff(pos_rgb, axis=0), axis=-1) / (np.diff(rgb_ms) / 1000)
    summary = {
        "num_rgb": int(spec.num_rgb), "num_depth": int(len(depth_ms)), "num_boxes": int(len(scene.kind)),
        "num_buildings": int((scene.kind == BUILDING).sum()),
        "origin_drb": origin_drb.tolist(), "pose_scale_factor": scale,
        "prior_translation_error_m": {"mean": float(prior_t.mean()), "max": float(prior_t.max())},
        "prior_rotation_error_deg": {"mean": float(prior_r.mean()), "max": float(prior_r.max())},
        "rgb_sky_fraction": {"mean": float(np.mean(sky_fraction)), "max": float(np.max(sky_fraction))},
        "depth_valid_fraction_mean": float(np.mean(valid_fraction)),
        "speed_mps": {"min": float(speed.min()), "mean": float(speed.mean()), "max": float(speed.max())},
    }
    if spec.num_movers:
        summary["mover_pixel_fraction"] = {"mean": float(np.mean(mover_fraction)), "max": float(np.max(mover_fraction)),
                                           "frames_with_movers": int(np.count_nonzero(mover_fraction))}
    if spec.appearance_drift:
        summary["rgb_gain"] = {"min": gains.min(axis=0).tolist(), "max": gains.max(axis=0).tolist()}
    spec_record = asdict(spec)
    if spec.lidar:
        summary["lidar"] = _lidar_summary(spec, trajectory, lidar_ms, lidar_labels)
    else:  # the scene.json of a dataset without the LiDAR stays what it was before the LiDAR existed
        spec_record = {key: value for key, value in spec_record.items() if not key.startswith("lidar")}
    description = {
        "generator": "examples/make_scene.py", "spec": spec_record, "summary": summary,
        "town_frame": "metres, z up; p_town = M @ p_drb_metres with M = [[0,1,0],[0,0,-1],[-1,0,0]]",
        "boxes_town_m": {"lo": scene.lo.tolist(), "hi": scene.hi.tolist(), "kind": scene.kind.tolist(),
                         "kind_names": {GROUND: "ground", TERRACE: "terrace", BUILDING: "building", MOVER: "mover"}},
    }
    (out_dir / "scene.json").write_text(json.dumps(description, indent=2))
    if spec.write_preview:
        write_preview(out_dir / "preview.png", previews, depth_previews)
    return out_dir


def _lidar_summary(spec: SceneSpec, trajectory: Trajectory, lidar_ms: np.ndarray, labels: list) -> dict:
    """Scans, returns and how far the rig moves and turns during one sweep (what deskewing corrects)."""
    t_col = lidar_column_times(spec)
    rot_first, pos_first = trajectory.pose(lidar_ms / 1000 + t_col[0])
    rot_last, pos_last = trajectory.pose(lidar_ms / 1000 + t_col[-1])
    moved = np.linalg.norm(pos_last - pos_first, axis=-1)
    turned = _rotation_error_deg(rot_first, rot_last)
    returned = np.array([np.mean(label != SKY) for label in labels])
    summary = {
        "num_scans": int(len(lidar_ms)), "rows_per_scan": int(spec.lidar_beams * spec.lidar_columns),
        "return_fraction": {"min": float(returned.min()), "mean": float(returned.mean()), "max": float(returned.max())},
        "sweep_translation_m": {"mean": float(moved.mean()), "max": float(moved.max())},
        "sweep_rotation_deg": {"mean": float(turned.mean()), "max": float(turned.max())},
    }
    if spec.num_movers:
        summary["mover_return_fraction"] = float(np.mean(np.concatenate(labels) == MOVER))
    return summary


def write_preview(path: Path, rgbs: list, depths: list) -> None:
    """Contact sheet: rows of RGB frames, then depth frames (near = bright, far = dark, none = black),
    each scaled up x3 without smoothing."""
    def up(image: np.ndarray) -> np.ndarray:
        return np.kron(image, np.ones((3, 3, 1), dtype=np.uint8))

    tiles = [up(im) for im in rgbs]
    valid = np.concatenate([d[d > 0] for d in depths]) if depths else np.zeros(0)
    near, far = np.percentile(valid, [1, 99]) if len(valid) else (0.0, 1.0)
    for depth in depths:
        level = 255 - 200 * np.clip((depth - near) / max(far - near, 1e-6), 0.0, 1.0)
        grey = np.where(depth > 0, level, 0.0).astype(np.uint8)
        tiles.append(up(np.repeat(grey[..., None], 3, axis=-1)))
    cols = 4
    tile_h = max(t.shape[0] for t in tiles)
    tile_w = max(t.shape[1] for t in tiles)
    rows = int(np.ceil(len(tiles) / cols))
    sheet = np.full((rows * (tile_h + 4), cols * (tile_w + 4), 3), 255, dtype=np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        y, x = r * (tile_h + 4), c * (tile_w + 4)
        sheet[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    Image.fromarray(sheet).save(path)


def cli(
    out_dir: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="OUT_DIR")],
    spec: Annotated[SceneSpec, tyro.conf.arg(name="")] = SceneSpec(),
    overwrite: bool = False,
) -> None:
    """Writes the procedural aerial town dataset to OUT_DIR and prints a summary.

    Args:
        out_dir: Dataset directory to create.
        spec: What to generate.
        overwrite: Replace the generator's files if OUT_DIR is not empty.
    """
    start = time.perf_counter()
    generate_scene(out_dir, spec, overwrite=overwrite)
    summary = json.loads((out_dir / "scene.json").read_text())["summary"]
    print(f"wrote {out_dir} in {time.perf_counter() - start:.1f} s")
    print(json.dumps(summary, indent=2))


def main(args: list[str] | None = None) -> None:
    """Command-line entry point; `args` replaces sys.argv[1:] (for tests)."""
    tyro.cli(cli, args=args)


if __name__ == "__main__":
    main()
