"""helpers: smoke mode, environment report, progress bar, timing, plots, Colab set-up,
and the command-line checks of notebook headers and headless runs."""

from __future__ import annotations

import io
import sys
import time
from importlib import metadata
from pathlib import Path

import matplotlib
import nbformat
import numpy as np
import pytest
from packaging.requirements import Requirement

from helpers import colab, mode, notebook_header, plots, run_series, timing
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
    lines = report.splitlines()
    assert f"JAX     {jax.__version__} (jaxlib {metadata.version('jaxlib')})" in lines
    assert f"Flax    {metadata.version('flax')}" in lines
    assert f"Optax   {metadata.version('optax')}" in lines
    devices = jax.devices()
    kinds = ", ".join(sorted({device.device_kind for device in devices}))
    backend = jax.default_backend()
    assert f"Backend {backend}: {len(devices)} device(s): {kinds}" in lines
    assert ("No GPU found" in report) == (backend == "cpu")


def test_progress_counts_and_writes_text(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    items = list(progress(range(7), description="epochs"))
    assert items == list(range(7))
    assert "epochs" in stream.getvalue() and "7/7" in stream.getvalue()


def test_progress_bar_shows_live_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    bar = progress(range(3), description="epochs")
    for _ in bar:
        bar.set_postfix(loss=0.25)
    assert "loss=0.25" in stream.getvalue()


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


@pytest.mark.parametrize(
    ("count", "labels", "options", "message"),
    [
        (3, [1, 2], {}, "need as many labels as images, got 2 for 3 images"),
        (0, [], {}, "needs at least one image, got none"),
        (2, [1, 2], {"columns": 0}, "columns must be at least 1, got 0"),
        (2, [1, -1], {}, r"labels must be class indices in 0..9, got \[-1\]"),
        (2, [1.0, 2.0], {}, "labels must be integer class indices, got dtype float64"),
        (2, [1, 2], {"predictions": [3]}, "need as many predictions as images, got 1 for 2"),
        (2, [1, 2], {"predictions": [3, 10]}, r"predictions must be .* 0..9, got \[10\]"),
    ],
)
def test_show_images_rejects_bad_input(
    count: int, labels: list, options: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        plots.show_images(np.zeros((count, 32, 32, 3)), labels, CLASSES, **options)


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
    with pytest.raises(ValueError, match=r"labels must be class indices in 0..2, got \[-1\]"):
        plots.confusion_matrix([-1, 0], [0, 0], 3)
    with pytest.raises(ValueError, match=r"predictions must be class indices in 0..2, got \[3\]"):
        plots.confusion_matrix([0, 1], [3, 3], 3)
    with pytest.raises(ValueError, match="predictions must be integer class indices"):
        plots.confusion_matrix([0, 1], [0.0, 1.0], 3)


def test_per_class_bars() -> None:
    figure = plots.plot_per_class([0.1 * i for i in range(10)], CLASSES)
    heights = [bar.get_height() for bar in figure.axes[0].patches]
    np.testing.assert_allclose(heights, [0.1 * i for i in range(10)])
    with pytest.raises(ValueError, match="got 2 values for 10 classes"):
        plots.plot_per_class([0.1, 0.2], CLASSES)


def test_colab_keeps_jax_and_its_own_jaxlib_and_leaves_jupyter_alone() -> None:
    # jax 0.5.2 runs on jaxlib 0.5.1: there is no jaxlib 0.5.2 to pin.
    packages, constraints = colab.install_plan(
        "0.5.2", has_gpu=True, requirement=Requirement("jax>=0.5"), installed_jaxlib="0.5.1"
    )
    assert constraints == ["jax==0.5.2", "jaxlib==0.5.1"]
    names = {Requirement(package).name for package in packages}
    assert "flax" in names and "optax" in names
    assert names.isdisjoint({"jax", "jaxlib", *colab.JUPYTER_TOOLING})


def test_colab_jupyter_tooling_names_declared_dependencies() -> None:
    declared = {req.name for req in colab._requirements()}
    assert set(colab.JUPYTER_TOOLING) <= declared


def test_notebook_header_outside_the_repository_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert notebook_header.main([]) == 2
    assert "No notebooks in notebooks/ (run from the repository root)" in capsys.readouterr().err


def test_run_series_keeps_a_failed_notebook_for_inspection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("print('before')"),
        nbformat.v4.new_code_cell("1 / 0"),
        nbformat.v4.new_code_cell("print('after')"),
    ]
    (tmp_path / "notebooks").mkdir()
    committed = tmp_path / "notebooks" / "broken.ipynb"
    nbformat.write(notebook, committed)
    original = committed.read_text()
    monkeypatch.chdir(tmp_path)
    assert run_series.main(["--inplace", "--output-dir", "runs", "--timeout", "60"]) == 1
    assert committed.read_text() == original  # --inplace never overwrites with a failed run
    executed = nbformat.read(tmp_path / "runs" / "broken.ipynb", as_version=4)
    assert executed.cells[0].outputs[0]["text"] == "before\n"
    assert executed.cells[1].outputs[0]["ename"] == "ZeroDivisionError"
    assert executed.cells[2].outputs == []
    assert "broken.ipynb: FAILED (ZeroDivisionError: division by zero)" in capsys.readouterr().err
