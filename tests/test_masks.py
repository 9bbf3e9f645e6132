"""Per-pixel masks (masks/STEM.png, 0 = ignore): checked by the reader with named errors, handed to
nerfstudio at the size it reads the images, and left out of the training shards."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import tyro
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.data.utils.data_utils import get_image_mask_tensor_from_path
from PIL import Image

from async_nerf_ns.data.dataparser import AsyncNerfDataParserConfig
from async_nerf_ns.evaluation.appearance import right_half
from async_nerf_ns.layout import LayoutError, load_mask, read_layout
from async_nerf_ns.method import async_nerf_small_config
from async_nerf_ns.scripts.partition import partition
from async_nerf_ns.shards.format import RECORDS, read_manifest
from layout_factory import metadata_path, rewrite_metadata, write_tiny_layout

WIDTH, HEIGHT = 8, 6
"""The tiny layout's RGB frames (tests/layout_factory.py)."""


def _write_mask(root: Path, stem: str, keep: np.ndarray, split: str = "train", mode: str = "L", suffix: str = ".png") -> Path:
    path = root / split / "masks" / f"{stem}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(keep.astype(np.uint8) * 255)
    (image.convert(mode) if mode != "L" else image).save(path)
    return path


def _left_half_masked() -> np.ndarray:
    keep = np.ones((HEIGHT, WIDTH), dtype=bool)
    keep[:, : WIDTH // 2] = False
    return keep


def _stem(root: Path, index: int) -> str:
    return read_layout(root).splits["train"].rgb[index].stem


@pytest.mark.parametrize(
    "case, problem",
    [
        ("no image", "no RGB image with stem 'not_a_frame'"),
        ("rgb mode", "mask has mode RGB; expected one channel"),
        ("size", "mask is 4x3, its image"),
        ("jpeg", "masks must be .png files"),
    ],
)
def test_a_bad_mask_is_an_error_that_names_the_file(tmp_path: Path, case: str, problem: str):
    root = write_tiny_layout(tmp_path / "data").root
    stem = _stem(root, 0)
    keep = _left_half_masked()
    if case == "no image":
        path = _write_mask(root, "not_a_frame", keep)
    elif case == "rgb mode":
        path = _write_mask(root, stem, keep, mode="RGB")
    elif case == "size":
        path = _write_mask(root, stem, keep[::2, ::2])
    else:
        path = _write_mask(root, stem, keep, suffix=".jpg")
    with pytest.raises(LayoutError) as error:
        read_layout(root)
    assert error.value.path == path and problem in error.value.problem, str(error.value)


def test_a_mask_belongs_to_its_frame_and_is_resized_with_its_image(tmp_path: Path):
    root = write_tiny_layout(tmp_path / "data").root
    stem = _stem(root, 1)
    _write_mask(root, stem, _left_half_masked(), mode="1")
    frames = read_layout(root).splits["train"].rgb
    assert [f.mask_path is not None for f in frames] == [False, True, False, False, False, False]
    assert load_mask(frames[1]).sum() == HEIGHT * WIDTH // 2 and load_mask(frames[0]).all()
    # The metadata says 4 x 3: the image is used at that size, and its mask too (nearest neighbour).
    rewrite_metadata(metadata_path(root, index=1), W=4, H=3, intrinsics=[2.0, 2.0, 2.0, 1.5])
    frame = read_layout(root).splits["train"].rgb[1]
    assert load_mask(frame).tolist() == [[False, False, True, True]] * 3


def test_nerfstudio_gets_a_mask_per_image_at_its_size(tmp_path: Path):
    root = write_tiny_layout(tmp_path / "data").root
    parser = AsyncNerfDataParserConfig(data=root).setup()
    assert parser.get_dataparser_outputs("train").mask_filenames is None  # no masks/: nothing changes
    mask = _write_mask(root, _stem(root, 2), _left_half_masked())
    outputs = AsyncNerfDataParserConfig(data=root).setup().get_dataparser_outputs("train")
    assert outputs.mask_filenames is not None and outputs.mask_filenames[2] == mask
    kept = [int(get_image_mask_tensor_from_path(path).sum()) for path in outputs.mask_filenames]
    assert kept == [48, 48, 24, 48, 48, 48]  # frames without a mask: an all-ones copy in the cache
    assert all(root / ".async_nerf_cache" in path.parents for i, path in enumerate(outputs.mask_filenames) if i != 2)
    assert outputs.image_filenames[2].parent == root / "train" / "rgbs"


def _cell_records(shard_set: Path, cell: int) -> np.ndarray:
    manifest = read_manifest(shard_set)
    return np.concatenate([np.fromfile(shard_set / c["file"], dtype=RECORDS["rgb"]) for c in manifest["cells"][cell]["chunks"]])


def test_masked_pixels_never_reach_the_shards_and_a_mask_edit_gives_new_shards(tmp_path: Path):
    # The hand-computed case of tests/test_shards.py: on a 2x1 grid each cell's rays cross 4 images of the
    # 6 (8x6 px), 156 px per cell; image 0 lies in cell 0 alone. Masking its left half (4 columns x 6 rows)
    # removes 24 px from cell 0 and none from cell 1.
    root = write_tiny_layout(tmp_path / "data").root

    def run() -> dict:
        args = ["async-nerf-small", "--data", str(root), "--pipeline.datamanager.partition.grid-dim", "2", "1",
                "--pipeline.datamanager.shards.shard-dir", str(tmp_path / "shards"),
                "--pipeline.datamanager.depth-poses", "prior"]
        return partition(tyro.cli(AnnotatedBaseConfigUnion, args=args))

    unmasked = run()
    _write_mask(root, _stem(root, 0), _left_half_masked())
    masked = run()
    assert [c["rgb_pixels"] for c in unmasked["cells"]] == [156, 156]
    assert [c["rgb_pixels"] for c in masked["cells"]] == [156 - 24, 156]
    assert masked["rgb_shards"] != unmasked["rgb_shards"] and masked["depth_shards"] == unmasked["depth_shards"]
    records = _cell_records(Path(masked["rgb_shards"]), 0)
    columns = records["pixel"][records["image"] == 0] % WIDTH
    assert len(columns) == 24 and columns.min() == WIDTH // 2
    # Editing the mask (now the right half) is a new set; the left-half set stays as it was.
    _write_mask(root, _stem(root, 0), ~_left_half_masked())
    edited = run()
    assert edited["rgb_shards"] not in (masked["rgb_shards"], unmasked["rgb_shards"])
    records = _cell_records(Path(edited["rgb_shards"]), 0)
    assert (records["pixel"][records["image"] == 0] % WIDTH).max() == WIDTH // 2 - 1


def test_ns_eval_metrics_leave_masked_pixels_out():
    """A rendering 0.1 off on the kept half and 0.5 off on the masked half: PSNR 20 dB (MSE 0.01) with the
    mask, 12 dB (MSE 0.13) without; SSIM equals that of a rendering equal to the truth where masked."""
    config = dataclasses.replace(async_nerf_small_config().pipeline.model, implementation="torch")
    model = config.setup(scene_box=SceneBox(aabb=torch.tensor([[-1.5] * 3, [1.5] * 3])), num_train_data=2,
                         metadata={}, device="cpu").eval()
    height, width = 24, 32
    truth = torch.rand(height, width, 3, generator=torch.Generator().manual_seed(0)) * 0.5
    keep = torch.from_numpy(np.repeat(np.arange(width) >= width // 2, height).reshape(width, height).T.copy())[..., None]
    rendered = truth + torch.where(keep, 0.1, 0.5)
    outputs = {"rgb": rendered, "accumulation": torch.ones(height, width, 1), "depth": torch.ones(height, width, 1)}
    outputs.update({f"prop_depth_{i}": torch.ones(height, width, 1) for i in range(config.num_proposal_iterations)})
    masked, images = model.get_image_metrics_and_images(outputs, {"image": truth, "mask": keep})
    whole, _ = model.get_image_metrics_and_images(outputs, {"image": truth})
    assert abs(masked["psnr"] - 20.0) < 1e-3 and masked["kept_pixel_fraction"] == 0.5
    assert abs(whole["psnr"] - 10 * np.log10(1 / 0.13)) < 1e-3
    truth_where_masked, _ = model.get_image_metrics_and_images({**outputs, "rgb": torch.where(keep, rendered, truth)}, {"image": truth})
    assert masked["ssim"] == pytest.approx(truth_where_masked["ssim"], abs=1e-6) and masked["ssim"] > whole["ssim"] + 0.05
    assert torch.equal(images["img"][:, width:], rendered)  # the comparison image shows the rendering as it is


def test_the_left_half_protocol_crops_the_mask_with_the_image():
    camera = Cameras(camera_to_worlds=torch.eye(4)[None, :3], fx=10.0, fy=10.0, cx=4.0, cy=3.0, width=8, height=6)
    keep = torch.from_numpy(_left_half_masked())[..., None]
    _, batch = right_half(camera, {"image": torch.zeros(6, 8, 3), "mask": keep})
    assert batch["mask"].shape == batch["image"].shape[:2] + (1,) and bool(batch["mask"].all())
