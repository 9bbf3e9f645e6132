"""Poses from a ROS transform tree (/tf, /tf_static) between two named frames.

ROS's tf2 is not a dependency, so the little of it needed here is written out: each child frame has
one parent; the chain from WORLD to CAMERA goes up from both to their common ancestor; each dynamic
edge is interpolated at the query times with the project's interpolators (`frame_poses.sample_at`),
static edges are constant, and the chain is the product. A frame is covered where every dynamic
edge of the chain is; its gap is the largest of the edges' gaps.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from async_nerf_ns.convert.frame_poses import ConvertWarning, TimedPoses, sample_at


class TfError(ValueError):
    """The tree cannot give the asked-for chain; the text says why."""


@dataclass
class _Edge:
    parent: str
    static: Optional[np.ndarray] = None
    times: List[float] = field(default_factory=list)
    poses: List[np.ndarray] = field(default_factory=list)


class TfTree:
    """Transforms parent-from-child as they come from /tf and /tf_static, one parent per child."""

    def __init__(self) -> None:
        self._edges: Dict[str, _Edge] = {}

    def add(self, parent: str, child: str, time: float, pose: np.ndarray, static: bool) -> None:
        edge = self._edges.setdefault(child, _Edge(parent=parent))
        if edge.parent != parent:
            raise TfError(f"frame '{child}' has two parents, '{edge.parent}' and '{parent}'")
        if static:
            edge.static = pose
        else:
            edge.times.append(time)
            edge.poses.append(pose)

    @property
    def frames(self) -> List[str]:
        return sorted(set(self._edges) | {edge.parent for edge in self._edges.values()})

    def _up(self, frame: str) -> List[str]:
        """frame, its parent, ..., the root."""
        path = [frame]
        while path[-1] in self._edges:
            path.append(self._edges[path[-1]].parent)
            if len(path) > len(self._edges) + 1:
                raise TfError(f"the transform tree has a cycle through '{frame}'")
        return path

    def _edge_poses(self, child: str, query: np.ndarray, method: str) -> Tuple[np.ndarray, np.ndarray, Tuple[float, float]]:
        edge = self._edges[child]
        if not edge.times:  # static only
            assert edge.static is not None
            return np.repeat(edge.static[None], len(query), 0), np.zeros(len(query)), (-np.inf, np.inf)
        if edge.static is not None:
            warnings.warn(ConvertWarning(f"TF edge {edge.parent} -> {child} is in /tf and /tf_static; used /tf"))
        source = f"TF {edge.parent} -> {child}"
        poses = TimedPoses.checked(source, edge.times, np.stack(edge.poses), "transform")
        if len(poses.times) == 1:
            warnings.warn(ConvertWarning(f"{source} has one transform; held constant"))
            return np.repeat(poses.c2w, len(query), 0), np.zeros(len(query)), (-np.inf, np.inf)
        sampled, gap = sample_at(poses, query, method)
        return sampled, gap, (poses.times[0], poses.times[-1])

    def poses(
        self, world: str, camera: str, query: np.ndarray, method: str
    ) -> Tuple[np.ndarray, np.ndarray, Tuple[float, float]]:
        """(world-from-camera (M, 4, 4), gap (M,), span of the chain's dynamic edges) at the query times."""
        for name in (world, camera):
            if name not in self.frames:
                raise TfError(f"no frame '{name}' in /tf or /tf_static (frames: {', '.join(self.frames) or 'none'})")
        up_world, up_camera = self._up(world), self._up(camera)
        common = next((frame for frame in up_camera if frame in up_world), None)
        if common is None:
            raise TfError(f"frames '{world}' and '{camera}' are in separate trees (roots '{up_world[-1]}' "
                          f"and '{up_camera[-1]}')")
        query = np.asarray(query, dtype=np.float64)
        gap = np.zeros(len(query))
        span = (-np.inf, np.inf)

        def down_to(frame: str, chain: List[str]) -> np.ndarray:
            """common-from-frame: the product of the edges from `common` down to `frame`."""
            nonlocal gap, span
            pose = np.repeat(np.eye(4)[None], len(query), 0)
            for child in reversed(chain[: chain.index(common)]):
                edge_pose, edge_gap, edge_span = self._edge_poses(child, query, method)
                pose = pose @ edge_pose
                gap = np.maximum(gap, edge_gap)
                span = (max(span[0], edge_span[0]), min(span[1], edge_span[1]))
            return pose

        common_from_camera = down_to(camera, up_camera)
        common_from_world = down_to(world, up_world)
        return np.linalg.inv(common_from_world) @ common_from_camera, gap, span
