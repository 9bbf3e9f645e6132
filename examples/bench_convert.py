"""Bag conversion benchmark: MB/s and peak memory of `async-nerf-convert bag` against bag size.

    python examples/bench_convert.py [--sizes-gb 0.5 2] [--rgb raw|jpeg] [--format ros1|mcap|sqlite3]
                                     [--work DIR] [--keep]

For each size a bag is generated message by message (so generating it needs no memory either): RGB
640x480 at 30 Hz (rgb8 Image, 0.92 MB a frame, or JPEG CompressedImage with --rgb jpeg), a 16UC1
depth track of 320x240 at 15 Hz, both with CameraInfo, and a 100 Hz PoseStamped topic. The images
are smooth gradients with sensor-like noise (PNG compresses them about as it does camera frames).
Each conversion runs in a fresh process (`python -m examples.bench_convert --child`): it reports
the conversion's wall time (imports excluded), the process's RSS after imports, and its peak RSS
(getrusage; never goes down, so one process per row). MB/s = bag bytes / conversion wall time;
MB per CPU s = bag bytes / the process's CPU time in the conversion (all threads), which says more
than wall time on a shared machine.
Bags and outputs are deleted unless --keep. Check free disk space first: a row needs about 2.5x
its size (bag + PNG output).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

RGB_SIZE = (640, 480)
DEPTH_SIZE = (320, 240)
RGB_HZ, DEPTH_HZ, POSE_HZ = 30.0, 15.0, 100.0
T0_NS = 1_700_000_000_000_000_000


def _frame(i: int, rng, width: int, height: int):
    import numpy as np

    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x + 3 * i) % 256, (y + 2 * i) % 256, ((x + y) // 2 + i) % 256], axis=-1)
    return np.clip(base + rng.integers(-6, 7, size=base.shape), 0, 255).astype(np.uint8)


def write_bag(path: Path, size_gb: float, rgb: str, fmt: str) -> Dict[str, Any]:
    """A bag of about size_gb GB; returns what it holds."""
    import cv2
    import numpy as np
    from scipy.spatial.transform import Rotation

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from test_convert_bag import _Bag  # the tests' rosbags writer (message construction by type name)

    bag = _Bag(path, 1 if fmt == "ros1" else 2, "mcap" if fmt == "mcap" else "sqlite3")
    rng = np.random.default_rng(0)
    frame_bytes = RGB_SIZE[0] * RGB_SIZE[1] * 3
    if rgb == "jpeg":
        frame_bytes = len(cv2.imencode(".jpg", _frame(0, rng, *RGB_SIZE), [cv2.IMWRITE_JPEG_QUALITY, 90])[1])
    per_second = RGB_HZ * frame_bytes + DEPTH_HZ * DEPTH_SIZE[0] * DEPTH_SIZE[1] * 2
    seconds = size_gb * 1e9 / per_second
    rgb_frame = _frame(0, rng, *RGB_SIZE)  # a few distinct frames, cycled (generation speed)
    frames = [_frame(i, rng, *RGB_SIZE) for i in range(8)]
    jpegs = [cv2.imencode(".jpg", f[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for f in frames]
    depth = (1000 + 10 * _frame(0, rng, *DEPTH_SIZE)[..., 0].astype(np.uint16))
    events = []
    for kind, hz in (("rgb", RGB_HZ), ("depth", DEPTH_HZ), ("pose", POSE_HZ)):
        offset = {"rgb": 0.0, "depth": 0.011, "pose": -0.02}[kind]
        events += [(T0_NS + int((offset + k / hz) * 1e9), kind, k) for k in range(int(seconds * hz) + (5 if kind == "pose" else 0))]
    events.sort()
    counts = {"rgb": 0, "depth": 0, "pose": 0}
    for stamp, kind, k in events:
        receive = stamp + 5_000_000
        if kind == "rgb":
            if rgb == "jpeg":
                message = bag.compressed(stamp, jpegs[k % 8], "rgb8; jpeg compressed bgr8")
                bag.write("/cam/color/image_raw/compressed", "sensor_msgs/msg/CompressedImage", receive, message)
            else:
                bag.write("/cam/color/image_raw", "sensor_msgs/msg/Image", receive, bag.image(stamp, frames[k % 8], "rgb8"))
            bag.write("/cam/color/camera_info", "sensor_msgs/msg/CameraInfo", receive,
                      bag.camera_info(stamp, RGB_SIZE, (500.0, 500.0, 320.0, 240.0)))
        elif kind == "depth":
            bag.write("/depth/image_raw", "sensor_msgs/msg/Image", receive, bag.image(stamp, depth, "16UC1"))
            bag.write("/depth/camera_info", "sensor_msgs/msg/CameraInfo", receive,
                      bag.camera_info(stamp, DEPTH_SIZE, (250.0, 250.0, 160.0, 120.0)))
        else:
            t = (stamp - T0_NS) * 1e-9
            pose = np.eye(4)
            pose[:3, :3] = Rotation.from_euler("zyx", [5 * t, 0, 180], degrees=True).as_matrix()
            pose[:3, 3] = [2.0 * t, np.sin(t), 30.0]
            point, rotation = bag.pose_parts(pose)
            bag.write("/pose", "geometry_msgs/msg/PoseStamped", receive, bag.msg(
                "geometry_msgs/msg/PoseStamped", header=bag.header(stamp, "map"),
                pose=bag.msg("geometry_msgs/msg/Pose", position=point, orientation=rotation)))
        counts[kind] += 1
    bag.close()
    del rgb_frame
    nbytes = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return {"bag_bytes": nbytes, "seconds": seconds, **counts}


def child(bag: Path, out: Path, rgb: str, workers: int) -> Dict[str, Any]:
    """One conversion in this (fresh) process."""
    from async_nerf_ns.convert.bag_convert import convert_bag
    from async_nerf_ns.convert.config import BagConfig

    rss_after_imports_mb = _rss_now_mb()
    topic = "/cam/color/image_raw/compressed" if rgb == "jpeg" else "/cam/color/image_raw"
    cpu_before = _cpu_s()
    started = time.perf_counter()
    summary = convert_bag(BagConfig(bag=bag, out=out, rgb_topic=topic, depth_topic={"tof": "/depth/image_raw"},
                                    pose_topic="/pose", pose_convention="opencv-enu", workers=workers))
    seconds = time.perf_counter() - started
    return {"convert_s": seconds, "cpu_s": _cpu_s() - cpu_before, "rss_after_imports_mb": rss_after_imports_mb,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "counts": summary.counts,
            "out_bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file())}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_now_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-gb", type=float, nargs="+", default=[0.5, 2.0])
    parser.add_argument("--rgb", choices=["raw", "jpeg"], default="raw")
    parser.add_argument("--format", choices=["ros1", "mcap", "sqlite3"], default="ros1")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_convert"))
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--workers", type=int, default=0, help="--workers of the conversion (0: one per core)")
    parser.add_argument("--child", nargs=4, metavar=("BAG", "OUT", "RGB", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), Path(args.child[1]), args.child[2], int(args.child[3]))))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(args.work).free / 1e9
    need = 2.5 * max(args.sizes_gb)
    print(f"free disk at {args.work}: {free:.1f} GB (a row needs about {need:.1f} GB)")
    if free < need + 5:
        raise SystemExit("not enough free disk space")
    rows: List[Dict[str, Any]] = []
    for size in args.sizes_gb:
        bag = args.work / (f"bag_{size:g}.bag" if args.format == "ros1" else f"bag_{size:g}")
        out = args.work / f"out_{size:g}"
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        held = write_bag(bag, size, args.rgb, args.format)
        held["write_s"] = time.perf_counter() - started
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONWARNINGS": "ignore"}
        result = subprocess.run([sys.executable, "-m", "examples.bench_convert", "--child", str(bag), str(out), args.rgb,
                                 str(args.workers)],
                                cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(result.stderr[-3000:])
        row = {"size_gb": size, **held, **json.loads(result.stdout.strip().splitlines()[-1])}
        row["mb_per_s"] = row["bag_bytes"] / 1e6 / row["convert_s"]
        row["mb_per_cpu_s"] = row["bag_bytes"] / 1e6 / row["cpu_s"]
        rows.append(row)
        print(json.dumps(row))
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(bag, ignore_errors=True) if bag.is_dir() else bag.unlink()
    print(f"\n| bag ({args.format}, RGB {args.rgb}, --workers {args.workers}) | RGB / depth frames | convert s | MB/s | "
          "CPU s | MB per CPU s | RSS after imports MB | peak RSS MB | output GB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['bag_bytes'] / 1e9:.2f} GB | {r['rgb']} / {r['depth']} | {r['convert_s']:.1f} | {r['mb_per_s']:.0f} | "
              f"{r['cpu_s']:.1f} | {r['mb_per_cpu_s']:.0f} | "
              f"{r['rss_after_imports_mb']:.0f} | {r['peak_rss_mb']:.0f} | {r['out_bytes'] / 1e9:.2f} |")


if __name__ == "__main__":
    main()
