"""Cluster masks: which cells each pixel's ray crosses inside the altitude band (Mega-NeRF).

A cell trains only on the pixels whose ray passes through its region, so that each cell sees
every ray that can change its content and no others. The region of cell k, with boundary
margin m >= 1, is the set of ground-plane points p with ``|p - c_k| <= m * min_j |p - c_j|``:
the Voronoi cell of centroid k, grown so that neighbouring cells overlap near their border.

Which part of a ray counts: the segment inside the altitude band ``lo <= z <= hi`` (world z),
further limited to ray distances in ``[near, max_ray_length]``:
- a camera above the band looking down: from where the ray enters the top plane to where it
  leaves the bottom plane (or reaches ``max_ray_length``);
- a camera inside the band: from the camera itself (distance ``near``) to where the ray
  leaves the band, whichever way it points;
- a ray that never enters the band, or only behind the camera: no segment, no cell.
A ray belongs to every cell whose region its segment (projected on the ground plane) meets.

Two ways to decide that (``PartitionConfig.membership``):
- ``"exact"`` (default): the segment meets region k iff the rule holds at one of finitely many
  points of it, its *breakpoints*: both ends and every point where it crosses the border of two
  Voronoi cells (see `_exact_grid`). No point of the segment is missed, at any length.
- ``"sampled"``: the rule at ``samples_per_ray`` evenly spaced points, both ends included (the
  rule before version 2 of the membership key); it can miss a corner of a cell that the segment
  clips between two samples.

Layout: all internal tensors keep the rays in the last, contiguous dimension (``(3, R)``,
``(K, R)``, ...). With rays in a leading dimension and the few cells or points innermost, every
broadcast and reduction ran over tiny inner dimensions, 5-20 times slower on the CPU (measured).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import List, Literal, Optional, Sequence, Tuple, Union

import torch
from jaxtyping import Bool, Float
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.utils.rich_utils import CONSOLE
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import Tensor

from async_nerf_ns.partition.config import PartitionConfig
from async_nerf_ns.partition.geometry import PartitionGeometry

Membership = Literal["exact", "sampled"]
MEMBERSHIP_RULES = ("exact", "sampled")
DeviceLike = Union[str, torch.device, None]


def membership_device(device: DeviceLike, cameras: Optional[Cameras] = None) -> torch.device:
    """The device the membership runs on: ``device`` when given, else CUDA when present, else the
    cameras' device (the CPU without cameras)."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return cameras.device if cameras is not None else torch.device("cpu")


def ray_band_segments(
    origins: Float[Tensor, "num_rays 3"],
    directions: Float[Tensor, "num_rays 3"],
    z_range: Tuple[float, float],
    near: float = 0.0,
    far: float = math.inf,
) -> Tuple[Float[Tensor, "num_rays"], Float[Tensor, "num_rays"], Bool[Tensor, "num_rays"]]:
    """Ray distances (t_start, t_end) of each ray's part inside the band, and whether it has one.

    Distances are in units of ``directions``' length (world units for unit directions). A ray
    parallel to the planes is inside the band for all t or for none.
    """
    start, end, valid = _band_segments(origins[:, 2], directions[:, 2], z_range, near, far, _fresh)
    return start, end, valid


Scalar = Union[float, Tensor]


def _fresh(name: str, shape: Tuple[int, ...], dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """A workspace that allocates every time (see `_Workspace`)."""
    return torch.empty(shape, dtype=dtype, device=device)


class _Workspace:
    """Scratch tensors kept between chunks, by name. Fresh tensors of a few MB for every chunk cost
    as much as the arithmetic on them on the CPU (page faults of newly mapped memory: twice the time
    per image, measured), so each name keeps one flat storage, grown when needed, and hands out
    contiguous views of its first elements. One caller at a time."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.storage: dict = {}

    def __call__(self, name: str, shape: Tuple[int, ...], dtype: torch.dtype = torch.float32, device=None) -> Tensor:
        numel = math.prod(shape)
        flat = self.storage.get((name, dtype))
        if flat is None or flat.numel() < numel:
            flat = torch.empty(numel, dtype=dtype, device=self.device)
            self.storage[(name, dtype)] = flat
        return flat[:numel].view(shape)


def _band_segments(
    oz: Scalar, vz: Tensor, z_range: Tuple[float, float], near: Scalar, far: Scalar, ws
) -> Tuple[Tensor, Tensor, Tensor]:
    """Ray parameters (start, end) of the part of ``o + t v`` inside the band, and whether there is
    one; ``oz`` a float (one origin) or a tensor like ``vz``; ``near``/``far`` floats or per-ray tensors."""
    lo, hi = z_range
    shape, dtype = vz.shape, vz.dtype
    inverse = torch.reciprocal(vz, out=ws("inverse", shape, dtype, vz.device))
    # (bound - oz) / vz for both planes; a ray parallel to them (vz = 0) gets +-inf (or nan), fixed below.
    t_lo = torch.mul(inverse, lo - oz, out=ws("t_lo", shape, dtype, vz.device))
    t_hi = torch.mul(inverse, hi - oz, out=ws("t_hi", shape, dtype, vz.device))
    start = torch.minimum(t_lo, t_hi, out=ws("start", shape, dtype, vz.device))
    end = torch.maximum(t_lo, t_hi, out=ws("end", shape, dtype, vz.device))
    parallel = vz == 0
    if bool(parallel.any()):
        inside = (torch.as_tensor(oz) >= lo) & (torch.as_tensor(oz) <= hi)
        inf = torch.tensor(math.inf, dtype=dtype, device=vz.device)
        start = torch.where(parallel, torch.where(inside, -inf, inf), start)
        end = torch.where(parallel, torch.where(inside, inf, -inf), end)
    start = start.clamp_(min=near) if not isinstance(near, Tensor) else torch.maximum(start, near, out=start)
    end = end.clamp_(max=far) if not isinstance(far, Tensor) else torch.minimum(end, far, out=end)
    valid = torch.ge(end, start, out=ws("valid", shape, torch.bool, vz.device))
    return start, end, valid


def _ground_segments(
    o: Tuple[Scalar, Scalar, Scalar],
    v: Tuple[Tensor, Tensor, Tensor],
    z_range: Tuple[float, float],
    near: Scalar,
    far: Scalar,
    ws,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The rays' segments inside the band projected on the ground plane, ``p(s) = first + s * span``
    for s in [0, 1]: (first_x, first_y, span_x, span_y, valid). Invalid rays get meaningless values
    (possibly inf or nan) that the caller masks out with ``valid``."""
    (ox, oy, oz), (vx, vy, vz) = o, v
    start, end, valid = _band_segments(oz, vz, z_range, near, far, ws)
    # With a finite far every segment ends (end <= far); only an infinite one can leave it open.
    if not isinstance(far, Tensor) and math.isinf(far) and bool((torch.isinf(end) & valid).any()):
        raise ValueError(
            "some rays run inside the altitude band without end (parallel to the ground); pass a finite far "
            "(PartitionConfig.max_ray_length)"
        )
    shape, dtype, device = vz.shape, vz.dtype, vz.device
    length = end.sub_(start)
    first_x = torch.mul(start, vx, out=ws("first_x", shape, dtype, device)).add_(ox)
    first_y = torch.mul(start, vy, out=ws("first_y", shape, dtype, device)).add_(oy)
    span_x = torch.mul(length, vx, out=ws("span_x", shape, dtype, device))
    span_y = torch.mul(length, vy, out=ws("span_y", shape, dtype, device))
    return first_x, first_y, span_x, span_y, valid


def ray_cell_membership(
    origins: Float[Tensor, "num_rays 3"],
    directions: Float[Tensor, "num_rays 3"],
    centroids: Float[Tensor, "num_cells 3"],
    z_range: Tuple[float, float],
    boundary_margin: float,
    samples_per_ray: int = 256,
    near: float = 0.0,
    far: float = math.inf,
    chunk_rays: int = 1 << 16,
    membership: Membership = "exact",
) -> Bool[Tensor, "num_rays num_cells"]:
    """Which cells each ray belongs to (see the module docstring for the rule).

    Args:
        origins, directions: rays in the world frame; directions need not be unit length
            (then ``near``/``far`` are in multiples of their length).
        centroids: cell centroids; only their world x, y are used.
        z_range: (lowest, highest) world z of the altitude band.
        boundary_margin: m >= 1, how far beyond its Voronoi border a cell reaches (ratio of distances).
        samples_per_ray: points per segment, both ends included (>= 2); ``"sampled"`` only.
        near, far: ray distances outside of which nothing counts.
        chunk_rays: rays per step (bounds memory, see `PartitionConfig.chunk_rays`).
        membership: ``"exact"`` or ``"sampled"`` (module docstring).

    Raises:
        ValueError: a ray runs inside the band forever (parallel to it with ``far`` infinite):
            pass a finite ``far``.
    """
    assert origins.shape == directions.shape and origins.shape[-1] == 3, (origins.shape, directions.shape)
    dtype = origins.dtype if origins.dtype.is_floating_point else torch.float32
    rule = _Rule(centroids, boundary_margin, samples_per_ray, membership, origins.device, dtype)
    result = torch.empty(centroids.shape[0], origins.shape[0], dtype=torch.bool, device=origins.device)
    for begin in range(0, origins.shape[0], chunk_rays):
        o = origins[begin : begin + chunk_rays].to(dtype).T.contiguous()
        d = directions[begin : begin + chunk_rays].to(dtype).T.contiguous()
        rule(tuple(o), tuple(d), z_range, near, far, out=result[:, begin : begin + chunk_rays])
    return result.T


class _Rule:
    """The membership rule for one set of centroids on planar rays: origin and direction components
    (x, y, z), each a (R,) tensor (or a float for an origin shared by all rays) -> (K, R) membership."""

    def __init__(
        self,
        centroids: Tensor,
        boundary_margin: float,
        samples_per_ray: int,
        membership: Membership,
        device: torch.device,
        dtype: torch.dtype,
        workspace: bool = False,
    ) -> None:
        if boundary_margin < 1.0:
            raise ValueError(f"boundary_margin must be >= 1, got {boundary_margin}")
        if membership not in MEMBERSHIP_RULES:
            raise ValueError(f"membership must be one of {MEMBERSHIP_RULES}, got {membership!r}")
        if membership == "sampled" and samples_per_ray < 2:
            raise ValueError(f"samples_per_ray must be >= 2, got {samples_per_ray}")
        self.membership = membership
        self.samples = samples_per_ray
        self.margin_squared = float(boundary_margin) ** 2
        if membership == "exact":
            # A relative slack of ~1e-6 on m^2: breakpoints on a Voronoi border are ties (with m = 1 the
            # rule holds there with equality), and float32 rounding of the crossing point must not break
            # them. It grows every region by ~5e-7 of the distance to its centroid.
            self.margin_squared *= 1.0 + EXACT_SLACK
        self.centres = centroids[:, :2].to(device, dtype)
        self.grid = _grid_axes(self.centres) if membership == "exact" else None
        self.ws = _Workspace(device) if workspace else _fresh

    def __call__(
        self,
        o: Tuple[Scalar, Scalar, Scalar],
        v: Tuple[Tensor, Tensor, Tensor],
        z_range: Tuple[float, float],
        near: Scalar,
        far: Scalar,
        out: Tensor,
    ) -> Tensor:
        """Writes the membership of the rays ``o + t v`` into ``out`` ((K, R), or (K, B, R) for B images
        whose rays come as (B, R)) and returns it."""
        segments = _ground_segments(o, v, z_range, near, far, self.ws)
        # Rays of several images come as (B, R): one flat batch from here on.
        first_x, first_y, span_x, span_y, valid = (t.reshape(-1) for t in segments)
        flat_out = out.view(out.shape[0], -1) if out.is_contiguous() else None
        if flat_out is None:
            target = self.ws("membership", (out.shape[0], valid.shape[0]), torch.bool, out.device)
        else:
            target = flat_out
        if self.membership == "sampled":
            first = torch.stack([first_x, first_y], dim=-1)
            span = torch.stack([span_x, span_y], dim=-1)
            target.copy_(_segment_membership(first, span, self.centres, self.margin_squared, self.samples).T)
        elif self.grid is not None:
            _exact_grid(first_x, first_y, span_x, span_y, *self.grid, self.margin_squared, self.ws, target)
        else:
            target.copy_(_exact_any(first_x, first_y, span_x, span_y, self.centres, self.margin_squared))
        target.logical_and_(valid)
        if flat_out is None:
            out.copy_(target.view(out.shape))
        return out


def _grid_axes(centres: Float[Tensor, "K 2"]) -> Optional[Tuple[Tensor, Tensor]]:
    """(xs, ys) if the centres are the row-major grid ``[(x, y) for x in xs for y in ys]`` (strictly
    increasing xs, ys: what `grid_centroids` lays out), else None."""
    xs, ys = torch.unique(centres[:, 0]), torch.unique(centres[:, 1])
    if xs.numel() * ys.numel() != centres.shape[0]:
        return None
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="ij"), dim=-1).reshape(-1, 2)
    return (xs, ys) if torch.equal(grid, centres) else None


# ---------------------------------------------------------------------------------------------
# Exact membership.
#
# Why finitely many points suffice: along the segment p(s) = a + s d, s in [0, 1], the nearest
# centroid is constant on pieces (a line crosses each convex Voronoi cell in one interval); the
# pieces end at the segment's ends and where it crosses a border between two Voronoi cells (a point
# where two centroids are equally near). On a piece whose nearest centroid is j the rule for cell k
# reads g(s) = |p(s) - c_k|^2 - m^2 |p(s) - c_j|^2 <= 0, and g is a quadratic in s with leading
# coefficient (1 - m^2) |d|^2 <= 0: concave (linear for m = 1), so its minimum over the piece is at
# one of the piece's ends. Hence the segment meets region k iff the rule holds at a breakpoint. Any
# further point of the segment is a valid witness too, so extra candidate points (clamped into
# [0, 1]) never change the result. This is the interval test of the issue evaluated where it can
# change: [0, 1] minus the union of the open intervals {g_kj > 0} (j != k) is non-empty iff it
# contains 0 or the right end of one of them, and those ends lie at breakpoints. (The tests check
# it against that interval test, written independently in float64, and against dense sampling.)


def _exact_grid(
    first_x: Tensor,
    first_y: Tensor,
    span_x: Tensor,
    span_y: Tensor,
    xs: Tensor,
    ys: Tensor,
    margin_squared: float,
    ws,
    out: Tensor,
) -> Tensor:
    """Exact (K, R) membership for grid centroids (xs x ys, row-major), written into ``out``.

    On such a grid the squared distance splits, |p - c_ij|^2 = (p_x - x_i)^2 + (p_y - y_j)^2, so the
    nearest centroid has the nearest x and the nearest y, and the Voronoi borders are the lines
    midway between neighbouring xs (and ys): the breakpoints are the ends and the crossings of those
    lines, n0 + n1 points for n0 x n1 cells. The rule for cell (i, j) at a point also splits:
    |p - c_ij|^2 - m^2 min |p - c|^2 = u_i + w_j with u_i = (p_x - x_i)^2 - m^2 min_l (p_x - x_l)^2
    and w_j likewise in y.
    """
    n0, n1, rays = xs.numel(), ys.numel(), first_x.shape[0]
    points, dtype, device = n0 + n1, first_x.dtype, first_x.device
    s = ws("s", (points, rays), dtype, device)
    s[0].zero_()
    s[1].fill_(1.0)
    if n0 > 1:
        # A segment parallel to a border line gives +-inf or nan: any point is a valid candidate.
        torch.sub(0.5 * (xs[1:] + xs[:-1])[:, None], first_x, out=s[2 : n0 + 1]).div_(span_x)
    if n1 > 1:
        torch.sub(0.5 * (ys[1:] + ys[:-1])[:, None], first_y, out=s[n0 + 1 :]).div_(span_y)
    s.nan_to_num_(0.0).clamp_(0.0, 1.0)
    u = _axis_excess(first_x, span_x, s, xs, margin_squared, ws, "u")  # (P, n0, R)
    w = _axis_excess(first_y, span_y, s, ys, margin_squared, ws, "w")  # (P, n1, R)
    excess = torch.add(u[:, :, None, :], w[:, None, :, :], out=ws("excess", (points, n0, n1, rays), dtype, device))
    lowest = torch.amin(excess.view(points, n0 * n1, rays), dim=0, out=ws("lowest", (n0 * n1, rays), dtype, device))
    # Within the margin at some breakpoint <=> the lowest excess over them is <= 0 (a float min is
    # cheaper here than a bool comparison at every point followed by any()).
    return torch.le(lowest, 0.0, out=out)


def _axis_excess(first: Tensor, span: Tensor, s: Tensor, axis: Tensor, margin_squared: float, ws, name: str) -> Tensor:
    """(P, n, R): (p - a_i)^2 - m^2 min_l (p - a_l)^2 along one axis at the points p = first + s span."""
    points, rays, n = s.shape[0], s.shape[1], axis.numel()
    p = torch.addcmul(first, s, span, out=ws(name + "_p", (points, rays), s.dtype, s.device))
    excess = torch.sub(p[:, None, :], axis[None, :, None], out=ws(name, (points, n, rays), s.dtype, s.device))
    excess.square_()
    if n == 1:
        return excess.mul_(1.0 - margin_squared)
    nearest = torch.amin(excess, dim=1, out=ws(name + "_min", (points, rays), s.dtype, s.device))
    return excess.sub_(nearest.mul_(margin_squared)[:, None, :])


EXACT_SLACK = 2.0**-20
"""Relative slack on m^2 in the exact rule (see `_Rule`): ~8 float32 ulps."""

EXACT_ANY_BLOCK_ELEMENTS = 1 << 20
"""Elements (points x cells x rays) evaluated per step by `_exact_any`: bounds its memory (~4 MB per
float32 tensor) whatever the number of cells."""


def _exact_any(
    first_x: Tensor, first_y: Tensor, span_x: Tensor, span_y: Tensor, centres: Float[Tensor, "K 2"], margin_squared: float
) -> Bool[Tensor, "K R"]:
    """Exact membership for any centroids: the breakpoints are among the ends and the crossings of
    the bisectors of all K (K - 1) / 2 pairs of centroids (a superset of the Voronoi borders), so the
    cost is O(K^3) per ray; `_exact_grid` does grids in O(K (n0 + n1))."""
    num_cells, rays = centres.shape[0], first_x.shape[0]
    first, span = torch.stack([first_x, first_y]), torch.stack([span_x, span_y])  # (2, R)
    pairs = torch.triu_indices(num_cells, num_cells, offset=1, device=centres.device)
    normal = centres[pairs[1]] - centres[pairs[0]]  # (Q, 2)
    middle = 0.5 * (centres[pairs[1]] + centres[pairs[0]])
    # Bisector of (j, l): (p - middle) . normal = 0  ->  s = (middle - a) . normal / (d . normal).
    numerator = (middle * normal).sum(dim=-1, keepdim=True) - normal @ first  # (Q, R)
    s = torch.cat([torch.zeros_like(first[:1]), torch.ones_like(first[:1]), numerator / (normal @ span)])
    s = s.nan_to_num_(0.0).clamp_(0.0, 1.0)  # (P, R)
    result = torch.empty(num_cells, rays, dtype=torch.bool, device=first.device)
    block = max(1, EXACT_ANY_BLOCK_ELEMENTS // (s.shape[0] * num_cells))
    for b in range(0, rays, block):
        sb = s[:, b : b + block]
        px = torch.addcmul(first[0, b : b + block], sb, span[0, b : b + block])  # (P, r)
        py = torch.addcmul(first[1, b : b + block], sb, span[1, b : b + block])
        dist2 = (px[:, None, :] - centres[None, :, 0, None]).square_()  # (P, K, r)
        dist2.add_((py[:, None, :] - centres[None, :, 1, None]).square_())
        threshold = dist2.amin(dim=1, keepdim=True).mul_(margin_squared)
        result[:, b : b + block] = dist2.sub_(threshold).amin(dim=0) <= 0
    return result


# ---------------------------------------------------------------------------------------------
# Sampled membership (``membership="sampled"``).


def _segment_membership(
    first: Float[Tensor, "R 2"],
    span: Float[Tensor, "R 2"],
    centres: Float[Tensor, "K 2"],
    margin_squared: float,
    samples: int,
) -> Bool[Tensor, "R K"]:
    """Membership of ground-plane segments ``first + s * span`` sampled at ``s = i / (samples - 1)``.

    Sampling every cell at every sample costs R*S*K, but most segments are near few cells. So
    bounds decide most segments without sampling and leave a short list of candidate cells for
    the others (`_bounds`; exact: the result is the one of sampling all cells); the undecided
    segments, grouped by their number of candidates c, are sampled over those c cells only.
    (Cutting long segments into pieces and bounding each piece was tried: not faster here.)
    """
    offset_x = first[:, 0:1] - centres[:, 0]  # (R, K)
    offset_y = first[:, 1:2] - centres[:, 1]
    candidates, sure = _bounds(offset_x, offset_y, span[:, None, :], margin_squared)
    undecided = (candidates & ~sure).any(dim=-1)
    member = sure & ~undecided[:, None]
    counts = torch.where(undecided, candidates.sum(dim=-1), 0)
    steps = torch.linspace(0.0, 1.0, samples, device=first.device, dtype=first.dtype)
    for count in counts.unique().tolist():
        if count < 2:  # 0: decided; an undecided segment has >= 2 candidates (its nearest cell is sure)
            continue
        rows = (counts == count).nonzero().squeeze(-1)
        cells = candidates[rows].nonzero()[:, 1].reshape(-1, count)  # (r, c): each row's candidates, in order
        rel_x, rel_y = offset_x[rows[:, None], cells], offset_y[rows[:, None], cells]
        along = span[rows]
        block = max(1, SAMPLE_BLOCK_ELEMENTS // (count * samples))
        qualifies = torch.cat(
            [
                _sampled_qualifies(
                    rel_x[b : b + block], rel_y[b : b + block], along[b : b + block], margin_squared, steps
                )
                for b in range(0, rows.shape[0], block)
            ]
        )
        found = torch.zeros(rows.shape[0], centres.shape[0], dtype=torch.bool, device=first.device)
        member[rows] = found.scatter_(1, cells, qualifies)
    return member


def _bounds(
    offset_x: Float[Tensor, "*batch K"],
    offset_y: Float[Tensor, "*batch K"],
    span: Float[Tensor, "*batch 1 2"],
    margin_squared: float,
) -> Tuple[Bool[Tensor, "*batch K"], Bool[Tensor, "*batch K"]]:
    """Cells that may qualify somewhere on each segment (candidates) and that surely do (sure).

    A segment starts at ``offset`` from each of its K cells' centres and moves by ``span``.
    - along the segment, min_j d_j(s)^2 <= min_j max(d_j(0)^2, d_j(1)^2) =: D, because each
      squared distance is a convex quadratic in s, largest at an end;
    - so cell k can only qualify at some s if min_s d_k(s)^2 <= m^2 D: the candidates;
    - the nearest cell at any sample qualifies there (m >= 1), hence is a candidate: the minimum
      over candidates equals the minimum over all K cells, so only candidates need sampling;
    - the ends are samples: cells within the margin at an end qualify for sure.
    """
    tiny = torch.finfo(offset_x.dtype).tiny
    span_x, span_y = span[..., 0], span[..., 1]
    at_start = offset_x * offset_x + offset_y * offset_y
    end_x, end_y = offset_x + span_x, offset_y + span_y
    at_end = end_x * end_x + end_y * end_y
    curvature = span_x * span_x + span_y * span_y  # d_k(s)^2 = at_start + slope s + curvature s^2
    slope = 2.0 * (offset_x * span_x + offset_y * span_y)
    bound = margin_squared * torch.maximum(at_start, at_end).amin(dim=-1, keepdim=True)
    s_min = (-slope / (2.0 * curvature).clamp_min(tiny)).clamp(0.0, 1.0)
    lowest = at_start + s_min * (slope + s_min * curvature)
    # Relative slack: the bound only has to be necessary; a float rounding must not drop a candidate.
    candidates = lowest <= bound * (1.0 + 1e-4) + tiny
    sure = (at_start <= margin_squared * at_start.amin(dim=-1, keepdim=True)) | (
        at_end <= margin_squared * at_end.amin(dim=-1, keepdim=True)
    )
    return candidates | sure, sure


SAMPLE_BLOCK_ELEMENTS = 1 << 18
"""Elements (segments x candidates x samples) sampled per step. The work is a few
elementwise passes, limited by memory traffic: blocks of about 1 MB of float32 stay in the CPU's
L2 cache, which was faster here than whole-chunk tensors; on a GPU it only adds a few launches."""


def _sampled_qualifies(
    rel_x: Float[Tensor, "r c"],
    rel_y: Float[Tensor, "r c"],
    along: Float[Tensor, "r 2"],
    margin_squared: float,
    steps: Float[Tensor, "S"],
) -> Bool[Tensor, "r c"]:
    """Whether candidate c of segment r is within the margin at one of the samples at least.

    ``rel`` is the segment's first point minus the candidate's centre, ``along`` the segment's span.
    """
    # Layout (r, c, S), samples innermost so every pass is contiguous.
    dist2 = rel_x[:, :, None] + along[:, None, 0:1] * steps
    dist2.mul_(dist2)
    other = rel_y[:, :, None] + along[:, None, 1:2] * steps
    dist2.addcmul_(other, other)
    threshold = dist2.amin(dim=1, keepdim=True).mul_(margin_squared)
    # Within the margin at some sample <=> min over samples of (d^2 - m^2 nearest^2) <= 0; a float
    # reduction is cheaper here than a bool comparison followed by any().
    return dist2.sub_(threshold).amin(dim=2) <= 0


# ---------------------------------------------------------------------------------------------
# Images


class _ImageRays:
    """Rays through the pixel centres of a batch of cameras, image by image, on one device.

    The cameras' parameters are read once (one transfer), not per image: indexing a nerfstudio
    `Cameras` per image and reading its scalars cost more than the rays themselves here.
    Undistorted pinhole cameras take a direct path (the same math as nerfstudio's
    `Cameras.generate_rays`: pixel centres at +0.5, OpenGL camera axes; the tests compare the two);
    other camera models and distortion go through `Cameras.generate_rays`.
    """

    def __init__(self, cameras: Cameras, device: torch.device) -> None:
        if cameras.ndim != 1:
            raise ValueError(f"expected a 1-D batch of cameras, got shape {tuple(cameras.shape)}")
        self.cameras = cameras
        self.device = device
        self.c2w = cameras.camera_to_worlds.to(device)
        self.c2w_list = cameras.camera_to_worlds.to("cpu", torch.float64).tolist()
        params = torch.stack(
            [getattr(cameras, name).reshape(-1).to("cpu", torch.float64) for name in ("fx", "fy", "cx", "cy")], dim=-1
        )
        self.params = params.tolist()
        self.sizes = torch.stack([cameras.height.reshape(-1), cameras.width.reshape(-1)], dim=-1).cpu().tolist()
        pinhole = cameras.camera_type.reshape(-1).cpu() == CameraType.PERSPECTIVE.value
        if cameras.distortion_params is not None:
            pinhole &= ~cameras.distortion_params.reshape(len(cameras), -1).cpu().any(dim=-1)
        self.pinhole = pinhole.tolist()

    def __len__(self) -> int:
        return len(self.sizes)

    def size(self, index: int) -> Tuple[int, int]:
        height, width = self.sizes[index]
        return int(height), int(width)

    def same_rays(self, a: int, b: int) -> bool:
        """Whether images ``a`` and ``b`` have the same size, intrinsics and model (their rays differ
        only by the pose: they can be computed together)."""
        return self.sizes[a] == self.sizes[b] and self.params[a] == self.params[b] and self.pinhole[a] == self.pinhole[b]

    def pinhole_rows(
        self, indices: Sequence[int], rows: Tuple[int, int], ws=_fresh
    ) -> Tuple[Tuple[Scalar, Scalar, Scalar], Tuple[Tensor, Tensor, Tensor], Tensor]:
        """Rows ``[rows[0], rows[1])`` of pinhole images of the same size and intrinsics: the origins
        (floats for one image, else (B, 1) tensors), the direction components (each (B, rows * W),
        row-major pixels, *not* unit length) and their inverse lengths ((rows * W,), the same for all).

        The direction of pixel (x, y) in the camera is (x, y, -1) (OpenGL axes), in the world
        R (x, y, -1) = R[:, 0] x + (R[:, 1] y - R[:, 2]): per component an outer sum of a function of
        the column and one of the row, one pass over the pixels. A rotation keeps lengths, so the
        inverse length is 1 / sqrt(x^2 + y^2 + 1) without a norm over the world components.
        """
        first = indices[0]
        height, width = self.size(first)
        dtype = self.c2w.dtype
        fx, fy, cx, cy = self.params[first]
        x = (torch.arange(width, device=self.device, dtype=dtype) + 0.5 - cx) / fx
        y = -(torch.arange(rows[0], rows[1], device=self.device, dtype=dtype) + 0.5 - cy) / fy
        shape = (len(indices), rows[1] - rows[0], width)
        if len(indices) == 1:
            (r00, r01, r02, ox), (r10, r11, r12, oy), (r20, r21, r22, oz) = self.c2w_list[first]
            origin: Tuple[Scalar, Scalar, Scalar] = (ox, oy, oz)
            rotation = ((r00, r01, r02), (r10, r11, r12), (r20, r21, r22))
        else:
            c2w = self.c2w[list(indices)]  # (B, 3, 4)
            origin = (c2w[:, 0, 3:4], c2w[:, 1, 3:4], c2w[:, 2, 3:4])
            rotation = tuple(tuple(c2w[:, row, column, None, None] for column in range(3)) for row in range(3))
        components = []
        for name, (a, b, c) in zip(("vx", "vy", "vz"), rotation):
            component = ws(name, shape, dtype, self.device)
            torch.add(a * x[None, None, :], b * y[None, :, None] - c, out=component)
            components.append(component.view(len(indices), -1))
        inverse_length = torch.add(
            x.square()[None, :], (y.square() + 1.0)[:, None], out=ws("inverse_length", shape[1:], dtype, self.device)
        )
        return origin, tuple(components), inverse_length.rsqrt_().view(-1)

    def planes(self, index: int) -> Tuple[Float[Tensor, "3 1"], Float[Tensor, "3 HW"]]:
        """Origin (3, 1) and unit directions (3, H * W, row-major pixels) of image ``index``."""
        height, width = self.size(index)
        if not self.pinhole[index]:
            origins, directions = self._nerfstudio(index)
            return origins.reshape(-1, 3).T, directions.reshape(-1, 3).T
        origin, components, inverse_length = self.pinhole_rows([index], (0, height))
        directions = torch.stack(components).reshape(3, -1) * inverse_length
        return torch.tensor(origin, dtype=directions.dtype, device=self.device)[:, None], directions

    def image(self, index: int) -> Tuple[Float[Tensor, "H W 3"], Float[Tensor, "H W 3"]]:
        """World-frame origins and unit directions, (H, W, 3) each."""
        height, width = self.size(index)
        if not self.pinhole[index]:
            return self._nerfstudio(index)
        origin, directions = self.planes(index)
        return origin.T.expand(height * width, 3).reshape(height, width, 3), directions.T.reshape(height, width, 3)

    def _nerfstudio(self, index: int) -> Tuple[Tensor, Tensor]:
        with warnings.catch_warnings():
            # nerfstudio 1.1.5 indexes with a list inside generate_rays; torch warns about it on every call,
            # the result is right (the partition tests compare it with pinhole math).
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
            bundle = self.cameras[index : index + 1].to(self.device).generate_rays(camera_indices=0)
        return bundle.origins, bundle.directions


def image_rays(cameras: Cameras, index: int) -> Tuple[Float[Tensor, "H W 3"], Float[Tensor, "H W 3"]]:
    """World-frame origins and unit directions through the centres of every pixel of image ``index``
    (on the cameras' device; see `_ImageRays`)."""
    return _ImageRays(cameras[index : index + 1], cameras.device).image(0)


class ImageCellMembership:
    """Cell membership of every pixel of every image of a batch of cameras, image by image: what the
    shard writer calls once per image (async_nerf_ns/shards/sets.py).

    Runs on ``device`` (default: CUDA when present, else the cameras' device; `membership_device`),
    about ``config.chunk_rays`` rays (whole image rows) at a time, in reused scratch memory; returns
    cells x pixels on that device. One caller at a time (the scratch memory is shared).
    """

    def __init__(
        self,
        cameras: Cameras,
        geometry: PartitionGeometry,
        config: PartitionConfig,
        near: float = 0.0,
        device: DeviceLike = None,
    ) -> None:
        self.device = membership_device(device, cameras)
        self.rays = _ImageRays(cameras, self.device)
        self.rule = _Rule(
            geometry.centroids, config.boundary_margin, config.samples_per_ray, config.membership, self.device,
            self.rays.c2w.dtype, workspace=True,
        )
        self.z_range = geometry.z_range
        self.far = float(geometry.max_ray_length)
        self.near = float(near)
        self.chunk_rays = config.chunk_rays
        self.num_cells = geometry.num_cells

    def __len__(self) -> int:
        return len(self.rays)

    def __call__(self, index: int) -> Bool[Tensor, "num_cells HW"]:
        """Membership of image ``index``: (cells, H * W), pixels row-major, on ``self.device``."""
        return self.images([index])[0]

    def next_batch(self, index: int) -> List[int]:
        """Image ``index`` and the next ones computed together with it (`images`): same size and
        intrinsics, at most ``chunk_rays`` rays in all (at least the one image)."""
        height, width = self.rays.size(index)
        most = max(1, self.chunk_rays // (height * width)) if self.rays.pinhole[index] else 1
        batch = [index]
        while len(batch) < most and batch[-1] + 1 < len(self) and self.rays.same_rays(index, batch[-1] + 1):
            batch.append(batch[-1] + 1)
        return batch

    def images(self, indices: Sequence[int]) -> Bool[Tensor, "B num_cells HW"]:
        """Membership of images of the same size and intrinsics (`next_batch`), computed together:
        fewer, larger tensor operations than one image at a time (a fixed cost per operation, and
        on the CPU the Python thread holds the GIL between them)."""
        first = indices[0]
        assert all(self.rays.same_rays(first, i) for i in indices), "images() needs images of the same intrinsics"
        height, width = self.rays.size(first)
        pixels = height * width
        result = torch.empty(self.num_cells, len(indices) * pixels, dtype=torch.bool, device=self.device)
        if not self.rays.pinhole[first]:
            for b, index in enumerate(indices):
                origins, directions = self.rays.planes(index)
                for begin in range(0, pixels, self.chunk_rays):
                    o = origins[:, begin : begin + self.chunk_rays].contiguous()
                    d = directions[:, begin : begin + self.chunk_rays].contiguous()
                    out = result[:, b * pixels + begin : b * pixels + begin + d.shape[1]]
                    self.rule(tuple(o), tuple(d), self.z_range, self.near, self.far, out=out)
        else:
            rows_per_chunk = max(1, self.chunk_rays // (width * len(indices)))
            ws = self.rule.ws
            for row in range(0, height, rows_per_chunk):
                rows = (row, min(height, row + rows_per_chunk))
                origin, components, inverse_length = self.rays.pinhole_rows(indices, rows, ws)
                # Directions are not unit length: ray distances are t / inverse_length, so the limits in
                # world units become per-ray limits on t.
                shape, dtype = inverse_length.shape, inverse_length.dtype
                near = 0.0 if self.near == 0 else torch.mul(inverse_length, self.near, out=ws("near", shape, dtype))
                far = math.inf if math.isinf(self.far) else torch.mul(inverse_length, self.far, out=ws("far", shape, dtype))
                out = result.view(self.num_cells, len(indices), pixels)[:, :, rows[0] * width : rows[1] * width]
                self.rule(origin, components, self.z_range, near, far, out=out)
        return result.view(self.num_cells, len(indices), pixels).transpose(0, 1).contiguous()


def image_cell_mask(
    cameras: Cameras,
    index: int,
    geometry: PartitionGeometry,
    config: PartitionConfig,
    near: float = 0.0,
    device: DeviceLike = None,
) -> Bool[Tensor, "H W num_cells"]:
    """Cell membership of every pixel of image ``index`` (the rule of `ray_cell_membership`), on the
    membership device (`membership_device`). For many images, `ImageCellMembership` reads the cameras once."""
    cells = ImageCellMembership(cameras[index : index + 1], geometry, config, near, device)
    height, width = cells.rays.size(0)
    return cells(0).T.reshape(height, width, -1)


def compute_cluster_masks(
    cameras: Cameras,
    geometry: PartitionGeometry,
    config: PartitionConfig,
    near: float = 0.0,
    show_progress: bool = True,
    description: str = "cluster masks",
    device: DeviceLike = None,
) -> List[Bool[Tensor, "H W num_cells"]]:
    """Per-image, per-pixel cell membership for a 1-D batch of cameras (sizes may differ).

    Rays through the pixel centres (the cameras' model and distortion); membership by ``config``'s
    rule, margin and chunk. Work runs on ``device`` (`membership_device`: CUDA when present, else the
    cameras' device); the masks are returned on the CPU.
    """
    cells = ImageCellMembership(cameras, geometry, config, near, device)
    masks: List[Tensor] = []
    started = time.perf_counter()
    columns = (
        TextColumn(f"[bold blue]{description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not show_progress) as progress:
        task = progress.add_task(description, total=len(cameras))
        for index in range(len(cameras)):
            height, width = cells.rays.size(index)
            masks.append(cells(index).T.reshape(height, width, -1).cpu())
            progress.advance(task)
    if show_progress and masks:
        seconds = time.perf_counter() - started
        megapixels = sum(mask.shape[0] * mask.shape[1] for mask in masks) / 1e6
        CONSOLE.print(
            f"{description}: {len(masks)} images, {megapixels:.2f} MP in {seconds:.1f} s "
            f"({seconds / megapixels:.2f} s per megapixel)"
        )
    return masks
