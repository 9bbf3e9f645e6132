"""Seconds per training step of this checkout against an older commit, on the same data and machine.

    python examples/bench_step.py [--old-commit 4d66aac] [--steps 300] [--threads 1] [--method async-nerf-small]

Each row is a real ``ns-train`` run (a fresh process, ``OMP_NUM_THREADS`` threads) of the example town;
the older commit's code is checked out with ``git worktree`` and put first on PYTHONPATH. s/step is
nerfstudio's own "Train Iter (time)" (the step's forward, backward and optimiser step), median over
the second half of the run, so that set-up and warm-up are left out. Rows run one after the other,
alternating old/new ``--repeats`` times, so that a slow phase of the machine hits both.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from examples.bench_common import DEFAULT_SCENE, ensure_scene, markdown_table, write_results  # noqa: E402


def step_seconds(run_dir: Path) -> List[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [e.value for e in events.Scalars("Train Iter (time)")]


def run(tree: Path, data: Path, out: Path, name: str, args) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    cache = out / f"cache-{name}"
    shutil.rmtree(cache, ignore_errors=True)
    command = [
        sys.executable, "-c", "import sys; from nerfstudio.scripts.train import entrypoint; sys.argv[0] = 'ns-train'; entrypoint()",
        args.method, "--data", str(data), "--output-dir", str(out), "--experiment-name", "bench_step",
        "--timestamp", name, "--max-num-iterations", str(args.steps), "--steps-per-save", str(10**9),
        "--steps-per-eval-batch", str(10**9), "--steps-per-eval-image", str(10**9),
        "--steps-per-eval-all-images", str(10**9), "--logging.local-writer.enable", "False",
        "--logging.steps-per-log", "1", "--vis", "tensorboard", "--machine.device-type", "cpu",
        "--pipeline.datamanager.dataparser.cache-dir", str(cache),
    ]
    result = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{name}: ns-train failed\n{result.stderr[-4000:]}")
    values = step_seconds(out / "bench_step" / args.method / name)
    return statistics.median(values[len(values) // 2 :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-commit", default="4d66aac")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--method", default="async-nerf-small")
    parser.add_argument("--data", type=Path, default=DEFAULT_SCENE)
    parser.add_argument("--output", type=Path, default=Path("bench_out/step"))
    args = parser.parse_args()
    data = ensure_scene(args.data).resolve()
    out = args.output.resolve()
    out.mkdir(parents=True, exist_ok=True)
    worktree = Path(tempfile.mkdtemp(prefix="bench_step_old_"))
    subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.old_commit], cwd=REPO_ROOT, check=True,
                   capture_output=True)
    seconds: Dict[str, List[float]] = {"old": [], "new": []}
    try:
        for repeat in range(args.repeats):
            for label, tree in (("old", worktree), ("new", REPO_ROOT)):
                value = run(tree, data, out, f"{label}-{repeat}", args)
                seconds[label].append(value)
                print(f"{label} run {repeat}: {value:.4f} s/step", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=REPO_ROOT, capture_output=True)
    old, new = min(seconds["old"]), min(seconds["new"])
    rows = [
        {"code": f"{args.old_commit} (before)", "s_per_step": old, "ratio": 1.0, "all": seconds["old"]},
        {"code": "this checkout", "s_per_step": new, "ratio": new / old, "all": seconds["new"]},
    ]
    columns = [
        ("code", lambda r: r["code"]),
        ("s/step (best of repeats)", lambda r: f"{r['s_per_step']:.4f}"),
        ("vs before", lambda r: f"{r['ratio']:.3f}x"),
        ("each repeat", lambda r: ", ".join(f"{v:.4f}" for v in r["all"])),
    ]
    text = (
        f"{args.method}, {args.steps} steps, {args.threads} torch thread(s), {data}\n\n" + markdown_table(rows, columns)
    )
    print(text)
    write_results(out, {"rows": rows, "args": {k: str(v) for k, v in vars(args).items()}}, text)


if __name__ == "__main__":
    main()
