"""Appearance matching across cells through the pipeline: shared rays from the RGB shards, each cell
rendering them alone, the transforms set on the cells and applied by the merged field."""

from __future__ import annotations

from pathlib import Path

import torch
import tyro
from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.models.nerfacto import NerfactoModel

from async_nerf_ns.model.cells import TrainingView
from async_nerf_ns.model.colour_match import IDENTITY
from async_nerf_ns.shards.shared import shared_records
from layout_factory import write_tiny_layout

GAIN = torch.tensor([0.8, 0.9, 0.7])


def _pipeline(root: Path, tmp_path: Path):
    args = ["async-nerf-small", "--data", str(root), "--pipeline.datamanager.partition.grid-dim", "2", "1",
            "--pipeline.datamanager.shards.shard-dir", str(tmp_path / "shards"),
            "--pipeline.datamanager.depth-poses", "prior", "--pipeline.model.implementation", "torch"]
    config = tyro.cli(AnnotatedBaseConfigUnion, args=args)
    config.pipeline.datamanager.data = config.data  # what ns-train's main does
    return config.pipeline.setup(device="cpu", test_mode="val")


def _tinted(forward):
    def tinted_forward(*args, **kwargs):
        outputs = forward(*args, **kwargs)
        outputs[FieldHeadNames.RGB] = outputs[FieldHeadNames.RGB] * GAIN
        return outputs

    return tinted_forward


def test_a_tinted_copy_of_a_cell_is_matched_back_and_the_merged_field_renders_it_untinted(tmp_path: Path, monkeypatch):
    torch.manual_seed(0)
    pipeline = _pipeline(write_tiny_layout(tmp_path / "data").root, tmp_path)
    model = pipeline.model
    cells = model.cells
    cells[1].load_state_dict(cells[0].state_dict())  # the same field, seen in another light:
    monkeypatch.setattr(cells[1].field, "forward", _tinted(cells[1].field.forward))
    cells[0].training_pixels[0] = 10**6  # the root
    shard_set = pipeline.datamanager.write_shards(existing_only=True)["rgb"]
    bundle = pipeline.datamanager.rgb_rays_for(shared_records(shard_set, 0, 1, 4096))
    model.eval()
    with torch.no_grad():
        reference = NerfactoModel.get_outputs(TrainingView(model, cells[0]), model.collider(bundle))["rgb"]
        before = model(bundle)["rgb"]
    report = pipeline.match_appearance()
    assert report is not None and report.root == 0 and report.matched_to == {1: 0}
    assert torch.equal(cells[0].colour_transform, IDENTITY)
    # Measured (24 shared rays): residual 0.103 -> 1.1e-4; the merged rendering 0.107 -> 2.0e-4 (max) from the
    # untinted cell's.
    assert report.residual_before[1] > 0.05 and report.residual_after[1] < 1e-3
    with torch.no_grad():
        after = model(bundle)["rgb"]
    assert (before - reference).abs().max() > 0.05
    assert (after - reference).abs().max() < 2e-3
