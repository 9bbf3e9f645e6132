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
The segment is sampled at ``samples_per_ray`` evenly spaced points, both ends included; a ray
belongs to every cell that any of its points belongs to.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import List, Tuple

import torch
from jaxtyping import Bool, Float
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.utils.rich_utils import CONSOLE
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import Tensor

from async_nerf_ns.partition.config import PartitionConfig


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
    lo, hi = z_range
    oz, dz = origins[:, 2], directions[:, 2]
    inside = (oz >= lo) & (oz <= hi)
    parallel = dz == 0
    safe_dz = torch.where(parallel, torch.ones_like(dz), dz)
    t_lo, t_hi = (lo - oz) / safe_dz, (hi - oz) / safe_dz
    inf = torch.full_like(oz, math.inf)
    enter = torch.where(parallel, torch.where(inside, -inf, inf), torch.minimum(t_lo, t_hi))
    leave = torch.where(parallel, torch.where(inside, inf, -inf), torch.maximum(t_lo, t_hi))
    start = enter.clamp(min=near)
    end = leave.clamp(max=far)
    valid = end >= start
    return start, end, valid


def ray_cell_membership(
    origins: Float[Tensor, "num_rays 3"],
    directions: Float[Tensor, "num_rays 3"],
    centroids: Float[Tensor, "num_cells 3"],
    z_range: Tuple[float, float],
    boundary_margin: float,
    samples_per_ray: int,
    near: float = 0.0,
    far: float = math.inf,
    chunk_rays: int = 4096,
) -> Bool[Tensor, "num_rays num_cells"]:
    """Which cells each ray belongs to (see the module docstring for the rule).

    Args:
        origins, directions: rays in the world frame; directions need not be unit length
            (then ``near``/``far`` are in multiples of their length).
        centroids: cell centroids; only their world x, y are used.
        z_range: (lowest, highest) world z of the altitude band.
        boundary_margin: m >= 1, how far beyond its Voronoi border a cell reaches (ratio of distances).
        samples_per_ray: points per segment, both ends included (>= 2).
        near, far: ray distances outside of which nothing counts.
        chunk_rays: rays per step; memory is about ``chunk_rays * K * 100`` bytes, plus a few MB
            for the sampling (done in fixed blocks, see `SAMPLE_BLOCK_ELEMENTS`).

    Raises:
        ValueError: a ray runs inside the band forever (parallel to it with ``far`` infinite):
            pass a finite ``far``.
    """
    assert origins.shape == directions.shape and origins.shape[-1] == 3, (origins.shape, directions.shape)
    if boundary_margin < 1.0:
        raise ValueError(f"boundary_margin must be >= 1, got {boundary_margin}")
    if samples_per_ray < 2:
        raise ValueError(f"samples_per_ray must be >= 2, got {samples_per_ray}")
    dtype = origins.dtype if origins.dtype.is_floating_point else torch.float32
    centres = centroids[:, :2].to(origins.device, dtype)
    result = torch.zeros(origins.shape[0], centres.shape[0], dtype=torch.bool, device=origins.device)
    for begin in range(0, origins.shape[0], chunk_rays):
        o = origins[begin : begin + chunk_rays].to(dtype)
        d = directions[begin : begin + chunk_rays].to(dtype)
        start, end, valid = ray_band_segments(o, d, z_range, near, far)
        if torch.isinf(end[valid]).any():
            raise ValueError(
                "some rays run inside the altitude band without end (parallel to the ground); pass a finite far "
                "(PartitionConfig.max_ray_length)"
            )
        start = torch.where(valid, start, torch.zeros_like(start))
        end = torch.where(valid, end, torch.zeros_like(end))
        # The segment projected on the ground plane: p(s) = first + s * span, s in [0, 1].
        first = o[:, :2] + start[:, None] * d[:, :2]
        span = (end - start)[:, None] * d[:, :2]
        member = _segment_membership(first, span, centres, boundary_margin**2, samples_per_ray)
        result[begin : begin + chunk_rays] = member & valid[:, None]
    return result


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


def image_rays(cameras: Cameras, index: int) -> Tuple[Float[Tensor, "H W 3"], Float[Tensor, "H W 3"]]:
    """World-frame origins and unit directions through the centres of every pixel of image ``index``.

    Undistorted pinhole cameras take a direct path: nerfstudio's `Cameras.generate_rays` handles
    every camera model and distortion, and on the 2-core CPU we measured took 2-5 s per megapixel,
    more than the cell membership itself; the direct path is the same math (pixel centres at +0.5,
    OpenGL camera axes) without the generality, under 0.1 s per megapixel, and the tests check it
    against nerfstudio. Other cameras go through `Cameras.generate_rays`.
    """
    camera = cameras[index : index + 1]
    distortion = camera.distortion_params
    if int(camera.camera_type.reshape(-1)[0]) == CameraType.PERSPECTIVE.value and (
        distortion is None or not distortion.any()
    ):
        height, width = int(camera.height.reshape(-1)[0]), int(camera.width.reshape(-1)[0])
        fx, fy, cx, cy = (float(getattr(camera, name).reshape(-1)[0]) for name in ("fx", "fy", "cx", "cy"))
        c2w = camera.camera_to_worlds.reshape(3, 4)
        rows = (torch.arange(height, device=c2w.device, dtype=c2w.dtype) + 0.5 - cy) / fy
        columns = (torch.arange(width, device=c2w.device, dtype=c2w.dtype) + 0.5 - cx) / fx
        x = columns.expand(height, width)
        y = -rows[:, None].expand(height, width)
        camera_dirs = torch.stack([x, y, -torch.ones_like(x)], dim=-1)
        directions = torch.nn.functional.normalize(camera_dirs @ c2w[:, :3].T, dim=-1)
        return c2w[:, 3].expand(height, width, 3), directions
    with warnings.catch_warnings():
        # nerfstudio 1.1.5 indexes with a list inside generate_rays; torch warns about it on every call,
        # the result is right (the partition tests compare it with pinhole math).
        warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
        bundle = camera.generate_rays(camera_indices=0)
    return bundle.origins, bundle.directions


def image_cell_mask(
    cameras: Cameras,
    index: int,
    centroids: Float[Tensor, "num_cells 3"],
    config: PartitionConfig,
    z_range: Tuple[float, float],
    max_ray_length: float = math.inf,
    near: float = 0.0,
) -> Bool[Tensor, "H W num_cells"]:
    """Cell membership of every pixel of image ``index`` (the rule of `ray_cell_membership`)."""
    origins, directions = image_rays(cameras, index)
    height, width = origins.shape[:2]
    membership = ray_cell_membership(
        origins.reshape(-1, 3),
        directions.reshape(-1, 3),
        centroids,
        z_range,
        config.boundary_margin,
        config.samples_per_ray,
        near=near,
        far=max_ray_length,
        chunk_rays=config.chunk_rays,
    )
    return membership.reshape(height, width, -1)


def compute_cluster_masks(
    cameras: Cameras,
    centroids: Float[Tensor, "num_cells 3"],
    config: PartitionConfig,
    z_range: Tuple[float, float],
    max_ray_length: float = math.inf,
    near: float = 0.0,
    show_progress: bool = True,
    description: str = "cluster masks",
) -> List[Bool[Tensor, "H W num_cells"]]:
    """Per-image, per-pixel cell membership for a 1-D batch of cameras (sizes may differ).

    Rays come from nerfstudio's `Cameras.generate_rays` (pixel centres, the cameras' model and
    distortion); membership is `ray_cell_membership` with ``config``'s margin, samples and chunk.
    Work runs on ``cameras.device``; the masks are returned on the CPU.
    """
    if cameras.ndim != 1:
        raise ValueError(f"expected a 1-D batch of cameras, got shape {tuple(cameras.shape)}")
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
            masks.append(image_cell_mask(cameras, index, centroids, config, z_range, max_ray_length, near).cpu())
            progress.advance(task)
    if show_progress and masks:
        seconds = time.perf_counter() - started
        megapixels = sum(mask.shape[0] * mask.shape[1] for mask in masks) / 1e6
        CONSOLE.print(
            f"{description}: {len(masks)} images, {megapixels:.2f} MP in {seconds:.1f} s "
            f"({seconds / megapixels:.2f} s per megapixel)"
        )
    return masks
