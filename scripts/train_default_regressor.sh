#!/usr/bin/env bash
# Reproduce the shipped default regressor, assets/regressor/ict_mobilenet_v2_112.pt:
#   bash scripts/train_default_regressor.sh [RUN_DIR]
# Needs the ICT-FaceKit model in the cache (`python cli.py models install ict`, or
# `--source ../shared/data/models/ict-facekit.tar.xz` offline) and about an hour of a
# 2-core CPU (one core trains, one renders the synthetic faces). Settings:
# assets/configs/regressor_default.yaml. Prints the evaluation against the mean face at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
run="${1:-runs/regressor-default}"
py=python
[ -x .venv/bin/python ] && py=.venv/bin/python
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # one thread per process: see bench/render.py --threads
start=$(date +%s)
$py cli.py train regressor --config assets/configs/regressor_default.yaml --out "$run"
echo "training took $(( ($(date +%s) - start) / 60 )) min"
$py -c "from face3d.regressor.train import export_regressor; print(export_regressor('$run', 'assets/regressor/ict_mobilenet_v2_112.pt'))"
photos="${FACE3D_SHARED:-../shared}/data/faces"
data_args=()
[ -d "$photos" ] && data_args=(--data "$photos")
$py cli.py evaluate regressor --checkpoint assets/regressor/ict_mobilenet_v2_112.pt --synthetic 256 "${data_args[@]}" \
    --json "$run/evaluation.json"
