"""The nerfstudio DataParser `async-nerf-data` (async_nerf_ns/data/dataparser.py)."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from async_nerf_ns.data.dataparser import METADATA_KEY, AsyncNerfDataParserConfig
from async_nerf_ns.layout import LayoutError, load_depth_metres
from async_nerf_ns.data.scene_metadata import AsyncNerfMetadata
from async_nerf_ns.layout.frames import DRB_TO_WORLD, drb_c2w_to_world
from layout_factory import LOOK_DOWN_DRB, first_file, metadata_path, rewrite_metadata, rgb_pose, write_tiny_layout
from nerfstudio.cameras.cameras import CameraType


@pytest.fixture
def tiny(tmp_path):
    return write_tiny_layout(tmp_path / "data")


def parse(root: Path, split: str = "train", **config):
    return AsyncNerfDataParserConfig(data=root, **config).setup().get_dataparser_outputs(split)


def test_drb_camera_looking_down_ends_up_z_up(tiny):
    # A camera 1 unit up (DRB x = -1), 0.5 right, 0.2 back, looking straight down (DRB +x).
    pose = np.zeros((3, 4))
    pose[:, :3], pose[:, 3] = LOOK_DOWN_DRB, [-1.0, 0.5, 0.2]
    rewrite_metadata(metadata_path(tiny.root), c2w=torch.from_numpy(pose))
    c2w = parse(tiny.root).cameras.camera_to_worlds[0]
    # world = (DRB y, -DRB z, -DRB x) = (0.5, -0.2, 1.0); it looks along world -z (down).
    torch.testing.assert_close(c2w[:, 3], torch.tensor([0.5, -0.2, 1.0]))
    torch.testing.assert_close(-c2w[:, 2], torch.tensor([0.0, 0.0, -1.0]))
    # Image right (camera x) was DRB +y, which is world +x.
    torch.testing.assert_close(c2w[:, 0], torch.tensor([1.0, 0.0, 0.0]))


def test_drb_to_world_is_a_proper_rotation():
    assert np.linalg.det(DRB_TO_WORLD) == 1.0
    np.testing.assert_array_equal(DRB_TO_WORLD @ DRB_TO_WORLD.T, np.eye(3))
    np.testing.assert_array_equal(drb_c2w_to_world(rgb_pose(10.0))[:, 3], [-0.6, -0.1, 0.5])


def test_cameras_carry_the_metadata_intrinsics(tiny):
    cameras = parse(tiny.root).cameras
    assert cameras.camera_to_worlds.shape == (6, 3, 4) and cameras.camera_to_worlds.dtype == torch.float32
    # The factory writes fx, fy, cx, cy = 10, 11, W/2, H/2 for 8 x 6 images.
    assert cameras.fx.flatten().tolist() == [10.0] * 6 and cameras.fy.flatten().tolist() == [11.0] * 6
    assert cameras.cx.flatten().tolist() == [4.0] * 6 and cameras.cy.flatten().tolist() == [3.0] * 6
    assert cameras.width.flatten().tolist() == [8] * 6 and cameras.height.flatten().tolist() == [6] * 6
    assert torch.all(cameras.camera_type == CameraType.PERSPECTIVE.value)


def test_outputs_scene_box_and_transform(tiny):
    outputs = parse(tiny.root, scene_scale=2.5)
    torch.testing.assert_close(outputs.scene_box.aabb, torch.tensor([[-2.5] * 3, [2.5] * 3]))
    assert outputs.dataparser_scale == 1.0
    # nerfstudio's own inverse of the transform gives back the DRB poses of the files.
    original = outputs.transform_poses_to_original_space(outputs.cameras.camera_to_worlds, camera_convention="opengl")
    torch.testing.assert_close(original, torch.from_numpy(tiny.rgb_c2w["train"]).float())
    assert list(outputs.metadata) == [METADATA_KEY]  # nothing nerfstudio would interpret (masks, depth...)
    assert outputs.mask_filenames is None
    assert [p.name for p in outputs.image_filenames][:2] == ["frame_0000.png", "frame_0001.png"]


def test_metadata_contents(tiny):
    meta: AsyncNerfMetadata = parse(tiny.root).metadata[METADATA_KEY]
    assert meta.split == "train"
    assert meta.rgb_timestamps.dtype == torch.float64
    assert meta.rgb_timestamps.tolist() == [10.0, 10.5, 11.0, 11.5, 12.0, 12.5]
    torch.testing.assert_close(meta.rgb_gt_c2w, torch.from_numpy(drb_c2w_to_world(tiny.rgb_c2w["train"])).float())

    track = meta.depth_tracks["lidar"]
    assert len(track) == 3 and track.timestamps.tolist() == [10.25, 10.75, 11.25]
    assert track.intrinsics[0].tolist() == [5.0, 5.5, 2.0, 1.5]
    assert track.widths.tolist() == [4, 4, 4] and track.heights.tolist() == [3, 3, 3]
    assert track.depth_is_ray.tolist() == [False, False, False]
    # Prior = RGB pose 0.25 s earlier; truth = pose at the depth time. DRB y -> world x.
    torch.testing.assert_close(track.prior_c2w[:, 0, 3], torch.tensor([-0.6, -0.4, -0.2]))
    torch.testing.assert_close(track.gt_c2w[:, 0, 3], torch.tensor([-0.5, -0.3, -0.1]))
    assert load_depth_metres(track.frames[0])[2, 3] == 2.0
    # The metric frame of coordinates.pt travels on unchanged (the factory writes these numbers).
    assert meta.origin_drb.dtype == torch.float64 and meta.origin_drb.tolist() == [100.0, -20.0, 5.0]
    assert meta.pose_scale_factor == 50.0


def test_missing_poses_are_nan(tiny):
    first_file(tiny.root / "train" / "pose_gt_rgb").unlink()
    rewrite_metadata(metadata_path(tiny.root, folder="metadata_depth_lidar", index=1), drop=["c2w"])
    meta = parse(tiny.root).metadata[METADATA_KEY]
    assert torch.isnan(meta.rgb_gt_c2w[0]).all() and not torch.isnan(meta.rgb_gt_c2w[1:]).any()
    prior = meta.depth_tracks["lidar"].prior_c2w
    assert torch.isnan(prior[1]).all() and not torch.isnan(prior[[0, 2]]).any()


def test_val_and_test_read_val_folder_and_layout_is_read_once(tiny, monkeypatch):
    import async_nerf_ns.data.dataparser as module

    calls = []
    real = module.read_layout
    monkeypatch.setattr(module, "read_layout", lambda root: calls.append(root) or real(root))
    parser = AsyncNerfDataParserConfig(data=tiny.root).setup()
    outputs = {split: parser.get_dataparser_outputs(split) for split in ("train", "val", "test")}
    assert len(calls) == 1
    for split in ("val", "test"):
        meta = outputs[split].metadata[METADATA_KEY]
        assert meta.split == "val" and len(outputs[split].image_filenames) == 2
        assert all(p.parent.parent.name == "val" for p in outputs[split].image_filenames)
        assert meta.rgb_timestamps.tolist() == [10.1, 10.6]  # val frames start at 10.1 s
        assert meta.depth_tracks["lidar"].timestamps.tolist() == [10.35]
    with pytest.raises(ValueError, match="unknown split 'eval'"):
        parser.get_dataparser_outputs("eval")


def test_missing_val_split_is_an_error_when_asked_for(tmp_path):
    tiny = write_tiny_layout(tmp_path / "data", num_val_rgb=0, num_val_depth=0)
    parser = AsyncNerfDataParserConfig(data=tiny.root).setup()
    assert len(parser.get_dataparser_outputs("train").image_filenames) == 6
    with pytest.raises(LayoutError, match=r"val/rgbs: no RGB frames for the 'val' split"):
        parser.get_dataparser_outputs("val")


def test_wrong_size_image_gets_a_resized_copy(tiny):
    original = first_file(tiny.root / "train" / "rgbs")
    Image.fromarray(np.full((12, 16, 3), 77, dtype=np.uint8)).save(original)
    before = original.read_bytes()
    filenames = parse(tiny.root).image_filenames
    copy_path = filenames[0]
    assert copy_path == tiny.root / ".async_nerf_cache" / "rgb_resized" / "train" / "frame_0000_8x6.png"
    assert Image.open(copy_path).size == (8, 6) and np.all(np.asarray(Image.open(copy_path)) == 77)
    assert original.read_bytes() == before  # the user's file is untouched
    assert filenames[1] == tiny.root / "train" / "rgbs" / "frame_0001.png"  # right-sized files used as they are


def test_resized_copy_falls_back_to_a_temp_dir(tiny, tmp_path):
    Image.fromarray(np.zeros((12, 16, 3), dtype=np.uint8)).save(first_file(tiny.root / "train" / "rgbs"))
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    copy_path = parse(tiny.root, cache_dir=blocker).image_filenames[0]
    assert copy_path.is_file() and not copy_path.is_relative_to(tiny.root) and not copy_path.is_relative_to(blocker)


def test_outputs_deep_copy_and_pickle(tiny):
    outputs = parse(tiny.root)
    for clone in (copy.deepcopy(outputs), pickle.loads(pickle.dumps(outputs))):
        meta = clone.metadata[METADATA_KEY]
        assert meta.depth_tracks["lidar"].timestamps.tolist() == [10.25, 10.75, 11.25]
        torch.testing.assert_close(clone.cameras.camera_to_worlds, outputs.cameras.camera_to_worlds)


def test_vanilla_datamanager_serves_rays(tiny):
    # What `ns-train nerfacto --data D async-nerf-data` does first: datasets, pixel sampling, eval.
    from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig

    config = VanillaDataManagerConfig(
        dataparser=AsyncNerfDataParserConfig(data=tiny.root), train_num_rays_per_batch=32, eval_num_rays_per_batch=32
    )
    manager = config.setup(device="cpu", test_mode="val")
    ray_bundle, batch = manager.next_train(0)
    assert ray_bundle.origins.shape == (32, 3) and batch["image"].shape == (32, 3)
    assert len(manager.eval_dataset) == 2
    assert manager.train_dataset.metadata[METADATA_KEY].split == "train"


def test_nerfstudio_registry_lists_async_nerf_data():
    # A fresh interpreter: the entry point is loaded while nerfstudio builds its dataparser list.
    code = (
        "from nerfstudio.configs.dataparser_configs import all_dataparsers\n"
        "from async_nerf_ns.data.dataparser import AsyncNerfDataParserConfig\n"
        "print(type(all_dataparsers['async-nerf-data']) is AsyncNerfDataParserConfig)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "True"
