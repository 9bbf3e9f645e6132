"""The partition in nerfstudio's viewer: cells, their progress, single-cell rendering, depth frames.

The pipeline holds one `PartitionView` (an nn.Module without state, so nerfstudio's viewer finds
its elements under "Custom Elements"; nothing of it is saved in checkpoints):

- **render mode** (dropdown): merged (default), "colour by cell" (each sample's colour mixed with its
  cell's colour: seams and ownership), "cell k only" (the other cells' samples have zero density).
  It changes only what the viewer renders (model/merged.py applies it in the viewer's thread alone);
- **show cells** (checkbox): the cells' regions drawn on the ground at the bottom of the altitude band,
  solid for the nearest-centroid regions the merged field routes by, thin for the boundary margin
  (the pixels each cell trains on), with the centroids and their numbers; the cell under the viewer
  camera is drawn thicker and its row in the panel is bold;
- **show depth frames** (checkbox) and **depth frames: every n-th** (slider): the depth frames'
  frustums at their stage-1 (TPF) poses, orange, and where stage 3 refines them, at the refined poses,
  red; at most ``max_depth_frustums`` are drawn (a 2,000-frame capture must not freeze the browser);
- **cells** (a table): per cell its steps, last train PSNR, RGB and depth rays, images; refreshed
  during ``ns-train`` every ``refresh_steps`` steps, and for a run of ``async-nerf-train-cells`` read
  from the cell tasks' progress files every few seconds.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from nerfstudio.viewer.viewer_elements import ViewerCheckbox, ViewerControl, ViewerDropdown, ViewerElement, ViewerSlider
from torch import nn

from async_nerf_ns.model.merged import CELL_COLOURS, ViewMode
from async_nerf_ns.partition.routing import route_to_cells
from async_nerf_ns.viewer.cells_panel import cluster_run_of, model_statuses, panel_markdown, with_cluster_progress
from async_nerf_ns.viewer.outlines import cell_outlines, scene_extent

MERGED, TINTED = "merged", "colour by cell"
STAGE1_COLOUR, REFINED_COLOUR = (255, 140, 0), (220, 20, 60)
"""Depth-frame frustums at their stage-1 poses (orange) and at the refined poses (red)."""
PROGRESS_POLL_SECONDS = 5.0


def render_modes(num_cells: int) -> List[str]:
    return [MERGED, TINTED] + [f"cell {k} only" for k in range(num_cells)]


def view_mode(mode: str) -> ViewMode:
    """The router's view mode for a render-mode name."""
    if mode == TINTED:
        return ViewMode(tint=True)
    if mode.startswith("cell ") and mode.endswith(" only"):
        return ViewMode(only_cell=int(mode.split()[1]))
    return ViewMode()


class ViewerMarkdown(ViewerElement[str]):
    """Markdown in the viewer's panel (nerfstudio has no such element; viser has)."""

    def __init__(self, name: str, content: str) -> None:
        super().__init__(name)
        self.content = content

    def _create_gui_handle(self, viser_server) -> None:
        self.gui_handle = viser_server.gui.add_markdown(self.content)

    def install(self, viser_server) -> None:
        self._create_gui_handle(viser_server)

    def set_content(self, content: str) -> None:
        self.content = content
        if self.gui_handle is not None:
            self.gui_handle.content = content  # type: ignore[union-attr]


class PartitionSceneControl(ViewerControl):
    """Gets the viser server from nerfstudio's viewer (``_setup``) and draws the scene nodes."""

    def __init__(self, view: "PartitionView") -> None:
        self._views = [view]  # a list: not an attribute nerfstudio's element search walks into

    def _setup(self, viewer) -> None:
        super()._setup(viewer)
        log_filename = getattr(viewer, "log_filename", None)
        self._views[0].attach(self.viser_server, None if log_filename is None else Path(log_filename).parent)


class PartitionView(nn.Module):
    """The viewer elements and scene nodes of a partition; see the module docstring.

    Args:
        source: the pipeline (read when drawing: its model, geometry, depth frames and their poses).
        boundary_margin: the partition's margin (outlines of the pixels each cell trains on).
        max_depth_frustums: at most this many depth frames are drawn (every n-th, n at least total / this).
        refresh_steps: the cells panel is rewritten every this many training steps.
    """

    def __init__(self, source: Any, boundary_margin: float, max_depth_frustums: int, refresh_steps: int) -> None:
        super().__init__()
        self._source = [source]  # not a submodule: the pipeline owns this view, not the reverse
        self._margin = boundary_margin
        self._max_frustums = max(1, max_depth_frustums)
        self.refresh_steps = refresh_steps
        self._server = None
        self._run_dir: Optional[Path] = None
        self._cell_nodes: Dict[str, Any] = {}
        self._frustum_nodes: List[Any] = []
        self._highlight: Optional[int] = None
        self._followed: set = set()
        """ids of the viewer clients whose camera the cells panel follows"""
        self._lock = threading.Lock()
        num_cells = int(source.geometry.num_cells)
        frames = 0 if source.depth_track is None else len(source.depth_track)
        every = max(1, -(-frames // self._max_frustums))
        self.render_mode = ViewerDropdown(
            "render mode", MERGED, render_modes(num_cells), cb_hook=self._on_render_mode,
            hint="What the viewer renders: all cells merged, coloured by cell, or one cell alone",
        )
        self.show_cells = ViewerCheckbox("show cells", True, cb_hook=lambda _: self._set_cells_visible())
        self.show_depth_frames = ViewerCheckbox("show depth frames", frames > 0, cb_hook=lambda _: self._draw_depth_frames())
        self.depth_every = ViewerSlider(
            "depth frames: every n-th", every, every, max(every, frames), 1, cb_hook=lambda _: self._draw_depth_frames(),
            hint=f"At most {self._max_frustums} depth frames are drawn",
        )
        self.cells_panel = ViewerMarkdown("cells", "")
        self.scene_control = PartitionSceneControl(self)

    # --- values (also what the tests read) -------------------------------------------------------
    def statuses(self):
        statuses = model_statuses(self._source[0].model)
        if self._run_dir is not None:
            statuses = with_cluster_progress(statuses, self._run_dir)
        return statuses

    def refresh(self, step: Optional[int] = None) -> str:
        """Rewrites the cells panel; returns its markdown."""
        content = panel_markdown(self.statuses(), self._highlight)
        self.cells_panel.set_content(content)
        return content

    def drawn_depth_frames(self) -> List[int]:
        frames = 0 if self._source[0].depth_track is None else len(self._source[0].depth_track)
        every = max(int(self.depth_every.value), -(-frames // self._max_frustums))
        return list(range(0, frames, every))

    # --- the viewer ------------------------------------------------------------------------------
    def attach(self, server, base_dir: Optional[Path]) -> None:
        """Draws the scene nodes into ``server`` (called once by nerfstudio's viewer, through the control)."""
        self._server = server
        self._run_dir = cluster_run_of(base_dir)
        self._draw_cells()
        self._draw_depth_frames()
        self.refresh()
        # Clients that connect later, and those already connected: a browser (or a test's client) that
        # connected while nerfstudio's viewer was still setting up is not announced again.
        server.on_client_connect(self._follow_camera)
        for client in list(server.get_clients().values()):
            self._follow_camera(client)
        if self._run_dir is not None:
            threading.Thread(target=self._poll_progress, daemon=True, name="async-nerf cells panel").start()

    def _poll_progress(self) -> None:
        stop = threading.Event()
        while not stop.wait(PROGRESS_POLL_SECONDS):
            self.refresh()

    def _on_render_mode(self, element) -> None:
        self._source[0].model.router.view = view_mode(element.value)

    def _scale(self) -> float:
        from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO

        return float(VISER_NERFSTUDIO_SCALE_RATIO)

    def _draw_cells(self, highlight: Optional[int] = None) -> None:
        if self._server is None:
            return
        with self._lock:
            for node in self._cell_nodes.values():
                node.remove()
            self._cell_nodes = {}
            geometry = self._source[0].geometry
            centroids = geometry.centroids.detach().cpu().double().numpy()
            cameras = self._source[0].datamanager.train_dataset.cameras.camera_to_worlds[:, :2, 3].cpu().double().numpy()
            extent = scene_extent(cameras, centroids[:, :2])
            z = float(geometry.z_range[0]) * self._scale()
            scale = self._scale()
            for margin, width, tag in ((1.0, 3.0, "region"), (self._margin, 1.0, "margin")):
                for k, lines in enumerate(cell_outlines(centroids[:, :2], margin, extent)):
                    colour = tuple(int(255 * c) for c in CELL_COLOURS[k % len(CELL_COLOURS)].tolist())
                    for i, line in enumerate(lines):
                        points = np.concatenate([line * scale, np.full((len(line), 1), z)], axis=1)
                        self._cell_nodes[f"{tag}_{k}_{i}"] = self._server.scene.add_spline_catmull_rom(
                            f"/async_nerf/cells/{tag}_{k}_{i}", points, curve_type="catmullrom", tension=0.0,
                            line_width=width * (2.0 if k == highlight and tag == "region" else 1.0), color=colour,
                            visible=bool(self.show_cells.value),
                        )
            for k, centroid in enumerate(centroids):
                position = (centroid[0] * scale, centroid[1] * scale, z)
                self._cell_nodes[f"centroid_{k}"] = self._server.scene.add_icosphere(
                    f"/async_nerf/cells/centroid_{k}", radius=0.02 * scale, color=(255, 215, 0), position=position,
                    visible=bool(self.show_cells.value),
                )
                self._cell_nodes[f"label_{k}"] = self._server.scene.add_label(
                    f"/async_nerf/cells/label_{k}", f"cell {k}", position=position, visible=bool(self.show_cells.value)
                )

    def _set_cells_visible(self) -> None:
        for node in self._cell_nodes.values():
            node.visible = bool(self.show_cells.value)

    def depth_frame_poses(self) -> Dict[str, torch.Tensor]:
        """The training depth frames' poses the viewer draws: stage 1's, and the refined ones when stage 3 moves them."""
        pipeline = self._source[0]
        track = pipeline.depth_track
        if track is None:
            return {}
        source = pipeline.config.datamanager.depth_poses
        try:
            base = pipeline.stage1.depth_poses(track, source)
        except (AssertionError, ValueError):  # no TPF (not trained yet) or no prior/gt poses
            return {}
        poses = {"stage 1": base}
        rig = pipeline.model.camera_optimizer
        if rig._depth_corrections():
            with torch.no_grad():
                poses["refined"] = rig.corrected_depth_poses(base.to(pipeline.model.device)).cpu()
        return poses

    def _draw_depth_frames(self) -> None:
        if self._server is None:
            return
        import viser.transforms as vtf

        with self._lock:
            for node in self._frustum_nodes:
                node.remove()
            self._frustum_nodes = []
            if not self.show_depth_frames.value:
                return
            track = self._source[0].depth_track
            scale = self._scale()
            for label, poses in self.depth_frame_poses().items():
                colour = STAGE1_COLOUR if label == "stage 1" else REFINED_COLOUR
                for i in self.drawn_depth_frames():
                    c2w = poses[i].double().numpy()
                    rotation = vtf.SO3.from_matrix(c2w[:3, :3]) @ vtf.SO3.from_x_radians(np.pi)
                    fx, _, cx, cy = (float(v) for v in track.intrinsics[i])
                    self._frustum_nodes.append(self._server.scene.add_camera_frustum(
                        f"/async_nerf/depth_frames/{label.replace(' ', '_')}/frame_{i:05d}",
                        fov=float(2 * np.arctan(cx / fx)), aspect=cx / cy, scale=0.1, color=colour,
                        wxyz=rotation.wxyz, position=c2w[:3, 3] * scale,
                    ))

    def _follow_camera(self, client) -> None:
        if client.client_id in self._followed:
            return
        self._followed.add(client.client_id)
        client.camera.on_update(lambda camera: self._camera_moved(camera.position))

    def _camera_moved(self, position) -> None:
        world = torch.tensor(np.asarray(position, dtype=np.float64) / self._scale())[None]
        cell = int(route_to_cells(world, self._source[0].geometry.centroids.detach().cpu().double())[0])
        if cell != self._highlight:
            self._highlight = cell
            self._draw_cells(highlight=cell)
            self.refresh()


def refresh_callback(view: PartitionView) -> Callable[[int], None]:
    """A training callback's function: the cells panel during ns-train."""

    def refresh(step: int) -> None:
        if view._server is not None:
            view.refresh(step)

    return refresh
