#!/usr/bin/env bash
# One entry point for readers and contributors. Each command sets everything up on
# first use (a virtual environment in .venv with the tested package versions).
#
#   ./tutorial.sh lab        JupyterLab on notebooks/ (extra arguments go to jupyter lab)
#   ./tutorial.sh headless   execute every notebook in order; print wall time and key result
#   ./tutorial.sh test       ruff (lint, format), unit tests and nbval over every notebook
#   ./tutorial.sh setup      only set up (or update) .venv
#
# GPU: run `export TUTORIAL_JAX=cuda12` (or cuda13) once before the commands above;
# the next command installs jax with NVIDIA's CUDA wheels into .venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

venv=${TUTORIAL_VENV:-.venv}
jax_variant=${TUTORIAL_JAX:-cpu}
# XLA:CPU allocates hundreds of MB of scratch memory per training step; by default glibc
# returns it to the kernel and every step pays ~150,000 page faults (notebook 05, section
# 8). Keeping freed memory for reuse made a training step there 1.7x faster. Not with a GPU build
# of JAX: one shared heap slows XLA's multi-threaded GPU compiler (3 s -> 23 s on an
# H200). Other C libraries and operating systems ignore the variable.
if [[ "$jax_variant" == cpu ]]; then
  export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647}
fi

find_python() {
  for candidate in ${PYTHON:-} python3 python3.13 python3.12 python3.11 python; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
  echo "tutorial.sh: needs Python 3.11 or newer (none found; set PYTHON=/path/to/python3.11)" >&2
  exit 1
}

setup() {
  case "$jax_variant" in
    cpu) jax_spec="jax" ;;
    cuda12 | cuda13) jax_spec="jax[$jax_variant]" ;;
    *) echo "tutorial.sh: TUTORIAL_JAX must be cpu, cuda12 or cuda13, not '$jax_variant'" >&2; exit 1 ;;
  esac
  local stamp
  stamp="$(cat pyproject.toml requirements/tested-versions.txt | sha256sum | cut -c1-16)-$jax_variant"
  if [[ -f "$venv/.tutorial-installed" && "$(cat "$venv/.tutorial-installed")" == "$stamp" ]]; then
    return
  fi
  if [[ ! -x "$venv/bin/python" ]]; then
    echo "Creating $venv ..."
    "$(find_python)" -m venv "$venv"
  fi
  echo "Installing the series' packages into $venv (first time: a few minutes) ..."
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -c requirements/tested-versions.txt "$jax_spec" -e ".[dev]"
  echo "$stamp" >"$venv/.tutorial-installed"
}

command=${1:-help}
case "$command" in
  setup) setup ;;
  lab)
    setup
    shift
    as_root=()
    if [[ $EUID -eq 0 ]]; then as_root=(--allow-root); fi  # containers often run as root
    exec "$venv/bin/jupyter" lab "${as_root[@]}" "$@" notebooks/
    ;;
  headless) setup; shift; exec "$venv/bin/python" -m helpers.run_series "$@" ;;
  test)
    setup
    "$venv/bin/ruff" check .
    "$venv/bin/ruff" format --check .
    "$venv/bin/python" -m helpers.notebook_header
    exec "$venv/bin/python" -m pytest --nbval --nbval-current-env -p no:cacheprovider tests notebooks
    ;;
  *) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; [[ "$command" == help ]] ;;
esac
