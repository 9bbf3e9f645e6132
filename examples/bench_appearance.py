"""Is the merged field one scene? Appearance matching off/on, hard/blended cell borders, moving objects
unmasked/masked, on the example town with light that changes along the flight and cars on the streets.

    python -m examples.bench_appearance [--iterations 1000] [--seeds 0 1] [--output bench_out/appearance] [--reuse]

The scene: ``make_scene --appearance-drift 0.25 --num-movers 100`` (per-channel gains 0.75-1.25 over the
capture; cars in ~2-3 % of the pixels, masks written for them). Each (seed, masks) pair is one training
of async-nerf-small (its 2x2 grid) in a fresh process; the masked run reads masks/, the unmasked one a
copy of the scene without them. After training, ns-eval's metrics (val frames, whose masks leave the
cars out of the metrics in both runs, so both are scored on the static town) are computed four times:
the colour transforms the run's last step fitted (matching on) or the identity (off), each with hard
borders and with blended ones. Reported: val PSNR, the seam metrics (partition/seams.py: the rendering's
mean colour step across cell borders vs within cells, PSNR in a 2-px band around borders vs inside cells),
as means over the seeds with the spread.
"""

from __future__ import annotations

import math
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from examples import bench_common as bc  # noqa: E402
from examples.make_scene import SceneSpec  # noqa: E402

SPEC = SceneSpec(appearance_drift=0.25, num_movers=100)
QUICK = SceneSpec(num_rgb=24, width=32, height=24, depth_width=24, depth_height=18, write_preview=False,
                  appearance_drift=0.25, num_movers=100)
METRICS = ("psnr", "seam_step_across_cells", "seam_step_within_cells", "seam_step_ratio", "psnr_border_band",
           "psnr_cell_interior")
VARIANTS = [(match, blend) for match in (False, True) for blend in (False, True)]


def _unmasked_copy(scene: Path) -> Path:
    """The scene without its train masks (val masks kept: both runs are scored on the static town)."""
    copy = scene.parent / f"{scene.name}_unmasked"
    if not (copy / "coordinates.pt").is_file():
        shutil.copytree(scene, copy, ignore=shutil.ignore_patterns(".async_nerf_cache"))
        shutil.rmtree(copy / "train" / "masks", ignore_errors=True)
    return copy


def evaluate_variants(pipeline) -> Dict[str, Any]:
    """ns-eval's metrics for matching off/on x hard/blended borders (the run's own transforms for 'on')."""
    import torch

    model = pipeline.model
    fitted = [cell.colour_transform.clone() for cell in model.cells]
    router = model.router
    margin = pipeline.config.datamanager.partition.boundary_margin
    results: Dict[str, Any] = {"transforms": [t.tolist() for t in fitted]}
    for match, blend in VARIANTS:
        for cell, transform in zip(model.cells, fitted):
            cell.colour_transform.copy_(transform if match else torch.eye(3, 4))
        router.blend_margin = margin if blend else None
        started = time.perf_counter()
        metrics = pipeline.get_average_eval_image_metrics()
        results[f"match={match},blend={blend}"] = {
            **{k: metrics.get(k) for k in METRICS}, "eval_s": time.perf_counter() - started,
        }
    return results


def run_row(scene: str, masked: bool, seed: int, iterations: int, output: str, threads=None) -> Dict[str, Any]:
    bc.set_threads(threads)
    config = bc.small_preset(iterations)
    config.machine.seed = seed
    config.pipeline.datamanager.sampling_seed = seed
    data = Path(scene) if masked else _unmasked_copy(Path(scene))
    name = f"{'masked' if masked else 'unmasked'}-seed{seed}"
    result = bc.train_in_process(config, data, iterations, Path(output), name=name,
                                 after_train=lambda trainer: evaluate_variants(trainer.pipeline))
    return result  # type: ignore[return-value]


def reevaluate_row(scene: str, masked: bool, seed: int, iterations: int, output: str, threads=None) -> Dict[str, Any]:
    """``--reuse``: the run ``run_row`` trained, loaded from its checkpoint, appearance matched again with this
    code (``pipeline.match_appearance``) and evaluated as ``run_row`` does."""
    from nerfstudio.utils.eval_utils import eval_setup

    bc.set_threads(threads)
    name = f"{'masked' if masked else 'unmasked'}-seed{seed}"
    config_path = Path(output) / name / "async-nerf-small" / "run" / "config.yml"
    _, pipeline, _, step = eval_setup(config_path, test_mode="test")
    report = pipeline.match_appearance()
    extras = evaluate_variants(pipeline)
    extras["matching"] = [] if report is None else report.lines()
    return {"name": name, "iterations": step + 1, "extras": extras, "reused": str(config_path),
            "psnr": extras["match=True,blend=False"]["psnr"], "s_per_iter": math.nan, "setup_s": math.nan}


def _summary(rows: List[Dict[str, Any]], masked: bool, variant: str, metric: str) -> str:
    values = [r["extras"][variant][metric] for r in rows if r["masked"] == masked and r["extras"][variant][metric] is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.mean(values):.4g} ({min(values):.4g}-{max(values):.4g})"


def markdown(rows: List[Dict[str, Any]]) -> str:
    header = ["train masks", "matching", "borders", *METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for masked in (False, True):
        for match, blend in VARIANTS:
            variant = f"match={match},blend={blend}"
            cells = [_summary(rows, masked, variant, m) for m in METRICS]
            lines.append(f"| {'on' if masked else 'off'} | {'on' if match else 'off'} | "
                         f"{'blended' if blend else 'hard'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = bc.base_parser(__doc__.split("\n")[0], "appearance", default_iterations=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--reuse", action="store_true",
                        help="evaluate the runs an earlier invocation trained in --output again (matching redone with this code)")
    args = parser.parse_args()
    if args.iterations is None:
        args.iterations = bc.QUICK_ITERATIONS if args.quick else 1000
    default = "example_data/town_drift_movers_quick" if args.quick else "example_data/town_drift_movers"
    args.scene = bc.ensure_scene(Path(args.scene or default), QUICK if args.quick else SPEC).resolve()
    args.output = Path(args.output).resolve()
    kwargs = {
        f"{'masked' if masked else 'unmasked'} seed {seed}": {
            "scene": str(args.scene), "masked": masked, "seed": seed, "iterations": args.iterations,
            "output": str(args.output), "threads": args.threads,
        }
        for seed in args.seeds for masked in (False, True)
    }
    function = "reevaluate_row" if args.reuse else "run_row"
    rows = bc.run_rows(f"examples.bench_appearance:{function}", kwargs, args.output)
    for row, request in zip(rows, kwargs.values()):
        row["masked"], row["seed"] = request["masked"], request["seed"]
    text = "\n".join([
        f"scene {args.scene} (appearance drift 0.25, 100 cars), async-nerf-small, {args.iterations} steps, "
        f"seeds {args.seeds}; means over the seeds (min-max). Val metrics leave the cars out (val masks).",
        "",
        markdown(rows),
    ])
    print()
    print(text)
    bc.write_results(args.output, {"args": {k: str(v) for k, v in vars(args).items()}, "machine": bc.machine_info(),
                                   "rows": rows}, text)


if __name__ == "__main__":
    main()
