#!/usr/bin/env bash
# Notebook 06's GPU measurements in one go (parts 1 and 2 took 4-6 minutes on an H200; 3 alone, 76 s):
#   1. the ablation rows of notebook 06, once each, plus 4 more runs of the full recipe
#      -> $OUT/fast_cifar10_ablation.jsonl
#   2. benchmarks/fast_cifar10.py --runs 5 -> $OUT/fast_cifar10_benchmark.json
#   3. the same with --recipe airbench94_muon -> $OUT/fast_cifar10_muon.json
#      (2 and 3 are, as always on a GPU, appended to benchmarks/results/fast_cifar10.jsonl)
#   5. (PARTS "cells") benchmarks/fast_cifar10_cells.py --runs 5, airbench94 and airbench94_muon
#      as written in notebook 06's cells (lessons.airbench) -> $OUT/fast_cifar10_cells*.json
#      (appended to benchmarks/results/fast_cifar10_cells.jsonl)
#   4. (only when PARTS names "costs") benchmarks/fast_cifar10_costs.py muon donation
#      -> $OUT/fast_cifar10_costs.jsonl (about 2 minutes on an H200 from an empty cache)
# PARTS (default "ablation benchmark muon") picks which parts run.
# Needs: jax with CUDA, flax, optax, numpy, Pillow, matplotlib, tqdm (no TensorFlow),
# and the CIFAR-10 tarball at .devdata/cifar10-jpeg.tar.gz (or CIFAR10_PATH).
#
#   bash benchmarks/gpu_fast_cifar10.sh                 # on the GPU machine
#   SMOKE=1 PYTHON=.venv/bin/python SKIP_INSTALL=1 OUT=/tmp/out bash benchmarks/gpu_fast_cifar10.sh
#   PARTS=muon bash benchmarks/gpu_fast_cifar10.sh      # only the Muon recipe
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$PWD/.notebook_runs/gpu_fast_cifar10}
mkdir -p "$OUT"
export CIFAR10_PATH=${CIFAR10_PATH:-$PWD/.devdata/cifar10-jpeg.tar.gz}
export TUTORIAL_CACHE_DIR=${TUTORIAL_CACHE_DIR:-$PWD/.cache}
# Compile each shape once across the two processes below.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jax-cache-fast-cifar10}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
PARTS=${PARTS:-cells ablation benchmark muon}
smoke_flag=()
if [[ "${SMOKE:-0}" == 1 ]]; then smoke_flag=(--smoke); fi
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/log.txt"; }

if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
  log "pip install --no-deps -e ."
  "$PYTHON" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2  # offline: no build env
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$OUT/nvidia-smi.txt" 2>&1 || true
"$PYTHON" -c 'import helpers; helpers.print_environment()' | tee "$OUT/environment.txt"

log "loading CIFAR-10 once (decodes and caches the JPEGs, about 10 s the first time)"
"$PYTHON" -c 'import helpers; print(helpers.load_cifar10())'

if [[ " $PARTS " == *" ablation "* ]]; then
  log "ablation: every row of notebook 06 once, then the full recipe with seeds 1-4"
  rm -f "$OUT/fast_cifar10_ablation.jsonl"
  timeout 270 "$PYTHON" -m helpers.fast_cifar10 --out "$OUT/fast_cifar10_ablation.jsonl" \
    --recipe-runs 4 "${smoke_flag[@]}" 2>&1 | tee -a "$OUT/log.txt" || log "ablation stopped early (status $?)"
fi

runs=5
if [[ "${SMOKE:-0}" == 1 ]]; then runs=2; fi
if [[ " $PARTS " == *" cells "* ]]; then
  cells_recipes=(airbench94 airbench94_muon)
  if [[ "${SMOKE:-0}" == 1 ]]; then cells_recipes=(quick); fi
  for recipe in "${cells_recipes[@]}"; do
    log "notebook 06's cells: benchmarks/fast_cifar10_cells.py --recipe $recipe --runs $runs"
    timeout 240 "$PYTHON" benchmarks/fast_cifar10_cells.py --recipe "$recipe" --runs "$runs" \
      | tee "$OUT/fast_cifar10_cells_$recipe.json" || log "cells benchmark stopped early (status $?)"
  done
fi
if [[ " $PARTS " == *" benchmark "* ]]; then
  log "benchmark: benchmarks/fast_cifar10.py --runs $runs"
  timeout 120 "$PYTHON" benchmarks/fast_cifar10.py --runs "$runs" "${smoke_flag[@]}" \
    | tee "$OUT/fast_cifar10_benchmark.json" || log "benchmark stopped early (status $?)"
fi
if [[ " $PARTS " == *" muon "* ]]; then
  log "benchmark: benchmarks/fast_cifar10.py --recipe airbench94_muon --runs $runs"
  timeout 180 "$PYTHON" benchmarks/fast_cifar10.py --recipe airbench94_muon --runs "$runs" \
    "${smoke_flag[@]}" | tee "$OUT/fast_cifar10_muon.json" || log "muon benchmark stopped early (status $?)"
fi
if [[ " $PARTS " == *" costs "* ]]; then
  log "where the time goes: benchmarks/fast_cifar10_costs.py muon donation"
  timeout 250 "$PYTHON" benchmarks/fast_cifar10_costs.py muon donation "${smoke_flag[@]}" \
    | tee "$OUT/fast_cifar10_costs.jsonl" || log "cost probes stopped early (status $?)"
fi
if [[ -f benchmarks/results/fast_cifar10.jsonl ]]; then
  cp benchmarks/results/fast_cifar10.jsonl "$OUT/"
fi
log "done; results in $OUT"
