"""Train notebook 06's recipe, as written in its cells (lessons.airbench), N times; print JSON.

    python benchmarks/fast_cifar10.py --runs 5                           # airbench94 (a GPU)
    python benchmarks/fast_cifar10.py --recipe airbench94_muon --runs 5  # the Muon recipe
    python benchmarks/fast_cifar10.py --recipe cpu --runs 3 --no-warmup  # the notebook's CPU_RECIPE
    python benchmarks/fast_cifar10.py --quick                            # seconds: check it runs

Every run calls ``lessons.airbench.train``, the function that trains the notebook's
results, with seeds ``seed .. seed + runs - 1``. One warm-up run (seed ``seed + runs``,
same shapes) compiles first and is not counted; with ``--no-warmup`` (for a CPU, where a
run takes minutes) the first timed run compiles instead, and its time is left out of the
time per run (its accuracy counts). ``seconds_per_run`` is the median wall
time of whitening, training and the test-time-augmented evaluation; ``seconds_min`` and
``seconds_max`` give the spread. ``--quick`` shrinks the chosen recipe to
``QUICK_RECIPE``'s widths, batch and epochs on 512 training and 256 test images: its
accuracy means nothing. The summary line is appended to ``results/fast_cifar10.jsonl``,
tagged ``"code": "lessons.airbench"`` (the file's earlier lines, without that tag, came
from the earlier port), unless ``--quick`` or ``--no-record``; notebook 06 (section 10)
prints the tagged lines.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "fast_cifar10.jsonl"
RECIPES = ("airbench94", "airbench94_muon", "cpu")
CODE = "lessons.airbench"  # tags this script's lines in RESULTS
QUICK_SIZES = (512, 256)  # training and test images in --quick


def recipe_named(name: str, quick: bool = False) -> Any:
    """The notebook's recipe of that name; ``quick``: at QUICK_RECIPE's sizes."""
    from lessons import airbench as ab

    recipe = {"airbench94": ab.AIRBENCH94, "airbench94_muon": ab.MUON_RECIPE, "cpu": ab.CPU_RECIPE}
    chosen = recipe[name]
    if quick:
        quick_sizes = ab.QUICK_RECIPE
        chosen = dataclasses.replace(
            chosen, widths=quick_sizes.widths, batch=quick_sizes.batch, epochs=quick_sizes.epochs
        )
    return chosen


def benchmark(
    recipe_name: str, runs: int, seed: int = 0, quick: bool = False, warmup: bool = True
) -> dict[str, Any]:
    """Warm up (or not), then train ``runs`` seeds of the named recipe; return the summary."""
    import jax

    import helpers
    from lessons import airbench as ab

    recipe = recipe_named(recipe_name, quick)
    if jax.default_backend() == "cpu" and not quick and recipe_name != "cpu":
        print(
            f"No GPU: on a 2-core CPU each full {recipe_name} run, the warm-up too, takes about "
            "an hour. --recipe cpu trains the notebook's CPU recipe; --quick checks the code.",
            file=sys.stderr,
            flush=True,
        )
    cifar = helpers.load_cifar10()
    sizes = QUICK_SIZES if quick else (None, None)
    data = ab.to_device(
        cifar.train_images, cifar.train_labels, cifar.test_images, cifar.test_labels, *sizes
    )
    warmup_seconds = None
    if warmup:
        warmup_seconds = ab.train(data, recipe, seed + runs).seconds
        print(
            f"warm-up (compiles, not counted), seed {seed + runs}: {warmup_seconds:.1f} s",
            file=sys.stderr,
            flush=True,
        )
    results = []
    for i in range(runs):
        results.append(ab.train(data, recipe, seed + i))
        r = results[-1]
        print(
            f"run {i + 1}/{runs}, seed {seed + i}: {r.accuracy:.2%} in {r.seconds:.2f} s",
            file=sys.stderr,
            flush=True,
        )
    accs = [r.accuracy for r in results]
    seconds = [r.seconds for r in results]
    timed = seconds if warmup else seconds[1:]  # without a warm-up the first run compiled
    return {
        "benchmark": "fast_cifar10",
        "code": CODE,
        "recipe": recipe_name,
        "quick": quick,
        "device": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(),
        "runs": runs,
        "acc_mean": statistics.fmean(accs),
        "acc_std": statistics.stdev(accs) if runs > 1 else 0.0,
        "train_acc_mean": statistics.fmean(r.train_accuracy for r in results),
        "acc_no_tta_mean": statistics.fmean(r.test_accuracy[0] for r in results),
        "seconds_per_run": statistics.median(timed),
        "seconds_min": min(timed),
        "seconds_max": max(timed),
        "warmup_seconds": warmup_seconds,  # compilation included; None: --no-warmup
        "first_run_seconds": None if warmup else seconds[0],  # compilation included
        # the warm-up compiles far faster when a persistent cache already held the code
        "compilation_cache": bool(os.environ.get("JAX_COMPILATION_CACHE_DIR")),
        "accs": accs,
        "seconds": seconds,
        "settings": str(recipe),
        "dtype": recipe.dtype or ab.compute_dtype(),
        "train_images": int(data.train_labels.shape[0]),
        "data": helpers.data.source_name(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax": jax.__version__,
        "date": datetime.date.today().isoformat(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", choices=RECIPES, default="airbench94", help="which recipe")
    parser.add_argument("--runs", type=int, default=5, help="timed runs (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first timed run")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes on 512 images: check that it runs"
    )
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        help="no separate warm-up run: the first run compiles and is left out of the times",
    )
    parser.add_argument("--no-record", action="store_true", help="do not append to results/")
    args = parser.parse_args(argv)
    if args.runs < 1 + args.no_warmup:
        parser.error(f"--runs must be at least {1 + args.no_warmup}, got {args.runs}")
    summary = benchmark(args.recipe, args.runs, args.seed, args.quick, not args.no_warmup)
    line = json.dumps(summary)
    print(line, flush=True)
    if not args.quick and not args.no_record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as f:
            f.write(line + "\n")
    return summary


if __name__ == "__main__":
    main()
