"""Training memory vs dataset size: per-cell ray shards on disk against the in-RAM pixel store they replaced.

    python examples/bench_shards.py [--frames 160 640 2560] [--steps 20] [--old-commit 90c336f]

For each size the example town is generated with that many RGB frames (96x72, lidar 64x48 at half
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[160, 640, 2560])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--old-commit", default="90c336f", help="the last commit with the in-RAM pixel store")
    parser.add_argument("--work", type=Path, default=Path("bench_out/shards_work"))
    parser.add_argument("--output", type=Path, default=Path("bench_out/shards"))
    args = parser.parse_args()

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    old_tree = work / "old_checkout"
    if not old_tree.exists():
        subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", str(old_tree), args.old_commit], check=True)
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
