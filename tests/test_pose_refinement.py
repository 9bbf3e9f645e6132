"""Stage 3 on a synthetic field: depth-frame pose corrections recover a known pose perturbation.

The "field" is an analytic corner (floor z=0, walls x=2 and y=2) whose ray termination is exact
and differentiable in the ray origin and direction, so the test isolates our pose-refinement
machinery: RigPoseOptimizer's SO3xR3 corrections applied to depth rays + the depth loss.
"""

from __future__ import annotations

import copy

import torch
from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from scipy.spatial.transform import Rotation

from async_nerf_ns.model.depth_loss import depth_loss
from async_nerf_ns.model.pose_refinement import RigPoseOptimizer
from async_nerf_ns.trajectory.metrics import pose_errors

PLANES = [((0.0, 0.0, 1.0), 0.0), ((1.0, 0.0, 0.0), 2.0), ((0.0, 1.0, 0.0), 2.0)]


def corner_depth(origins: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Distance along each ray to the first of the three planes in front of it."""
    hits = []
    for normal, offset in PLANES:
        n = torch.tensor(normal)
        t = (offset - origins @ n) / (directions @ n)
        hits.append(torch.where(t > 1e-6, t, torch.full_like(t, float("inf"))))
    return torch.stack(hits, dim=-1).min(dim=-1).values[:, None]


def look_at(eye, target) -> torch.Tensor:
    eye, target = torch.tensor(eye), torch.tensor(target)
    back = torch.nn.functional.normalize(eye - target, dim=0)  # OpenGL: the camera looks along -z
    right = torch.nn.functional.normalize(torch.cross(torch.tensor([0.0, 0.0, 1.0]), back, dim=0), dim=0)
    up = torch.cross(back, right, dim=0)
    return torch.cat([torch.stack([right, up, back], dim=1), eye[:, None]], dim=1)


def rays(c2w: torch.Tensor):
    camera = Cameras(camera_to_worlds=c2w[None], fx=20.0, fy=20.0, cx=16.0, cy=12.0, width=32, height=24)
    bundle = camera.generate_rays(camera_indices=0).flatten()
    return bundle.origins, bundle.directions


def refine(rig: RigPoseOptimizer, parameters, lr: float, origins, directions, frame_of_ray, measured, steps: int = 300):
    """Stage 3 in miniature: depth rays through the rig's corrections, l1 depth loss, Adam on `parameters`."""
    optimizer = torch.optim.Adam(parameters, lr=lr)
    for _ in range(steps):
        bundle = RayBundle(
            origins=origins.clone(),
            directions=directions.clone(),
            pixel_area=torch.ones(len(origins), 1),
            camera_indices=torch.zeros(len(origins), 1, dtype=torch.long),
        )
        rig.apply_to_raybundle(bundle, frame_of_ray, stage3=True)  # every ray a depth ray
        loss = depth_loss(corner_depth(bundle.origins, bundle.directions), measured, "l1")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_depth_pose_refinement_removes_a_3_degree_10_cm_error_to_a_millimetre():
    torch.manual_seed(0)
    gt = look_at([0.2, 0.1, 1.5], [2.0, 2.0, 0.3])
    origins, directions = rays(gt)
    measured = corner_depth(origins, directions)
    assert torch.isfinite(measured).all()

    # Perturb: 3 degrees about a tilted axis and 10 cm (scene units = metres here) sideways.
    rotation = torch.tensor(Rotation.from_rotvec(torch.deg2rad(torch.tensor(3.0)) * torch.tensor([0.6, 0.0, 0.8])).as_matrix(), dtype=torch.float32)
    perturbed = torch.cat([rotation @ gt[:, :3], gt[:, 3:] + torch.tensor([[0.06], [-0.08], [0.0]])], dim=1)
    before = pose_errors(perturbed[None], gt[None], 1.0)

    rig = RigPoseOptimizer(CameraOptimizerConfig(mode="off"), CameraOptimizerConfig(mode="SO3xR3"), num_rgb=1, num_depth=1)
    p_origins, p_directions = rays(perturbed)
    frame_of_ray = torch.zeros(len(p_origins), dtype=torch.long)
    refine(rig, rig.depth.parameters(), 3e-3, p_origins, p_directions, frame_of_ray, measured)

    with torch.no_grad():
        refined = rig.corrected_depth_poses(perturbed[None])
    after = pose_errors(refined, gt[None], 1.0)
    # Measured: 0.100 m / 3.00 deg before; after 300 steps 1.01 mm / 0.046 deg (the same with 1 and 2
    # threads and on reruns: nothing here is random). Bounds 3x the measurement: 3 mm and 0.15 deg, a
    # 33x and 20x reduction that a refinement which only halves the error fails.
    assert before["translation_m"]["mean"] > 0.099 and before["rotation_deg"]["mean"] > 2.99
    assert after["translation_m"]["mean"] < 3e-3
    assert after["rotation_deg"]["mean"] < 0.15


def _trajectory(times: torch.Tensor) -> torch.Tensor:
    """A camera gliding past the corner while looking at it: poses (N,3,4) at times in seconds."""
    return torch.stack([look_at([0.2 + 0.05 * float(t), 0.1 + 0.03 * float(t), 1.5], [2.0, 2.0, 0.3]) for t in times])


def _depth_rays(c2w: torch.Tensor, frames: torch.Tensor):
    """Rays of several depth frames at poses c2w[frames], with their frame index per ray."""
    bundles = [rays(c2w[int(f)]) for f in frames]
    origins = torch.cat([o for o, _ in bundles])
    directions = torch.cat([d for _, d in bundles])
    frame_of_ray = torch.cat([torch.full((len(o),), int(f), dtype=torch.long) for f, (o, _) in zip(frames, bundles)])
    return origins, directions, frame_of_ray


def test_tpf_finetuning_through_the_depth_loss_moves_held_out_depth_frames_too():
    """A TPF fitted to RGB poses with a systematic error (8 cm, 2 deg) gives depth frames that error;
    fine-tuning the TPF through the depth loss on some depth frames fixes the frames between them,
    which per-frame corrections cannot reach."""
    from async_nerf_ns.trajectory.finetune import TPFRayCorrections
    from async_nerf_ns.trajectory.fit import fit_tpf
    from async_nerf_ns.trajectory.tpf import TimePoseFunctionConfig

    rgb_times = torch.linspace(0.0, 10.0, 41)
    offset = torch.tensor(Rotation.from_rotvec(torch.deg2rad(torch.tensor(2.0)) * torch.tensor([0.0, 0.6, 0.8])).as_matrix(), dtype=torch.float32)
    biased = _trajectory(rgb_times)
    biased = torch.cat([offset @ biased[:, :, :3], biased[:, :, 3:] + torch.tensor([[0.05], [-0.06], [0.02]])], dim=-1)
    tpf = fit_tpf(rgb_times.double().numpy(), biased, TimePoseFunctionConfig(iterations=0))

    depth_times = torch.arange(0.35, 10.0, 0.5)  # 20 frames, offset from the RGB times
    train, held_out = torch.arange(0, 20, 2), torch.arange(1, 20, 2)
    gt = _trajectory(depth_times)
    with torch.no_grad():
        stage1 = tpf.poses(depth_times.double().numpy())
    before = pose_errors(stage1[held_out], gt[held_out], 1.0)

    measured = corner_depth(*_depth_rays(gt, train)[:2])
    origins, directions, frame_of_ray = _depth_rays(stage1, train)
    corrections = TPFRayCorrections(depth_times.double().numpy())
    corrections.retarget(tpf, copy.deepcopy(tpf).requires_grad_(False))
    rig = RigPoseOptimizer(
        CameraOptimizerConfig(mode="off"), CameraOptimizerConfig(mode="off"), num_rgb=1, num_depth=20, trajectory=corrections
    )
    refine(rig, tpf.parameters(), 1e-3, origins, directions, frame_of_ray, measured)

    with torch.no_grad():
        # The rig's view of the trained frames equals the fine-tuned TPF's poses ...
        refined = rig.corrected_depth_poses(stage1)
        assert torch.allclose(refined, tpf.poses(depth_times.double().numpy()), atol=1e-5)
    trained_before, trained_after = pose_errors(stage1[train], gt[train], 1.0), pose_errors(refined[train], gt[train], 1.0)
    after = pose_errors(refined[held_out], gt[held_out], 1.0)
    # ... and the frames never supervised moved with them. Measured: trained and held-out frames 0.081 m /
    # 2.0 deg before; after 300 steps trained 0.27 mm / 0.026 deg, held-out 0.28 mm / 0.026 deg with one
    # thread (0.14 mm / 0.027 deg with two; no seed matters). Bounds 1 mm and 0.1 deg (>= 3.5x margin).
    assert trained_before["translation_m"]["mean"] > 0.08 and before["translation_m"]["mean"] > 0.08
    assert trained_after["translation_m"]["mean"] < 1e-3
    assert trained_after["rotation_deg"]["mean"] < 0.1
    assert after["translation_m"]["mean"] < 1e-3
    assert after["rotation_deg"]["mean"] < 0.1
