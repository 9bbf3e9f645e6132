"""RGB pose sources of async-nerf-convert (pose topic, Odometry + extrinsic, TF chain, TUM, COLMAP,
transforms.json) and what it does with bad input. The rig and its bags are test_convert_bag.py's.

Every pose source describes the same motion (`camera_pose`); each conversion must give the layout
the pose topic gives (same frames, same coordinates, poses equal within the interpolation error
measured in test_convert_bag.py), and say how the poses were obtained.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Dict, Tuple

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from async_nerf_ns.convert.bag_convert import convert_bag
from async_nerf_ns.convert.bag_messages import stem_of
from async_nerf_ns.convert.errors import RawDataError
from async_nerf_ns.convert.frame_poses import ConvertWarning
from test_convert_bag import (
    BASE_FROM_CAMERA,
    INTERPOLATION_TOLERANCE,
    OPENCV_FROM_OPENGL,
    POSE_T,
    RGB_T,
    T0_NS,
    Rig,
    all_frames,
    bag_path,
    camera_pose,
    convert,
    make_config,
    ns,
    pose_errors,
    write_rig_bag,
)

NO_POSES = Rig(poses="none")
TUM_ROUNDING = 3e-9
"""A TUM file of the topic's samples (9 decimals) against the topic: measured 9.7e-10; x3 margin."""
AT_SAMPLE = 1e-12
"""Sources sampled at the frames (COLMAP, transforms.json) against the truth: measured 7.2e-15."""


def write_tum(path: Path, times=POSE_T) -> Path:
    lines = ["# timestamp tx ty tz qx qy qz qw"]
    for t in times:
        pose = camera_pose(t)
        q = Rotation.from_matrix(pose[:3, :3]).as_quat()
        lines.append(" ".join(f"{v:.9f}" for v in [ns(t) * 1e-9, *pose[:3, 3], *q]))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_colmap(folder: Path, names=None) -> Path:
    """A COLMAP model (pycolmap) with one registered image per RGB frame, named as the converter names it."""
    import pycolmap

    folder.mkdir(parents=True)
    model = pycolmap.Reconstruction()
    model.add_camera_with_trivial_rig(pycolmap.Camera(model="PINHOLE", width=8, height=6, params=[10, 11, 4, 3],
                                                      camera_id=1))
    for i, t in enumerate(RGB_T):
        name = names[i] if names else f"{stem_of(ns(t))}.png"
        w2c = np.linalg.inv(camera_pose(t))
        model.add_image_with_trivial_frame(pycolmap.Image(name=name, camera_id=1, image_id=i + 1),
                                           pycolmap.Rigid3d(w2c[:3]))
    model.write(str(folder))
    return folder


def write_transforms(path: Path) -> Path:
    """ns-process-data's shape: renamed frames (frame_00001.png ...) with an added "timestamp" each."""
    frames = []
    for i, t in enumerate(RGB_T):
        pose = camera_pose(t)
        pose[:3, :3] = pose[:3, :3] @ OPENCV_FROM_OPENGL  # nerfstudio cameras are OpenGL
        frames.append({"file_path": f"images/frame_{i + 1:05d}.png", "transform_matrix": pose.tolist(),
                       "timestamp": ns(t) * 1e-9})
    path.write_text(json.dumps({"camera_model": "OPENCV", "fl_x": 10, "fl_y": 11, "frames": frames}))
    return path


# source: (rig, extra config, the summary line it must print)
SOURCES: Dict[str, Tuple[Rig, Callable[[Path], dict], str]] = {
    "odometry + extrinsic": (Rig(ros=1, poses="odom"),
                             lambda tmp: dict(pose_topic="/odom", camera_to_body=tuple(BASE_FROM_CAMERA)),
                             "RGB poses from pose topic /odom: 0 of 12 frames at a pose sample, 12 interpolated"),
    "tf chain": (Rig(poses="tf"), lambda tmp: dict(tf=("map", "/camera_optical")),
                 "RGB poses from TF map -> /camera_optical: 0 of 12 frames at a pose sample, 12 interpolated"),
    "tum": (NO_POSES, lambda tmp: dict(tum=write_tum(tmp / "trajectory.txt")),
            "0 of 12 frames at a pose sample, 12 interpolated (max 10.0 ms"),
    "colmap": (NO_POSES, lambda tmp: dict(colmap=write_colmap(tmp / "sparse" / "0")),
               "12 of 12 frames at a pose sample, 0 interpolated"),
    "transforms.json": (NO_POSES, lambda tmp: dict(transforms=write_transforms(tmp / "transforms.json"),
                                                   pose_convention="opengl-enu"),
                        "12 of 12 frames at a pose sample, 0 interpolated"),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The pose topic's conversion."""
    return convert(tmp_path_factory.mktemp("reference"))[1]


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_pose_source_gives_the_pose_topics_layout(tmp_path, reference, source):
    rig, extra, says = SOURCES[source]
    summary, layout = convert(tmp_path, rig, **extra(tmp_path))
    assert any(says in note for note in summary.notes), summary.notes
    exact = source == "tum"  # the same 100 Hz samples as the topic
    tolerance = TUM_ROUNDING if exact else INTERPOLATION_TOLERANCE
    np.testing.assert_allclose(layout.coordinates.origin_drb, reference.coordinates.origin_drb,
                               atol=tolerance * reference.coordinates.pose_scale_factor)
    assert layout.coordinates.pose_scale_factor == pytest.approx(reference.coordinates.pose_scale_factor,
                                                                 abs=tolerance * 10)
    for split in ("train", "val"):
        ours, theirs = layout.splits[split], reference.splits[split]
        for a, b in zip(ours.rgb, theirs.rgb, strict=True):
            assert (a.stem, a.timestamp) == (b.stem, b.timestamp)
            np.testing.assert_allclose(a.c2w, b.c2w, atol=tolerance)
        for a, b in zip(ours.depth["tof"], theirs.depth["tof"], strict=True):
            np.testing.assert_allclose(a.c2w_prior, b.c2w_prior, atol=tolerance)
    # Sources sampled at the frames themselves are exact; interpolated ones within the measured error.
    assert pose_errors(layout).max() < (AT_SAMPLE if "at a pose sample, 0 interpolated" in says else INTERPOLATION_TOLERANCE)


def test_a_trajectory_that_covers_part_of_the_sequence(tmp_path):
    tum = write_tum(tmp_path / "late_start.txt", POSE_T[POSE_T >= 0.5])
    with pytest.warns(ConvertWarning, match=re.escape(
            f"{tum} covers 9 of the 12 frames of /cam/color/image_raw in {bag_path(tmp_path, NO_POSES)}; left out 3 "
            "frames without a pose: 3 before its first pose")):
        summary, layout = convert(tmp_path, NO_POSES, tum=tum)
    assert [round(f.timestamp - T0_NS * 1e-9, 3) for f in all_frames(layout)] == [round(t, 3) for t in RGB_T[3:]]
    assert "; 3 left out without a pose" in summary.notes[-1]


def test_a_gap_in_the_trajectory_leaves_out_the_frames_inside_it(tmp_path):
    tum = write_tum(tmp_path / "lost.txt", POSE_T[(POSE_T <= 1.0) | (POSE_T >= 1.7)])
    with pytest.warns(ConvertWarning, match="left out 4 frames without a pose: 4 between poses more than "
                                            "--max-pose-gap 0.5 s apart"):
        _, layout = convert(tmp_path, NO_POSES, tum=tum, max_pose_gap=0.5)
    assert len(all_frames(layout)) == 8  # 1.013, 1.213, 1.413, 1.613 s have no pose
    _, kept = convert(tmp_path, NO_POSES, name="out2", tum=tum)  # the default 1 s bridges the 0.7 s gap
    assert len(all_frames(kept)) == 12


def test_colmap_images_that_match_no_frame_are_skipped(tmp_path):
    names = [f"{stem_of(ns(t))}.png" for t in RGB_T]
    names[5] = "extra_view.png"
    model = write_colmap(tmp_path / "sparse", names)
    with pytest.warns(ConvertWarning, match=r"skipped 1 of 12 registered images .* 'extra_view.png'"):
        summary, layout = convert(tmp_path, NO_POSES, colmap=model)
    assert "11 of 12 frames at a pose sample, 1 interpolated (max 400.0 ms" in summary.notes[-1]


# --- warnings: converted, and the user told -------------------------------------------------


def test_out_of_order_and_repeated_stamps(tmp_path):
    rig = Rig(rgb_times=np.concatenate([RGB_T, RGB_T[7:8]]), late={3: 0.5})
    with pytest.warns(ConvertWarning) as caught:
        summary, layout = convert(tmp_path, rig)
    messages = [str(w.message) for w in caught]
    assert "topic /cam/color/image_raw: 1 of 13 messages arrived with a stamp earlier than the one before " \
           "(sorted by stamp)" in messages
    assert "topic /cam/color/image_raw: 1 of 13 messages repeat the stamp of an earlier one (kept the first)" in messages
    assert [f.timestamp for f in all_frames(layout)] == [ns(t) * 1e-9 for t in RGB_T]


def test_distortion_is_reported(tmp_path):
    with pytest.warns(ConvertWarning, match=r"CameraInfo /cam/color/camera_info: plumb_bob distortion \[0.1, "):
        convert(tmp_path, Rig(distortion=(0.1, 0.0, 0.0, 0.0, 0.0)))


# --- errors: nothing written ----------------------------------------------------------------

BAD: Dict[str, Tuple[Rig, dict, str]] = {
    # case: (rig, config changes, what the error says)
    "no rgb topic": (Rig(), dict(rgb_topic="/nope"), "--rgb-topic: no topic /nope in this bag; topics of type "
                     "Image/CompressedImage: /cam/color/image_raw (Image), /lidar/depth (Image), "
                     "/tof/depth/image_raw (Image)"),
    "no depth topic": (Rig(), dict(depth_topic={"tof": "/tof/nope"}), "--depth-topic tof: no topic /tof/nope"),
    "not an image topic": (Rig(), dict(rgb_topic="/camera_pose"), "--rgb-topic: topic /camera_pose is "
                           "geometry_msgs/msg/PoseStamped, expected sensor_msgs/msg/Image or"),
    "unreadable depth encoding": (Rig(tof="8UC1"), {}, "topic /tof/depth/image_raw (5 messages), message 1: depth "
                                  "encoding '8UC1' cannot be read; expected 16UC1, mono16, 32FC1; nothing was written"),
    "unreadable rgb format": (Rig(rgb="h264"), {}, "topic /cam/color/image_raw/compressed (12 messages), message 1: "
                              "CompressedImage format 'h264' is not JPEG or PNG"),
    "zero header stamps": (Rig(zero_stamps=True), {}, "message 1: has header stamp 0 (its driver does not set "
                           "stamps); pass --stamp receive"),
    "no camera info": (Rig(rgb_info=False), {}, "no intrinsics for /cam/color/image_raw: no CameraInfo topic "
                       "/cam/color/camera_info beside it; give --rgb-info-topic TOPIC (CameraInfo topics: "
                       "/lidar/camera_info (CameraInfo), /tof/depth/camera_info (CameraInfo)) or --rgb-intrinsics"),
    "camera info of another size": (Rig(rgb_info_size=(16, 12)), {}, "CameraInfo /cam/color/camera_info is for "
                                    "16x12 images but /cam/color/image_raw has 8x6"),
    "frames of two sizes": (Rig(rgb_sizes={5: (9, 6)}), {}, f"topic /cam/color/image_raw: the frame at "
                            f"{stem_of(ns(RGB_T[5]))} s is 9x6 pixels but earlier ones are 8x6"),
    "no frame has a pose": (Rig(poses="none"), dict(tum="far"), "far.txt gives a pose to none of the 12 frames of "
                                                      "/cam/color/image_raw (frames at 1667117650.013..1667117652.213 s"),
    "unknown tf frame": (Rig(poses="tf"), dict(tf=("map", "camera")), "--tf map camera: no frame 'camera' in /tf or "
                         "/tf_static (frames: base_link, camera_optical, map, odom)"),
    "offset of an unknown track": (Rig(), dict(depth_time_offset={"radar": 0.1}), "--depth-time-offset names track "
                                   "'radar', but --depth-topic has no such track (tracks: tof, lidar)"),
    "bad tum line": (Rig(poses="none"), dict(tum="bad"), "line 2 is not 'timestamp tx ty tz qx qy qz qw'"),
    "no bag": (Rig(), dict(bag="missing"), "bag does not exist"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_bag_input_names_the_problem_and_writes_nothing(tmp_path, case):
    rig, changes, says = BAD[case]
    bag = write_rig_bag(bag_path(tmp_path, rig), rig)
    if changes.get("tum") == "far":
        changes["tum"] = write_tum(tmp_path / "far.txt", POSE_T + 100.0)
    elif changes.get("tum") == "bad":
        changes["tum"] = tmp_path / "bad.txt"
        changes["tum"].write_text("# header\n1 2 3\n")
    if changes.pop("bag", None) == "missing":
        bag = tmp_path / "missing.bag"
    with pytest.raises(RawDataError) as caught:
        convert_bag(make_config(bag, tmp_path / "out", rig, **changes))
    assert says in str(caught.value), str(caught.value)
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("changes, says", [
    (dict(tum=Path("x.txt")), "give one RGB pose source: --pose-topic, --tf, --tum, --colmap or --transforms (not "
                              "--pose-topic and --tum)"),
    (dict(pose_topic=None), "give one RGB pose source"),
    (dict(pose_topic=None, colmap=Path("sparse"), pose_convention="opengl-enu"), "COLMAP cameras have OpenCV axes"),
])
def test_pose_source_options_are_checked(tmp_path, changes, says):
    bag = write_rig_bag(tmp_path / "rig")
    with pytest.raises(ValueError, match=re.escape(says)):
        convert_bag(make_config(bag, tmp_path / "out", **changes))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rig"]


def test_frames_for_colmap_then_the_colmap_model(tmp_path, reference):
    bag = write_rig_bag(bag_path(tmp_path, NO_POSES), NO_POSES)
    from async_nerf_ns.convert.bag_convert import extract_frames
    from async_nerf_ns.convert.config import FramesConfig

    images = tmp_path / "images"
    assert extract_frames(FramesConfig(bag=bag, rgb_topic="/cam/color/image_raw", out=images)) == 12
    names = sorted(p.name for p in images.iterdir())
    assert names == [f"{stem_of(ns(t))}.png" for t in RGB_T]
    # COLMAP run on these images keeps their names; the conversion matches them to the frames.
    model = write_colmap(tmp_path / "sparse", names)
    summary, layout = convert(tmp_path, NO_POSES, colmap=model)
    assert "12 of 12 frames at a pose sample, 0 interpolated" in summary.notes[-1]
    assert pose_errors(layout).max() < AT_SAMPLE
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
