"""Runs trained before the restructuring still load: checkpoint keys, optimizer groups and config.yml.

The fixtures were written by commit 4d66aac (main before the restructuring) on the scene below:
``main_4d66aac_small_{a,b,c}_keys.json`` from 4-step ``ns-train async-nerf-small`` runs (a: as shipped;
b: ``--pipeline.finetune-tpf True --pipeline.model.camera-optimizer.mode SO3xR3``; c:
``--pipeline.datamanager.depth-poses prior``), ``main_4d66aac_full_keys.json`` from the ``async-nerf``
pipeline built with torch fields, and ``main_4d66aac_small_a_config.yml``, run a's config.yml.
Every key and shape of today's pipeline must be the fixture's: strict loading of those checkpoints
depends on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from async_nerf_ns.method import async_nerf_config, async_nerf_small_config
from examples.make_scene import SceneSpec, generate_scene

FIXTURES = Path(__file__).parent / "fixtures"
ADDED_KEYS = {"depth_time_offsets"} | {
    f"_model.cells.{k}.{name}" for k in range(4) for name in ("train_psnr", "training_pixels", "colour_transform")
}
"""Keys added since: the clock offsets of the depth tracks, each cell's status for the viewer, each cell's
colour transform (appearance matching); a checkpoint without them loads (no offset applied, identity
transforms; ``AsyncNerfPipeline.load_pipeline``, tested below)."""
SPEC = SceneSpec(num_rgb=32, width=32, height=24, depth_width=24, depth_height=18, write_preview=False)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return generate_scene(tmp_path_factory.mktemp("compat") / "scene", SPEC)


def _pipeline(config, scene: Path):
    config.machine.device_type = "cpu"
    config.pipeline.datamanager.data = scene
    config.pipeline.model.implementation = "torch"
    return config.pipeline.setup(device="cpu", test_mode="val")


def _check(pipeline, fixture: str) -> None:
    expected = json.loads((FIXTURES / fixture).read_text())
    keys = {k: list(v.shape) for k, v in pipeline.state_dict().items()}
    assert sorted(set(expected["pipeline"]) - set(keys)) == [], "keys the old checkpoints have and the pipeline lacks"
    assert sorted(set(keys) - set(expected["pipeline"]) - ADDED_KEYS) == [], "keys the pipeline has and old checkpoints lack"
    assert {k: v for k, v in keys.items() if k not in ADDED_KEYS and v != expected["pipeline"][k]} == {}, "shapes differ"
    assert sorted(pipeline.get_param_groups()) == expected["optimizers"]


@pytest.mark.parametrize(
    "variant, options",
    [
        ("a", {}),
        ("b", {"finetune_tpf": True, "rgb_camera_opt": "SO3xR3"}),
        ("c", {"depth_poses": "prior"}),
    ],
)
def test_small_preset_has_the_keys_of_runs_trained_before(scene: Path, variant: str, options: dict):
    config = async_nerf_small_config()
    config.pipeline.finetune_tpf = options.get("finetune_tpf", False)
    config.pipeline.model.camera_optimizer.mode = options.get("rgb_camera_opt", "off")
    config.pipeline.datamanager.depth_poses = options.get("depth_poses", "tpf")
    _check(_pipeline(config, scene), f"main_4d66aac_small_{variant}_keys.json")


def test_full_preset_has_the_keys_of_before(scene: Path):
    _check(_pipeline(async_nerf_config(), scene), "main_4d66aac_full_keys.json")


def test_a_config_yml_written_before_loads_and_builds_the_same_pipeline(scene: Path):
    config = yaml.load((FIXTURES / "main_4d66aac_small_a_config.yml").read_text(), Loader=yaml.Loader)
    pipeline = _pipeline(config, scene)
    _check(pipeline, "main_4d66aac_small_a_keys.json")
    # ... and a checkpoint of those keys loads strictly (here: the pipeline's own state without the keys
    # added since, round-tripped): no clock offset applied.
    state = {k: v.clone() for k, v in pipeline.state_dict().items() if k not in ADDED_KEYS}
    pipeline.load_pipeline(state, step=3)
    assert pipeline.stage1.time_offsets() == {"lidar": 0.0}
    assert all(torch.equal(cell.colour_transform, torch.eye(3, 4)) for cell in pipeline.model.cells)
    with pytest.raises(RuntimeError, match="Missing key"):
        pipeline.load_state_dict({k: v for k, v in state.items() if not k.startswith("_model.cells.3.")})
    assert torch.equal(pipeline.state_dict()["_model.centroids"], state["_model.centroids"])


def test_the_flat_occupancy_flags_of_before_set_the_nested_options():
    """``--pipeline.model.occupancy-*`` (before the options moved into ``model.occupancy``) are aliases."""
    import tyro
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    flags = ["--pipeline.model.occupancy-grid-resolution", "64", "--pipeline.model.occupancy_render_step_size", "0.01",
             "--pipeline.model.occupancy.grid-levels", "2"]
    occupancy = tyro.cli(AnnotatedBaseConfigUnion, args=["async-nerf-small", *flags]).pipeline.model.occupancy
    assert (occupancy.grid_resolution, occupancy.render_step_size, occupancy.grid_levels) == (64, 0.01, 2)


def test_a_config_yml_with_the_flat_occupancy_fields_loads_them_nested():
    """config.yml files written between the occupancy grid and its nested config hold the 11 flat fields."""
    from async_nerf_ns.model.occupancy import OccupancyConfig

    header = "  model: !!python/object:async_nerf_ns.model.model.AsyncNerfModelConfig\n"
    text = (FIXTURES / "main_4d66aac_small_a_config.yml").read_text()
    assert header in text
    flat = "".join(f"    occupancy_{f}: {v}\n" for f, v in (("grid_resolution", 64), ("dilation", 0), ("render_step_size", "null")))
    model = yaml.load(text.replace(header, header + flat), Loader=yaml.Loader).pipeline.model
    assert model.occupancy == OccupancyConfig(grid_resolution=64, dilation=0)
    assert not [name for name in vars(model) if name.startswith("occupancy_")]
