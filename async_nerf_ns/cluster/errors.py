"""`ClusterError`: what the user of ``async-nerf-train-cells`` has to fix (the command prints it without a traceback)."""

from __future__ import annotations


class ClusterError(RuntimeError):
    """The cluster cannot run the cells as asked (no node with the resources, a changed run folder, ...)."""
