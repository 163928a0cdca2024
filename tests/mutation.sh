#!/usr/bin/env bash
# Mutation testing of helpers/ and lessons/ with mutmut: each mutant is a one-line change to
# the code (a flipped comparison, a changed constant, a dropped argument); the unit tests
# should fail on it ("killed"). A mutant they pass ("survived") is a change no test notices.
#
#   tests/mutation.sh                      every module that is mutated
#   tests/mutation.sh data timing          only these modules of helpers/
#   tests/mutation.sh lessons.cifar10_cnn  a module generated from a notebook (lessons/)
#
# Configuration (files mutated, tests run) is [tool.mutmut] in pyproject.toml. One worker
# process, so it leaves the other core free. Prints killed/mutants per module and every
# survivor (`.venv/bin/mutmut show NAME` shows its diff); fails when a plumbing module has
# less than 90% killed. Not part of `./tutorial.sh test` (CI): it takes minutes; see
# tests/MUTATION.md for the last score, how long it took, and why each survivor is left.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv=${TUTORIAL_VENV:-.venv}
mutmut="$venv/bin/mutmut"
if [[ ! -x "$mutmut" ]]; then
  echo "tests/mutation.sh: $mutmut not found; run ./tutorial.sh setup (it installs the dev extra)" >&2
  exit 1
fi
patterns=()
for module in "$@"; do
  if [[ "$module" != lessons.* ]]; then module="helpers.$module"; fi
  if [[ ! -f "${module//.//}.py" ]]; then
    echo "tests/mutation.sh: no module ${module//.//}.py" >&2
    exit 1
  fi
  patterns+=("$module.*")
done
rm -rf mutants  # mutmut reuses results it finds there; a run starts afresh
mkdir mutants
start=$SECONDS
# mutmut draws a progress spinner on every line; the log keeps it out of the terminal
if ! "$mutmut" run --max-children 1 "${patterns[@]}" >mutants/run.log 2>&1; then
  tail -n 30 mutants/run.log >&2
  echo "tests/mutation.sh: mutmut failed (log: mutants/run.log)" >&2
  exit 1
fi
"$mutmut" results --all true >mutants/results.txt
exec "$venv/bin/python" - "$((SECONDS - start))" <<'EOF'
"""killed/mutants per module from `mutmut results --all true`; survivors listed."""

import collections
import sys

PLUMBING = {"data", "colab", "timing", "notebook_header", "run_series", "plots", "progress",
            "environment"}
seconds = int(sys.argv[1])
results = collections.defaultdict(list)
for line in open("mutants/results.txt"):
    name, _, status = line.strip().rpartition(": ")
    if name and status != "not checked":  # helpers.data.x_load__mutmut_3: module data
        results[name.rsplit(".", 1)[0].removeprefix("helpers.")].append((name, status))
failed = []
for module, mutants in sorted(results.items()):
    killed = sum(status in ("killed", "timeout") for _, status in mutants)
    share = killed / len(mutants)
    print(f"{module:19} {killed:4d}/{len(mutants):4d} killed ({share:.0%})")
    for name, status in mutants:
        if status not in ("killed", "timeout"):
            print(f"    {status}: {name}")
    if module in PLUMBING and share < 0.9:
        failed.append(module)
print(f"{seconds // 60} min {seconds % 60} s with one worker")
if failed:
    sys.exit(f"under 90% killed: {', '.join(failed)}")
EOF
