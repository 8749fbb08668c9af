#!/usr/bin/env bash
# Reproduce the shipped large-pose regressor, assets/regressor/ict_mobilenet_v2_112_profiled.pt:
#   bash scripts/train_profiled_regressor.sh [RUN_DIR]
# 1. face profiling (python -m face3d.synth.profiling): UTKFace, the CFP frontals of people
#    001-400 (401-450 are held out for `evaluate frontalize`) and the identity-labelled photo
#    folders of ../shared, fitted and turned to yaws up to ±90°, two views each (cached in
#    runs/profiled-ict-112; about 30 min on one core, most of it detection and fitting);
# 2. 1000 steps of CFR-GAN stage 1 from the default regressor on those views mixed with
#    synthetic faces (assets/configs/regressor_profiled.yaml);
# Training reads only the folders named below (never the evaluation sets); measure the result
# separately with `python cli.py evaluate landmarks` (README, "Hard faces").
# REGRESSOR_OUT=path.pt writes the result elsewhere than the shipped file.
set -euo pipefail
cd "$(dirname "$0")/.."
run="${1:-runs/regressor-profiled}"
shared="${FACE3D_SHARED:-../shared}"
faces="$shared/data/faces"
dest="${REGRESSOR_OUT:-assets/regressor/ict_mobilenet_v2_112_profiled.pt}"
views="${PROFILED_VIEWS:-runs/profiled-ict-112}"
py=python
[ -x .venv/bin/python ] && py=.venv/bin/python
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
start=$(date +%s)
$py -m face3d.synth.profiling --out "$views" --model ict --size 112 --views 2 \
    --data "$faces/utkface/images" --data "$faces/cfp/images" \
    --exclude '/profile/' --exclude '/cfp/images/(40[1-9]|4[1-4][0-9]|450)/' \
    --data "$faces/deepface" --data "$faces/face_recognition" --data "$faces/openface" \
    --data "$faces/facenet" --data "$faces/deep3d" --data "$faces/insightface"
echo "profiling took $(( ($(date +%s) - start) / 60 )) min"
$py cli.py train regressor --config assets/configs/regressor_profiled.yaml --out "$run" \
    --init assets/regressor/ict_mobilenet_v2_112.pt --profiled "$views"
echo "profiling + training took $(( ($(date +%s) - start) / 60 )) min"
$py -c "from face3d.regressor.train import export_regressor; print(export_regressor('$run', '$dest'))"
