"""Honest timing of JAX code: warm up first, wait for the result, report the median."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Timing:
    """Seconds per call: ``median`` of the timed ``runs`` (warm-up calls excluded)."""

    median: float
    runs: tuple[float, ...]
    first_call: float

    def __str__(self) -> str:
        return (
            f"{format_seconds(self.median)} median of {len(self.runs)} runs "
            f"(first call {format_seconds(self.first_call)})"
        )


def format_seconds(seconds: float) -> str:
    """Seconds in the most readable unit: ``'12.3 us'``, ``'4.56 ms'``, ``'1.23 s'``."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def time_call(
    function: Callable[..., Any], *args: Any, warmup: int = 1, repeats: int = 5
) -> Timing:
    """Time ``function(*args)``: ``warmup`` untimed calls, then ``repeats`` timed ones.

    JAX dispatches work asynchronously, so every call waits for its result with
    ``jax.block_until_ready`` before the clock stops; otherwise only the dispatch
    would be timed.
    """
    import jax

    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats=} {warmup=}")

    def timed_call() -> float:
        start = time.perf_counter()
        jax.block_until_ready(function(*args))
        return time.perf_counter() - start

    warm = [timed_call() for _ in range(warmup)]
    runs = [timed_call() for _ in range(repeats)]
    first_call = (warm or runs)[0]  # the first call of all, which compiles
    return Timing(median=statistics.median(runs), runs=tuple(runs), first_call=first_call)
