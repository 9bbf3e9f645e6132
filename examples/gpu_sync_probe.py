"""On a CUDA machine: which operations of a training step make the host wait for the GPU.

    python examples/gpu_sync_probe.py --data example_data/town [--method async-nerf] [--steps 30]
        [--warmup 10] [--implementation tcnn|torch] [--output sync.json]

Trains ``--warmup`` steps, then ``--steps`` more under ``torch.cuda.set_sync_debug_mode("warn")``,
and reports the synchronising calls per step, grouped by the Python line that made them (ours are
under async_nerf_ns/; nerfstudio's own step has some, e.g. its ray generation and GradScaler). The
CPU suite checks that our code makes none (tests/test_gpu_path.py); this measures the whole step.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--method", default="async-nerf")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--implementation", default=None, help="tcnn or torch (default: the preset's)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_sync_probe: needs a CUDA device (torch sees none)")
    from async_nerf_ns.method import async_nerf_config, async_nerf_small_config
    from examples.bench_common import prepare_config

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from stage3_trainer import train_step  # the step with its training callbacks (each cell's clock)

    config = {"async-nerf": async_nerf_config, "async-nerf-small": async_nerf_small_config}[args.method]()
    if args.implementation:
        config.pipeline.model.implementation = args.implementation
    prepare_config(config, args.data, args.warmup + args.steps, Path(tempfile.mkdtemp()), "sync_probe")
    config.pipeline.model.depth_pose_refine_start = 0  # stage 3 on: every path of the step runs
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    for step in range(args.warmup):
        train_step(trainer, step)
    torch.cuda.synchronize()

    sites: collections.Counter = collections.Counter()
    ours: collections.Counter = collections.Counter()
    original_showwarning = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return original_showwarning(message, category, filename, lineno, file, line)
        stack = [f for f in traceback.extract_stack()[:-1] if "/torch/" not in f.filename]
        where = f"{stack[-1].filename}:{stack[-1].lineno} ({stack[-1].name})" if stack else f"{filename}:{lineno}"
        sites[where] += 1
        if any("async_nerf_ns" in f.filename for f in stack[-3:]):
            ours[where] += 1

    warnings.showwarning = record
    warnings.simplefilter("always")
    torch.cuda.set_sync_debug_mode("warn")
    try:
        for step in range(args.warmup, args.warmup + args.steps):
            train_step(trainer, step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = original_showwarning
    report = {
        "method": args.method,
        "implementation": config.pipeline.model.implementation,
        "device": torch.cuda.get_device_name(0),
        "steps": args.steps,
        "syncs_per_step": sum(sites.values()) / args.steps,
        "ours_per_step": sum(ours.values()) / args.steps,
        "sites": dict(sites.most_common(20)),
    }
    print(json.dumps(report, indent=1))
    if args.output is not None:
        args.output.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
