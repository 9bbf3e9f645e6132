"""The raw-capture converter (data/convert.py, raw_capture.py, raw_poses.py; console command async-nerf-convert).

The raw capture: 12 RGB frames of 8x6 px at 1 Hz from T0, flying east at 2 m/s along
ENU (10 + 2 t, 5, 30) m while yawing 10 deg/s; 5 depth frames (4x3 px, track "lidar") at
T0 + 0.4 + 2.5 k s, with true poses on the same trajectory. Poses are checked against the
world mapping written out by hand here (ENU x = DRB y, y = -DRB z, z = -DRB x), not the
converter's own, so a convention mistake cannot cancel itself out.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import pytest
import torch
import tyro
from PIL import Image
from scipy.spatial.transform import Rotation

from async_nerf_ns.convert.convert import ConvertConfig, convert_raw
from async_nerf_ns.convert.raw_capture import RawDataError
from async_nerf_ns.convert.poses import ENU_TO_DRB, OPENCV_TO_OPENGL_CAMERA, POSE_CONVENTIONS, raw_c2w_to_drb
from async_nerf_ns.trajectory.timed_poses import nearest_in_time
from async_nerf_ns.layout import LayoutWarning, read_layout
from async_nerf_ns.convert.output_folder import MANIFEST_FILE, OutputFolderError
from async_nerf_ns.scripts import convert as convert_script

T0 = 1667117650.0
RGB_T = np.arange(12.0)
DEPTH_T = 0.4 + 2.5 * np.arange(5)
TRACK = "lidar"
ENU_FROM_DRB = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])
"""By hand: ENU x (east) = DRB y (right), ENU y (north) = -DRB z (back), ENU z (up) = -DRB x (down)."""
FLIP_YZ = np.diag([1.0, -1.0, -1.0])
"""OpenCV camera axes (x right, y down, z forward) from OpenGL ones (x right, y up, z back)."""
INTRINSICS = {
    "rgb": {"fx": 10.0, "fy": 11.0, "cx": 4.0, "cy": 3.0},
    TRACK: {"fx": 5.0, "fy": 5.5, "cx": 2.0, "cy": 1.5},
}



def drb_c2w_to_raw(c2w_drb: np.ndarray, convention: str) -> np.ndarray:
    """The inverse of `raw_c2w_to_drb`: DRB metres back to a raw pose in `convention`."""
    c2w_drb = np.asarray(c2w_drb, dtype=np.float64)[..., :3, :]
    if convention == "drb":
        return c2w_drb.copy()
    if convention not in ("opengl-enu", "opencv-enu"):
        raise ValueError(f"unknown pose convention '{convention}'; expected one of {POSE_CONVENTIONS}")
    rotation = np.einsum("ij,...jk->...ik", ENU_TO_DRB.T, c2w_drb[..., :3])
    if convention == "opencv-enu":
        rotation = rotation @ OPENCV_TO_OPENGL_CAMERA
    position = np.einsum("ij,...j->...i", ENU_TO_DRB.T, c2w_drb[..., 3])
    return np.concatenate([rotation, position[..., None]], axis=-1)

def enu_opengl_pose(t: float) -> np.ndarray:
    """4x4 camera-to-world, ENU metres, OpenGL camera axes, at t seconds after T0."""
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_euler("zyx", [10.0 * t, 5.0, 60.0], degrees=True).as_matrix()
    pose[:3, 3] = [10.0 + 2.0 * t, 5.0, 30.0]
    return pose


def raw_pose(t: float, convention: str) -> np.ndarray:
    """The same pose as a raw file in `convention` would hold it (4x4)."""
    pose = enu_opengl_pose(t)
    if convention == "opencv-enu":
        pose[:3, :3] = pose[:3, :3] @ FLIP_YZ
    elif convention == "drb":
        pose[:3, :] = ENU_FROM_DRB.T @ pose[:3, :]
    return pose


def stem(t: float) -> str:
    return f"{T0 + t:.3f}"


def write_raw(root: Path, convention: str = "opengl-enu") -> Path:
    """The raw capture described in the module docstring, poses written in `convention`."""
    for sub in ("rgb", "rgb_poses", f"depth_{TRACK}", f"depth_{TRACK}_poses"):
        (root / sub).mkdir(parents=True)
    for i, t in enumerate(RGB_T):
        pixels = np.full((6, 8, 3), 20 * i, dtype=np.uint8)
        Image.fromarray(pixels).save(root / "rgb" / f"{stem(t)}.png")
        np.savetxt(root / "rgb_poses" / f"{stem(t)}.txt", raw_pose(t, convention), fmt="%.17g")
    for t in DEPTH_T:
        np.save(root / f"depth_{TRACK}" / f"{stem(t)}.npy", np.full((3, 4), 7.0, dtype=np.float32))
        np.savetxt(root / f"depth_{TRACK}_poses" / f"{stem(t)}.txt", raw_pose(t, convention)[:3], fmt="%.17g")
    (root / "intrinsics.json").write_text(json.dumps(INTRINSICS))
    return root


def config(raw: Path, out: Path, **changes) -> ConvertConfig:
    return ConvertConfig(raw=raw, out=out, pose_convention=changes.pop("pose_convention", "opengl-enu"), **changes)


def expected_normalised(t: float) -> np.ndarray:
    """Normalised DRB pose at t: origin_drb = (-30, 21, -5), pose_scale_factor = 11 (see test below)."""
    pose = enu_opengl_pose(t)[:3]
    drb = ENU_FROM_DRB.T @ pose
    drb[:, 3] = (drb[:, 3] - [-30.0, 21.0, -5.0]) / 11.0
    return drb


@pytest.fixture
def raw(tmp_path) -> Path:
    return write_raw(tmp_path / "raw")


@pytest.fixture
def converted(raw, tmp_path):
    out = tmp_path / "out"
    summary = convert_raw(config(raw, out))
    return out, summary, read_layout(out)


# --- conventions --------------------------------------------------------------------------------


def test_world_mapping_is_a_proper_rotation_that_puts_up_at_minus_x():
    # DRB = (-z, x, -y) of an ENU point: (1, 2, 3) -> (-3, 1, -2); det +1, so no mirror image.
    np.testing.assert_array_equal(ENU_TO_DRB @ [1.0, 2.0, 3.0], [-3.0, 1.0, -2.0])
    assert np.linalg.det(ENU_TO_DRB) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_array_equal(ENU_TO_DRB, ENU_FROM_DRB.T)


def test_camera_axes_of_each_convention():
    # An identity OpenGL camera in ENU looks along -z = down (DRB +x), its right is east (DRB +y);
    # an identity OpenCV camera looks along +z = up (DRB -x), its right is also east.
    identity = np.eye(4)[:3]
    gl = raw_c2w_to_drb(identity, "opengl-enu")
    cv = raw_c2w_to_drb(identity, "opencv-enu")
    np.testing.assert_array_equal(-gl[:, 2], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(gl[:, 0], [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(-cv[:, 2], [-1.0, 0.0, 0.0])
    np.testing.assert_array_equal(cv[:, 0], [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(raw_c2w_to_drb(identity, "drb"), identity)
    for convention in ("opengl-enu", "opencv-enu", "drb"):
        pose = raw_pose(3.7, convention)[:3]
        np.testing.assert_allclose(drb_c2w_to_raw(raw_c2w_to_drb(pose, convention), convention), pose, atol=1e-14)


def test_nearest_in_time_rounds_to_the_closer_frame_and_ties_go_earlier():
    reference = np.array([0.0, 1.0, 2.0, 3.0])
    times = np.array([-5.0, 0.4, 0.6, 1.5, 2.5, 9.0])
    np.testing.assert_array_equal(nearest_in_time(times, reference), [0, 0, 1, 1, 2, 3])


# --- a good conversion --------------------------------------------------------------------------


def test_origin_and_scale_are_the_rgb_bounding_box_centre_and_radius(converted):
    out, summary, layout = converted
    # RGB cameras at ENU (10..32, 5, 30) -> DRB (-30, 10..32, -5): midpoint (-30, 21, -5), radius 11 m.
    np.testing.assert_array_equal(layout.coordinates.origin_drb, [-30.0, 21.0, -5.0])
    assert layout.coordinates.pose_scale_factor == 11.0
    np.testing.assert_array_equal(summary.origin_drb, [-30.0, 21.0, -5.0])
    positions = np.stack([f.c2w[:, 3] for s in layout.splits.values() for f in s.rgb])
    assert np.linalg.norm(positions, axis=-1).max() == pytest.approx(1.0, abs=1e-15)


def test_split_counts_follow_val_every(converted):
    _, summary, layout = converted
    # --val-every 8: frame 4 of each stream goes to val (the 13th would be frame 12; there are 12 RGB, 5 depth).
    train, val = layout.splits["train"], layout.splits["val"]
    assert [len(train.rgb), len(val.rgb)] == [11, 1]
    assert [len(train.depth[TRACK]), len(val.depth[TRACK])] == [4, 1]
    assert [f.stem for f in val.rgb] == [stem(4.0)] and [f.stem for f in val.depth[TRACK]] == [stem(10.4)]
    assert summary.counts == {"train": {"rgb": 11, TRACK: 4}, "val": {"rgb": 1, TRACK: 1}}
    assert summary.pose_gt_counts == {TRACK: 5}


def test_rgb_frames_keep_pixels_intrinsics_and_times(converted):
    _, _, layout = converted
    frames = sorted((f for s in layout.splits.values() for f in s.rgb), key=lambda f: f.timestamp)
    assert [f.timestamp for f in frames] == [T0 + t for t in RGB_T]
    for i, frame in enumerate(frames):
        assert (frame.width, frame.height, frame.image_path.name) == (8, 6, f"{stem(RGB_T[i])}.png")
        np.testing.assert_array_equal(frame.intrinsics, [10.0, 11.0, 4.0, 3.0])
        assert np.asarray(Image.open(frame.image_path)).max() == 20 * i  # copied, not another frame
    meta = torch.load(frames[0].metadata_path, weights_only=True)
    assert isinstance(meta["timestamp"], float) and meta["c2w"].dtype == torch.float64


def test_rgb_poses_round_trip_to_the_raw_enu_poses(converted):
    _, _, layout = converted
    coords = layout.coordinates
    for frame in (f for s in layout.splits.values() for f in s.rgb):
        np.testing.assert_allclose(frame.c2w, expected_normalised(frame.timestamp - T0), atol=1e-12)
        back = ENU_FROM_DRB @ frame.c2w  # un-normalise with the hand-written mapping
        back[:, 3] = ENU_FROM_DRB @ (frame.c2w[:, 3] * coords.pose_scale_factor + coords.origin_drb)
        np.testing.assert_allclose(back, enu_opengl_pose(frame.timestamp - T0)[:3], atol=1e-6)


def test_depth_prior_is_the_nearest_rgb_pose_and_pose_gt_the_true_one(converted):
    _, _, layout = converted
    rgb_by_time = {round(f.timestamp - T0): f for s in layout.splits.values() for f in s.rgb}
    depth = sorted((f for s in layout.splits.values() for f in s.depth[TRACK]), key=lambda f: f.timestamp)
    # Depth at 0.4, 2.9, 5.4, 7.9, 10.4 s: the nearest RGB frames are those at 0, 3, 5, 8, 10 s.
    for frame, t, nearest in zip(depth, DEPTH_T, (0, 3, 5, 8, 10)):
        assert frame.timestamp == T0 + t and (frame.width, frame.height) == (4, 3)
        np.testing.assert_array_equal(frame.intrinsics, [5.0, 5.5, 2.0, 1.5])
        np.testing.assert_array_equal(frame.c2w_prior, rgb_by_time[nearest].c2w)
        np.testing.assert_allclose(frame.pose_gt, expected_normalised(t), atol=1e-12)
        assert frame.depth_scale == 1.0  # .npy default (metres); no depth_scale was given
        raw_file = layout.root.parent / "raw" / f"depth_{TRACK}" / frame.depth_path.name
        assert frame.depth_path.read_bytes() == raw_file.read_bytes()  # copied byte for byte


def test_depth_after_the_last_rgb_frame_converts_with_a_warning(raw, tmp_path):
    np.save(raw / f"depth_{TRACK}" / f"{stem(11.5)}.npy", np.full((3, 4), 7.0, dtype=np.float32))
    out = tmp_path / "out"
    with pytest.warns(LayoutWarning, match="outside the train RGB time span"):
        convert_raw(config(raw, out))
    with pytest.warns(LayoutWarning):
        late = read_layout(out).splits["train"].depth[TRACK][-1]
    assert late.timestamp == T0 + 11.5 and late.pose_gt is None  # no true pose was given for it
    np.testing.assert_array_equal(late.c2w_prior, expected_normalised(11.0))  # the last RGB frame's pose


@pytest.mark.parametrize("convention", ["opencv-enu", "drb"])
def test_other_conventions_give_the_same_dataset(tmp_path, converted, convention):
    out = tmp_path / convention
    convert_raw(config(write_raw(tmp_path / f"raw_{convention}", convention), out, pose_convention=convention))
    reference, other = converted[2], read_layout(out)
    np.testing.assert_allclose(other.coordinates.origin_drb, reference.coordinates.origin_drb, atol=1e-12)
    assert other.coordinates.pose_scale_factor == pytest.approx(reference.coordinates.pose_scale_factor, abs=1e-12)
    for split in ("train", "val"):
        for a, b in zip(reference.splits[split].rgb, other.splits[split].rgb, strict=True):
            np.testing.assert_allclose(b.c2w, a.c2w, atol=1e-12)
        for a, b in zip(reference.splits[split].depth[TRACK], other.splits[split].depth[TRACK], strict=True):
            np.testing.assert_allclose(b.c2w_prior, a.c2w_prior, atol=1e-12)
            np.testing.assert_allclose(b.pose_gt, a.pose_gt, atol=1e-12)


def test_wrong_convention_is_visible(tmp_path, converted):
    # Reading OpenGL files as OpenCV flips every camera to look the other way (180 degrees off).
    out = tmp_path / "wrong"
    convert_raw(config(tmp_path / "raw", out, pose_convention="opencv-enu"))
    a, b = converted[2].splits["train"].rgb[0].c2w, read_layout(out).splits["train"].rgb[0].c2w
    assert np.dot(a[:, 2], b[:, 2]) == pytest.approx(-1.0)


def test_command_line_intrinsics_and_depth_scale_win_over_the_file(raw, tmp_path):
    data = dict(INTRINSICS, depth_scale={TRACK: 0.5})
    (raw / "intrinsics.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    args = ["--raw", str(raw), "--out", str(out), "--pose-convention", "opengl-enu",
            "--rgb-intrinsics", "12", "13", "4.5", "3.5", "--depth-scale", TRACK, "0.25"]
    convert_raw(tyro.cli(ConvertConfig, args=args))
    layout = read_layout(out)
    np.testing.assert_array_equal(layout.splits["train"].rgb[0].intrinsics, [12.0, 13.0, 4.5, 3.5])
    depth = layout.splits["train"].depth[TRACK][0]
    np.testing.assert_array_equal(depth.intrinsics, [5.0, 5.5, 2.0, 1.5])  # from the file: no flag for it
    assert depth.depth_scale == 0.25


def test_intrinsics_from_the_command_line_alone(raw, tmp_path):
    (raw / "intrinsics.json").unlink()
    out = tmp_path / "out"
    convert_raw(config(raw, out, rgb_intrinsics=(10.0, 11.0, 4.0, 3.0), depth_intrinsics={TRACK: (5, 5, 2, 1.5)}))
    np.testing.assert_array_equal(read_layout(out).splits["val"].depth[TRACK][0].intrinsics, [5.0, 5.0, 2.0, 1.5])


def test_other_image_types_are_reencoded_as_png(raw, tmp_path):
    bmp = raw / "rgb" / f"{stem(2.0)}.bmp"
    pixels = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    Image.fromarray(pixels).save(bmp)
    (raw / "rgb" / f"{stem(2.0)}.png").unlink()
    out = tmp_path / "out"
    convert_raw(config(raw, out))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "train" / "rgbs" / f"{stem(2.0)}.png")), pixels)


def test_console_command_prints_the_summary(raw, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["async-nerf-convert", "--raw", str(raw), "--out", str(out),
                                      "--pose-convention", "opengl-enu", "--val-every", "4"])
    convert_script.entrypoint()
    text = capsys.readouterr().out
    # --val-every 4: frames 2, 6, 10 of the RGB stream and frame 2 of the depth track go to val.
    assert "train: rgb 9, lidar 4" in text and "val:   rgb 3, lidar 1" in text
    assert "origin_drb [-30, 21, -5] m, pose_scale_factor 11 m" in text


def test_console_command_reports_bad_input_in_one_line(raw, tmp_path, monkeypatch, capsys):
    (raw / "rgb_poses" / f"{stem(3)}.txt").unlink()
    monkeypatch.setattr(sys, "argv", ["async-nerf-convert", "--raw", str(raw), "--out", str(tmp_path / "out"),
                                      "--pose-convention", "opengl-enu"])
    with pytest.raises(SystemExit) as caught:
        convert_script.entrypoint()
    assert caught.value.code == 1
    text = capsys.readouterr().out
    assert f"{raw / 'rgb' / stem(3)}.png: frame without a pose" in text


# --- bad input ----------------------------------------------------------------------------------


def _add_frame(raw: Path, name: str, pose: np.ndarray) -> None:
    Image.fromarray(np.zeros((6, 8, 3), dtype=np.uint8)).save(raw / "rgb" / f"{name}.png")
    np.savetxt(raw / "rgb_poses" / f"{name}.txt", pose)


def _drop_intrinsics(raw: Path, key: str) -> None:
    data = dict(INTRINSICS)
    data.pop(key)
    (raw / "intrinsics.json").write_text(json.dumps(data))


BAD_RAW: Dict[str, tuple[Callable[[Path], None], str, str]] = {
    # case: (break the raw folder, path the error names, words it says)
    "no rgb folder": (lambda r: shutil.rmtree(r / "rgb"), "rgb", "missing"),
    "no pose folder": (lambda r: shutil.rmtree(r / "rgb_poses"), "rgb_poses", "missing"),
    "image without pose": (lambda r: (r / "rgb_poses" / f"{stem(3)}.txt").unlink(), f"rgb/{stem(3)}.png",
                           "frame without a pose"),
    "pose without image": (lambda r: (r / "rgb" / f"{stem(3)}.png").unlink(), f"rgb_poses/{stem(3)}.txt",
                           "pose without a frame"),
    "unparsable pose": (lambda r: (r / "rgb_poses" / f"{stem(5)}.txt").write_text("1 0 0\n0 one 0\n"),
                        f"rgb_poses/{stem(5)}.txt", "cannot parse"),
    "non-finite pose": (lambda r: np.savetxt(r / "rgb_poses" / f"{stem(5)}.txt", np.full((3, 4), np.nan)),
                        f"rgb_poses/{stem(5)}.txt", "non-finite"),
    "not a rotation": (lambda r: np.savetxt(r / "rgb_poses" / f"{stem(5)}.txt", 2 * np.eye(4)[:3]),
                       f"rgb_poses/{stem(5)}.txt", "not a proper rotation"),
    "name is not a time": (lambda r: _add_frame(r, "frame_0001", np.eye(4)), "rgb/frame_0001.png", "capture time"),
    "duplicate timestamp": (lambda r: _add_frame(r, "1667117650.0", np.eye(4)), "rgb/1667117650.0",
                            "duplicate timestamp"),  # 1667117650.0 and 1667117650.000 are one time
    "two files for one time": (lambda r: shutil.copy(r / "rgb" / f"{stem(1)}.png", r / "rgb" / f"{stem(1)}.jpg"),
                               f"rgb/{stem(1)}", "two files"),
    "duplicate depth timestamp": (lambda r: shutil.copy(r / f"depth_{TRACK}" / f"{stem(0.4)}.npy",
                                                        r / f"depth_{TRACK}" / "1667117650.4.npy"),
                                  f"depth_{TRACK}/", "duplicate timestamp"),
    "no rgb intrinsics": (lambda r: _drop_intrinsics(r, "rgb"), "intrinsics.json", "--rgb-intrinsics"),
    "no depth intrinsics": (lambda r: _drop_intrinsics(r, TRACK), "intrinsics.json", f"--depth-intrinsics {TRACK}"),
    "unknown intrinsics entry": (lambda r: (r / "intrinsics.json").write_text(json.dumps(dict(INTRINSICS, tof={}))),
                                 "intrinsics.json", "'tof'"),
    "bad json": (lambda r: (r / "intrinsics.json").write_text("{rgb: 1"), "intrinsics.json", "JSON"),
    "depth pose without frame": (lambda r: (r / f"depth_{TRACK}" / f"{stem(2.9)}.npy").unlink(),
                                 f"depth_{TRACK}_poses/{stem(2.9)}.txt", "pose without a frame"),
    "poses without a track": (lambda r: (r / "depth_tof_poses").mkdir(), "depth_tof_poses", "no folder depth_tof/"),
    "images of two sizes": (lambda r: Image.new("RGB", (9, 6)).save(r / "rgb" / f"{stem(7)}.png"),
                            f"rgb/{stem(7)}.png", "9x6"),
    "cameras do not move": (lambda r: [np.savetxt(f, np.eye(4)) for f in (r / "rgb_poses").iterdir()], "rgb_poses",
                            "all RGB cameras are at one position"),
    "unreadable depth": (lambda r: (r / f"depth_{TRACK}" / f"{stem(5.4)}.npy").write_text("no array"),
                         f"depth_{TRACK}/{stem(5.4)}.npy", "cannot be read"),
}


@pytest.mark.parametrize("case", sorted(BAD_RAW))
def test_bad_raw_input_names_the_file_and_writes_nothing(raw, tmp_path, case):
    breaker, names, says = BAD_RAW[case]
    breaker(raw)
    out = tmp_path / "out"
    with pytest.raises(RawDataError) as caught:
        convert_raw(config(raw, out))
    message = str(caught.value)
    assert str(raw / names) in message and says in message, message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no OUT, no temporary folder left


def test_command_line_intrinsics_for_a_track_that_does_not_exist(raw, tmp_path):
    with pytest.raises(RawDataError, match=re.escape(f"{raw}: --depth-intrinsics/--depth-scale name track 'tof'")):
        convert_raw(config(raw, tmp_path / "out", depth_intrinsics={"tof": (1, 1, 1, 1)}))


def test_val_every_must_leave_a_val_rgb_frame(raw, tmp_path):
    with pytest.raises(ValueError, match="at least 2"):
        convert_raw(config(raw, tmp_path / "out", val_every=1))
    # 12 RGB frames and --val-every 30: the first val frame would be number 15.
    with pytest.raises(RawDataError, match="12 RGB frames leave none for val/"):
        convert_raw(config(raw, tmp_path / "out", val_every=30))


# --- OUT and --overwrite ------------------------------------------------------------------------


def test_an_existing_empty_folder_is_fine(raw, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    convert_raw(config(raw, out))
    assert (out / "coordinates.pt").is_file()


def test_a_non_empty_out_is_refused_without_overwrite(converted):
    out, _, _ = converted
    before = sorted(p for p in out.rglob("*"))
    with pytest.raises(OutputFolderError, match=re.escape(f"{out}: exists and is not empty")):
        convert_raw(config(out.parent / "raw", out))
    assert sorted(p for p in out.rglob("*")) == before


def test_overwrite_replaces_an_earlier_output(converted):
    out, _, _ = converted
    (out / "train" / "rgbs" / f"{stem(0)}.png").unlink()  # even a damaged earlier output is replaced
    summary = convert_raw(config(out.parent / "raw", out, val_every=4, overwrite=True))
    assert summary.counts["val"] == {"rgb": 3, TRACK: 1}
    layout = read_layout(out)
    assert [len(layout.splits["train"].rgb), len(layout.splits["val"].rgb)] == [9, 3]
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    on_disk = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    assert manifest["files"] == on_disk and manifest["val_every"] == 4
    assert sorted(p.name for p in out.parent.iterdir()) == ["out", "raw"]


@pytest.mark.parametrize("foreign", ["notes.txt", "train/rgbs/extra.png", "empty_folder/"])
def test_overwrite_never_deletes_what_the_tool_did_not_write(converted, foreign):
    out, _, _ = converted
    path = out / foreign
    if foreign.endswith("/"):
        path.mkdir()
    else:
        path.write_text("mine")
    before = sorted(p for p in out.rglob("*"))
    with pytest.raises(OutputFolderError, match=re.escape(f"{path.as_posix().rstrip('/')}: was not written by")):
        convert_raw(config(out.parent / "raw", out, overwrite=True))
    assert sorted(p for p in out.rglob("*")) == before


def test_overwrite_refuses_a_folder_without_a_manifest(raw, tmp_path):
    out = tmp_path / "someone_elses"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    with pytest.raises(OutputFolderError, match=re.escape(f"{out}: --overwrite replaces only an earlier output")):
        convert_raw(config(raw, out, overwrite=True))
    assert (out / "thesis.tex").read_text() == "mine"


def test_a_failed_overwrite_keeps_the_earlier_output(converted):
    # A truncated BMP has a readable header (so every check passes) but fails while frames are
    # written: the failure comes after the new dataset was started, and must not touch the old one.
    out, _, _ = converted
    raw = out.parent / "raw"
    bmp = raw / "rgb" / f"{stem(9)}.bmp"
    Image.new("RGB", (8, 6)).save(bmp)
    bmp.write_bytes(bmp.read_bytes()[:80])
    (raw / "rgb" / f"{stem(9)}.png").unlink()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(RawDataError, match=re.escape(f"{bmp}: cannot be decoded")):
        convert_raw(config(raw, out, overwrite=True))
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["out", "raw"]


# --- pose files, extrinsics and clock offsets on the folder source ------------------------------


def _tum_of_raw(raw: Path, times) -> Path:
    """A TUM file of the raw capture's OpenGL ENU poses at T0 + times (rgb_poses/ removed)."""
    lines = []
    for t in times:
        pose = enu_opengl_pose(t)
        q = Rotation.from_matrix(pose[:3, :3]).as_quat()
        lines.append(" ".join(f"{v:.12f}" for v in [T0 + t, *pose[:3, 3], *q]))
    shutil.rmtree(raw / "rgb_poses")
    path = raw.parent / "trajectory.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_folder_with_a_tum_trajectory_gives_the_same_dataset(raw, converted, tmp_path):
    tum = _tum_of_raw(raw, np.arange(-0.5, 11.6, 0.25))  # 4 Hz, so every frame is at a sample
    out = tmp_path / "tum"
    summary = convert_raw(config(raw, out, tum=tum))
    reference, layout = converted[2], read_layout(out)
    for a, b in zip(reference.splits["train"].rgb, layout.splits["train"].rgb, strict=True):
        np.testing.assert_allclose(b.c2w, a.c2w, atol=4e-12)  # 12 decimals in the file: measured 1.2e-12
    assert f"RGB poses from {tum}: 12 of 12 frames at a pose sample, 0 interpolated" in summary.notes


def test_folder_tum_between_frames_is_interpolated_and_partial_coverage_warned(raw, tmp_path):
    tum = _tum_of_raw(raw, np.arange(2.1, 12.0, 0.5))  # from 2.1 s: frames 0, 1, 2 have no pose
    out = tmp_path / "out"
    with pytest.warns(LayoutWarning, match=re.escape(f"{tum} covers 9 of the 12 frames of {raw / 'rgb'}; left out 3 "
                                                     "frames without a pose: 3 before its first pose")):
        summary = convert_raw(config(raw, out, tum=tum))
    with pytest.warns(LayoutWarning):  # depth frames at 0.4 s is now before the first RGB frame
        layout = read_layout(out)
    frames = sorted((f for s in layout.splits.values() for f in s.rgb), key=lambda f: f.timestamp)
    assert [f.timestamp - T0 for f in frames] == pytest.approx(RGB_T[3:], abs=1e-6)
    # Yaw at a constant rate and a straight line at constant speed: linear + SLERP is exact between samples,
    # up to the float64 resolution of Unix times (2.4e-7 s): measured 1.7e-8 (rotation), 1.9e-7 m; x3 margin.
    coords = layout.coordinates
    for frame in frames:
        back = ENU_FROM_DRB @ frame.c2w
        back[:, 3] = ENU_FROM_DRB @ (frame.c2w[:, 3] * coords.pose_scale_factor + coords.origin_drb)
        truth = enu_opengl_pose(frame.timestamp - T0)[:3]
        assert np.abs(back[:, :3] - truth[:, :3]).max() < 5e-8 and np.abs(back[:, 3] - truth[:, 3]).max() < 6e-7
    assert "0 of 9 frames at a pose sample" not in summary.notes[0] and "9 interpolated" in summary.notes[0]


def test_folder_refuses_rgb_poses_and_a_pose_file_together(raw, tmp_path):
    tum = tmp_path / "trajectory.txt"
    tum.write_text(f"{T0} 0 0 0 0 0 0 1\n")
    with pytest.raises(RawDataError, match=re.escape(f"{raw / 'rgb_poses'}: RGB poses come from --tum")):
        convert_raw(config(raw, tmp_path / "out", tum=tum))


def test_camera_to_body_applies_to_every_rgb_pose(raw, tmp_path):
    # rgb_poses/ are the poses of a body whose camera sits 1 m along the body's x axis, turned 90 deg about z.
    out = tmp_path / "out"
    extrinsic = (1.0, 0.0, 0.0, *Rotation.from_euler("z", 90, degrees=True).as_quat())
    convert_raw(config(raw, out, camera_to_body=extrinsic))
    coords = read_layout(out).coordinates
    frame = read_layout(out).splits["train"].rgb[0]
    body = enu_opengl_pose(0.0)
    body_from_camera = np.eye(4)
    body_from_camera[:3, :3] = [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]  # 90 deg about z, by hand
    body_from_camera[0, 3] = 1.0
    camera = body @ body_from_camera
    back = ENU_FROM_DRB @ frame.c2w
    back[:, 3] = ENU_FROM_DRB @ (frame.c2w[:, 3] * coords.pose_scale_factor + coords.origin_drb)
    np.testing.assert_allclose(back, camera[:3], atol=1e-9)


def test_folder_depth_time_offset(raw, tmp_path):
    out = tmp_path / "out"
    summary = convert_raw(config(raw, out, depth_time_offset={TRACK: 0.2}))
    depth = sorted((f for s in read_layout(out).splits.values() for f in s.depth[TRACK]), key=lambda f: f.timestamp)
    assert [f.timestamp - T0 for f in depth] == pytest.approx(DEPTH_T + 0.2, abs=1e-6)
    assert [f.stem for f in depth] == [stem(t) for t in DEPTH_T]  # file names keep the sensor's stamp
    # 2.9 s + 0.2 = 3.1 s: the nearest RGB frame stays 3 s; 0.4 + 0.2 = 0.6 s: it becomes 1 s (was 0 s).
    rgb_by_time = {round(f.timestamp - T0): f for s in read_layout(out).splits.values() for f in s.rgb}
    np.testing.assert_array_equal(depth[0].c2w_prior, rgb_by_time[1].c2w)
    assert f"depth track {TRACK}: +200.000 ms added to its stamps (RGB clock)" in summary.notes
    with pytest.raises(RawDataError, match="--depth-time-offset names track 'tof'"):
        convert_raw(config(raw, tmp_path / "out2", depth_time_offset={"tof": 0.2}))


# --- masks ----------------------------------------------------------------------------------------


def test_a_mask_folder_gives_masks_beside_the_frames_and_bad_masks_are_named(raw, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    keep = np.zeros((6, 8), dtype=np.uint8)
    keep[:, 4:] = 255
    Image.fromarray(keep).save(masks / f"{stem(RGB_T[0])}.png")
    Image.fromarray(keep).save(masks / f"{stem(RGB_T[4])}.png")  # val frame: RGB_T[4] with val_every 8
    Image.fromarray(keep).save(masks / "not_a_frame.png")
    out = tmp_path / "out"
    with pytest.warns(LayoutWarning, match="not_a_frame.png: 1 file"):
        summary = convert_raw(config(raw, out, mask_folder=masks))
    assert summary.counts["train"]["masks"] == 1 and summary.counts["val"]["masks"] == 1
    frames = {frame.stem: frame for split in ("train", "val") for frame in read_layout(out).splits[split].rgb}
    assert sorted(stem for stem, frame in frames.items() if frame.mask_path) == sorted([stem(RGB_T[0]), stem(RGB_T[4])])
    np.testing.assert_array_equal(np.asarray(Image.open(frames[stem(RGB_T[0])].mask_path)), keep)
    assert json.loads((out / MANIFEST_FILE).read_text())["mask_folder"] == str(masks.resolve())

    Image.fromarray(keep[:3]).save(masks / f"{stem(RGB_T[1])}.png")
    with pytest.raises(RawDataError, match="mask is 8x3, the RGB frames are 8x6") as error:
        convert_raw(config(raw, tmp_path / "out2", mask_folder=masks))
    assert error.value.path == masks / f"{stem(RGB_T[1])}.png" and not (tmp_path / "out2").exists()
