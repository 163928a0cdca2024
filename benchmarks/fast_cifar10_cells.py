"""Train notebook 06's recipe, as written in its cells (lessons.airbench), N times; print JSON.

    python benchmarks/fast_cifar10_cells.py --runs 5                  # airbench94 (a GPU)
    python benchmarks/fast_cifar10_cells.py --recipe airbench94_muon --runs 5
    python benchmarks/fast_cifar10_cells.py --recipe cpu --runs 3     # the notebook's CPU recipe
    python benchmarks/fast_cifar10_cells.py --recipe quick            # seconds: check it runs

Every run calls ``lessons.airbench.train``, the function that trains the notebook's
results, with seeds ``seed .. seed + runs - 1``. One warm-up run (seed ``seed + runs``,
same shapes) compiles first and is not counted. ``seconds_per_run`` is the median wall
time of whitening, training and the test-time-augmented evaluation. The summary line is
appended to ``results/fast_cifar10_cells.jsonl`` unless ``--recipe quick`` or
``--no-record``; notebook 06 (section 10) prints that file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "fast_cifar10_cells.jsonl"
RECIPES = ("airbench94", "airbench94_muon", "cpu", "quick")


def benchmark(recipe_name: str, runs: int, seed: int = 0) -> dict[str, Any]:
    """Warm up, then train ``runs`` seeds of the named recipe; return the summary."""
    import jax

    import helpers
    from lessons import airbench as ab

    recipe = {
        "airbench94": ab.AIRBENCH94,
        "airbench94_muon": ab.MUON_RECIPE,
        "cpu": ab.CPU_RECIPE,
        "quick": ab.QUICK_RECIPE,
    }[recipe_name]
    cifar = helpers.load_cifar10()
    sizes = (512, 256) if recipe_name == "quick" else (None, None)
    data = ab.to_device(
        cifar.train_images, cifar.train_labels, cifar.test_images, cifar.test_labels, *sizes
    )
    warmup = ab.train(data, recipe, seed + runs)
    print(f"warm-up (not counted): {warmup.seconds:.1f} s", file=sys.stderr, flush=True)
    results = []
    for i in range(runs):
        results.append(ab.train(data, recipe, seed + i))
        r = results[-1]
        print(
            f"seed {seed + i}: {r.accuracy:.2%} in {r.seconds:.1f} s", file=sys.stderr, flush=True
        )
    accs = [r.accuracy for r in results]
    seconds = [r.seconds for r in results]
    return {
        "benchmark": "fast_cifar10_cells",
        "recipe": recipe_name,
        "device": jax.devices()[0].device_kind,
        "cpu_count": __import__("os").cpu_count(),
        "runs": runs,
        "acc_mean": statistics.fmean(accs),
        "acc_std": statistics.stdev(accs) if runs > 1 else 0.0,
        "train_acc_mean": statistics.fmean(r.train_accuracy for r in results),
        "acc_no_tta_mean": statistics.fmean(r.test_accuracy[0] for r in results),
        "seconds_per_run": statistics.median(seconds),
        "seconds_min": min(seconds),
        "seconds_max": max(seconds),
        "warmup_seconds": warmup.seconds,
        "accs": accs,
        "seconds": seconds,
        "settings": str(recipe),
        "dtype": recipe.dtype or ab.compute_dtype(),
        "data": helpers.data.source_name(),
        "jax": jax.__version__,
        "date": datetime.date.today().isoformat(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", choices=RECIPES, default="airbench94")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-record", action="store_true", help="do not append to results/")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    summary = benchmark(args.recipe, args.runs, args.seed)
    line = json.dumps(summary)
    print(line)
    if args.recipe != "quick" and not args.no_record:
        with RESULTS.open("a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
