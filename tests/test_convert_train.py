"""A converted bag trains: the example town (examples/make_scene.py) recorded as a ROS 2 bag (rgb8 frames,
a 32FC1 depth track, CameraInfo, a PoseStamped topic), converted with the bag source (in this process:
the console command itself is tested in test_convert_bag.py), then `ns-train async-nerf-small` for 20
iterations on the CPU through the real console command (about 70 s here, 30 s of it ns-train's start-up)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from async_nerf_ns.convert.bag_convert import convert_bag
from async_nerf_ns.convert.config import BagConfig
from async_nerf_ns.layout import load_depth_metres, load_rgb, read_layout
from conftest import run_command
from examples.make_scene import SceneSpec, generate_scene
from test_convert_bag import _Bag

SPEC = SceneSpec(num_rgb=24, width=32, height=24, depth_width=24, depth_height=18, write_preview=False)


def _metres(pose: np.ndarray, layout) -> np.ndarray:
    """A layout pose (normalised DRB, 3x4) in DRB metres (4x4)."""
    out = np.eye(4)
    out[:3] = pose
    out[:3, 3] = pose[:, 3] * layout.coordinates.pose_scale_factor + layout.coordinates.origin_drb
    return out


def record_bag(scene: Path, bag_path: Path) -> Path:
    """The scene's frames as a bag: what a rig would have recorded (poses of the RGB camera and of the depth
    frames as one PoseStamped topic, layout DRB axes in metres)."""
    layout = read_layout(scene)
    bag = _Bag(bag_path, 2, "sqlite3")
    messages = []
    poses = []
    for frame in (f for split in layout.splits.values() for f in split.rgb):
        stamp = int(round(frame.timestamp * 1e9))
        messages.append((stamp, "/cam/image_raw", "sensor_msgs/msg/Image", bag.image(stamp, load_rgb(frame), "rgb8")))
        messages.append((stamp, "/cam/camera_info", "sensor_msgs/msg/CameraInfo",
                         bag.camera_info(stamp, (frame.width, frame.height), frame.intrinsics)))
        poses.append((stamp, _metres(frame.c2w, layout)))
    for frame in (f for split in layout.splits.values() for f in split.depth[SPEC.depth_track]):
        stamp = int(round(frame.timestamp * 1e9))
        depth = np.asarray(load_depth_metres(frame), dtype=np.float32)
        messages.append((stamp, "/depth/image", "sensor_msgs/msg/Image", bag.image(stamp, depth, "32FC1")))
        messages.append((stamp, "/depth/camera_info", "sensor_msgs/msg/CameraInfo",
                         bag.camera_info(stamp, (frame.width, frame.height), frame.intrinsics)))
        poses.append((stamp, _metres(frame.pose_gt, layout)))
    for stamp, pose in poses:
        point, rotation = bag.pose_parts(pose)
        messages.append((stamp, "/pose", "geometry_msgs/msg/PoseStamped", bag.msg(
            "geometry_msgs/msg/PoseStamped", header=bag.header(stamp, "world"),
            pose=bag.msg("geometry_msgs/msg/Pose", position=point, orientation=rotation))))
    for stamp, topic, msgtype, message in sorted(messages, key=lambda m: m[0]):
        bag.write(topic, msgtype, stamp, message)
    bag.close()
    return bag_path


def test_a_converted_bag_trains_end_to_end(tmp_path):
    scene = generate_scene(tmp_path / "scene", SPEC)
    bag = record_bag(scene, tmp_path / "bag")
    data = tmp_path / "data"
    convert_bag(BagConfig(bag=bag, out=data, rgb_topic="/cam/image_raw", depth_topic={"lidar": "/depth/image"},
                          pose_topic="/pose", pose_convention="drb"))
    converted, original = read_layout(data), read_layout(scene)
    assert len(converted.splits["train"].rgb) + len(converted.splits["val"].rgb) == SPEC.num_rgb
    run_command(["ns-train", "async-nerf-small", "--data", str(data), "--output-dir", str(tmp_path / "runs"),
                 "--max-num-iterations", "20", "--machine.device-type", "cpu", "--logging.local-writer.enable", "False"],
                cwd=tmp_path, threads=1)
    assert list((tmp_path / "runs").rglob("*.ckpt")), "ns-train wrote no checkpoint"
    # The same cameras as the scene the bag was recorded from (frames and poses through the bag and back).
    ours = {f.stem: f for s in converted.splits.values() for f in s.rgb}
    for frame in (f for s in original.splits.values() for f in s.rgb):
        stem = min(ours, key=lambda k: abs(ours[k].timestamp - frame.timestamp))
        np.testing.assert_allclose(_metres(ours[stem].c2w, converted), _metres(frame.c2w, original), atol=1e-6)
