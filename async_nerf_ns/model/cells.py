"""One cell of the partition: a nerfacto field with its own proposal networks and appearance embedding.

Built from nerfstudio's components (NerfactoField, HashMLPDensityField) with the numbers of a
NerfactoModelConfig, so every nerfacto option (hash grid size, tcnn/torch, proposal nets) applies
to every cell. tcnn is used when installed; nerfstudio falls back to its torch hash grid otherwise.
"""

from __future__ import annotations

from typing import Callable, List, Optional

import torch
from nerfstudio.field_components.embedding import Embedding
from nerfstudio.field_components.spatial_distortions import SpatialDistortion
from nerfstudio.fields.density_fields import HashMLPDensityField
from nerfstudio.fields.nerfacto_field import NerfactoField
from nerfstudio.models.nerfacto import NerfactoModelConfig
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

    def forward(self, in_tensor: Tensor) -> Tensor:
        if self.training:
            self.seen[in_tensor.reshape(-1)] = True
        return super().forward(in_tensor)

    def mean(self, dim: int = 0) -> Tensor:
        if dim != 0 or not bool(self.seen.any()):
            return super().mean(dim)
        return self.embedding.weight[self.seen].mean(dim)


class Cell(nn.Module):
    """A cell's radiance field and proposal density fields."""

    def __init__(
        self,
        config: NerfactoModelConfig,
        aabb: Tensor,
        num_images: int,
        spatial_distortion: Optional[SpatialDistortion],
    ) -> None:
        super().__init__()
        appearance_dim = config.appearance_embed_dim if config.use_appearance_embedding else 0
        self.field = NerfactoField(
            aabb,
            hidden_dim=config.hidden_dim,
            num_levels=config.num_levels,
            max_res=config.max_res,
            base_res=config.base_res,
            features_per_level=config.features_per_level,
            log2_hashmap_size=config.log2_hashmap_size,
            hidden_dim_color=config.hidden_dim_color,
            hidden_dim_transient=config.hidden_dim_transient,
            spatial_distortion=spatial_distortion,
            num_images=num_images,
            use_pred_normals=config.predict_normals,
            use_average_appearance_embedding=config.use_average_appearance_embedding,
            appearance_embedding_dim=appearance_dim,
            average_init_density=config.average_init_density,
            implementation=config.implementation,
        )
        if self.field.embedding_appearance is not None:
            self.field.embedding_appearance = SeenImagesEmbedding(num_images, appearance_dim)
        num_nets = 1 if config.use_same_proposal_network else config.num_proposal_iterations
        args = config.proposal_net_args_list
        self.proposal_networks = nn.ModuleList(
            HashMLPDensityField(
                aabb,
                spatial_distortion=spatial_distortion,
                **args[min(i, len(args) - 1)],
                average_init_density=config.average_init_density,
                implementation=config.implementation,
            )
            for i in range(num_nets)
        )
        self._num_iterations = config.num_proposal_iterations
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        """Training batches this cell has rendered: its own clock for nerfacto's step schedules."""
        self.register_buffer("proposal_steps_since_update", torch.zeros((), dtype=torch.long))
        """The proposal sampler's count of steps since its networks were last updated: saved with the
        cell so that a resumed run updates them on the same steps as an uninterrupted one."""

    @property
    def density_fns(self) -> List[Callable]:
        """One density function per proposal iteration (the same net repeated if shared)."""
        nets = self.proposal_networks
        return [nets[min(i, len(nets) - 1)].density_fn for i in range(self._num_iterations)]
