#!/usr/bin/env bash
# Reproduce the shipped default regressor, assets/regressor/ict_mobilenet_v2_112.pt:
#   bash scripts/train_default_regressor.sh [RUN_DIR]
# (REGRESSOR_OUT=path.pt writes the result elsewhere than the shipped file, to compare.)
# Two steps: 1800 steps on synthetic ICT faces (assets/configs/regressor_default.yaml), then
# 300 steps on real photos mixed with synthetic faces (regressor_default_photos.yaml; photos
# from ../shared/data/faces/deepface, none of which is an evaluation photo). Needs the
# ICT-FaceKit model in the cache (`python cli.py models install ict`, or `--source
# ../shared/data/models/ict-facekit.tar.xz` offline) and about 55 minutes of an otherwise idle
# 2-core CPU (one core trains, one renders the synthetic faces). Prints the evaluation against
# the mean face at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
run="${1:-runs/regressor-default}"
shared="${FACE3D_SHARED:-../shared}"
dest="${REGRESSOR_OUT:-assets/regressor/ict_mobilenet_v2_112.pt}"
py=python
[ -x .venv/bin/python ] && py=.venv/bin/python
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # one thread per process: see bench/render.py --threads
start=$(date +%s)
$py cli.py train regressor --config assets/configs/regressor_default.yaml --out "$run"
$py cli.py train regressor --config assets/configs/regressor_default_photos.yaml --out "$run-photos" \
    --init "$run" --data "$shared/data/faces/deepface"
echo "training took $(( ($(date +%s) - start) / 60 )) min"
$py -c "from face3d.regressor.train import export_regressor; print(export_regressor('$run-photos', '$dest'))"
photos="$shared/data/faces"
data_args=()
[ -d "$photos" ] && data_args=(--data "$photos")
$py cli.py evaluate regressor --checkpoint "$dest" --synthetic 256 "${data_args[@]}" \
    --json "$run-photos/evaluation.json"
