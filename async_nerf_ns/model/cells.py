"""One cell of the partition: nerfacto's field, proposal networks and proposal sampler, on its own clock.

The parts are the ones ``NerfactoModel.populate_modules`` builds (the model builds one set per cell,
`model.py`), so every nerfacto option (hash grid sizes, tcnn or torch, proposal networks) applies
to every cell unchanged. What a cell adds is its clock: each cell runs nerfacto's step schedules
(proposal update interval, weight annealing, depth warm-up, stage 3) on the steps it has trained,
as if it were trained alone, and a resumed run continues them exactly.

nerfacto's own code (``get_outputs``, ``get_loss_dict``, ``get_metrics_dict``, its schedule callbacks)
runs on a cell through a `TrainingView`; `CellSchedule` is the training callback that advances a
cell's clock and runs nerfacto's schedule on it.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional

import torch
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.field_components.embedding import Embedding
from nerfstudio.fields.base_field import Field
from nerfstudio.model_components.ray_samplers import ProposalNetworkSampler
from nerfstudio.models.nerfacto import NerfactoModel
from torch import Tensor, nn

from async_nerf_ns.model.colour_match import IDENTITY


class SeenImagesEmbedding(Embedding):
    """An appearance embedding whose mean (what nerfacto renders with at eval time) covers only the
    images this cell was trained on.

    A cell trains on the images that see it; the rows of the others keep their random
    initialisation, and averaging them in would shift every colour the merged field renders.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(in_dim, out_dim)
        self.register_buffer("seen", torch.zeros(in_dim, dtype=torch.bool))
        self.fitted: Optional[Tensor] = None
        """An embedding fitted to one evaluation image (evaluation/appearance.py), used instead of the
        mean while set; never saved."""

    def forward(self, in_tensor: Tensor) -> Tensor:
        if self.training:
            self.seen[in_tensor.reshape(-1)] = True
        return super().forward(in_tensor)

    def mean(self, dim: int = 0) -> Tensor:
        if dim == 0 and self.fitted is not None:
            return self.fitted
        if dim != 0:
            return super().mean(dim)
        # The mean over the seen rows (all rows before any was seen), without reading the mask back to the
        # host: a merged render asks every cell for it on every chunk.
        weight = self.embedding.weight
        seen = self.seen.to(weight.dtype)[:, None]
        count = seen.sum()
        seen_mean = (weight * seen).sum(dim=0) / count.clamp(min=1.0)
        return torch.where(count > 0, seen_mean, weight.mean(dim=0))


class CellSampler(ProposalNetworkSampler):
    """nerfacto's proposal sampler, whose schedule state (step, steps since the proposal networks were
    last updated) can be read and restored: a resumed run updates them on the same steps as an
    uninterrupted one."""

    @classmethod
    def like(cls, sampler: ProposalNetworkSampler) -> "CellSampler":
        """A sampler with the settings (and the same sub-samplers, which hold no state) of ``sampler``."""
        return cls(
            num_proposal_samples_per_ray=sampler.num_proposal_samples_per_ray,
            num_nerf_samples_per_ray=sampler.num_nerf_samples_per_ray,
            num_proposal_network_iterations=sampler.num_proposal_network_iterations,
            update_sched=sampler.update_sched,
            initial_sampler=sampler.initial_sampler,
            pdf_sampler=sampler.pdf_sampler,
        )

    @property
    def steps_since_update(self) -> int:
        return int(self._steps_since_update)

    def restore(self, step: int, steps_since_update: int) -> None:
        self._step = step
        self._steps_since_update = steps_since_update


class Cell(nn.Module):
    """A cell's radiance field, proposal networks and sampler, and the number of steps it has trained.

    ``steps`` and ``proposal_steps_since_update`` are buffers (saved with the cell); ``step_count``
    mirrors ``steps`` as a Python int, so the training step never reads a device tensor back.
    """

    def __init__(
        self,
        field: Field,
        proposal_networks: nn.ModuleList,
        density_fns: List[Callable],
        sampler: CellSampler,
        appearance_dim: int,
        num_images: int,
    ) -> None:
        super().__init__()
        self.field = field
        if getattr(field, "embedding_appearance", None) is not None:
            field.embedding_appearance = SeenImagesEmbedding(num_images, appearance_dim)
        self.proposal_networks = proposal_networks
        self.density_fns = density_fns
        """One density function per proposal iteration (the same network repeated if shared)."""
        self.sampler = sampler
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        """Training batches this cell has rendered: its own clock for nerfacto's step schedules."""
        self.register_buffer("proposal_steps_since_update", torch.zeros((), dtype=torch.long))
        """The proposal sampler's count of steps since its networks were last updated."""
        self.register_buffer("train_psnr", torch.full((), float("nan")))
        """PSNR of the cell's last training batch (NaN before its first): what the viewer's cells panel shows."""
        self.register_buffer("training_pixels", torch.zeros(3, dtype=torch.long))
        """RGB rays, depth rays and images of the cell's training data (from its ray shards)."""
        self.register_buffer("colour_transform", IDENTITY.clone())
        """Affine colour transform (3 x 4) the merged field applies to this cell's samples: appearance
        matching across cells (colour_match.py) sets it after training; the identity until then."""
        self.step_count = 0

    def count_step(self) -> int:
        """One more training batch for this cell; returns the cell's step number (1 for its first)."""
        self.step_count += 1
        self.steps.fill_(self.step_count)
        return self.step_count

    def record_sampler_state(self) -> None:
        self.proposal_steps_since_update.fill_(self.sampler.steps_since_update)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Loads the buffers, then the Python mirror of the clock and the sampler's schedule state."""
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.step_count = int(self.steps)
        self.sampler.restore(self.step_count, int(self.proposal_steps_since_update))


class TrainingView:
    """A model as nerfacto's code sees it when it works on one cell: that cell's field, proposal density
    functions and sampler, and ``camera_optimizer`` (for a training batch: the rig's corrections for it);
    every other attribute is the model's. nerfacto's methods below run on it unchanged."""

    get_outputs = NerfactoModel.get_outputs
    get_metrics_dict = NerfactoModel.get_metrics_dict
    get_loss_dict = NerfactoModel.get_loss_dict
    get_training_callbacks = NerfactoModel.get_training_callbacks

    def __init__(self, model: nn.Module, cell: Cell, camera_optimizer: Any = None) -> None:
        self.model, self.cell, self.camera_optimizer = model, cell, camera_optimizer
        self.field, self.density_fns, self.proposal_sampler = cell.field, cell.density_fns, cell.sampler

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


class CellSchedule:
    """nerfacto's schedule callbacks (proposal weight annealing, proposal sampler steps) as nerfstudio's trainer
    runs them, but for the cell that trains at each step and on that cell's own step count: before the step
    the cell's clock advances and nerfacto's BEFORE_TRAIN_ITERATION callbacks run on it, after the step its
    AFTER_TRAIN_ITERATION ones, then the merged sampler follows (``model.anneal_merged_sampler``)."""

    def __init__(self, model: nn.Module, cell_of_step: Callable[[int], int]) -> None:
        self.model, self.cell_of_step = model, cell_of_step
        self.cell: Optional[Cell] = None
        """The cell of the step under way (from before the step to after it)."""

    def callbacks(self) -> List[TrainingCallback]:
        return [
            TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], self.before_step),
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self.after_step),
        ]

    def before_step(self, step: int) -> None:
        self.cell = self.model.cells[self.cell_of_step(step)]
        self._run(TrainingCallbackLocation.BEFORE_TRAIN_ITERATION, self.cell.count_step())

    def after_step(self, step: int) -> None:
        assert self.cell is not None, "AFTER_TRAIN_ITERATION without BEFORE_TRAIN_ITERATION"
        self._run(TrainingCallbackLocation.AFTER_TRAIN_ITERATION, self.cell.step_count)
        self.cell.record_sampler_state()
        self.model.anneal_merged_sampler()

    def _run(self, where: TrainingCallbackLocation, cell_step: int) -> None:
        assert self.cell is not None
        for callback in TrainingView(self.model, self.cell).get_training_callbacks(None):  # type: ignore[arg-type]
            callback.run_callback_at_location(cell_step, where)
