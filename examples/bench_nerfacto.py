"""Baseline: stock nerfacto through async-nerf-data next to async-nerf-small, same scene, rays and steps.

    python examples/bench_nerfacto.py [--iterations 2000] [--scene example_data/town] [--quick]
                                      [--rows a b c] [--output bench_out/nerfacto]

Rows (each trained in a fresh process for the same number of iterations on the same scene, then
evaluated on all val RGB frames):

- (a) ``async-nerf-small``: the preset as shipped (2x2 cells, depth rays from the time-pose
  function, joint depth-pose refinement from the middle of the run); 384 RGB + 128 depth rays
  per step. Its iteration-dependent settings follow ``--iterations`` the way the preset derives
  them from its 2000 (see ``bench_common.small_preset``).
- (b) ``nerfacto`` (stock): ``method_configs["nerfacto"]`` with its dataparser replaced by
  ``AsyncNerfDataParserConfig`` and ``train_num_rays_per_batch`` = (a)'s RGB + depth rays (512),
  so both see the same number of rays per step; everything else stock: the full-size field,
  ParallelDataManager (a worker process feeds batches, as ``ns-train nerfacto`` does), the SO3xR3
  camera optimiser on the RGB poses, learning rates decaying over 200k steps. RGB only: nerfacto
  reads no depth, partition or timestamps.
- (c) ``nerfacto, small field``: (b) with the small preset's field sizes copied onto its model
  (hash grid levels/resolutions/table size/features, MLP widths, appearance embedding, proposal
  networks, proposal and NeRF samples per ray: ``SMALL_FIELD_KEYS``). (b) vs (c) is the effect of
  the smaller field alone. (a) vs (c) still differs in more than "our method": (a) also has the
  camera optimiser off, learning rates decaying over the run and a shorter proposal warm-up.
- (d) ``nerfacto, small-preset model`` (only with ``--rows ... d``): every nerfacto option of the
  small preset's model (the sizes above, camera optimiser off, warm-ups, eval chunk) and its
  learning-rate schedules. (a) vs (d) isolates partition + depth supervision + TPF.

LPIPS: stock nerfacto builds torchmetrics' LPIPS, whose AlexNet backbone weights are downloaded on
first use; offline that crashes model construction. When the weights are not on disk this script
replaces ``torchmetrics.image.lpip.LearnedPerceptualImagePatchSimilarity`` by a stand-in whose
forward returns NaN before building nerfacto, says so, and reports LPIPS as n/a (async-nerf skips
LPIPS itself in that case). With the weights on disk, LPIPS is real for every row.

Columns: s/iter is training wall time / iterations (set-up excluded and shown separately: for
(a) it includes the TPF fit and the cluster masks); rays/s = rays per step / s/iter; val
PSNR/SSIM/LPIPS over all val RGB frames; depth RMSE on the val depth frames at their true poses
(async-nerf's evaluation; nerfacto's pipeline has none); peak RSS of the row's own process in MB,
read after training and after evaluation ("train / all"), plus nerfacto's data worker.
See examples/bench_common.py for the harness.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any, Dict, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from examples import bench_common as bc  # noqa: E402

SMALL_FIELD_KEYS = (
    "num_levels",
    "base_res",
    "max_res",
    "log2_hashmap_size",
    "features_per_level",
    "hidden_dim",
    "hidden_dim_color",
    "appearance_embed_dim",
    "num_proposal_samples_per_ray",
    "num_nerf_samples_per_ray",
    "proposal_net_args_list",
)
"""Options of NerfactoModelConfig that set the field's size and samples (copied for row c)."""

ROWS = {
    "a": "async-nerf-small",
    "b": "nerfacto (stock)",
    "c": "nerfacto, small field",
    "d": "nerfacto, small-preset model",
}


def lpips_weights_available() -> bool:
    from async_nerf_ns.model.lpips import alexnet_weights_path

    return alexnet_weights_path().exists()


def disable_lpips() -> None:
    """Stand-in for torchmetrics' LPIPS (nerfacto imports it inside populate_modules): returns NaN."""
    import torch
    import torchmetrics.image.lpip as lpip

    class NoLPIPS(torch.nn.Module):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__()

        def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
            return torch.tensor(float("nan"))

    lpip.LearnedPerceptualImagePatchSimilarity = NoLPIPS  # type: ignore[misc, assignment]


def nerfacto_config(kind: str, data: Path, rays_per_step: int, iterations: int, datamanager: str):
    """Stock nerfacto on async-nerf-data; ``kind`` c/d copies parts of the small preset (module docstring)."""
    from nerfstudio.configs.method_configs import method_configs
    from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
    from nerfstudio.models.nerfacto import NerfactoModelConfig

    from async_nerf_ns.data.dataparser import AsyncNerfDataParserConfig

    config = copy.deepcopy(method_configs["nerfacto"])
    config.pipeline.datamanager.dataparser = AsyncNerfDataParserConfig(data=data)
    if datamanager == "vanilla":
        old = config.pipeline.datamanager
        config.pipeline.datamanager = VanillaDataManagerConfig(
            dataparser=old.dataparser,
            train_num_rays_per_batch=old.train_num_rays_per_batch,
            eval_num_rays_per_batch=old.eval_num_rays_per_batch,
        )
    config.pipeline.datamanager.train_num_rays_per_batch = rays_per_step
    config.pipeline.datamanager.eval_num_rays_per_batch = 1024
    preset = bc.small_preset(iterations)
    small_model = preset.pipeline.model
    model = config.pipeline.model
    if kind == "c":
        for key in SMALL_FIELD_KEYS:
            setattr(model, key, copy.deepcopy(getattr(small_model, key)))
    elif kind == "d":
        for spec in NerfactoModelConfig.__dataclass_fields__.values():
            if spec.name != "_target":
                setattr(model, spec.name, copy.deepcopy(getattr(small_model, spec.name)))
        config.optimizers = {k: v for k, v in copy.deepcopy(preset.optimizers).items() if k != "depth_pose_opt"}
    return config


def run_row(kind: str, scene: str, iterations: int, output: str, rays_per_step: int,
            datamanager: str = "parallel", threads: Optional[int] = None) -> Dict[str, Any]:
    """One row, in the calling process (``run_isolated`` calls it in a fresh one)."""
    bc.set_threads(threads)
    data = Path(scene)
    if kind == "a":
        config = bc.small_preset(iterations)
    else:
        if not lpips_weights_available():
            print("LPIPS disabled: torchmetrics' AlexNet weights cannot be downloaded offline (reported as n/a)")
            disable_lpips()
        config = nerfacto_config(kind, data, rays_per_step, iterations, datamanager)
    name = {"a": "async-nerf-small", "b": "nerfacto", "c": "nerfacto-small-field", "d": "nerfacto-small-model"}[kind]
    result = bc.train_in_process(config, data, iterations, Path(output), name=name)
    result.extras["datamanager"] = type(config.pipeline.datamanager).__name__.replace("Config", "")
    result.extras["camera_optimizer"] = config.pipeline.model.camera_optimizer.mode
    return result  # type: ignore[return-value]


def rss_cell(row: Dict[str, Any]) -> str:
    text = f"{row['peak_rss_train_mb']:.0f} / {row['peak_rss_mb']:.0f}"
    if row.get("peak_rss_workers_mb"):
        text += f" (+{row['peak_rss_workers_mb']:.0f} worker)"
    return text


COLUMNS = [
    ("method", lambda r: r["label"]),
    ("iterations", lambda r: str(r["iterations"])),
    ("rays/step", lambda r: str(r["rays_per_step"])),
    ("s/iter", lambda r: bc.fmt(r["s_per_iter"])),
    ("rays/s", lambda r: bc.fmt(r["rays_per_s"], ".0f")),
    ("set-up s", lambda r: bc.fmt(r["setup_s"], ".1f")),
    ("val PSNR", lambda r: bc.fmt(r["psnr"], ".2f")),
    ("SSIM", lambda r: bc.fmt(r["ssim"], ".3f")),
    ("LPIPS", lambda r: bc.fmt(r["lpips"], ".3f")),
    ("depth RMSE (m)", lambda r: bc.fmt(r["depth_rmse_m"])),
    ("peak RSS train / all (MB)", rss_cell),
]


def main() -> None:
    parser = bc.base_parser(__doc__.split("\n")[0], "nerfacto")
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=["a", "b", "c"],
                        help="which rows to run (d: nerfacto with the whole small-preset model; off by default)")
    parser.add_argument("--nerfacto-datamanager", choices=("parallel", "vanilla"), default="parallel",
                        help="nerfacto's datamanager: parallel = stock (a worker process), vanilla = in-process")
    args = bc.resolve_common(parser.parse_args())

    preset = bc.small_preset(args.iterations).pipeline.datamanager
    rays = preset.train_num_rays_per_batch + preset.train_num_depth_rays_per_batch
    lpips_note = (
        "LPIPS: real (AlexNet weights found on disk)." if lpips_weights_available() else
        "LPIPS disabled for nerfacto: torchmetrics' AlexNet weights cannot be downloaded offline, so a "
        "stand-in returning NaN replaces it (LPIPS n/a; async-nerf skips LPIPS itself)."
    )
    print(lpips_note)
    kwargs = {
        ROWS[k]: {"kind": k, "scene": str(args.scene), "iterations": args.iterations, "output": str(args.output),
                  "rays_per_step": rays, "datamanager": args.nerfacto_datamanager, "threads": args.threads}
        for k in args.rows
    }
    rows = bc.run_rows("examples.bench_nerfacto:run_row", kwargs, args.output)

    notes = [
        f"scene {args.scene}, {args.iterations} iterations per row, {rays} rays per step "
        f"(async-nerf-small: {preset.train_num_rays_per_batch} RGB + {preset.train_num_depth_rays_per_batch} depth; "
        f"nerfacto: {rays} RGB)",
        lpips_note,
        f"nerfacto rows: {args.nerfacto_datamanager} datamanager "
        f"({'stock ParallelDataManager, one worker process' if args.nerfacto_datamanager == 'parallel' else 'VanillaDataManager, in-process'}), "
        "stock SO3xR3 camera optimiser on the RGB poses, stock learning-rate schedules (b, c).",
        "s/iter excludes set-up (async-nerf: TPF fit and cluster masks are in set-up s).",
    ]
    if args.quick:
        notes.append("--quick: a smoke run on a tiny scene; the numbers mean nothing.")
    text = "\n".join(["\n".join(notes), "", bc.markdown_table(rows, COLUMNS)])
    print()
    print(text)
    bc.write_results(args.output, {"args": {k: str(v) for k, v in vars(args).items()}, "machine": bc.machine_info(),
                                   "notes": notes, "rows": rows}, text)


if __name__ == "__main__":
    main()
