#!/usr/bin/env bash
# The bundled example end to end: set up, generate the scene, train async-nerf-small, evaluate, render.
# Usage: bash examples/demo.sh [extra ns-train arguments]
#        DEMO_LIDAR=1 bash examples/demo.sh   # the town with a spinning LiDAR track too (make_scene --lidar)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export PYTHONWARNINGS=ignore

DATA=example_data/town
SCENE_ARGS=()
if [ "${DEMO_LIDAR:-0}" = 1 ]; then
  DATA=example_data/town_lidar
  SCENE_ARGS=(--lidar)
fi
NAME=$(basename "$DATA")
RUN=demo-$(date +%Y%m%d-%H%M%S)
RUN_DIR=outputs/$NAME/async-nerf-small/$RUN
start=$(date +%s)

if [ ! -f "$DATA/coordinates.pt" ]; then
  python -m examples.make_scene "$DATA" "${SCENE_ARGS[@]}"
fi
ns-train async-nerf-small --data "$DATA" --output-dir outputs --experiment-name "$NAME" --timestamp "$RUN" "$@"
ns-eval --load-config "$RUN_DIR/config.yml" --output-path "$RUN_DIR/eval.json"
ns-render interpolate --load-config "$RUN_DIR/config.yml" --output-path "renders/$NAME-$RUN.mp4" \
  --interpolation-steps 4 --frame-rate 10

python - "$RUN_DIR/eval.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
keys = ["psnr", "ssim", "lpips", "depth_rmse_m", "depth_abs_rel", "depth_delta_1_25",
        "depth_pose_train_prior_translation_m_mean", "depth_pose_train_tpf_translation_m_mean",
        "depth_pose_train_tpf+refine_translation_m_mean", "lidar_range_rmse_m", "lidar_range_abs_rel",
        "lidar_pose_train_tpf_translation_m_mean"]
for k in keys:
    if k in r:
        print(f"  {k:48s} {r[k]:.4f}")
PY
echo
echo "Done in $(( $(date +%s) - start )) s (set-up excluded)."
echo "  config:  $RUN_DIR/config.yml"
echo "  metrics: $RUN_DIR/eval.json"
echo "  video:   renders/$NAME-$RUN.mp4"
echo "Open it in the viewer:  .venv/bin/ns-viewer --load-config $RUN_DIR/config.yml  (then browse http://localhost:7007)"
