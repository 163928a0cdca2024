"""helpers.timing against a fake clock: every call takes a duration chosen by the test, so
the expected median, runs and first call are known exactly, independently of the code."""

from __future__ import annotations

import statistics

import pytest

from helpers import timing


class FakeClock:
    """``perf_counter`` that only moves when a timed call "works" for a scripted duration."""

    def __init__(self) -> None:
        self.now = 1000.0  # not 0: a start time added instead of subtracted shows

    def perf_counter(self) -> float:
        return self.now


class Pending:
    """A result that is still being computed, like a JAX array right after dispatch:
    the work (``seconds``) happens in ``block_until_ready``, not in the call."""

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        self.clock, self.seconds, self.waited = clock, seconds, False

    def block_until_ready(self) -> Pending:
        self.clock.now += self.seconds
        self.waited = True
        return self


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(timing.time, "perf_counter", fake.perf_counter)
    return fake


def scripted(clock: FakeClock, durations: list[float]) -> tuple[object, list[Pending]]:
    """A function whose n-th call returns a result that takes ``durations[n]`` seconds."""
    results: list[Pending] = []

    def function() -> Pending:
        results.append(Pending(clock, durations[len(results)]))
        return results[-1]

    return function, results


def test_median_not_mean_of_the_timed_runs(clock: FakeClock) -> None:
    # one slow run (10 s) among four of a few ms: the mean is 2 s, the median 3 ms
    function, results = scripted(clock, [7.0, 0.005, 0.001, 0.003, 0.002, 10.0])
    result = timing.time_call(function, warmup=1, repeats=5)
    assert len(results) == 6 and all(pending.waited for pending in results)
    assert result.runs == pytest.approx((0.005, 0.001, 0.003, 0.002, 10.0))
    assert result.median == pytest.approx(0.003)
    assert statistics.mean(result.runs) == pytest.approx(2.0022)  # what a mean would say
    assert result.first_call == pytest.approx(7.0)
    assert str(result) == "3.00 ms median of 5 runs (first call 7.00 s)"


def test_even_number_of_runs_takes_the_middle_two(clock: FakeClock) -> None:
    function, _ = scripted(clock, [1.0, 0.004, 0.001, 0.003, 0.100])
    assert timing.time_call(function, repeats=4).median == pytest.approx(0.0035)


def test_the_wait_for_the_result_is_timed(clock: FakeClock) -> None:
    """The call returns at once; only waiting for the result takes time, and it is counted."""
    function, _ = scripted(clock, [0.5, 0.25, 0.25])
    result = timing.time_call(function, warmup=1, repeats=2)
    assert result.runs == pytest.approx((0.25, 0.25))


def test_defaults_one_warmup_and_five_runs(clock: FakeClock) -> None:
    function, results = scripted(clock, [9.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    result = timing.time_call(function)
    assert len(results) == 6
    assert result.runs == pytest.approx((1.0, 2.0, 3.0, 4.0, 5.0))
    assert result.first_call == pytest.approx(9.0)


def test_first_call_is_the_first_warmup_only(clock: FakeClock) -> None:
    function, _ = scripted(clock, [6.0, 2.0, 0.1, 0.2])
    result = timing.time_call(function, warmup=2, repeats=2)
    assert result.first_call == pytest.approx(6.0)
    assert result.runs == pytest.approx((0.1, 0.2))


def test_without_warmup_the_first_run_is_the_first_call(clock: FakeClock) -> None:
    function, results = scripted(clock, [4.0, 0.1, 0.3])
    result = timing.time_call(function, warmup=0, repeats=3)
    assert len(results) == 3
    assert result.first_call == pytest.approx(4.0)
    assert result.median == pytest.approx(0.3)


def test_one_run_is_enough(clock: FakeClock) -> None:
    function, _ = scripted(clock, [0.2])
    result = timing.time_call(function, warmup=0, repeats=1)
    assert result.runs == pytest.approx((0.2,)) and result.median == pytest.approx(0.2)


def test_arguments_are_passed_on(clock: FakeClock) -> None:
    seen: list[tuple[int, str]] = []
    timing.time_call(lambda a, b: seen.append((a, b)), 3, "x", warmup=1, repeats=2)
    assert seen == [(3, "x")] * 3


@pytest.mark.parametrize(("warmup", "repeats"), [(1, 0), (-1, 5), (0, -2)])
def test_rejects_impossible_counts(warmup: int, repeats: int) -> None:
    expected = f"need repeats >= 1 and warmup >= 0, got repeats={repeats} warmup={warmup}"
    with pytest.raises(ValueError, match=f"^{expected}$"):
        timing.time_call(lambda: 0, warmup=warmup, repeats=repeats)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0000123, "12.3 us"),
        (0.000999, "999.0 us"),
        (0.001, "1.00 ms"),  # a thousandth of a second is shown in ms, not as 1000.0 us
        (0.25, "250.00 ms"),
        (1.0, "1.00 s"),
        (75.5, "75.50 s"),
    ],
)
def test_format_seconds_picks_the_unit(seconds: float, text: str) -> None:
    assert timing.format_seconds(seconds) == text


def test_real_clock_and_a_real_jax_computation() -> None:
    """The real clock and a real asynchronous JAX result: the runs are positive and the first
    call, which compiles, is the slowest."""
    import jax
    import jax.numpy as jnp

    step = jax.jit(lambda x: jnp.tanh(x @ x).sum())
    x = jnp.ones((64, 64))
    result = timing.time_call(step, x, warmup=1, repeats=3)
    assert len(result.runs) == 3 and min(result.runs) > 0
    assert result.first_call > result.median
