"""The time-pose function (Async-NeRF step 1): time -> camera pose, fitted to timed RGB poses.

`TimePoseFunction` maps normalised time in [0, 1] to (rotation, translation) in normalised
position units; `FittedTPF` wraps it with the normalisation of a particular trajectory (float64
time origin and span, position centre and scale) and answers `.poses(timestamps)` in the frame
and units of the poses it was fitted to. `fit.py` fits it.

The function is a smooth cubic B-spline base plus a neural residual (a multi-resolution 1-D time
grid and an MLP). Why not a network alone, as upstream: a network trained by Adam in float32 gets
to ~1e-3 of the trajectory's extent (0.3 m on a 200 m flight in examples/bench_tpf.py), while an
interpolating cubic spline is exact to 1e-6; and on noisy poses the spacing of the spline's knots,
picked by cross-validation, is what decides how much noise is averaged away. The residual is
trained on the pose and velocity losses and kept only as far as it improves held-out frames; its
parameters, and the base's control points, are all differentiable, for fine-tuning through a depth
loss later.

Differences from upstream Async-NeRF's network (a positional-encoding MLP with BatchNorm, trained
with an L1/L2 loss on translation + raw quaternion components), measured in examples/bench_tpf.py:
- the B-spline base and the cross-validated knot spacing (above);
- time is encoded by a 1-D feature grid whose finest cell spans a few frames, so the capacity
  follows the frame rate instead of a fixed set of frequencies;
- no BatchNorm: a pose must depend on its own timestamp only, not on the other timestamps in the
  batch (with BatchNorm, train-mode and eval-mode outputs differ, and a single query is undefined);
- rotations are always proper (6-D Gram-Schmidt base, exponential-map residual), free of the
  double cover and unit-norm constraint of quaternions, and the losses are on SO(3) (geodesic or
  chordal), not on quaternion components.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Tuple, Type

import numpy as np
import torch
from jaxtyping import Float
from nerfstudio.configs.base_config import InstantiateConfig
from nerfstudio.field_components.mlp import MLP
from torch import Tensor, nn

from async_nerf_ns.trajectory.rotations import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    rotation_6d_to_matrix,
)
from async_nerf_ns.trajectory.time_grid import TimeGridEncoding, level_resolutions


@dataclass
class TimePoseFunctionConfig(InstantiateConfig):
    """Architecture and fitting schedule of the time-pose function.

    `config.setup(num_frames=..., translation_cells=..., rotation_cells=...)` builds an unfitted
    `FittedTPF` to load a state dict into (or use `FittedTPF.from_state_dict`).
    """

    _target: Type = field(default_factory=lambda: FittedTPF)
    knot_spacings: Tuple[float, ...] = (1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)
    """Candidate spacings, in training frames per knot, of the smooth B-spline base; the one with the
    lowest cross-validation error is used, separately for translation and rotation."""
    cross_validation_folds: int = 5
    """Folds of the cross-validation that picks the knot spacing (frame i is in fold i % folds)."""
    num_levels: int = 4
    """Number of levels of the residual network's 1-D time grid."""
    min_resolution: int = 8
    """Cells of the coarsest level of the residual grid over the whole time span."""
    frames_per_finest_cell: float = 8.0
    """Training frames per cell of the finest residual grid level (its resolution is frames / this).
    Smaller lets the residual follow faster motion, and more of the pose noise."""
    features_per_level: int = 4
    """Features per residual grid level."""
    interpolation: Literal["linear", "cubic"] = "cubic"
    """Residual grid interpolation: 'cubic' (uniform cubic B-spline, C2-continuous) or 'linear'."""
    hidden_width: int = 64
    """Width of the residual MLP's hidden layers."""
    hidden_layers: int = 2
    """Number of hidden layers of the residual MLP."""
    iterations: int = 1000
    """Full-batch Adam steps on the residual network (0: the B-spline base alone)."""
    validation_interval: int = 25
    """Steps between evaluations of the residual on the held-out frames (it is kept at the best)."""
    patience: int = 8
    """Stop after this many evaluations without improvement on the held-out frames."""
    learning_rate: float = 1e-2
    """Initial Adam learning rate."""
    final_learning_rate: float = 1e-4
    """Learning rate at the last step (exponential decay from the initial one)."""
    translation_weight: float = 1.0
    """Weight of the squared translation error, in units of the normalised positions (the
    trajectory's positions are centred and scaled to fit in [-1, 1] before fitting)."""
    rotation_weight: float = 1.0
    """Weight of the rotation loss (squared geodesic angle in rad^2, or squared chordal distance / 2
    which matches it for small angles)."""
    velocity_weight: float = 0.1
    """Weight of the velocity loss: squared difference between the network's and the data's motion
    between consecutive training frames (translation in normalised units, rotation in rad)."""
    rotation_loss: Literal["geodesic", "chordal"] = "geodesic"
    """Rotation loss on SO(3): 'geodesic' (squared angle) or 'chordal' (squared Frobenius / 2)."""
    seed: int = 0
    """Random seed of the network initialisation."""
    cpu_threads: int = 1
    """Torch CPU threads while fitting (restored afterwards). The problem is small (one batch of
    about 1000 x 64), so threads mostly wait on each other: on a busy 2-core machine one thread
    fitted 7x faster than two."""

    def residual_resolutions(self, num_frames: int) -> List[int]:
        """Cells per residual grid level for a trajectory of `num_frames` training frames."""
        finest = max(self.min_resolution, int(round(num_frames / self.frames_per_finest_cell)))
        return level_resolutions(self.num_levels, self.min_resolution, finest)


class TimePoseFunction(nn.Module):
    """Normalised time (N,) in [0, 1] -> proper rotations (N, 3, 3) and translations (N, 3).

    pose(t) = smooth B-spline base(t) composed with a neural residual(t):
    translation = spline_t(t) + translation_scale * mlp(grid(t))[:3] and
    rotation = GramSchmidt(spline_6d(t)) @ exp(rotation_scale * mlp(grid(t))[3:]).
    The base's control points are fitted in closed form (`spline_fit.py`) and are parameters too,
    so the whole function can be fine-tuned later; the residual starts at exactly zero (zeroed last
    layer) and its outputs are scaled by the base's training residual, so it works on O(1) numbers
    even when the base is already accurate to a millimetre.
    """

    def __init__(self, config: TimePoseFunctionConfig, num_frames: int, translation_cells: int, rotation_cells: int):
        super().__init__()
        self.config = config
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(config.seed)
        self.translation_spline = TimeGridEncoding([translation_cells], 3, interpolation="cubic", init_scale=0.0)
        self.rotation_spline = TimeGridEncoding([rotation_cells], 6, interpolation="cubic", init_scale=0.0)
        self.encoding = TimeGridEncoding(
            config.residual_resolutions(num_frames), config.features_per_level, interpolation=config.interpolation
        )
        # nerfstudio's MLP (torch implementation): no normalisation layers, so each time is decoded
        # independently of the others in the batch. SiLU rather than ReLU keeps poses smooth in time.
        self.mlp = MLP(
            in_dim=self.encoding.out_dim + 1,
            num_layers=config.hidden_layers + 1,
            layer_width=config.hidden_width,
            out_dim=6,
            activation=nn.SiLU(),
            implementation="torch",
        )
        torch.random.set_rng_state(generator_state)
        last = self.mlp.layers[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.register_buffer("translation_scale", torch.ones(()))
        self.register_buffer("rotation_scale", torch.ones(()))

    def residual_parameters(self) -> List[nn.Parameter]:
        """Parameters of the neural residual (grid + MLP), without the B-spline base."""
        return list(self.encoding.parameters()) + list(self.mlp.parameters())

    def base(self, time: Float[Tensor, "n"]) -> Tuple[Float[Tensor, "n 3 3"], Float[Tensor, "n 3"]]:
        """The B-spline base alone."""
        return rotation_6d_to_matrix(self.rotation_spline(time)), self.translation_spline(time)

    def forward(self, time: Float[Tensor, "n"]) -> Tuple[Float[Tensor, "n 3 3"], Float[Tensor, "n 3"]]:
        base_rotation, base_translation = self.base(time)
        residual = self.mlp(torch.cat([self.encoding(time), time.reshape(-1, 1)], dim=-1))
        translation = base_translation + self.translation_scale * residual[:, :3]
        rotation = base_rotation @ axis_angle_to_matrix(self.rotation_scale * residual[:, 3:])
        return rotation, translation


class FittedTPF(nn.Module):
    """A time-pose function together with the normalisation of the trajectory it was fitted to.

    Get a fitted one from `async_nerf_ns.trajectory.fit.fit_tpf`. To rebuild one from a checkpoint,
    `FittedTPF.from_state_dict(config, state_dict)` (the shapes are stored in the state dict), or
    construct `FittedTPF(config, num_frames, translation_cells, rotation_cells)` and `load_state_dict`.
    """

    def __init__(self, config: TimePoseFunctionConfig, num_frames: int, translation_cells: int, rotation_cells: int):
        super().__init__()
        self.network = TimePoseFunction(config, num_frames, translation_cells, rotation_cells)
        self.register_buffer("shape_info", torch.tensor([num_frames, translation_cells, rotation_cells]))
        # Epoch timestamps (~1.7e9 s) lose milliseconds in float32: time is normalised in float64.
        self.register_buffer("time_origin", torch.zeros((), dtype=torch.float64))
        self.register_buffer("time_span", torch.ones((), dtype=torch.float64))
        # Spacing of the first and last training frames (normalised time), for extrapolation.
        self.register_buffer("end_steps", torch.full((2,), 1.0 / max(num_frames - 1, 1), dtype=torch.float64))
        # float64 so that poses far from the origin (e.g. UTM metres) are centred without rounding.
        self.register_buffer("position_centre", torch.zeros(3, dtype=torch.float64))
        self.register_buffer("position_scale", torch.ones((), dtype=torch.float64))
        #: Set by `fit_tpf`: knot cells chosen and residual step kept (not part of the state dict).
        self.fit_report: Dict[str, int] = {}

    @classmethod
    def from_state_dict(cls, config: TimePoseFunctionConfig, state_dict: Dict[str, Any]) -> "FittedTPF":
        """Rebuilds a saved FittedTPF (made with the same config) and loads `state_dict` strictly."""
        num_frames, translation_cells, rotation_cells = (int(v) for v in state_dict["shape_info"])
        fitted = cls(config, num_frames, translation_cells, rotation_cells)
        fitted.load_state_dict(state_dict, strict=True)
        return fitted

    def set_normalisation(self, timestamps: np.ndarray, c2w: np.ndarray) -> None:
        """Sets the time and position normalisation from sorted float64 training data."""
        self.time_origin.fill_(float(timestamps[0]))
        self.time_span.fill_(float(timestamps[-1] - timestamps[0]))
        normalised = self.normalise_time(timestamps)
        self.end_steps.copy_(torch.tensor([normalised[1] - normalised[0], normalised[-1] - normalised[-2]]))
        positions = c2w[:, :, 3]
        centre = (positions.min(0) + positions.max(0)) / 2
        self.position_centre.copy_(torch.as_tensor(centre))
        self.position_scale.fill_(float(max(np.abs(positions - centre).max(), 1e-12)))

    def normalise_time(self, timestamps) -> np.ndarray:
        """Seconds (float64) -> normalised time (float64 numpy); 0 and 1 at the ends of the fit."""
        times = np.asarray(timestamps, dtype=np.float64).reshape(-1)
        return (times - float(self.time_origin)) / float(self.time_span)

    def normalise_positions(self, positions: np.ndarray) -> np.ndarray:
        """Positions (N, 3) in pose units -> normalised units (centred, within [-1, 1] when fitted)."""
        return (positions - self.position_centre.numpy()) / float(self.position_scale)

    def poses(self, timestamps) -> Float[Tensor, "m 3 4"]:
        """Camera-to-world poses (M, 3, 4) float32 at timestamps (M,) float64 seconds.

        In the frame and units of the fitted poses; differentiable w.r.t. the parameters. Outside
        the fitted span the motion over the first (last) training interval is continued at constant
        velocity (translation) and angular velocity (rotation), as the classical baselines do.
        """
        device = self.position_centre.device
        return self.poses_at(torch.as_tensor(self.normalise_time(timestamps), dtype=torch.float32, device=device))

    def poses_at(self, normalised: Float[Tensor, "m"]) -> Float[Tensor, "m 3 4"]:
        """`poses` at normalised times (a float32 tensor on the TPF's device): no host round trip.

        Always float32, autocast off: poses are ray geometry (training under mixed precision calls
        this through the depth rays' corrections).
        """
        with torch.autocast(device_type=normalised.device.type, enabled=False):
            normalised = normalised.float()
            rotation, translation = self.network(normalised.clamp(0.0, 1.0))
            rotation, translation = self._extrapolate(normalised, rotation, translation)
            translation = translation.double() * self.position_scale + self.position_centre
            return torch.cat([rotation, translation.float().unsqueeze(-1)], dim=-1)

    def _extrapolate(self, normalised: Tensor, rotation: Tensor, translation: Tensor) -> Tuple[Tensor, Tensor]:
        """Constant-velocity continuation outside [0, 1], selected with torch.where (no wait for the device)."""
        steps = self.end_steps.to(torch.float32)
        # The times 0 and 1 made from the steps on their device: new_tensor(0.0) would be a blocking copy.
        zero = steps[0] * 0.0
        ends = torch.stack([zero, zero + 1.0, steps[0], 1.0 - steps[1]])
        end_rotation, end_translation = self.network(ends)
        for outside, end, inner, step in ((normalised < 0.0, 0, 2, steps[0]), (normalised > 1.0, 1, 3, steps[1])):
            # Number of end intervals beyond the end, and the motion over one interval.
            count = ((normalised - ends[end]).abs() / step).unsqueeze(-1)
            moved = end_translation[end] + count * (end_translation[end] - end_translation[inner])
            step_rotation = matrix_to_axis_angle(end_rotation[inner].transpose(-1, -2) @ end_rotation[end])
            turned = end_rotation[end] @ axis_angle_to_matrix(count * step_rotation)
            translation = torch.where(outside[:, None], moved, translation)
            rotation = torch.where(outside[:, None, None], turned, rotation)
        return rotation, translation
