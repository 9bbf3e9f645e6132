"""Reading and validating the dataset layout (async_nerf_ns/data/layout.py)."""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import tyro
from PIL import Image

from async_nerf_ns.convert.convert import ConvertConfig
from async_nerf_ns.layout import (
    DEPTH_DIR_PREFIXES,
    DEPTH_EXTENSIONS,
    LAYOUT_DOC,
    RGB_EXTENSIONS,
    RGB_METADATA_DIRS,
    LayoutError,
    LayoutWarning,
    load_depth_metres,
    load_rgb,
    read_layout,
)
from layout_factory import first_file, metadata_path, rewrite_metadata, rgb_pose, write_tiny_layout

REPOSITORY = Path(__file__).resolve().parents[1]


def raises_naming(path: Path):
    """pytest.raises for a LayoutError whose message names `path` (its file name at least)."""
    return pytest.raises(LayoutError, match=re.escape(path.name))


@pytest.fixture
def tiny(tmp_path):
    return write_tiny_layout(tmp_path / "data")


# --- a good layout -----------------------------------------------------------------------------


def test_reads_every_frame_with_its_numbers(tiny):
    layout = read_layout(tiny.root)
    train, val = layout.splits["train"], layout.splits["val"]
    # The factory writes 6 + 2 RGB frames and 3 + 1 depth frames of track "lidar".
    assert [len(train.rgb), len(val.rgb)] == [6, 2]
    assert {k: len(v) for k, v in train.depth.items()} == {"lidar": 3}
    assert {k: len(v) for k, v in val.depth.items()} == {"lidar": 1}
    np.testing.assert_array_equal(layout.coordinates.origin_drb, [100.0, -20.0, 5.0])
    assert layout.coordinates.pose_scale_factor == 50.0

    frame = train.rgb[2]
    assert (frame.width, frame.height, frame.file_size) == (8, 6, (8, 6))
    np.testing.assert_array_equal(frame.intrinsics, [10.0, 11.0, 4.0, 3.0])
    assert frame.timestamp == 11.0  # 10 s + 2 * 0.5 s
    np.testing.assert_array_equal(frame.c2w, rgb_pose(11.0))
    np.testing.assert_allclose(frame.pose_gt, rgb_pose(11.0), atol=1e-15)
    np.testing.assert_array_equal(train.rgb_timestamps, 10.0 + 0.5 * np.arange(6))

    depth = train.depth["lidar"][1]
    assert (depth.width, depth.height, depth.timestamp) == (4, 3, 10.75)
    assert depth.depth_scale == 1.0 and not depth.depth_is_ray  # .npy holds metres, planar by default
    np.testing.assert_array_equal(depth.c2w_prior, rgb_pose(10.5))  # prior = preceding RGB pose
    np.testing.assert_allclose(depth.pose_gt, rgb_pose(10.75), atol=1e-15)


def test_load_depth_metres_zeroes_missing_and_non_finite(tiny):
    frame = read_layout(tiny.root).splits["train"].depth["lidar"][0]
    depth = load_depth_metres(frame)
    assert depth.dtype == np.float32 and depth.shape == (3, 4)
    # Pixel (0, 0) is 0 (no measurement) and (0, 1) NaN in the file; the other 10 are 2 m.
    assert depth[0, 0] == 0.0 and depth[0, 1] == 0.0
    assert np.count_nonzero(depth == 2.0) == 10


@pytest.mark.parametrize(
    "depth_format, depth_m, scale",
    [
        ("npy", 2.25, 1.0),  # float metres
        ("pt", 2.25, 1.0),
        ("tif_float", 2.25, 1.0),
        ("png16", 1.5, 0.001),  # stored 1500 (mm) -> 1.5 m
        ("tif16", 1.5, 0.001),
        ("png8", 3.0, 1.0),  # stored grey level 3 -> 3 m
        ("jpg8", 3.0, 1.0),  # a constant JPEG decodes exactly
    ],
)
def test_depth_scale_default_per_file_type(tmp_path, depth_format, depth_m, scale):
    tiny = write_tiny_layout(tmp_path / "data", depth_format=depth_format, depth_m=depth_m)
    frame = read_layout(tiny.root).splits["train"].depth["lidar"][0]
    assert frame.depth_scale == scale
    assert load_depth_metres(frame)[2, 3] == np.float32(depth_m)


def test_depth_scale_and_kind_from_metadata(tiny):
    path = metadata_path(tiny.root, folder="metadata_depth_lidar")
    rewrite_metadata(path, depth_scale=0.5, depth_kind="ray")
    frame = read_layout(tiny.root).splits["train"].depth["lidar"][0]
    assert frame.depth_scale == 0.5 and frame.depth_is_ray
    assert load_depth_metres(frame)[2, 3] == 1.0  # 2 stored units * 0.5 m


def test_aliases_metadata_rgb_and_depthvis(tmp_path):
    tiny = write_tiny_layout(
        tmp_path / "data", rgb_metadata_dir="metadata_rgb", depth_dir_prefix="depthvis", depth_format="png8"
    )
    train = read_layout(tiny.root).splits["train"]
    assert len(train.rgb) == 6 and len(train.depth["lidar"]) == 3
    frame = train.depth["lidar"][0]
    assert frame.depth_path.parent.name == "depthvis_lidar" and frame.depth_scale == 1.0
    assert load_depth_metres(frame)[1, 1] == 2.0


def test_image_extensions_are_case_insensitive(tmp_path):
    tiny = write_tiny_layout(tmp_path / "data", rgb_extension="JPG")
    frames = read_layout(tiny.root).splits["train"].rgb
    assert [f.image_path.name for f in frames][:2] == ["frame_0000.JPG", "frame_0001.JPG"]


def test_numpy_in_metadata_gets_a_hint(tiny):
    path = metadata_path(tiny.root)
    rewrite_metadata(path, intrinsics=np.array([10.0, 11.0, 4.0, 3.0]))  # weights_only loading refuses numpy
    with pytest.raises(LayoutError, match=rf"{re.escape(path.name)}: .*numpy.*store values as tensors or Python numbers"):
        read_layout(tiny.root)


def test_timestamps_from_stems(tmp_path):
    tiny = write_tiny_layout(tmp_path / "data", timestamps="stem")
    train = read_layout(tiny.root).splits["train"]
    assert train.rgb[0].stem == "10.000"
    np.testing.assert_array_equal(train.rgb_timestamps, 10.0 + 0.5 * np.arange(6))
    assert [f.timestamp for f in train.depth["lidar"]] == [10.25, 10.75, 11.25]


def test_rgb_sorted_by_timestamp_else_by_stem(tmp_path):
    tiny = write_tiny_layout(tmp_path / "data", num_depth=0, num_val_depth=0)
    # Reverse the times: frame_0005 now comes first.
    for i in range(6):
        rewrite_metadata(metadata_path(tiny.root, index=i), timestamp=100.0 - i)
    assert [f.stem for f in read_layout(tiny.root).splits["train"].rgb][:2] == ["frame_0005", "frame_0004"]

    untimed = write_tiny_layout(tmp_path / "untimed", timestamps="none", num_depth=0, num_val_depth=0)
    train = read_layout(untimed.root).splits["train"]
    assert [f.stem for f in train.rgb][:2] == ["frame_0000", "frame_0001"]
    assert train.rgb[0].timestamp is None and train.rgb_timestamps is None


def test_missing_val_is_an_empty_split(tmp_path):
    tiny = write_tiny_layout(tmp_path / "data", num_val_rgb=0, num_val_depth=0)
    val = read_layout(tiny.root).splits["val"]
    assert val.rgb == [] and val.depth == {}


def test_load_rgb_resizes_a_file_of_another_size(tiny):
    image = first_file(tiny.root / "train" / "rgbs")
    Image.fromarray(np.full((12, 16, 3), 77, dtype=np.uint8)).save(image)  # twice W x H
    frame = read_layout(tiny.root).splits["train"].rgb[0]
    assert frame.file_size == (16, 12)
    pixels = load_rgb(frame)
    assert pixels.shape == (6, 8, 3) and pixels.dtype == np.uint8
    assert np.all(pixels == 77)  # a constant image stays constant under bilinear resizing


def test_depth_outside_rgb_span_warns_once_per_track(tiny):
    # Train RGB times span [10, 12.5] s; move two of the three depth frames outside.
    rewrite_metadata(metadata_path(tiny.root, folder="metadata_depth_lidar", index=0), timestamp=9.0)
    rewrite_metadata(metadata_path(tiny.root, folder="metadata_depth_lidar", index=2), timestamp=13.0)
    with pytest.warns(LayoutWarning) as record:
        read_layout(tiny.root)
    messages = [str(w.message) for w in record if issubclass(w.category, LayoutWarning)]
    assert len(messages) == 1
    assert "depth_lidar" in messages[0] and "2 of 3" in messages[0]


def test_good_layout_reads_without_warnings(tiny):
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayoutWarning)
        read_layout(tiny.root)


# --- bad input: every error names the offending path --------------------------------------------


def test_missing_coordinates(tiny):
    (tiny.root / "coordinates.pt").unlink()
    with raises_naming(tiny.root / "coordinates.pt"):
        read_layout(tiny.root)


def convert_command(message: str) -> str:
    """The `async-nerf-convert ...` command quoted in an error message."""
    match = re.search(r"`(async-nerf-convert [^`]*)`", message)
    assert match, f"no async-nerf-convert command in: {message}"
    return match.group(1)


def test_a_folder_without_coordinates_says_how_to_get_the_layout(tiny):
    # A newcomer points --data at some folder: the error names the file it looked for and the two
    # ways to a dataset, a converter command that really parses and a layout document in the repository.
    (tiny.root / "coordinates.pt").unlink()
    with pytest.raises(LayoutError) as caught:
        read_layout(tiny.root)
    message = str(caught.value)
    assert message.startswith(f"{tiny.root / 'coordinates.pt'}: missing")
    assert LAYOUT_DOC == "docs/DATA_LAYOUT.md" and LAYOUT_DOC in message
    assert (REPOSITORY / LAYOUT_DOC).is_file()
    command = convert_command(message)
    args = command.replace("{opengl-enu,opencv-enu,drb}", "opencv-enu").split()[1:]
    config = tyro.cli(ConvertConfig, args=args)
    assert (config.raw, config.out, config.pose_convention) == (Path("RAW"), Path("DATA"), "opencv-enu")


def test_a_raw_capture_given_as_data_gets_its_convert_command(tmp_path):
    raw = tmp_path / "capture"
    (raw / "rgb").mkdir(parents=True)
    (raw / "rgb_poses").mkdir()
    with raises_naming(raw / "coordinates.pt") as caught:
        read_layout(raw)
    assert "looks like a raw capture" in str(caught.value)
    args = convert_command(str(caught.value)).split()
    assert args[args.index("--raw") + 1] == str(raw)


def test_the_layout_document_lists_every_name_the_reader_accepts():
    # docs/DATA_LAYOUT.md is the contract: each file type and folder name the code takes appears in it.
    doc = (REPOSITORY / LAYOUT_DOC).read_text()
    names = [ext.lstrip(".") for ext in RGB_EXTENSIONS + DEPTH_EXTENSIONS] + list(RGB_METADATA_DIRS)
    names += [f"{prefix}TRACK" for prefix in DEPTH_DIR_PREFIXES] + ["metadata_depth_TRACK", "pose_gt_rgb"]
    names += ["origin_drb", "pose_scale_factor", "W", "H", "intrinsics", "c2w", "timestamp", "depth_scale"]
    names += ['"ray"', '"planar"', '"z"']
    assert [name for name in names if name not in doc] == []


@pytest.mark.parametrize(
    "coordinates, problem",
    [
        ({"pose_scale_factor": 1.0}, "origin_drb"),
        ({"origin_drb": torch.zeros(3)}, "pose_scale_factor"),
        ({"origin_drb": torch.zeros(3), "pose_scale_factor": 0.0}, "positive"),
        ({"origin_drb": torch.zeros(3), "pose_scale_factor": float("nan")}, "finite"),
        ({"origin_drb": torch.zeros(2), "pose_scale_factor": 1.0}, "3 finite numbers"),
    ],
)
def test_bad_coordinates(tiny, coordinates, problem):
    torch.save(coordinates, tiny.root / "coordinates.pt")
    with pytest.raises(LayoutError, match=rf"coordinates\.pt: .*{problem}"):
        read_layout(tiny.root)


def test_metadata_without_image(tiny):
    first_file(tiny.root / "train" / "rgbs").unlink()
    with raises_naming(metadata_path(tiny.root)):
        read_layout(tiny.root)


def test_image_without_metadata(tiny):
    image = first_file(tiny.root / "train" / "rgbs")
    metadata_path(tiny.root).unlink()
    with raises_naming(image):
        read_layout(tiny.root)


def test_unsupported_image_type_is_named(tiny):
    image = first_file(tiny.root / "train" / "rgbs")
    image.rename(image.with_suffix(".bmp"))
    with pytest.raises(LayoutError, match=r"frame_0000\.bmp, which is not a supported type"):
        read_layout(tiny.root)


def test_depth_metadata_without_depth_file(tiny):
    first_file(tiny.root / "train" / "depth_lidar").unlink()
    with raises_naming(metadata_path(tiny.root, folder="metadata_depth_lidar")):
        read_layout(tiny.root)


def test_depth_file_without_metadata(tiny):
    depth = first_file(tiny.root / "train" / "depth_lidar")
    metadata_path(tiny.root, folder="metadata_depth_lidar").unlink()
    with raises_naming(depth):
        read_layout(tiny.root)


def test_depth_metadata_folder_without_depth_folder(tiny):
    shutil.rmtree(tiny.root / "val" / "depth_lidar")
    with pytest.raises(LayoutError, match=r"metadata_depth_lidar: no depth folder"):
        read_layout(tiny.root)


@pytest.mark.parametrize(
    "folder, key",
    [(folder, key) for folder in ("metadata", "metadata_depth_lidar") for key in ("W", "H", "intrinsics")]
    + [("metadata", "c2w")],  # a depth frame's c2w is an optional prior
)
def test_missing_metadata_key(tiny, folder, key):
    path = metadata_path(tiny.root, folder=folder, index=1)
    rewrite_metadata(path, drop=[key])
    with pytest.raises(LayoutError, match=rf"{re.escape(path.name)}: missing key '{key}'"):
        read_layout(tiny.root)


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"intrinsics": torch.tensor([10.0, 11.0, 4.0])}, "shape"),
        ({"intrinsics": torch.tensor([0.0, 11.0, 4.0, 3.0])}, "fx, fy > 0"),
        ({"c2w": torch.eye(3)}, "3x4"),
        ({"c2w": torch.tensor(rgb_pose(10.0)) * 2}, "not a proper rotation"),  # scaled rotation
        ({"W": 8.5}, "positive integer"),
        ({"H": torch.tensor([6, 6])}, "positive integer"),
    ],
)
def test_wrongly_shaped_metadata(tiny, change, problem):
    path = metadata_path(tiny.root, index=3)
    rewrite_metadata(path, **change)
    with pytest.raises(LayoutError, match=rf"{re.escape(path.name)}: .*{problem}"):
        read_layout(tiny.root)


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"depth_scale": 0.0}, "depth_scale must be one finite positive number"),
        ({"depth_scale": [0.001, 0.001]}, "depth_scale must be one finite positive number"),
        ({"depth_kind": "disparity"}, "depth_kind must be 'ray' or 'z'"),
    ],
)
def test_bad_depth_metadata(tiny, change, problem):
    path = metadata_path(tiny.root, folder="metadata_depth_lidar", index=1)
    rewrite_metadata(path, **change)
    with pytest.raises(LayoutError, match=rf"{re.escape(path.name)}: {problem}"):
        read_layout(tiny.root)


@pytest.mark.parametrize("folder", ["metadata", "metadata_depth_lidar"])
def test_non_finite_pose_in_metadata(tiny, folder):
    path = metadata_path(tiny.root, folder=folder)
    pose = torch.tensor(rgb_pose(10.0))
    pose[1, 3] = float("inf")
    rewrite_metadata(path, c2w=pose)
    with pytest.raises(LayoutError, match=rf"{re.escape(path.name)}: 'c2w' has non-finite"):
        read_layout(tiny.root)


@pytest.mark.parametrize("folder", ["pose_gt_rgb", "pose_gt_lidar"])
def test_bad_pose_gt_files(tiny, folder):
    path = first_file(tiny.root / "train" / folder)
    pose = rgb_pose(10.0)
    pose[0, 0] = np.nan
    np.savetxt(path, pose)
    with pytest.raises(LayoutError, match=rf"{re.escape(path.name)}: 'pose' has non-finite"):
        read_layout(tiny.root)
    np.savetxt(path, rgb_pose(10.0)[:2])  # 2x4
    with pytest.raises(LayoutError, match=rf"{re.escape(path.name)}: .*found shape \(2, 4\)"):
        read_layout(tiny.root)


def test_pose_gt_4x4_is_accepted(tiny):
    path = first_file(tiny.root / "train" / "pose_gt_lidar")
    np.savetxt(path, np.vstack([rgb_pose(10.25), [0, 0, 0, 1]]))
    frame = read_layout(tiny.root).splits["train"].depth["lidar"][0]
    np.testing.assert_allclose(frame.pose_gt, rgb_pose(10.25), atol=1e-15)


def test_pose_gt_without_frame(tiny):
    orphan = tiny.root / "train" / "pose_gt_rgb" / "frame_9999.txt"
    np.savetxt(orphan, rgb_pose(10.0))
    with raises_naming(orphan):
        read_layout(tiny.root)


@pytest.mark.parametrize("folder", ["rgbs", "depth_lidar", "metadata"])
def test_unreadable_file(tiny, folder):
    path = first_file(tiny.root / "train" / folder)
    path.write_bytes(b"not a real file")
    with pytest.raises(LayoutError, match=rf"{re.escape(path.name)}: cannot be read"):
        read_layout(tiny.root)


def test_depth_frame_without_timestamp(tiny):
    path = metadata_path(tiny.root, folder="metadata_depth_lidar", index=2)
    rewrite_metadata(path, drop=["timestamp"])  # and its stem, depth_0002, is not a number
    with pytest.raises(LayoutError, match=rf"{re.escape(path.name)}: depth frame without a timestamp"):
        read_layout(tiny.root)


def test_rgb_frame_without_timestamp_when_depth_exists(tiny):
    path = metadata_path(tiny.root, index=4)
    rewrite_metadata(path, drop=["timestamp"])
    with pytest.raises(LayoutError, match=rf"{re.escape(path.name)}: RGB frame without a timestamp"):
        read_layout(tiny.root)


@pytest.mark.parametrize("folder", ["metadata", "metadata_depth_lidar"])
def test_duplicate_timestamps(tiny, folder):
    first, second = metadata_path(tiny.root, folder=folder, index=0), metadata_path(tiny.root, folder=folder, index=1)
    rewrite_metadata(second, timestamp=torch.load(first, weights_only=True)["timestamp"])
    with pytest.raises(LayoutError, match=r"duplicate timestamp") as error:
        read_layout(tiny.root)
    assert first.name in str(error.value) and second.name in str(error.value)


def test_float32_unix_timestamp_is_refused(tiny):
    path = metadata_path(tiny.root)
    # float32 spaces numbers 128 s apart near 1.67e9 s: every frame of a flight would collide.
    rewrite_metadata(path, timestamp=torch.tensor(1667117650.123, dtype=torch.float32))
    with pytest.raises(LayoutError, match=rf"{re.escape(path.name)}: 'timestamp' is stored as torch.float32"):
        read_layout(tiny.root)


def test_depth_file_of_wrong_size(tiny):
    path = first_file(tiny.root / "train" / "depth_lidar")
    np.save(path, np.ones((3, 5), dtype=np.float32))  # metadata says 4 x 3
    with pytest.raises(LayoutError, match=rf"{re.escape(path.name)}: depth map is 5x3"):
        read_layout(tiny.root)


def test_load_depth_metres_checks_size_again(tiny):
    frame = read_layout(tiny.root).splits["train"].depth["lidar"][0]
    np.save(frame.depth_path, np.ones((2, 2), dtype=np.float32))  # file replaced after reading
    with raises_naming(frame.depth_path):
        load_depth_metres(frame)


def test_both_metadata_folders_is_ambiguous(tiny):
    shutil.copytree(tiny.root / "train" / "metadata", tiny.root / "train" / "metadata_rgb")
    with pytest.raises(LayoutError, match=r"both metadata/ and metadata_rgb/ exist"):
        read_layout(tiny.root)


def test_missing_train_split(tiny):
    shutil.rmtree(tiny.root / "train")
    with raises_naming(tiny.root / "train"):
        read_layout(tiny.root)


def test_layout_error_keeps_path_and_problem():
    error = LayoutError(Path("/d/train/metadata/a.pt"), "missing key 'W'")
    assert str(error) == "/d/train/metadata/a.pt: missing key 'W'"
    assert error.path == Path("/d/train/metadata/a.pt") and error.problem == "missing key 'W'"
