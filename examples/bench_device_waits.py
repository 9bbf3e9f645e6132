"""How often a training step and a merged render chunk make the host wait for the GPU, counted on the CPU
by the CUDA emulation (tests/cuda_emulation.py), for this checkout and an older commit, same scene.

    python examples/bench_device_waits.py [--old-commit 7bd303c] [--steps 4] [--grids 1x2 2x2 4x4]
        [--chunk 4096] [--output bench_out/device_waits]

Each row runs in a fresh process whose PYTHONPATH puts the version's code first (the older commit is
checked out with ``git worktree``); the emulation itself is always this checkout's. A row trains
``async-nerf-small`` with every part of stages 2 and 3 on from the first step (RGB and depth-frame pose
corrections, the TPF fine-tuned) under fp16 autocast and GradScaler, counts the waits of ``--steps`` steps
after a first one (lazy set-ups), then renders one merged chunk of ``--chunk`` rays of a val camera as
ns-eval/ns-render/the viewer do. Waits are grouped by whose code made the call: ours (async_nerf_ns),
nerfstudio, torch (GradScaler), other (torchmetrics). A count, not a time: what a GPU would spend waiting
depends on the GPU ("not measured" here).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

OWNERS = ("ours", "nerfstudio", "torch", "other")


def child(args) -> None:
    """One row, in this process, with the code of the tree ``args.child``."""
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO_ROOT]
    sys.path.insert(0, str(args.child))
    import torch

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from cuda_emulation import emulated_cuda
    from stage3_trainer import every_correction, set_up_trainer, train_step

    from async_nerf_ns.method import async_nerf_small_config

    def config(device: str, out: Path):
        c = every_correction(async_nerf_small_config(), args.data, out)
        c.pipeline.datamanager.partition.grid_dim = tuple(int(v) for v in args.grid.split("x"))
        return set_up_trainer(c, device, mixed_precision=device == "cuda")

    out = Path(tempfile.mkdtemp(prefix="bench_waits_"))
    config("cpu", out / "cpu")  # writes the shards (not what is counted)
    result: Dict[str, Any] = {"grid": args.grid}
    with emulated_cuda() as ledger:
        trainer = config("cuda", out / "cuda")
        train_step(trainer, 0)
        mark = ledger.mark()
        for step in range(1, args.steps + 1):
            train_step(trainer, step)
        step_waits = ledger.since(mark)
        model = trainer.pipeline.model
        model.eval()
        camera = trainer.pipeline.datamanager.eval_dataset.cameras[0:1].to("cuda")
        rays = camera.generate_rays(camera_indices=0, keep_shape=True).flatten()[: args.chunk]
        mark = ledger.mark()
        with torch.no_grad():
            model(rays)
        render_waits = ledger.since(mark)
    step_owners = Counter(w.owner for w in step_waits)
    render_owners = Counter(w.owner for w in render_waits)
    result["cells"] = len(model.cells)
    result["step"] = {owner: step_owners[owner] / args.steps for owner in OWNERS}
    result["render_chunk"] = {owner: render_owners[owner] for owner in OWNERS}
    sites = Counter((w.owner, w.kind, w.site) for w in step_waits)
    result["step_sites"] = [
        {"owner": o, "kind": k, "site": s, "per_step": n / args.steps} for (o, k, s), n in sites.most_common()
    ]
    rsites = Counter((w.owner, w.kind, w.site) for w in render_waits)
    result["render_sites"] = [{"owner": o, "kind": k, "site": s, "count": n} for (o, k, s), n in rsites.most_common()]
    shutil.rmtree(out, ignore_errors=True)
    args.reply.write_text(json.dumps(result))


def run_row(tree: Path, grid: str, args) -> Dict[str, Any]:
    reply = Path(tempfile.mkstemp(suffix=".json")[1])
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(tree), "--grid", grid,
               "--data", str(args.data), "--steps", str(args.steps), "--chunk", str(args.chunk), "--reply", str(reply)]
    result = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{tree} {grid}: failed\n{result.stderr[-4000:]}")
    return json.loads(reply.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-commit", default="7bd303c")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--grids", nargs="+", default=["1x2", "2x2", "4x4"])
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", type=Path, default=None, help="a scene (default: a small generated one)")
    parser.add_argument("--output", type=Path, default=Path("bench_out/device_waits"))
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--grid", default="2x2", help=argparse.SUPPRESS)
    parser.add_argument("--reply", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args)
        return
    from examples.make_scene import SceneSpec, generate_scene

    args.output = args.output.resolve()
    args.output.mkdir(parents=True, exist_ok=True)
    if args.data is None:
        args.data = args.output / "scene"
        if not (args.data / "coordinates.pt").is_file():
            generate_scene(args.data, SceneSpec(num_rgb=48, width=48, height=36, depth_width=32, depth_height=24,
                                                write_preview=False))
    args.data = args.data.resolve()
    worktree = Path(tempfile.mkdtemp(prefix="bench_waits_old_"))
    subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.old_commit], cwd=REPO_ROOT, check=True,
                   capture_output=True)
    rows: List[Dict[str, Any]] = []
    try:
        for grid in args.grids:
            for label, tree in ((args.old_commit, worktree), ("this checkout", REPO_ROOT)):
                row = run_row(tree, grid, args)
                row["version"] = label
                rows.append(row)
                print(f"{label:>14} {grid}: per step {row['step']}, per merged chunk {row['render_chunk']}", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=REPO_ROOT, capture_output=True)
    lines = [
        f"Device waits counted by the CUDA emulation: per training step (mean of {args.steps}, stages 2+3, fp16 "
        f"autocast) and per merged render chunk of {args.chunk} rays; by whose code made the call.",
        "",
        "| version | cells | step: ours | step: nerfstudio | step: torch | step: other | chunk: ours | chunk: all |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        s, r = row["step"], row["render_chunk"]
        lines.append(f"| {row['version']} | {row['cells']} | {s['ours']:.1f} | {s['nerfstudio']:.1f} | {s['torch']:.1f} | "
                     f"{s['other']:.1f} | {r['ours']} | {sum(r.values())} |")
    newest = [row for row in rows if row["version"] == "this checkout"][-1]
    lines += ["", f"Waits left in a step of this checkout ({newest['cells']} cells), per step:"]
    lines += [f"- {site['per_step']:.1f} x {site['kind']} [{site['owner']}] {site['site']}" for site in newest["step_sites"]]
    text = "\n".join(lines)
    print("\n" + text)
    (args.output / "device_waits.md").write_text(text + "\n")
    (args.output / "device_waits.json").write_text(json.dumps({"rows": rows, "args": {
        k: str(v) for k, v in vars(args).items()}}, indent=1))


if __name__ == "__main__":
    main()
