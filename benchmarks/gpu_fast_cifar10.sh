#!/usr/bin/env bash
# Notebook 06's GPU measurements in one go, all from the notebook's own code (lessons.airbench):
#   benchmark  benchmarks/fast_cifar10.py --runs 5 (airbench94) -> $OUT/fast_cifar10_airbench94.json
#   muon       the same with --recipe airbench94_muon -> $OUT/fast_cifar10_airbench94_muon.json
#              (both appended to benchmarks/results/fast_cifar10.jsonl, tagged
#              "code": "lessons.airbench"; a copy of that file ends up in $OUT)
#   notebook   notebook 06 executed top to bottom (section 11 is the ablation over paired
#              seeds, section 12 the systems rows) -> $OUT/notebooks/06_fast_cifar10.ipynb;
#              skipped, with a line saying so, when nbclient/ipykernel are not importable;
#              NOTEBOOK_TIMEOUT (default 1800) seconds at most
# PARTS (default "benchmark muon notebook") picks which parts run. SMOKE=1: --quick and 2 runs
# for the benchmarks, TUTORIAL_SMOKE=1 (tiny sizes) for the notebook: checks that it all runs.
# Needs: jax with CUDA, flax, optax, numpy, Pillow, matplotlib, tqdm (no TensorFlow); for the
# notebook also nbclient, nbformat, ipykernel. Data: the CIFAR-10 tarball at
# .devdata/cifar10-jpeg.tar.gz (or CIFAR10_PATH).
#
#   bash benchmarks/gpu_fast_cifar10.sh                 # on the GPU machine
#   SMOKE=1 PYTHON=.venv/bin/python SKIP_INSTALL=1 OUT=/tmp/out bash benchmarks/gpu_fast_cifar10.sh
#   PARTS=muon bash benchmarks/gpu_fast_cifar10.sh      # only the Muon recipe
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$PWD/.notebook_runs/gpu_fast_cifar10}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export CIFAR10_PATH=${CIFAR10_PATH:-$PWD/.devdata/cifar10-jpeg.tar.gz}
export TUTORIAL_CACHE_DIR=${TUTORIAL_CACHE_DIR:-$PWD/.cache}
# Compile each shape once across the processes below.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jax-cache-fast-cifar10}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
PARTS=${PARTS:-benchmark muon notebook}
runs=5
quick_flag=()
if [[ "${SMOKE:-0}" == 1 ]]; then
  runs=2
  quick_flag=(--quick)
fi
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/log.txt"; }

if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
  log "pip install --no-deps -e ."
  "$PYTHON" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2  # offline: no build env
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$OUT/nvidia-smi.txt" 2>&1 || true
"$PYTHON" -c 'import helpers; helpers.print_environment()' | tee "$OUT/environment.txt"

log "loading CIFAR-10 once (decodes and caches the JPEGs, about 10 s the first time)"
"$PYTHON" -c 'import helpers; print(helpers.load_cifar10())'

bench() {  # bench RECIPE SECONDS: benchmarks/fast_cifar10.py for one recipe, within a time limit
  log "benchmarks/fast_cifar10.py --recipe $1 --runs $runs ${quick_flag[*]}"
  timeout "$2" "$PYTHON" benchmarks/fast_cifar10.py --recipe "$1" --runs "$runs" "${quick_flag[@]}" \
    | tee "$OUT/fast_cifar10_$1.json" || log "benchmark of $1 stopped early (status $?)"
}
if [[ " $PARTS " == *" benchmark "* ]]; then bench airbench94 240; fi
if [[ " $PARTS " == *" muon "* ]]; then bench airbench94_muon 240; fi

if [[ " $PARTS " == *" notebook "* ]]; then
  if "$PYTHON" -c 'import nbclient, nbformat, ipykernel, jupyter_client' 2>/dev/null; then
    smoke=0
    if [[ "${SMOKE:-0}" == 1 ]]; then smoke=1; fi
    log "notebook 06 top to bottom (TUTORIAL_SMOKE=$smoke): the ablation is its section 11"
    TUTORIAL_SMOKE=$smoke timeout "${NOTEBOOK_TIMEOUT:-1800}" "$PYTHON" -m helpers.run_series \
      --output-dir "$OUT/notebooks" 06_fast_cifar10.ipynb 2>&1 | tee -a "$OUT/log.txt" \
      || log "notebook 06 stopped early (status $?); executed part in $OUT/notebooks"
  else
    log "notebook 06 skipped: nbclient, nbformat, ipykernel or jupyter_client is not importable"
  fi
fi
if [[ -f benchmarks/results/fast_cifar10.jsonl ]]; then
  cp benchmarks/results/fast_cifar10.jsonl "$OUT/"
fi
log "done; results in $OUT"
