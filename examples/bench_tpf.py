"""Benchmark of the time-pose function against classical interpolation and an upstream-like TPF.

    python examples/bench_tpf.py [--frames 1001] [--quick]

A 100 s survey-like drone flight at 10 Hz (`synthetic.drone_flight`: ~190 m x 125 m orbit with
wiggles, 3-11 m/s, yaw following the heading plus a pan, 35-55 deg camera tilt, roll; 5 ms clock
jitter), in scene units of 100 m. Every 8th frame is held out (never the ends) and measured against
its true pose; the others are fitted, clean or with SfM-like noise (3 cm per axis, 0.3 deg per
axis). Prints a markdown table: translation error in metres, rotation error in degrees, fit time.

Rows:
- TPF: the default `TimePoseFunctionConfig` (cross-validated B-spline base + neural residual).
- TPF, base only: the same with `iterations=0` (no residual training).
- TPF, grid+MLP only: no spline base to speak of (one cell), the residual network does everything.
- upstream-like: Async-NeRF's choices, scaled down to run on a CPU: sinusoidal time encoding,
  MLP with BatchNorm + LeakyReLU (4 x 128 here; upstream 9 x 512 with a skip), output translation +
  quaternion, L2 loss on the 7 numbers, Adam lr 1e-3 with mini-batches of 256 (BatchNorm needs a
  batch), 2000 steps. Favourable to it: time and positions are normalised as ours are, the
  quaternions are sign-aligned frame to frame, 10 encoding frequencies instead of 5.
- linear + SLERP, cubic spline: `baselines.py`, fitted to the same frames.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from torch import nn

from async_nerf_ns.trajectory.timed_poses import split_every
from examples import trajectories as synthetic
from async_nerf_ns.trajectory.baselines import CubicSplineInterp, LinearSlerp
from async_nerf_ns.trajectory.fit import fit_tpf
from async_nerf_ns.trajectory.metrics import pose_errors
from async_nerf_ns.trajectory.tpf import TimePoseFunctionConfig

NOISE_M, NOISE_DEG = 0.03, 0.3

Predictor = Callable[[np.ndarray], np.ndarray]


class UpstreamLikeTPF(nn.Module):
    """Sinusoidal encoding -> [Linear, BatchNorm, LeakyReLU] x layers -> (t, quaternion xyzw)."""

    def __init__(self, frequencies: int = 10, layers: int = 4, width: int = 128):
        super().__init__()
        self.register_buffer("bands", 2.0 ** torch.arange(frequencies, dtype=torch.float32))
        blocks: List[nn.Module] = []
        in_dim = 1 + 2 * frequencies
        for _ in range(layers):
            blocks += [nn.Linear(in_dim, width), nn.BatchNorm1d(width), nn.LeakyReLU(0.01)]
            in_dim = width
        blocks.append(nn.Linear(width, 7))
        self.net = nn.Sequential(*blocks)

    def forward(self, time: torch.Tensor) -> torch.Tensor:
        angles = time[:, None] * self.bands
        return self.net(torch.cat([time[:, None], torch.sin(angles), torch.cos(angles)], dim=-1))



def quaternion_to_matrix(quaternion_xyzw):
    """Unit quaternion (x, y, z, w: scipy's order) to a rotation matrix; the input is normalised
    (the upstream-like baseline's output, which is not constrained to unit norm)."""
    import torch

    x, y, z, w = torch.nn.functional.normalize(quaternion_xyzw, dim=-1).unbind(-1)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def fit_upstream_like(times: np.ndarray, poses: np.ndarray, steps: int = 2000, seed: int = 0) -> Predictor:
    torch.manual_seed(seed)
    t0, span = times[0], times[-1] - times[0]
    centre = poses[:, :, 3].mean(0)
    scale = np.abs(poses[:, :, 3] - centre).max()
    quaternions = Rotation.from_matrix(poses[:, :, :3]).as_quat()
    flips = np.cumprod(np.where((quaternions[1:] * quaternions[:-1]).sum(-1) < 0, -1.0, 1.0))
    quaternions[1:] *= flips[:, None]  # sign-aligned: no jumps between q and -q
    inputs = torch.as_tensor((times - t0) / span, dtype=torch.float32)
    targets = torch.as_tensor(np.concatenate([(poses[:, :, 3] - centre) / scale, quaternions], -1), dtype=torch.float32)
    model = UpstreamLikeTPF()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, inputs.shape[0], (256,), generator=generator)
        loss = ((model(inputs[batch]) - targets[batch]) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()

    def predict(query: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = model(torch.as_tensor((query - t0) / span, dtype=torch.float32)).double()
        result = np.zeros((query.shape[0], 3, 4))
        result[:, :, :3] = quaternion_to_matrix(out[:, 3:]).numpy()
        result[:, :, 3] = out[:, :3].numpy() * scale + centre
        return result

    return predict


def tpf_predictor(config: TimePoseFunctionConfig) -> Callable[[np.ndarray, np.ndarray], Predictor]:
    def fit(times: np.ndarray, poses: np.ndarray) -> Predictor:
        fitted = fit_tpf(times, poses, config, progress=False)

        def predict(query: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return fitted.poses(query).double().numpy()

        return predict

    return fit


def methods(quick: bool) -> Dict[str, Callable[[np.ndarray, np.ndarray], Predictor]]:
    steps = 300 if quick else 2000
    return {
        "TPF (default)": tpf_predictor(TimePoseFunctionConfig()),
        "TPF, base only (no residual)": tpf_predictor(TimePoseFunctionConfig(iterations=0)),
        "TPF, grid+MLP only (no spline base)": tpf_predictor(
            TimePoseFunctionConfig(knot_spacings=(1e9,), frames_per_finest_cell=2.0, num_levels=6, iterations=steps)
        ),
        "upstream-like (BatchNorm MLP, quaternion L2)": lambda t, p: fit_upstream_like(t, p, steps=steps),
        "linear + SLERP": lambda t, p: LinearSlerp().fit(t, p),
        "cubic spline": lambda t, p: CubicSplineInterp().fit(t, p),
    }


def run(frames: int, quick: bool) -> List[Tuple[str, str, Dict[str, object], float]]:
    trajectory = synthetic.drone_benchmark(duration_s=(frames - 1) / 10.0)
    train, held_out = split_every(trajectory.timestamps.shape[0], 8)
    psf = trajectory.metres_per_unit
    rows = []
    for case in ("clean", "noisy"):
        poses = trajectory.c2w
        if case == "noisy":
            poses = synthetic.add_pose_noise(poses, NOISE_M / psf, np.radians(NOISE_DEG), seed=1)
        for name, fit in methods(quick).items():
            started = time.perf_counter()
            predict = fit(trajectory.timestamps[train], poses[train])
            seconds = time.perf_counter() - started
            errors = pose_errors(predict(trajectory.timestamps[held_out]), trajectory.c2w[held_out], psf)
            rows.append((case, name, errors, seconds))
            print(f"  {case:5s} {name}: {errors['translation_m']['mean']:.4g} m, {seconds:.1f} s", flush=True)
    return rows


def markdown(rows, frames: int, held_out: int) -> str:
    lines = [
        f"{frames} frames at 10 Hz, {held_out} held out; noisy = {NOISE_M * 100:.0f} cm / {NOISE_DEG} deg per axis",
        "",
        "| case | method | transl. mean (m) | median (m) | max (m) "
        "| rot. mean (deg) | median (deg) | max (deg) | fit (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case, name, errors, seconds in rows:
        t, r = errors["translation_m"], errors["rotation_deg"]
        lines.append(
            f"| {case} | {name} | {t['mean']:.3g} | {t['median']:.3g} | {t['max']:.3g} | "
            f"{r['mean']:.3g} | {r['median']:.3g} | {r['max']:.3g} | {seconds:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=1001, help="frames at 10 Hz (1001 = 100 s)")
    parser.add_argument("--quick", action="store_true", help="300 instead of 2000 steps for the pure networks")
    args = parser.parse_args()
    # Every method here is a small problem (one batch of ~1000 rows): one thread for all of them,
    # as `TimePoseFunctionConfig.cpu_threads` does for the TPF (threads mostly wait on each other).
    torch.set_num_threads(1)
    rows = run(args.frames, args.quick)
    held_out = split_every(args.frames, 8)[1].shape[0]
    print()
    print(markdown(rows, args.frames, held_out))


if __name__ == "__main__":
    main()
