"""Shard benchmarks: (1) training memory vs dataset size; (2) with ``--writer-speed``, how fast the shard
writer runs (megapixels of RGB per second).

    python examples/bench_shards.py [--frames 160 640 2560] [--steps 20] [--old-commit 90c336f]
    python examples/bench_shards.py --writer-speed [--num-rgb 360 --width 160 --height 120] [--repeats 3]
                                    [--method async-nerf] [--threads N] [--cpu-breakdown] [--old-commit 4d66aac]

(2) generates the example town with ``--num-rgb`` frames of ``--width`` x ``--height`` (default: 360 of
160x120, 315 of them training frames, 6.0 MP), runs ``async-nerf-partition METHOD --data D`` once to fit
stage 1 (cached), then ``--repeats`` times from an empty shard folder, each in a fresh process, and
reports the RGB writer's MP/s as recorded in its manifest (wall time from the first image to the last
flush: image decoding, rays, cell membership, records, file writes and syncs) and the command's wall
time. With ``--old-commit``, the same command with the code of that commit (a ``git worktree`` first
on PYTHONPATH, on its own copy of the scene so that neither reads the other's cache) runs in turn
with this checkout's, repeat by repeat: a same-day, same-machine ratio. ``--threads`` sets
OMP_NUM_THREADS for those processes (default: inherited). ``--cpu-breakdown`` also rewrites the RGB set in this process and reports CPU seconds per thread (loader, membership,
dealing, file I/O), from /proc: on a shared machine wall time says little, CPU time says what a quiet
machine with two cores would reach at best (max of the busiest thread and half the total).

(1): 
for each size the example town is generated with that many RGB frames (96x72, lidar 64x48 at half
the rate), and each row runs in a fresh process with one torch thread whose peak RSS
(``getrusage(RUSAGE_CHILDREN)``) is recorded:
- ``ns-train async-nerf-small`` (a few steps) with the code of ``--old-commit`` (the in-RAM store:
  every training pixel's colour plus per-cell index lists), checked out with ``git worktree`` and put
  first on PYTHONPATH, from an empty cache (it builds its masks and pixel lists in the process);
- ``ns-train`` with this checkout from an empty cache (it writes the shards on its first step);
- ``async-nerf-partition`` alone from an empty cache (the shard writer: stage 1 + all shards);
- ``ns-train`` again on the shards that command wrote (training alone).
Also reported: shard bytes per RGB and depth ray and the shard writer's speed (from the manifests).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from examples.bench_common import markdown_table, write_results  # noqa: E402
from examples.make_scene import SceneSpec, generate_scene  # noqa: E402


def peak_rss_of(command: List[str], env: Dict[str, str], cwd: Path) -> Dict[str, Any]:
    """Runs ``command`` in a child process (the only child at that moment); its peak RSS in MB and seconds."""
    started = time.perf_counter()
    # A fresh interpreter per run so RUSAGE_CHILDREN holds only that run's peak.
    code = (
        "import resource, subprocess, sys, json\n"
        "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
        "print(json.dumps({'rc': r.returncode, 'kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
        " 'err': r.stderr[-3000:]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *command], env=env, cwd=cwd, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result['err']}")
    return {"peak_rss_mb": result["kb"] / 1024, "seconds": time.perf_counter() - started}


def shard_stats(cache: Path) -> Dict[str, Any]:
    stats: Dict[str, Any] = {}
    for manifest_path in sorted(cache.glob("shards/*/manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        kind = manifest["kind"]
        records = sum(c["records"] for c in manifest["cells"])
        size = sum(p.stat().st_size for p in manifest_path.parent.glob("cell_*/chunk_*.bin"))
        stats[f"{kind}_records"] = records
        stats[f"{kind}_bytes_per_ray"] = size / max(records, 1)
        stats[f"{kind}_write_mp_per_s"] = manifest["megapixels_written_per_second"]
    return stats


def _rgb_manifest(scene: Path) -> Dict[str, Any]:
    manifests = [json.loads(p.read_text()) for p in sorted(scene.glob(".async_nerf_cache/shards/rgb-*/manifest.json"))]
    assert len(manifests) == 1, f"expected one RGB shard set in {scene}, found {len(manifests)}"
    return manifests[0]


def _thread_cpu_seconds() -> Dict[int, float]:
    """CPU seconds (user + system) of every thread of this process, by native thread id (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds[int(task.name)] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return seconds


def cpu_breakdown(scene: Path, method: str) -> Dict[str, Any]:
    """Rewrites the RGB shard set in this process; CPU seconds per thread while it is written."""
    import threading

    import torch
    import tyro
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    from async_nerf_ns.data.prepare import prepare_training_data

    config = tyro.cli(AnnotatedBaseConfigUnion, args=[method, "--data", str(scene)])
    datamanager = prepare_training_data(config)["datamanager"]
    rgb_set = Path(datamanager.write_shards(existing_only=True)["rgb"])
    shutil.rmtree(rgb_set)
    names: Dict[int, str] = {}
    totals: Dict[int, float] = {}
    done = threading.Event()

    def sample() -> None:  # threads come and go: remember each one's name and last CPU figure
        while not done.wait(0.02):
            names.update({t.native_id: t.name for t in threading.enumerate() if t.native_id is not None})
            totals.update(_thread_cpu_seconds())

    before = _thread_cpu_seconds()
    sampler = threading.Thread(target=sample, name="bench-sampler", daemon=True)
    sampler.start()
    started = time.perf_counter()
    datamanager.write_shards()
    wall = time.perf_counter() - started
    totals.update(_thread_cpu_seconds())
    done.set()
    sampler.join()
    per_name: Dict[str, float] = {}
    for tid, seconds in totals.items():
        name = names.get(tid, "torch/other")
        if name == "bench-sampler":
            continue
        name = name.rsplit("_", 1)[0] if name.startswith("shard-") else name
        per_name[name] = per_name.get(name, 0.0) + seconds - before.get(tid, 0.0)
    manifest = json.loads((rgb_set / "manifest.json").read_text())
    megapixels = manifest["megapixels_written_per_second"] * manifest["write_seconds"]
    busiest = max(per_name.values())
    total = sum(per_name.values())
    return {
        "wall_s": wall,
        "megapixels": megapixels,
        "cpu_s_per_thread": per_name,
        "cpu_s_total": total,
        "torch_threads": torch.get_num_threads(),
        "two_core_bound_mp_per_s": megapixels / max(busiest, total / 2.0),
    }


def _old_worktree(work: Path, commit: str) -> Path:
    """A detached ``git worktree`` of ``commit`` under ``work`` (created once)."""
    tree = work / f"checkout_{commit}"
    if not tree.exists():
        subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", str(tree), commit], check=True)
    return tree


def writer_speed(args) -> None:
    scene = (args.work / f"town_{args.num_rgb}_{args.width}x{args.height}").resolve()
    if not (scene / "coordinates.pt").is_file():
        generate_scene(scene, SceneSpec(num_rgb=args.num_rgb, width=args.width, height=args.height, write_preview=False))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    command = [str(Path(sys.executable).parent / "async-nerf-partition"), args.method, "--data"]
    versions = [("this checkout", scene, env)]
    if args.old_commit:
        old_scene = scene.with_name(scene.name + f"_{args.old_commit}")
        if not (old_scene / "coordinates.pt").is_file():
            shutil.copytree(scene, old_scene, ignore=shutil.ignore_patterns(".async_nerf_cache"), dirs_exist_ok=True)
        old_env = {**env, "PYTHONPATH": str(_old_worktree(args.work.resolve(), args.old_commit))}
        versions.append((args.old_commit, old_scene, old_env))
    for _, data, version_env in versions:  # stage 1 (cached from now on)
        subprocess.run([*command, str(data)], env=version_env, check=True, stdout=subprocess.DEVNULL)
    rows: List[Dict[str, Any]] = []
    for repeat in range(args.repeats):
        for version, data, version_env in versions:
            shutil.rmtree(data / ".async_nerf_cache" / "shards", ignore_errors=True)
            started = time.perf_counter()
            subprocess.run([*command, str(data)], env=version_env, check=True, stdout=subprocess.DEVNULL)
            manifest = _rgb_manifest(data)
            rows.append(
                {
                    "repeat": repeat,
                    "code": version,
                    "rgb_mp_per_s": manifest["megapixels_written_per_second"],
                    "rgb_write_s": manifest["write_seconds"],
                    "command_s": time.perf_counter() - started,
                    "load_average": os.getloadavg()[0],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    summary, medians = [], []
    for version, _, _ in versions:
        speeds = sorted(r["rgb_mp_per_s"] for r in rows if r["code"] == version)
        medians.append(speeds[len(speeds) // 2])
        summary.append(f"{version}: best {speeds[-1]:.2f} MP/s, median {medians[-1]:.2f} MP/s")
    if len(versions) == 2:
        summary.append(f"ratio of the medians (this checkout / {args.old_commit}): {medians[0] / medians[1]:.2f}x")
    text = (
        f"`{' '.join(['async-nerf-partition', args.method, '--data', 'D'])}` on {args.num_rgb} frames of "
        f"{args.width}x{args.height}, OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', 'unset')}, "
        f"{os.cpu_count()} CPUs\n\n"
        + markdown_table(
            rows,
            [
                ("run", lambda r: str(r["repeat"])),
                ("code", lambda r: r["code"]),
                ("RGB shard writing MP/s", lambda r: r["rgb_mp_per_s"]),
                ("RGB writing s", lambda r: r["rgb_write_s"]),
                ("command s (incl. start-up, depth shards)", lambda r: r["command_s"]),
                ("load average (1 min) after", lambda r: r["load_average"]),
            ],
        )
        + "\n\n" + "\n".join(summary)
    )
    payload: Dict[str, Any] = {"rows": rows, "scene": str(scene), "method": args.method}
    if args.cpu_breakdown:
        breakdown = cpu_breakdown(scene, args.method)
        payload["cpu_breakdown"] = breakdown
        text += "\n\nCPU seconds per thread while the RGB set is rewritten in-process " + (
            f"({breakdown['megapixels']:.2f} MP, {breakdown['wall_s']:.2f} s wall; torch threads of the process "
            f"{breakdown['torch_threads']}, the writer uses 1 on the CPU):\n\n"
        ) + markdown_table(
            [{"thread": k, "cpu": v} for k, v in sorted(breakdown["cpu_s_per_thread"].items(), key=lambda kv: -kv[1])],
            [("thread", lambda r: r["thread"]), ("CPU s", lambda r: r["cpu"])],
        ) + (
            f"\n\ntotal {breakdown['cpu_s_total']:.2f} CPU s; bound on a quiet 2-core machine "
            f"(max(busiest thread, total / 2)): {breakdown['two_core_bound_mp_per_s']:.2f} MP/s"
        )
    print(text)
    write_results(args.output, payload, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[160, 640, 2560])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--old-commit", default=None,
        help="(1) the last commit with the in-RAM pixel store (default 90c336f); (2) a commit to compare with (none by default)",
    )
    parser.add_argument("--work", type=Path, default=Path("bench_out/shards_work"))
    parser.add_argument("--output", type=Path, default=None, help="default: bench_out/shards or bench_out/shard_writer")
    parser.add_argument("--writer-speed", action="store_true", help="benchmark (2): the shard writer's speed")
    parser.add_argument("--num-rgb", type=int, default=360, help="(2) RGB frames of the generated scene")
    parser.add_argument("--width", type=int, default=160, help="(2) RGB width")
    parser.add_argument("--height", type=int, default=120, help="(2) RGB height")
    parser.add_argument("--method", default="async-nerf", help="(2) method whose defaults the command uses")
    parser.add_argument("--repeats", type=int, default=3, help="(2) timed runs")
    parser.add_argument("--threads", type=int, default=None, help="(2) OMP_NUM_THREADS of the runs (default: inherited)")
    parser.add_argument("--cpu-breakdown", action="store_true", help="(2) also CPU seconds per thread, in-process")
    args = parser.parse_args()
    if args.writer_speed:
        args.output = args.output or Path("bench_out/shard_writer")
        args.work.mkdir(parents=True, exist_ok=True)
        writer_speed(args)
        return
    args.output = args.output or Path("bench_out/shards")
    args.old_commit = args.old_commit or "90c336f"

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    old_tree = _old_worktree(work, args.old_commit)
    ns_train = str(Path(sys.executable).parent / "ns-train")
    base_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    rows: List[Dict[str, Any]] = []
    for frames in args.frames:
        scene = work / f"town_{frames}"
        if not (scene / "coordinates.pt").is_file():
            generate_scene(scene, SceneSpec(num_rgb=frames, write_preview=False))
        partition = str(Path(sys.executable).parent / "async-nerf-partition")
        runs = (
            ("in-RAM store (" + args.old_commit + "): ns-train", str(old_tree), None),
            ("shards: ns-train writing them on its first step", None, None),
            ("shards: async-nerf-partition (the writer alone)", None, partition),
            ("shards: ns-train on shards written beforehand", None, "reuse"),
        )
        for version, pythonpath, first in runs:
            if first != "reuse":
                shutil.rmtree(scene / ".async_nerf_cache", ignore_errors=True)
            env = dict(base_env)
            if pythonpath:
                env["PYTHONPATH"] = pythonpath
            if first == partition:
                command = [partition, "async-nerf-small", "--data", str(scene)]
            else:
                command = [
                    ns_train, "async-nerf-small", "--data", str(scene), "--output-dir", str(work / "runs"),
                    "--timestamp", f"{frames}-{len(rows)}", "--max-num-iterations", str(args.steps),
                    "--steps-per-save", "100000", "--logging.local-writer.enable", "False",
                ]
            measured = peak_rss_of(command, env, work)
            row: Dict[str, Any] = {"frames": frames, "version": version, **measured}
            if not pythonpath:
                row.update(shard_stats(scene / ".async_nerf_cache"))
            rows.append(row)
            print(json.dumps(row), flush=True)
    text = markdown_table(
        rows,
        [
            ("RGB frames", lambda r: str(r["frames"])),
            ("training data", lambda r: r["version"]),
            ("peak RSS (MB)", lambda r: r["peak_rss_mb"]),
            ("run s (set-up + steps)", lambda r: r["seconds"]),
            ("RGB B/ray", lambda r: r.get("rgb_bytes_per_ray")),
            ("depth B/ray", lambda r: r.get("depth_bytes_per_ray")),
            ("RGB shard writing MP/s", lambda r: r.get("rgb_write_mp_per_s")),
        ],
    )
    print(text)
    write_results(args.output, {"rows": rows, "steps": args.steps}, text)


if __name__ == "__main__":
    main()
