#!/usr/bin/env bash
# One-shot GPU check: on a machine with an NVIDIA GPU, set up .venv (scripts/setup.sh picks a torch
# build the driver supports), try to build tiny-cuda-nn (nvcc checked against torch's CUDA, the GPU's
# architecture, bounded build jobs), generate the example town, train `async-nerf` with tcnn fields and
# with torch fields past the warm-ups, evaluate both with ns-eval, count the host synchronisations of a
# step, time merged rendering with and without nerfacc's occupancy grid, and print one table (s/step,
# rays/s, val PSNR, depth RMSE, peak GPU memory per implementation). Then, per implementation, a second
# short run with stage 3 and `--pipeline.finetune-tpf True` is stopped after its checkpoint, resumed with
# `--load-dir` for as many steps again, and evaluated (the path a crashed or killed run takes); the second
# table says whether that worked. Never needed by the tests or CI.
#
# Usage: bash examples/gpu_check.sh [options] [-- extra ns-train arguments]
#   --steps N           training steps per run (default 2000: past the depth warm-up of every cell)
#   --method NAME       ns-train method (default async-nerf, the GPU preset)
#   --data DIR          dataset (default example_data/town, generated when it has no coordinates.pt)
#   --out DIR           where runs, logs and the table go (default outputs/gpu_check)
#   --no-setup          use .venv as it is (skip scripts/setup.sh)
#   --wheels DIR        offline: no .venv and no package index; the machine's own python3 (with torch
#                       and CUDA) plus the wheels in DIR (made by examples/gpu_bundle.sh elsewhere),
#                       installed into a folder on PYTHONPATH; tiny-cuda-nn only if already importable
#   --no-tcnn-install   do not try to build tiny-cuda-nn (use it if it is already installed)
#   --resume-steps N    the resume check: N steps with finetune_tpf and stage 3 from a cell's 2nd step,
#                       a checkpoint, then resumed with --load-dir up to 2N steps (default 100; 0: no
#                       check). N must exceed twice the number of cells (8 for 2x2), or stage 3 is not
#                       reached before the checkpoint and the check fails saying so
#   --cpu-smoke         no GPU required: torch fields on the CPU, to check this script itself
#                       (e.g. --cpu-smoke --method async-nerf-small --steps 5); figures are meaningless
#   --dry-run           print the commands instead of running them (no GPU required)
#
# Exit status: 2 when there is no usable GPU (nvidia-smi missing or failing, or torch sees no CUDA),
# 1 when a training, an evaluation or the resume check failed, 0 otherwise. A failed tiny-cuda-nn
# build is reported and the check continues with torch fields only (exit 0): building it needs nvcc
# from a CUDA toolkit that matches torch's CUDA version.
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=2000
METHOD=async-nerf
DATA=example_data/town
OUT=outputs/gpu_check
SETUP=1
TCNN_INSTALL=1
CPU_SMOKE=0
DRY_RUN=0
WHEELS=""
RESUME_STEPS=100
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) STEPS=$2; shift 2 ;;
    --method) METHOD=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --no-setup) SETUP=0; shift ;;
    --wheels) WHEELS=$2; SETUP=0; TCNN_INSTALL=0; shift 2 ;;
    --no-tcnn-install) TCNN_INSTALL=0; shift ;;
    --resume-steps) RESUME_STEPS=$2; shift 2 ;;
    --cpu-smoke) CPU_SMOKE=1; TCNN_INSTALL=0; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 64 ;;
  esac
done
case "$STEPS" in ''|*[!0-9]*) echo "gpu_check: --steps needs a positive integer, got '$STEPS'" >&2; exit 64 ;; esac
[ "$STEPS" -gt 0 ] || { echo "gpu_check: --steps needs a positive integer, got '$STEPS'" >&2; exit 64; }
case "$RESUME_STEPS" in ''|*[!0-9]*) echo "gpu_check: --resume-steps needs an integer >= 0, got '$RESUME_STEPS'" >&2; exit 64 ;; esac

exec 3>&1  # the console, for commands echoed while their output goes to a log
say() { echo "[gpu_check] $*"; }
no_gpu() { echo "[gpu_check] FAILED: no usable GPU: $*" >&2; echo "[gpu_check] (--cpu-smoke checks this script without one)" >&2; exit 2; }
run() {  # echo the command; run it unless --dry-run
  echo "+ $*" >&3
  [ "$DRY_RUN" = 1 ] || "$@"
}

# 1. The GPU, before anything slow.
if [ "$CPU_SMOKE" = 0 ] && [ "$DRY_RUN" = 0 ]; then
  command -v nvidia-smi >/dev/null 2>&1 || no_gpu "nvidia-smi is not on PATH (no NVIDIA driver)"
  GPU_NAME=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 1) \
    || no_gpu "nvidia-smi fails: $GPU_NAME"
  say "GPU: $GPU_NAME"
fi

# 2. The environment: .venv (scripts/setup.sh), or with --wheels the machine's python3 and the wheels.
PY=python
if [ "$SETUP" = 1 ]; then
  run bash scripts/setup.sh
fi
if [ -n "$WHEELS" ]; then
  PY=${PYTHON:-python3}
  ls "$WHEELS"/nerfstudio-*.whl >/dev/null 2>&1 || {
    echo "[gpu_check] FAILED: no nerfstudio wheel in $WHEELS (make the folder with examples/gpu_bundle.sh)" >&2; exit 1; }
  SITE=${ASYNC_NERF_SITE:-/tmp/async_nerf_site}
  say "installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SITE (no index, no dependencies)"
  run "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
  # This checkout first (the wheel of it only registers its entry points), then the wheels, then the
  # machine's own packages; console scripts (ns-train, ns-eval) from $SITE/bin.
  export PYTHONPATH="$(pwd):$SITE${PYTHONPATH:+:$PYTHONPATH}"
  export PATH="$SITE/bin:$PATH"
fi
if [ "$DRY_RUN" = 0 ]; then
  if [ -z "$WHEELS" ]; then
    [ -x .venv/bin/python ] || { echo "[gpu_check] FAILED: no .venv (run without --no-setup)" >&2; exit 1; }
    # shellcheck disable=SC1091
    . .venv/bin/activate
  fi
  export PYTHONWARNINGS=ignore
  if [ "$CPU_SMOKE" = 0 ]; then
    "$PY" - <<'PY' || no_gpu "torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null) sees no CUDA device"
import sys, torch
if not torch.cuda.is_available():
    sys.exit(1)
print(f"[gpu_check] torch {torch.__version__}, CUDA {torch.version.cuda}, device {torch.cuda.get_device_name(0)}")
PY
  fi
fi
mkdir -p "$OUT"
LOGS=$OUT/logs
mkdir -p "$LOGS"

# 3. tiny-cuda-nn: a CUDA source build; it may fail (no nvcc, a CUDA toolkit that does not match torch).
tcnn_importable() { [ "$DRY_RUN" = 0 ] && "$PY" -c "import tinycudann" >/dev/null 2>&1; }
TCNN_STATUS="not tried (--no-tcnn-install)"
[ -z "$WHEELS" ] || TCNN_STATUS="not installed: offline (--wheels); carry a tinycudann wheel built for this GPU in the folder"
NVCC_PROBLEM=""
if [ "$DRY_RUN" = 0 ] && [ "$CPU_SMOKE" = 0 ] && command -v nvcc >/dev/null 2>&1; then
  NVCC_CUDA=$(nvcc --version | sed -n 's/.*release \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')
  TORCH_CUDA=$("$PY" -c "import torch; print(torch.version.cuda or '')")
  if [ "${NVCC_CUDA%%.*}" != "${TORCH_CUDA%%.*}" ]; then
    NVCC_PROBLEM="nvcc is CUDA $NVCC_CUDA but torch is built for CUDA $TORCH_CUDA: install the matching toolkit (same major version)"
  fi
  # Build for this GPU only (e.g. 90 for an H100/H200): minutes instead of every architecture.
  export TCNN_CUDA_ARCHITECTURES=${TCNN_CUDA_ARCHITECTURES:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d '. ')}
  # nvcc jobs take GBs of RAM each: bound them.
  export MAX_JOBS=${MAX_JOBS:-$(( $(nproc) < 8 ? $(nproc) : 8 ))}
  say "nvcc CUDA $NVCC_CUDA, torch CUDA $TORCH_CUDA, TCNN_CUDA_ARCHITECTURES=$TCNN_CUDA_ARCHITECTURES, MAX_JOBS=$MAX_JOBS"
fi
if tcnn_importable; then
  TCNN_STATUS="already installed"
elif [ "$TCNN_INSTALL" = 1 ]; then
  if ! command -v nvcc >/dev/null 2>&1 && [ "$DRY_RUN" = 0 ]; then
    TCNN_STATUS="not installed: nvcc not found (install a CUDA toolkit matching torch's CUDA, then rerun)"
  elif [ -n "$NVCC_PROBLEM" ]; then
    TCNN_STATUS="not installed: $NVCC_PROBLEM"
  else
    say "building tiny-cuda-nn (10-20 minutes; log: $LOGS/tcnn_install.log)"
    # --no-build-isolation: its setup.py imports the torch it builds against (the venv's).
    if [ "$DRY_RUN" = 1 ]; then
      run pip install ninja
      run pip install --no-build-isolation "git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch"
      TCNN_STATUS="dry run"
    elif { pip install ninja && pip install --no-build-isolation \
             "git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch"; } >"$LOGS/tcnn_install.log" 2>&1 \
         && tcnn_importable; then
      TCNN_STATUS="installed now"
    else
      TCNN_STATUS="build failed (see $LOGS/tcnn_install.log; last line: $(tail -n 1 "$LOGS/tcnn_install.log"))"
    fi
  fi
fi
say "tiny-cuda-nn: $TCNN_STATUS"
IMPLEMENTATIONS=(torch)
if tcnn_importable && [ "$CPU_SMOKE" = 0 ]; then
  IMPLEMENTATIONS=(tcnn torch)
elif [ "$DRY_RUN" = 1 ] && [ "$CPU_SMOKE" = 0 ]; then
  IMPLEMENTATIONS=(tcnn torch)
fi

# 4. The example scene.
if [ ! -f "$DATA/coordinates.pt" ]; then
  run "$PY" -m examples.make_scene "$DATA"
fi

# 5. Train and evaluate each implementation.
DEVICE_ARGS=()
if [ "$CPU_SMOKE" = 1 ]; then
  DEVICE_ARGS=(--machine.device-type cpu)
fi
PEAK_MEMORY_NS_TRAIN='import atexit, sys, torch
def report():
    if torch.cuda.is_available():
        print(f"PEAK_GPU_MB {torch.cuda.max_memory_allocated() / 2**20:.0f}")
atexit.register(report)
sys.argv[0] = "ns-train"
from nerfstudio.scripts.train import entrypoint
entrypoint()'
FAILED=0
RESULTS=()
RESUME_RESULTS=()
# The resume check: stage 3 from each cell's 2nd step (depth-pose-refine-start counts a cell's own steps)
# with the TPF fine-tuned; a first run of RESUME_STEPS steps ends with its checkpoint (a stop: the same
# files as a kill after a save, without a race with a fast GPU), which is kept beside the run as
# first_run.ckpt (a hard link: nerfstudio_models/ must hold checkpoints only); then ns-train --load-dir
# continues it to 2 x RESUME_STEPS (--max-num-iterations is the run's total when resuming) and ns-eval
# evaluates the result. On CUDA this is the path whose loaded poses differ from the set-up's. The
# table's step checks whether the checkpoints have the right steps, the resumed run loaded one, and the
# TPF's optimiser carried on from the first run's state.
RESUME_ARGS=(--pipeline.finetune-tpf True --pipeline.datamanager.depth-poses tpf
  --pipeline.model.depth-pose-refine-start 1)
last_line() { tail -n 1 "$1" 2>/dev/null || true; }
keep_first_checkpoint() {  # the newest checkpoint of $1, hard-linked to $1/first_run.ckpt
  if [ "$DRY_RUN" = 1 ]; then echo "+ ln -f $1/nerfstudio_models/step-<newest>.ckpt $1/first_run.ckpt" >&3; return 0; fi
  local newest
  newest=$(find "$1/nerfstudio_models" -maxdepth 1 -name 'step-*.ckpt' 2>/dev/null | sort | tail -n 1)
  [ -n "$newest" ] && ln -f "$newest" "$1/first_run.ckpt"
}
resume_check() {
  local impl=$1 dir=$OUT/runs/$METHOD/$1-resume status=ok start
  [ "$DRY_RUN" = 1 ] || rm -rf "$dir"
  local common=("$METHOD" --data "$DATA" --output-dir "$OUT" --experiment-name runs --timestamp "$impl-resume"
    --vis tensorboard --steps-per-save 1000000 --steps-per-eval-batch 1000000 --steps-per-eval-image 1000000
    --steps-per-eval-all-images 1000000 --pipeline.model.implementation "$impl" "${RESUME_ARGS[@]}"
    ${DEVICE_ARGS[@]+"${DEVICE_ARGS[@]}"} ${EXTRA[@]+"${EXTRA[@]}"})
  say "resume check, $impl fields: $RESUME_STEPS steps with finetune_tpf, then resumed to $((2 * RESUME_STEPS)) (logs: $LOGS/resume_*_$impl.log)"
  start=$(date +%s)
  if ! run "$PY" -c "$PEAK_MEMORY_NS_TRAIN" "${common[@]}" --max-num-iterations "$RESUME_STEPS" \
      >"$LOGS/resume_first_$impl.log" 2>&1; then
    status="first run failed: $(last_line "$LOGS/resume_first_$impl.log")"
  elif ! keep_first_checkpoint "$dir"; then
    status="the first run left no checkpoint in $dir/nerfstudio_models"
  elif ! run "$PY" -c "$PEAK_MEMORY_NS_TRAIN" "${common[@]}" --max-num-iterations "$((2 * RESUME_STEPS))" \
      --load-dir "$dir/nerfstudio_models" >"$LOGS/resume_second_$impl.log" 2>&1; then
    status="resumed run failed: $(last_line "$LOGS/resume_second_$impl.log")"
  elif ! run ns-eval --load-config "$dir/config.yml" --output-path "$dir/eval.json" >"$LOGS/resume_eval_$impl.log" 2>&1; then
    status="ns-eval of the resumed run failed: $(last_line "$LOGS/resume_eval_$impl.log")"
  fi
  [ "$status" = ok ] || { FAILED=1; say "$impl resume check: $status"; }
  RESUME_RESULTS+=("$impl|$dir|$(( $(date +%s) - start ))|$status")
}

for impl in "${IMPLEMENTATIONS[@]}"; do
  RUN_DIR=$OUT/runs/$METHOD/$impl
  STATUS=ok
  [ "$DRY_RUN" = 1 ] || rm -rf "$RUN_DIR"  # a rerun starts afresh (no old events in the timing)
  say "training $METHOD with $impl fields, $STEPS steps (log: $LOGS/train_$impl.log)"
  start=$(date +%s)
  # Checkpoint, evaluations and the viewer off during the run: the timing is the training's own;
  # nerfstudio still saves a checkpoint at the end, and ns-eval evaluates it.
  # ns-train itself, in a Python that prints the peak GPU memory when it exits.
  if ! run "$PY" -c "$PEAK_MEMORY_NS_TRAIN" "$METHOD" --data "$DATA" --output-dir "$OUT" --experiment-name runs \
      --timestamp "$impl" --max-num-iterations "$STEPS" --vis tensorboard \
      --steps-per-save 1000000 --steps-per-eval-batch 1000000 --steps-per-eval-image 1000000 \
      --steps-per-eval-all-images 1000000 --pipeline.model.implementation "$impl" \
      ${DEVICE_ARGS[@]+"${DEVICE_ARGS[@]}"} ${EXTRA[@]+"${EXTRA[@]}"} >"$LOGS/train_$impl.log" 2>&1; then
    STATUS="ns-train failed: $(tail -n 1 "$LOGS/train_$impl.log")"
  fi
  TRAIN_S=$(( $(date +%s) - start ))
  if [ "$STATUS" = ok ] && ! run ns-eval --load-config "$RUN_DIR/config.yml" --output-path "$RUN_DIR/eval.json" \
      >"$LOGS/eval_$impl.log" 2>&1; then
    STATUS="ns-eval failed: $(tail -n 1 "$LOGS/eval_$impl.log")"
  fi
  if [ "$STATUS" = ok ] && [ "$CPU_SMOKE" = 0 ] && [ "$DRY_RUN" = 0 ]; then
    run "$PY" examples/gpu_sync_probe.py --data "$DATA" --method "$METHOD" --implementation "$impl" \
      --output "$RUN_DIR/sync.json" >"$LOGS/sync_$impl.log" 2>&1 || say "$impl: sync probe failed (see $LOGS/sync_$impl.log)"
    if [ -f examples/bench_occupancy.py ]; then
      run "$PY" examples/bench_occupancy.py --load-config "$RUN_DIR/config.yml" --output "$RUN_DIR/occupancy.json" \
        >"$LOGS/occupancy_$impl.log" 2>&1 || say "$impl: occupancy benchmark failed (see $LOGS/occupancy_$impl.log)"
    fi
  fi
  [ "$STATUS" = ok ] || { FAILED=1; say "$impl: $STATUS"; }
  RESULTS+=("$impl|$RUN_DIR|$TRAIN_S|$STATUS")
  [ "$RESUME_STEPS" = 0 ] || resume_check "$impl"
done

if [ "$DRY_RUN" = 1 ]; then
  say "dry run: nothing was run"
  exit 0
fi

# 6. The table: s/step from the training log (nerfstudio's "Train Iter (time)", a 20-step running
# average, median over the second half of the run so start-up and compilation are left out).
# The resume rows are checked here too (checkpoint steps, the load, the TPF optimiser's state); a row
# that fails makes this step exit 3.
TABLE_RC=0
"$PY" - "$OUT" "$STEPS" "$METHOD" "$TCNN_STATUS" "$RESUME_STEPS" "${RESULTS[@]}" \
  ${RESUME_RESULTS[@]+"${RESUME_RESULTS[@]/#/resume|}"} <<'PY' || TABLE_RC=$?
import json
import statistics
import sys
from pathlib import Path

import torch

out, steps, method, tcnn_status = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
resume_steps = int(sys.argv[5])
results = [entry for entry in sys.argv[6:] if not entry.startswith("resume|")]
resume_results = [entry[len("resume|") :] for entry in sys.argv[6:] if entry.startswith("resume|")]


def seconds_per_step(run_dir: Path):
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        events.Reload()
        values = [e.value for e in events.Scalars("Train Iter (time)")]
    except Exception:  # no events file, or no such tag
        return None
    return statistics.median(values[len(values) // 2 :]) if values else None


device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (smoke test, figures meaningless)"
logs = out / "logs"


def peak_gpu_mb(impl: str):
    log = logs / f"train_{impl}.log"
    lines = [line for line in log.read_text().splitlines() if line.startswith("PEAK_GPU_MB")] if log.is_file() else []
    return float(lines[-1].split()[1]) if lines else None


def rays_per_step(config_path: Path):
    try:
        import yaml

        config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
        data = config.pipeline.datamanager
        return data.train_num_rays_per_batch + data.train_num_depth_rays_per_batch
    except Exception:
        return None


def read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else {}


rows = []
for entry in results:
    impl, run_dir, train_s, status = entry.split("|", 3)
    run_dir = Path(run_dir)
    metrics = {}
    if (run_dir / "eval.json").is_file():
        metrics = json.loads((run_dir / "eval.json").read_text())["results"]
    s_per_step = seconds_per_step(run_dir)
    rays = rays_per_step(run_dir / "config.yml")
    sync = read_json(run_dir / "sync.json")
    occupancy = read_json(run_dir / "occupancy.json")
    rows.append(
        {
            "implementation": impl,
            "s_per_step": s_per_step,
            "train_rays_per_s": rays / s_per_step if rays and s_per_step else None,
            "peak_gpu_mb": peak_gpu_mb(impl),
            "syncs_per_step": sync.get("syncs_per_step"),
            "our_syncs_per_step": sync.get("ours_per_step"),
            "occupancy": occupancy,
            "train_wall_s": int(train_s),
            "val_psnr": metrics.get("psnr"),
            "depth_rmse_m": metrics.get("depth_rmse_m"),
            "status": status,
            "run_dir": str(run_dir),
        }
    )


def cell(value, fmt):
    return "n/a" if value is None else format(value, fmt)


lines = [
    f"GPU check: {method}, {steps} steps per run, on {device}; torch {torch.__version__} (CUDA {torch.version.cuda})",
    f"tiny-cuda-nn: {tcnn_status}",
    "",
    "| implementation | s/step | train rays/s | ns-train wall (s) | val PSNR (dB) | depth RMSE (m) | peak GPU MB | syncs/step (ours) | status |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---|",
]
for row in rows:
    syncs = "n/a" if row["syncs_per_step"] is None else f"{row['syncs_per_step']:.1f} ({row['our_syncs_per_step']:.1f})"
    lines.append(
        f"| {row['implementation']} | {cell(row['s_per_step'], '.4f')} | {cell(row['train_rays_per_s'], '.0f')} | "
        f"{row['train_wall_s']} | {cell(row['val_psnr'], '.2f')} | {cell(row['depth_rmse_m'], '.2f')} | "
        f"{cell(row['peak_gpu_mb'], '.0f')} | {syncs} | {row['status']} |"
    )
if not any(row["implementation"] == "tcnn" for row in rows):
    lines.append("| tcnn | n/a | n/a | n/a | n/a | n/a | n/a | n/a | not run: tiny-cuda-nn is not importable |")
for row in rows:
    if row["occupancy"]:
        lines.append(f"\nmerged rendering, {row['implementation']} fields: {json.dumps(row['occupancy'])}")


# --- the resume check: did the second run continue the first one, with the TPF fine-tuned? ---
def load_checkpoint(path: Path):
    return torch.load(path, map_location="cpu", weights_only=False)


def tpf_optimizer_steps(state):
    """Adam's step count of the 'tpf' group (None: no such optimiser, i.e. finetune_tpf was off)."""
    optimizer = state.get("optimizers", {}).get("tpf")
    if optimizer is None:
        return None
    counts = [float(entry["step"]) for entry in optimizer.get("state", {}).values() if "step" in entry]
    return max(counts) if counts else 0.0


def tpf_change(state):
    """The largest change of a fine-tuned TPF parameter from the stage-1 copy kept beside it."""
    pipeline = state.get("pipeline", {})
    changes = [
        float((value.float() - pipeline[f"stage1_{key}"].float()).abs().max())
        for key, value in pipeline.items()
        if key.startswith("tpf.") and f"stage1_{key}" in pipeline and torch.is_tensor(value) and value.numel()
    ]
    return max(changes) if changes else None


def check_resume(impl: str, run_dir: Path, status: str) -> dict:
    row = {
        "implementation": impl, "check": "resume + finetune_tpf", "first_run_steps": resume_steps,
        "resumed_to_steps": 2 * resume_steps, "first_checkpoint_step": None, "final_checkpoint_step": None,
        "tpf_optimizer_steps_first": None, "tpf_optimizer_steps_final": None, "tpf_max_change": None,
        "val_psnr": None, "depth_rmse_m": None, "status": status, "run_dir": str(run_dir),
    }
    problems = []
    first = run_dir / "first_run.ckpt"
    finals = sorted((run_dir / "nerfstudio_models").glob("step-*.ckpt"))
    try:
        if first.is_file():
            state = load_checkpoint(first)
            row["first_checkpoint_step"] = int(state["step"])
            row["tpf_optimizer_steps_first"] = tpf_optimizer_steps(state)
        if finals:
            state = load_checkpoint(finals[-1])
            row["final_checkpoint_step"] = int(state["step"])
            row["tpf_optimizer_steps_final"] = tpf_optimizer_steps(state)
            row["tpf_max_change"] = tpf_change(state)
            del state
    except Exception as error:  # a checkpoint that does not load is the finding
        problems.append(f"a checkpoint does not load: {type(error).__name__}: {error}")
    if (run_dir / "eval.json").is_file():
        metrics = json.loads((run_dir / "eval.json").read_text())["results"]
        row["val_psnr"], row["depth_rmse_m"] = metrics.get("psnr"), metrics.get("depth_rmse_m")
    if status != "ok":
        return row
    resumed_log = logs / f"resume_second_{impl}.log"
    if "Done loading Nerfstudio checkpoint" not in (resumed_log.read_text() if resumed_log.is_file() else ""):
        problems.append(f"the resumed run did not say it loaded a checkpoint ({resumed_log})")
    if row["first_checkpoint_step"] != resume_steps - 1:
        problems.append(f"first run's checkpoint at step {row['first_checkpoint_step']}, expected {resume_steps - 1}")
    if row["final_checkpoint_step"] != 2 * resume_steps - 1:
        problems.append(f"resumed run's checkpoint at step {row['final_checkpoint_step']}, expected {2 * resume_steps - 1}")
    first_tpf, final_tpf = row["tpf_optimizer_steps_first"], row["tpf_optimizer_steps_final"]
    if not first_tpf:
        problems.append(f"the TPF took no optimiser step in the first run (tpf steps: {first_tpf}): stage 3 or finetune_tpf not reached")
    elif final_tpf is None or final_tpf <= first_tpf:
        problems.append(f"the TPF optimiser did not carry on after the resume ({first_tpf} -> {final_tpf} steps)")
    if row["tpf_max_change"] == 0.0:
        problems.append("the fine-tuned TPF equals the stage-1 TPF")
    if problems:
        row["status"] = "; ".join(problems)
    return row


resume_rows = []
for entry in resume_results:
    impl, run_dir, wall_s, status = entry.split("|", 3)
    row = check_resume(impl, Path(run_dir), status)
    row["wall_s"] = int(wall_s)
    resume_rows.append(row)
if resume_rows:
    lines += [
        "",
        f"Resume check: {resume_steps} steps with --pipeline.finetune-tpf True (stage 3 from each cell's 2nd step), "
        f"a checkpoint, then ns-train --load-dir to {2 * resume_steps} steps, then ns-eval",
        "",
        "| implementation | check | checkpoint steps (first, resumed) | TPF optimiser steps (first, resumed) | TPF change | val PSNR (dB) | wall (s) | status |",
        "|---|---|---|---|---:|---:|---:|---|",
    ]
    for row in resume_rows:
        lines.append(
            f"| {row['implementation']} | {row['check']} | {row['first_checkpoint_step']}, {row['final_checkpoint_step']} | "
            f"{cell(row['tpf_optimizer_steps_first'], '.0f')}, {cell(row['tpf_optimizer_steps_final'], '.0f')} | "
            f"{cell(row['tpf_max_change'], '.2e')} | {cell(row['val_psnr'], '.2f')} | {row['wall_s']} | {row['status']} |"
        )
else:
    lines += ["", "Resume check: not run (--resume-steps 0)"]
table = "\n".join(lines)
print("\n" + table)
(out / "gpu_check.md").write_text(table + "\n")
(out / "gpu_check.json").write_text(
    json.dumps(
        {"method": method, "steps": steps, "device": device, "tcnn": tcnn_status, "rows": rows,
         "resume_steps": resume_steps, "resume_rows": resume_rows},
        indent=2,
    )
)
print(f"\n(written to {out / 'gpu_check.md'} and {out / 'gpu_check.json'})")
sys.exit(3 if any(row["status"] != "ok" for row in resume_rows) else 0)
PY
case "$TABLE_RC" in
  0) ;;
  3) FAILED=1 ;;
  *) echo "[gpu_check] FAILED: writing the table failed (exit $TABLE_RC)" >&2; exit 1 ;;
esac

if [ "$FAILED" = 1 ]; then
  echo "[gpu_check] FAILED: a training, an evaluation or the resume check failed; logs in $LOGS" >&2
  exit 1
fi
