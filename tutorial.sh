#!/usr/bin/env bash
# One entry point for readers and contributors. Each command sets everything up on
# first use (a virtual environment in .venv with the tested package versions).
#
#   ./tutorial.sh lab          JupyterLab on notebooks/ (extra arguments go to jupyter lab)
#   ./tutorial.sh headless     execute every notebook in order; print wall time and key result
#   ./tutorial.sh test         ruff (lint, format), unit tests and nbval over every notebook
#   ./tutorial.sh test-latest  the same tests on the newest release of every package (in
#                              .venv-latest), to see a new release break things before readers do
#   ./tutorial.sh book         the website, from the notebooks as committed, into book/_build/html
#   ./tutorial.sh setup        only set up (or update) .venv
#
# GPU: `TUTORIAL_JAX=cuda12 ./tutorial.sh setup` (or cuda13) installs jax with NVIDIA's
# CUDA wheels into .venv, which remembers it; `TUTORIAL_JAX=cpu` goes back.
set -euo pipefail
script=${BASH_SOURCE[0]##*/}
# Relative paths mean the folder the command was run from; notebooks run in notebooks/.
for name in CIFAR10_PATH TUTORIAL_CACHE_DIR; do
  value=${!name:-}
  if [[ -n "$value" && "$value" != /* && "$value" != "~"* ]]; then export "$name=$PWD/$value"; fi
done
cd "$(dirname "${BASH_SOURCE[0]}")"

command=${1:-help}
latest=false  # test-latest: the newest releases, in a virtual environment of their own
if [[ "$command" == test-latest ]]; then latest=true; fi
venv=${TUTORIAL_VENV:-$($latest && echo .venv-latest || echo .venv)}
stamp_file="$venv/.tutorial-installed"  # "<hash of the package lists>-<jax variant>"
installed_variant=""
if [[ -f "$stamp_file" ]]; then installed_variant=$(sed 's/.*-//' "$stamp_file"); fi
case "$installed_variant" in cpu | cuda12 | cuda13) ;; *) installed_variant="" ;; esac
jax_variant=${TUTORIAL_JAX:-${installed_variant:-cpu}}  # a CUDA .venv stays CUDA in a new shell
# XLA:CPU allocates hundreds of MB of scratch memory per training step; by default glibc
# returns it to the kernel and every step pays for fresh pages. Keeping freed memory for
# reuse made notebook 05's epochs about 1.2x faster (benchmarks/README.md). Not with
# a GPU build of JAX: one shared heap slows XLA's multi-threaded GPU compiler (3 s -> 23 s
# on an H200). Other C libraries and operating systems ignore the variable.
if [[ "$jax_variant" == cpu ]]; then
  export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647}
fi

supported_python() {  # jax 0.12 and flax 0.12.12 need 3.12; tensorflow has no 3.14 wheels
  "$1" -c 'import sys; sys.exit(not (3, 12) <= sys.version_info[:2] <= (3, 13))' 2>/dev/null
}

find_python() {  # newest first: Colab runs Python 3.13
  local candidate pyenv_versions=${PYENV_ROOT:-$HOME/.pyenv}/versions found=""
  if [[ -n "${PYTHON:-}" ]]; then
    if supported_python "$PYTHON"; then echo "$PYTHON"; return; fi
    echo "$script: PYTHON=$PYTHON is not a Python 3.12 or 3.13" >&2
    return 1
  fi
  # pyenv's shim for an installed but unselected version fails, so look in its folders too.
  for candidate in python3.13 python3.12 python3 python \
    "$pyenv_versions"/3.13*/bin/python3 "$pyenv_versions"/3.12*/bin/python3; do
    if command -v "$candidate" >/dev/null 2>&1; then
      if supported_python "$candidate"; then
        echo "$candidate"
        return
      fi
      found+=" $candidate is $("$candidate" -V 2>&1 | head -n 1 | cut -d' ' -f2);"
    fi
  done
  echo "$script: needs Python 3.12 or 3.13 (found:${found:- none;} jax 0.12 needs 3.12 or newer" \
    "and TensorFlow has no 3.14 wheels yet). Install Python 3.13 (pyenv install 3.13, uv python" \
    "install 3.13, or your system's packages) and run again, or set PYTHON=/path/to/python3.13" >&2
  return 1
}

fingerprint() {  # sha256sum is GNU coreutils; macOS has shasum (same digest)
  if command -v sha256sum >/dev/null 2>&1; then sha256sum; else shasum -a 256; fi
}

setup() {
  local jax_spec stamp python
  case "$jax_variant" in
    cpu) jax_spec="jax" ;;
    cuda12 | cuda13) jax_spec="jax[$jax_variant]" ;;
    *) echo "$script: TUTORIAL_JAX must be cpu, cuda12 or cuda13, not '$jax_variant'" >&2; exit 1 ;;
  esac
  stamp="$(cat pyproject.toml requirements/tested-versions.txt | fingerprint | cut -c1-16)-$jax_variant"
  pins=(-c requirements/tested-versions.txt)
  if $latest; then  # never up to date: each run asks the index for newer releases
    stamp="newest-$jax_variant"
    pins=(--upgrade --upgrade-strategy eager)
  elif [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]]; then
    return
  fi
  if [[ -x "$venv/bin/python" ]] && ! supported_python "$venv/bin/python"; then
    echo "$script: $venv has Python $("$venv/bin/python" -V 2>&1 | cut -d' ' -f2)," \
      "but the series needs 3.12 or 3.13; delete it (rm -rf $venv) and run again" >&2
    exit 1
  fi
  if [[ ! -x "$venv/bin/python" ]]; then
    python=$(find_python) || exit 1
    echo "Creating $venv with $python ..."
    "$python" -m venv "$venv"
  fi
  echo "Installing the series' packages into $venv (first time: a few minutes) ..."
  if [[ "$installed_variant" == cuda* && "$installed_variant" != "$jax_variant" ]]; then
    # Left installed, the old plugin would still give JAX its CUDA devices.
    "$venv/bin/python" -m pip uninstall -q -y "jax-$installed_variant-plugin" "jax-$installed_variant-pjrt"
  fi
  echo "incomplete-$jax_variant" >"$stamp_file"  # an interrupted install is retried, same variant
  rm -f "$venv/.tutorial-xla-option"  # a new JAX may not know set_xla_cpu_option's flag
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q "${pins[@]}" "$jax_spec" -e ".[dev]"
  echo "$stamp" >"$stamp_file"
}

quiet_jupyter_news() {  # no "get notified about Jupyter news?" pop-up at the first start
  local settings="$venv/share/jupyter/lab/settings"
  if [[ ! -f "$settings/overrides.json" ]]; then  # a reader's own overrides stay as they are
    mkdir -p "$settings"
    printf '%s\n' '{' '  "@jupyterlab/apputils-extension:notification": {' \
      '    "fetchNews": "false",' '    "checkForUpdates": false' '  }' '}' >"$settings/overrides.json"
  fi
}

# XLA:CPU hands convolutions to its YNNPACK kernels by default. For the weight gradient of
# notebook 05's first layer (3 input channels) they are about six times slower than XLA's
# own kernels, and turning them off makes that notebook's training step about twice as
# fast (benchmarks/README.md). The option is experimental and an XLA that does not know
# a flag in XLA_FLAGS stops every JAX program, so it is set only where this .venv's JAX
# accepts it (asked once per install) and XLA_FLAGS does not already choose it.
XLA_CPU_OPTION=--xla_cpu_experimental_ynn_fusion_type=
set_xla_cpu_option() {
  if [[ "$jax_variant" != cpu || "${XLA_FLAGS:-}" == *xla_cpu_experimental_ynn_fusion_type* ]]; then
    return
  fi
  local answer_file="$venv/.tutorial-xla-option" answer=no
  if [[ ! -f "$answer_file" ]]; then
    if XLA_FLAGS="$XLA_CPU_OPTION" "$venv/bin/python" -c 'import jax; jax.devices()' \
      >/dev/null 2>&1; then
      answer=yes
    fi
    echo "$answer" >"$answer_file"
  fi
  if [[ "$(cat "$answer_file")" == yes ]]; then
    export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }$XLA_CPU_OPTION"
  fi
}

usage() { sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$script"; }  # the comment at the top

# Notebooks the tests run at their small sizes (TUTORIAL_SMOKE=1): in full mode notebook 06
# trains its CPU recipe for many minutes. Every other notebook runs in full.
SMALL_IN_TESTS=(06_fast_cifar10.ipynb)

run_tests() {
  if $latest; then  # Flax's announced future defaults, and deprecated calls as errors
    export NNX_GRAPH_MODE=false NNX_GRAPH_UPDATES=false IPYTHONDIR=$PWD/tests/future_defaults
    set -- -W error::DeprecationWarning -W error::FutureWarning
  fi
  "$venv/bin/ruff" check .
  "$venv/bin/ruff" format --check .
  "$venv/bin/python" -m helpers.notebook_header
  local pytest=("$venv/bin/python" -m pytest --nbval --nbval-current-env -p no:cacheprovider "$@")
  local notebook full=() small=()
  for notebook in notebooks/*.ipynb; do
    if [[ " ${SMALL_IN_TESTS[*]} " == *" ${notebook##*/} "* ]]; then
      small+=("$notebook")
    else
      full+=("$notebook")
    fi
  done
  if ((${#small[@]} == 0)); then exec "${pytest[@]}" tests "${full[@]}"; fi
  "${pytest[@]}" tests "${full[@]}"
  TUTORIAL_SMOKE=1 exec "${pytest[@]}" "${small[@]}"
}

case "$command" in
  setup) setup ;;
  lab)
    setup
    set_xla_cpu_option
    shift
    if [[ $EUID -eq 0 ]]; then set -- --allow-root "$@"; fi  # containers often run as root
    quiet_jupyter_news
    exec "$venv/bin/jupyter" lab "$@" notebooks/
    ;;
  headless) setup; set_xla_cpu_option; shift; exec "$venv/bin/python" -m helpers.run_series "$@" ;;
  book) setup; exec "$venv/bin/python" book/build.py ;;
  test | test-latest) setup; set_xla_cpu_option; run_tests ;;
  help | -h | --help) usage ;;
  *)
    echo "$script: unknown command '$command'" >&2
    usage >&2
    exit 1
    ;;
esac
