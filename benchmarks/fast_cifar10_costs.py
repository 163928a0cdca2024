"""Where notebook 06's time goes on a GPU; prints one JSON line per measured variant.

    python benchmarks/fast_cifar10_costs.py muon        # what Muon costs per step
    python benchmarks/fast_cifar10_costs.py donation    # donated buffers, per step and per epoch
    python benchmarks/fast_cifar10_costs.py --smoke muon donation   # a few steps on a CPU

``muon``: airbench94_muon against the same recipe with Nesterov SGD for the filters, three
runs each (the first also compiles); for the two warm runs, the training time per step and
the time of the test-time-augmented evaluation.

``donation``: one epoch of airbench94 after a compiled warm-up epoch, as one compiled call
per step or one per epoch, with and without donated buffers, the four variants interleaved
``--repeats`` times. ``call_ms_median`` is the time a call takes to return in that loop;
``idle_call_ms_median`` the same in the next epoch, with the device idle before each call:
the host's own cost of a call. When that is about the time per step, Python sets the pace.

The data come from ``helpers.load_cifar10()`` (``CIFAR10_PATH`` for a local copy). On a
CPU every variant calls the step once per step (see ``fast_cifar10.Run``), so there
``--smoke`` only checks that the code runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from helpers import fast_cifar10 as fc

PROBES = ("muon", "donation")


def muon_cost(data: fc.DeviceData, smoke: bool) -> list[dict[str, Any]]:
    """Three runs of airbench94_muon and of the same recipe with Nesterov filters."""
    from helpers import fast_cifar10 as fc

    variants = {
        "muon": fc.AIRBENCH94_MUON,
        "muon recipe, nesterov filters": dataclasses.replace(
            fc.AIRBENCH94_MUON, optimizer="nesterov"
        ),
    }
    records = []
    for label, config in variants.items():
        if smoke:
            config = dataclasses.replace(fc.smoke_config(config), epochs=1.0)
        first, *warm = [fc.train_and_evaluate(config, data, seed) for seed in range(3)]
        records.append({
            "probe": "muon", "label": label, "device": fc.device_name(), "steps": first.steps,
            "compile_seconds": round(first.compile_seconds, 2),
            "seconds": [round(r.seconds, 3) for r in warm],
            "train_seconds": [round(r.train_seconds, 3) for r in warm],
            "eval_seconds": [round(r.eval_seconds, 3) for r in warm],
            "ms_per_step": [round(1000 * r.train_seconds / r.steps, 2) for r in warm],
            "accs": [r.accuracy for r in (first, *warm)],
        })  # fmt: skip
    return records


class EpochTiming(NamedTuple):
    """One epoch of one variant (see the module docstring)."""

    ms_per_step: float
    call_ms_median: float
    idle_call_ms_median: float
    steps: int


def time_one_epoch(config: fc.Config, data: fc.DeviceData) -> EpochTiming:
    """Time epoch 1 as it runs, then epoch 2 with the device idle before each call."""
    import jax

    from helpers import fast_cifar10 as fc

    run = fc.Run(config, data, seed=0)
    jax.block_until_ready(run.whiten())
    jax.block_until_ready(run.train_epoch(0))  # compiles

    def time_calls(epoch: int, idle: bool) -> list[float]:
        """Seconds each call of ``epoch`` took to return; waits for the last to finish."""
        calls = [lambda: run.train_epoch(epoch)]  # one scanned call of the padded epoch
        if config.loop == "step":
            calls = [lambda i=i: run.train_range(i, i + 1) for i in run.epoch_steps(epoch)]
        seconds, losses = [], []
        for call in calls:
            if idle:
                jax.block_until_ready(run.state)
            start = time.perf_counter()
            losses.append(call())
            seconds.append(time.perf_counter() - start)
        jax.block_until_ready(losses)
        return seconds

    start = time.perf_counter()
    call_seconds = time_calls(1, idle=False)
    epoch_seconds = time.perf_counter() - start
    idle_seconds = time_calls(2, idle=True)
    steps = len(run.epoch_steps(1))
    return EpochTiming(1000 * epoch_seconds / steps, 1000 * statistics.median(call_seconds),
                       1000 * statistics.median(idle_seconds), steps)  # fmt: skip


def donation_cost(data: fc.DeviceData, smoke: bool, repeats: int) -> list[dict[str, Any]]:
    """One epoch per loop structure, with and without donation, interleaved ``repeats`` times."""
    from helpers import fast_cifar10 as fc

    base = fc.smoke_config(fc.AIRBENCH94) if smoke else fc.AIRBENCH94
    variants = {
        f"{loop}, {'donated' if donate else 'not donated'}": dataclasses.replace(
            base, loop=loop, donate=donate
        )
        for loop in ("step", "epoch")
        for donate in (True, False)
    }
    timings: dict[str, list[EpochTiming]] = {label: [] for label in variants}
    for _ in range(repeats):
        for label, config in variants.items():
            timings[label].append(time_one_epoch(config, data))
    records = []
    for label, rows in timings.items():
        records.append({
            "probe": "donation", "label": label, "device": fc.device_name(), "steps": rows[0].steps,
            "ms_per_step": [round(row.ms_per_step, 3) for row in rows],
            "call_ms_median": [round(row.call_ms_median, 3) for row in rows],
            "idle_call_ms_median": [round(row.idle_call_ms_median, 3) for row in rows],
        })  # fmt: skip
    return records


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the chosen probes; print and return their records."""
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("probes", nargs="+", choices=PROBES, help="what to measure")
    parser.add_argument("--smoke", action="store_true", help="a few steps on 256 images")
    parser.add_argument("--repeats", type=int, default=3, help="donation: interleaved repeats")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")

    import helpers
    from helpers import fast_cifar10 as fc

    sizes = (256, 256) if args.smoke else (None, None)
    data = fc.put_on_device(helpers.load_cifar10(), *sizes)
    records = []
    for probe in args.probes:
        if probe == "muon":
            found = muon_cost(data, args.smoke)
        else:
            found = donation_cost(data, args.smoke, args.repeats)
        for record in found:
            print(json.dumps(record), flush=True)
        records += found
    return records


if __name__ == "__main__":
    main()
