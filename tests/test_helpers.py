"""helpers: smoke mode, environment report, progress bar, timing, plots."""

from __future__ import annotations

import io
import sys
import time

import matplotlib
import numpy as np
import pytest

from helpers import mode, plots, timing
from helpers.environment import environment_report
from helpers.progress import progress

matplotlib.use("Agg")


@pytest.mark.parametrize(
    ("value", "expected"), [("", False), ("0", False), ("1", True), ("true", True)]
)
def test_smoke_switch(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("TUTORIAL_SMOKE", value)
    assert mode.is_smoke() is expected
    assert mode.full_or_smoke(10, 1) == (1 if expected else 10)


def test_smoke_switch_rejects_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUTORIAL_SMOKE", "maybe")
    with pytest.raises(ValueError, match="TUTORIAL_SMOKE='maybe' is not understood"):
        mode.is_smoke()


def test_environment_report_names_versions_and_devices() -> None:
    import jax

    report = environment_report()
    assert f"JAX     {jax.__version__}" in report
    assert "Flax" in report and "Optax" in report
    assert f"Backend {jax.default_backend()}" in report
    assert str(len(jax.devices())) in report


def test_progress_counts_and_writes_text(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    items = list(progress(range(7), description="epochs"))
    assert items == list(range(7))
    assert "epochs" in stream.getvalue() and "7/7" in stream.getvalue()


def test_time_call_waits_and_reports_median() -> None:
    calls: list[int] = []

    def slow(x: int) -> int:
        calls.append(x)
        time.sleep(0.01 if len(calls) > 1 else 0.05)  # first call "compiles"
        return x

    result = timing.time_call(slow, 3, warmup=1, repeats=3)
    assert len(calls) == 4 and len(result.runs) == 3
    assert 0.009 < result.median < 0.04
    assert result.first_call >= 0.05
    assert "median of 3 runs" in str(result)


def test_time_call_rejects_zero_repeats() -> None:
    with pytest.raises(ValueError, match="repeats >= 1"):
        timing.time_call(lambda: 0, repeats=0)


@pytest.mark.parametrize(
    ("seconds", "text"), [(12.3e-6, "12.3 us"), (4.561e-3, "4.56 ms"), (1.234, "1.23 s")]
)
def test_format_seconds(seconds: float, text: str) -> None:
    assert timing.format_seconds(seconds) == text


CLASSES = [f"class{i}" for i in range(10)]


def test_show_images_titles_and_marks_mistakes() -> None:
    images = np.zeros((6, 32, 32, 3), np.uint8)
    figure = plots.show_images(images, [0, 1, 2, 3, 4, 5], CLASSES, columns=3)
    assert len(figure.axes) == 6
    assert figure.axes[2].get_title() == "class2"
    figure = plots.show_images(images[:2], [0, 1], CLASSES, predictions=[0, 7])
    assert figure.axes[1].get_title() == "class7\n(class1)"
    assert figure.axes[1].title.get_color() == "tab:red"


def test_show_images_rejects_mismatched_labels() -> None:
    with pytest.raises(ValueError, match="as many labels as images"):
        plots.show_images(np.zeros((3, 32, 32, 3)), [1, 2], CLASSES)


def test_training_curves_split_losses_and_accuracies() -> None:
    figure = plots.plot_training_curves(
        {"train_loss": [2.0, 1.5], "val_loss": [2.1, 1.7], "val_accuracy": [0.3, 0.4]}
    )
    losses, accuracies = figure.axes
    assert len(losses.lines) == 2 and len(accuracies.lines) == 1
    np.testing.assert_allclose(accuracies.lines[0].get_ydata(), [0.3, 0.4])
    with pytest.raises(ValueError, match="history is empty"):
        plots.plot_training_curves({})


def test_confusion_matrix_counts() -> None:
    matrix = plots.confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), 3)
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 1, 0], [0, 1, 0]])
    assert len(plots.plot_confusion_matrix(matrix, ["a", "b", "c"]).axes) == 2
    with pytest.raises(ValueError, match="differ"):
        plots.confusion_matrix(np.zeros(3, int), np.zeros(2, int), 3)


def test_per_class_bars() -> None:
    figure = plots.plot_per_class([0.1 * i for i in range(10)], CLASSES)
    heights = [bar.get_height() for bar in figure.axes[0].patches]
    np.testing.assert_allclose(heights, [0.1 * i for i in range(10)])
    with pytest.raises(ValueError, match="got 2 values for 10 classes"):
        plots.plot_per_class([0.1, 0.2], CLASSES)
