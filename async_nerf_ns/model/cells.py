"""One cell of the partition: nerfacto's field, proposal networks and proposal sampler, on its own clock.

The parts are the ones ``NerfactoModel.populate_modules`` builds (the model builds one set per cell,
`model.py`), so every nerfacto option (hash grid sizes, tcnn or torch, proposal networks) applies
to every cell unchanged. What a cell adds is its clock: each cell runs nerfacto's step schedules
(proposal update interval, weight annealing, depth warm-up, stage 3) on the steps it has trained,
as if it were trained alone, and a resumed run continues them exactly.
"""

from __future__ import annotations

from typing import Callable, List, Optional

import torch
from nerfstudio.field_components.embedding import Embedding
from nerfstudio.fields.base_field import Field
from nerfstudio.model_components.ray_samplers import ProposalNetworkSampler
from torch import Tensor, nn


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
