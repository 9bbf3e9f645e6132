"""Names of the model's parameter groups: one set per cell (``cell<k>.<kind>``) beside global groups.

The method config holds one optimizer template per kind (``fields``, ``proposal_networks``, ...);
engine/optimizers.py gives every cell's group a copy of its kind's template.
"""

from __future__ import annotations

from typing import Optional

CELL_GROUP_PREFIX = "cell"
"""Prefix of a cell's parameter groups: ``cell3.fields``."""
DEPTH_POSE_GROUP = "depth_pose_opt"
"""Per-depth-frame pose corrections (stage 3)."""
TPF_GROUP = "tpf"
"""The time-pose function's parameters when it is fine-tuned in stage 3."""


def cell_group_name(cell: int, kind: str) -> str:
    """The parameter group name of one kind of parameters of one cell."""
    return f"{CELL_GROUP_PREFIX}{cell}.{kind}"


def group_kind(group_name: str) -> str:
    """``cell3.fields`` -> ``fields``; global groups are their own kind."""
    return group_name.split(".", 1)[1] if group_cell(group_name) is not None else group_name


def group_cell(group_name: str) -> Optional[int]:
    """``cell3.fields`` -> 3; None for a global group."""
    head, _, _ = group_name.partition(".")
    if head.startswith(CELL_GROUP_PREFIX) and head[len(CELL_GROUP_PREFIX) :].isdigit() and "." in group_name:
        return int(head[len(CELL_GROUP_PREFIX) :])
    return None
