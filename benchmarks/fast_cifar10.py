"""Train notebook 06's fast CIFAR-10 recipe (airbench94 in JAX) N times; print one JSON line.

    python benchmarks/fast_cifar10.py --runs 5     # on a GPU; appends to results/fast_cifar10.jsonl
    python benchmarks/fast_cifar10.py --smoke      # a few steps on a CPU, to check it works
    python benchmarks/fast_cifar10.py --recipe airbench94_muon   # the Muon variant

The data come from ``helpers.load_cifar10()`` (``CIFAR10_PATH`` for a local copy).
``seconds_per_run`` is the wall time of one run (whitening, training, test-time
augmentation) after compilation; ``compile_seconds`` is measured separately. One
warm-up run (another seed, same shapes) precedes the timed runs and is not counted.
See benchmarks/README.md for how to run the PyTorch reference on the same machine.
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
RECIPES = ("airbench94", "airbench94_muon")


def benchmark(runs: int, smoke: bool, seed: int = 0, recipe: str = "airbench94") -> dict[str, Any]:
    """Compile, warm up, then time ``runs`` runs of ``recipe``; return the summary."""
    import jax

    import helpers
    from helpers import fast_cifar10 as fc

    cifar = helpers.load_cifar10()
    config = fc.AIRBENCH94 if recipe == "airbench94" else fc.AIRBENCH94_MUON
    sizes: tuple[int | None, int | None] = (None, None)
    if smoke:
        config = dataclasses.replace(fc.smoke_config(config), epochs=1.0)
        sizes = (256, 256)
    data = fc.put_on_device(cifar, *sizes)
    if not smoke and jax.default_backend() == "cpu":
        print("No GPU: on a 2-core CPU each full run, the warm-up too, takes about an hour. "
              "--smoke checks the code in seconds.", file=sys.stderr, flush=True)  # fmt: skip

    def train(seed: int, label: str) -> fc.Result:
        result = fc.train_and_evaluate(config, data, seed=seed)
        print(f"{label}, seed {seed}: {result.summary()}", file=sys.stderr, flush=True)
        return result

    warmup = train(seed + runs, "warm-up (not timed)")  # not one of the timed seeds
    results = [train(seed + i, f"run {i + 1}/{runs}") for i in range(runs)]
    accuracies = [r.accuracy for r in results]
    seconds = [r.seconds for r in results]
    return {
        "benchmark": "fast_cifar10",
        "recipe": recipe,
        "device": fc.device_name(),
        "runs": runs,
        "acc_mean": statistics.fmean(accuracies),
        "acc_std": statistics.stdev(accuracies) if runs > 1 else 0.0,
        "seconds_per_run": statistics.median(seconds),
        "seconds_mean": statistics.fmean(seconds),
        "compile_seconds": warmup.compile_seconds,
        # compile_seconds is far lower when a persistent cache already held the code
        "compilation_cache": bool(os.environ.get("JAX_COMPILATION_CACHE_DIR")),
        "data": helpers.data.source_name(),
        "accs": accuracies,
        "seconds": seconds,
        "acc_no_tta_mean": statistics.fmean(r.accuracy_by_tta[0] for r in results),
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "dtype": config.dtype,
        "smoke": smoke,
        "jax": jax.__version__,
        "date": datetime.date.today().isoformat(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs (default 5)")
    parser.add_argument("--smoke", action="store_true", help="a few steps on a subset (CPU)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first timed run")
    parser.add_argument("--recipe", choices=RECIPES, default="airbench94", help="which recipe")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    result = benchmark(args.runs, args.smoke, args.seed, args.recipe)
    print(json.dumps(result), flush=True)
    if not args.smoke and result["device"] != "cpu":
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as file:
            file.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
