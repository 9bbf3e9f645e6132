"""One optimiser and scheduler per cell, generated from the grid instead of written per grid size.

The model names its parameter groups ``cell<k>.<kind>`` (``cell0.fields``, ``cell3.proposal_networks``)
next to global groups (``camera_opt``, ``depth_pose_opt``). The method config holds one template
per kind (``fields``, ``proposal_networks``, ...), so ``--optimizers.fields.optimizer.lr`` still
tunes every cell. A cell trains only on its own steps, so its scheduler counts its own steps.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List

from nerfstudio.engine.optimizers import Optimizers
from nerfstudio.utils import writer
from torch.nn import Parameter

from async_nerf_ns.model.param_groups import group_kind

def expand_cell_optimizers(templates: Dict[str, Any], group_names: List[str]) -> Dict[str, Any]:
    """Optimizer configs for every group: explicit entries win, cell groups copy their kind's template.

    A cell's scheduler advances only on the steps that cell takes (CellOptimizers), so every cell
    follows the template's schedule on its own clock, as if it were trained alone. (Dividing the
    schedules by the number of cells, so that they end with the run, was measured to learn slower:
    2x2 at 300 steps 17.1 dB vs 20.2 dB.)
    """
    expanded: Dict[str, Any] = {}
    for name in group_names:
        if name in templates:
            expanded[name] = templates[name]
            continue
        kind = group_kind(name)
        if kind not in templates:
            raise RuntimeError(
                f"No optimizer config for parameter group '{name}' (kind '{kind}'); "
                f"configured kinds: {sorted(templates)}"
            )
        expanded[name] = copy.deepcopy(templates[kind])
    return expanded


class CellOptimizers(Optimizers):
    """nerfstudio's Optimizers, but a group that took no part in a step does not advance its schedule."""

    def _had_gradient(self, group: str) -> bool:
        return any(p.grad is not None for p in self.parameters[group])

    def scheduler_step_all(self, step: int) -> None:
        for group, scheduler in self.schedulers.items():
            if not self._had_gradient(group):
                continue
            scheduler.step()
            writer.put_scalar(name=f"learning_rate/{group}", scalar=float(scheduler.get_last_lr()[0]), step=step)

    @classmethod
    def from_templates(
        cls, templates: Dict[str, Any], param_groups: Dict[str, List[Parameter]]
    ) -> "CellOptimizers":
        return cls(expand_cell_optimizers(templates, list(param_groups)), param_groups)
