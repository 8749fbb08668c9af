#!/usr/bin/env bash
# A short CPU training of every registered generator on the same photos, then one side-by-side
# evaluation on held-out photos with synthetic occlusions (the table of the closing note):
#   bash scripts/short_generator_runs.sh TRAIN_PHOTOS TEST_PHOTOS [OUT=runs/short] [STEPS=300]
# Small CPU settings: 96² crops, widths shrunk (see below), stage 1 of the staged models (RLA:
# stage 1 then its detection stage 2 for the mask), batch 8, one thread per process, two
# runs at a time. Far from the papers' budgets (100k–500k steps on GPUs at 128–256²): it shows
# that every model trains and how they compare early, not their final quality.
set -euo pipefail
cd "$(dirname "$0")/.."
train="$1"; test="$2"; out="${3:-runs/short}"; steps="${4:-300}"
py=python
[ -x .venv/bin/python ] && py=.venv/bin/python
export OMP_NUM_THREADS=1
common=(--data "$train" --steps "$steps" --set trainer.batch_size=8 --set trainer.progress=false
        --set trainer.sample_every=100 --set trainer.log_every=10 --set trainer.ckpt_every=100)
occ=(--set occlusion.image_size=96 --set occlusion.model=ict)
run() { local name="$1"; shift; echo "== $name"; $py cli.py train "$name" --out "$out/$name" --resume "${common[@]}" "$@" \
        > "$out/$name.log" 2>&1 && echo "   done $name" || { echo "   FAILED $name (see $out/$name.log)"; return 1; }; }
mkdir -p "$out"
start=$(date +%s)
run cfrgan --set model.image_size=96 --set model.ngf=16 --set model.n_blocks=4 --set discriminator.ndf=16 &
run conditioned --set generator.image_size=96 --set generator.width=16 --set generator.max_width=128 \
    --set d_width=16 "${occ[@]}" &
wait
run stackgan --set generator.image_size=96 --set generator.width=16 --set generator.max_width=128 "${occ[@]}" &
run c2f --set model.image_size=96 --set model.width=16 "${occ[@]}" &
wait
run rla --out "$out/rla1" --set model.image_size=96 --set model.hidden_size=128 "${occ[@]}" || true
$py cli.py train rla --out "$out/rla" --stage 2 --init "$out/rla1" --data "$train" --steps $((steps / 3)) \
    --set trainer.batch_size=8 --set trainer.progress=false --set trainer.log_every=10 \
    --set model.image_size=96 --set model.hidden_size=128 "${occ[@]}" > "$out/rla2.log" 2>&1
echo "training took $(( ($(date +%s) - start) / 60 )) min"
weights=()
for name in cfrgan conditioned stackgan c2f rla; do weights+=(--weights "$name=$out/$name"); done
$py cli.py evaluate deocc --generator all "${weights[@]}" --data "$test" --image-size 96 --out "$out/eval" \
    --json "$out/eval/report.json"
