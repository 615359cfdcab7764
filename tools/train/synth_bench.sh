#!/bin/sh
# synth_bench.sh - the synthetic numbers of docs/training.md: a SmolLM2-shaped
# synthetic calibration file (Hq 9, Hkv 3, D 64), then the trainer in both
# signature layouts and two widths.
#
#   tools/train/synth_bench.sh BUILD_DIR [SCRATCH_DIR] [THREADS]
set -eu
build=${1:?usage: synth_bench.sh BUILD_DIR [SCRATCH_DIR] [THREADS]}
dir=${2:-/tmp}
threads=${3:-2}
calib=$build/tools/train/hashattn-calib
train=$build/tools/train/hashattn-train
$calib synth --out "$dir/bench.calib" --layers 2 --q-heads 9 --kv-heads 3 --dim 64 \
  --seqs 8 --seq-len 4096 --queries 64 --fp16 --seed 1
for layout in "" --compact; do
  for width in 64 128; do
    for epochs in 10 30; do
      echo "== layout ${layout:-paper} width $width epochs $epochs"
      $train --calib "$dir/bench.calib" --out "$dir/bench.safetensors" --mlp-width $width \
        --epochs $epochs --threads "$threads" --quiet $layout | sed -n '/^recall/,$p'
    done
  done
done
rm -f "$dir/bench.calib" "$dir/bench.safetensors"
