"""helpers.plots: the numbers (confusion matrix, accuracies read from it) against counts made
by hand, and what each figure shows (titles, labels, colours, sizes), read back from
matplotlib's own objects."""

from __future__ import annotations

import collections
import re
from collections.abc import Generator

import matplotlib
import numpy as np
import pytest
from matplotlib.layout_engine import ConstrainedLayoutEngine

from helpers import plots

matplotlib.use("Agg")
CLASSES = [f"class{i}" for i in range(10)]


@pytest.fixture(autouse=True)
def close_figures() -> Generator[None, None, None]:
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


def geometry(axes: matplotlib.axes.Axes) -> tuple[int, int]:
    """(rows, columns) of the grid an axes was placed in."""
    rows, columns, _, _ = axes.get_subplotspec().get_geometry()
    return rows, columns


# --- confusion matrix and accuracy ----------------------------------------------------


def test_confusion_matrix_counts_by_hand() -> None:
    labels = np.array([0, 0, 1, 2, 2, 2])
    predictions = np.array([0, 1, 1, 2, 2, 0])
    matrix = plots.confusion_matrix(labels, predictions, 3)
    # rows: true class; columns: predicted. Class 0: one right, one taken for 1; class 1:
    # right; class 2: two right, one taken for 0.
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    assert matrix.dtype == np.int64
    # accuracy and per-class accuracy (as notebook 05 reads them off the matrix)
    assert matrix.trace() / matrix.sum() == pytest.approx(4 / 6)
    np.testing.assert_allclose(matrix.diagonal() / matrix.sum(axis=1), [1 / 2, 1, 2 / 3])


def test_confusion_matrix_agrees_with_a_plain_count() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 5000)
    predictions = np.where(rng.random(5000) < 0.6, labels, rng.integers(0, 10, 5000))
    counts = collections.Counter(zip(labels.tolist(), predictions.tolist(), strict=True))
    matrix = plots.confusion_matrix(labels, predictions, 10)
    for true in range(10):
        for predicted in range(10):
            assert matrix[true, predicted] == counts[true, predicted]
    right = sum(int(a == b) for a, b in zip(labels, predictions, strict=True))
    assert matrix.trace() == right


def test_confusion_matrix_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"^labels \(3,\) and predictions \(2,\) differ$"):
        plots.confusion_matrix(np.zeros(3, int), np.zeros(2, int), 3)
    with pytest.raises(ValueError, match=r"^labels must be class indices in 0..2, got \[-1\]$"):
        plots.confusion_matrix([-1, 0], [0, 0], 3)
    with pytest.raises(ValueError, match=r"^predictions must be class indices in 0..2, got \[3\]$"):
        plots.confusion_matrix([0, 1], [3, 3], 3)
    with pytest.raises(
        ValueError, match=r"^predictions must be integer class indices, got dtype float64$"
    ):
        plots.confusion_matrix([0, 1], [0.0, 1.0], 3)


def test_out_of_range_message_names_the_first_five() -> None:
    bad = [-3, -2, -1, 10, 11, 12, 13]
    message = r"^labels must be class indices in 0..9, got \[-3, -2, -1, 10, 11\]$"
    with pytest.raises(ValueError, match=message):
        plots.confusion_matrix(bad, [0] * 7, 10)


def test_empty_inputs_give_an_empty_count() -> None:
    matrix = plots.confusion_matrix([], [], 2)
    np.testing.assert_array_equal(matrix, [[0, 0], [0, 0]])


# --- image grid --------------------------------------------------------------------


def test_show_images_titles_and_marks_mistakes() -> None:
    images = np.zeros((6, 32, 32, 3), np.uint8)
    figure = plots.show_images(images, [0, 1, 2, 3, 4, 5], CLASSES, columns=3)
    assert len(figure.axes) == 6
    assert [axes.get_title() for axes in figure.axes] == CLASSES[:6]
    assert {geometry(axes) for axes in figure.axes} == {(2, 3)}
    assert all(axes.title.get_fontsize() == 9 for axes in figure.axes)
    assert all(not axes.axison for axes in figure.axes)  # no ticks around images
    figure = plots.show_images(images[:2], [0, 1], CLASSES, predictions=[0, 7])
    right, wrong = figure.axes
    assert right.get_title() == "class0\n(class0)" and right.title.get_color() == "black"
    assert wrong.get_title() == "class7\n(class1)" and wrong.title.get_color() == "tab:red"
    assert right.title.get_fontsize() == wrong.title.get_fontsize() == 8


def test_show_images_draws_the_pixels_unsmoothed() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    figure = plots.show_images(images, [3, 4], CLASSES)
    for axes, pixels in zip(figure.axes, images, strict=True):
        (drawn,) = axes.images
        np.testing.assert_array_equal(drawn.get_array(), pixels)
        assert drawn.get_interpolation() == "nearest"  # 32x32 pixels, not a blur


@pytest.mark.parametrize(
    ("count", "columns", "grid"), [(7, None, (2, 5)), (3, 1, (3, 1)), (5, 5, (1, 5))]
)
def test_show_images_grid_and_size(count: int, columns: int | None, grid: tuple[int, int]) -> None:
    options = {} if columns is None else {"columns": columns}
    figure = plots.show_images(np.zeros((count, 32, 32, 3)), [0] * count, CLASSES, **options)
    assert {geometry(axes) for axes in figure.axes} == {grid}
    rows, columns_used = grid
    np.testing.assert_allclose(figure.get_size_inches(), [1.6 * columns_used, 1.8 * rows])
    assert isinstance(figure.get_layout_engine(), ConstrainedLayoutEngine)


@pytest.mark.parametrize(
    ("count", "labels", "options", "message"),
    [
        (3, [1, 2], {}, "need as many labels as images, got 2 for 3 images"),
        (0, [], {}, "show_images needs at least one image, got none"),
        (2, [1, 2], {"columns": 0}, "columns must be at least 1, got 0"),
        (2, [1, -1], {}, r"labels must be class indices in 0..9, got \[-1\]"),
        (2, [1.0, 2.0], {}, "labels must be integer class indices, got dtype float64"),
        (2, [1, 2], {"predictions": [3]}, "need as many predictions as images, got 1 for 2 images"),
        (2, [1, 2], {"predictions": [3, 10]}, r"predictions must be .* 0..9, got \[10\]"),
    ],
)
def test_show_images_rejects_bad_input(
    count: int, labels: list, options: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        plots.show_images(np.zeros((count, 32, 32, 3)), labels, CLASSES, **options)


# --- training curves ---------------------------------------------------------------


def test_training_curves_split_losses_and_accuracies() -> None:
    history = {"train_loss": [2.0, 1.5], "val_loss": [2.1, 1.7], "val_accuracy": [0.3, 0.4]}
    figure = plots.plot_training_curves(history)
    losses, accuracies = figure.axes
    assert geometry(losses) == geometry(accuracies) == (1, 2)
    assert [line.get_label() for line in losses.lines] == ["train_loss", "val_loss"]
    assert [line.get_label() for line in accuracies.lines] == ["val_accuracy"]
    np.testing.assert_allclose(accuracies.lines[0].get_ydata(), [0.3, 0.4])
    for axes, ylabel in [(losses, "loss"), (accuracies, "accuracy")]:
        assert axes.get_xlabel() == "epoch" and axes.get_ylabel() == ylabel
        assert axes.get_legend() is not None
        legend = [text.get_text() for text in axes.get_legend().get_texts()]
        assert legend == [line.get_label() for line in axes.lines]
        gridline = axes.xaxis.get_gridlines()[0]
        assert gridline.get_visible() and gridline.get_alpha() == 0.3
        for line in axes.lines:
            np.testing.assert_array_equal(line.get_xdata(), [1, 2])  # epochs count from 1
            assert line.get_marker() == "o" and line.get_markersize() == 3
    np.testing.assert_allclose(figure.get_size_inches(), [10.0, 3.4])
    assert isinstance(figure.get_layout_engine(), ConstrainedLayoutEngine)


def test_training_curves_with_one_kind_of_metric_and_steps() -> None:
    figure = plots.plot_training_curves({"loss": [3, 2, 1]}, xlabel="step")
    (axes,) = figure.axes
    assert geometry(axes) == (1, 1)
    assert axes.get_xlabel() == "step" and axes.get_ylabel() == "loss"
    np.testing.assert_allclose(figure.get_size_inches(), [5.0, 3.4])
    figure = plots.plot_training_curves({"test_acc": [0.5]})
    assert figure.axes[0].get_ylabel() == "accuracy"


def test_training_curves_reject_an_empty_history() -> None:
    with pytest.raises(
        ValueError, match=r"^history is empty: record at least one metric per epoch$"
    ):
        plots.plot_training_curves({})


# --- confusion matrix figure -------------------------------------------------------


def test_plot_confusion_matrix_cells_labels_and_colours() -> None:
    matrix = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    figure = plots.plot_confusion_matrix(matrix, ["a", "b", "c"])
    axes, colorbar = figure.axes
    (image,) = axes.images
    np.testing.assert_array_equal(image.get_array(), matrix)
    assert image.get_cmap().name == "Blues"
    assert image.colorbar is not None and image.colorbar.ax is colorbar
    assert [label.get_text() for label in axes.get_xticklabels()] == ["a", "b", "c"]
    assert [label.get_text() for label in axes.get_yticklabels()] == ["a", "b", "c"]
    assert {(label.get_rotation(), label.get_ha()) for label in axes.get_xticklabels()} == {
        (45.0, "right")
    }
    assert axes.get_xlabel() == "predicted class" and axes.get_ylabel() == "true class"
    cells = {text.get_position(): text for text in axes.texts}
    assert len(cells) == 9
    for (row, column), count in np.ndenumerate(matrix):
        text = cells[column, row]  # x is the column (predicted), y the row (true)
        assert text.get_text() == str(count)
        assert (text.get_ha(), text.get_va(), text.get_fontsize()) == ("center", "center", 7)
        # white on the dark cells: above half the largest count (2), so only the 2 itself
        assert text.get_color() == ("white" if count == 2 else "black")
    np.testing.assert_allclose(figure.get_size_inches(), [6.4, 5.6])
    assert isinstance(figure.get_layout_engine(), ConstrainedLayoutEngine)
    figure.canvas.draw()
    height = colorbar.get_position().height / axes.get_position().height
    assert height == pytest.approx(0.8)


# --- per-class bars ----------------------------------------------------------------


def test_per_class_bars() -> None:
    values = [0.1 * i for i in range(10)]
    figure = plots.plot_per_class(values, CLASSES)
    (axes,) = figure.axes
    np.testing.assert_allclose([bar.get_height() for bar in axes.patches], values)
    assert [text.get_text() for text in axes.texts] == [f"{value:.2f}" for value in values]
    assert {text.get_fontsize() for text in axes.texts} == {8}
    assert [label.get_text() for label in axes.get_xticklabels()] == CLASSES
    assert {label.get_rotation() for label in axes.get_xticklabels()} == {45.0}
    assert {label.get_rotation() for label in axes.get_yticklabels()} == {0.0}  # only names
    assert {bar.get_facecolor() for bar in axes.patches} == {matplotlib.colors.to_rgba("tab:blue")}
    assert axes.get_ylabel() == "accuracy"
    assert axes.yaxis.get_gridlines()[0].get_visible()
    assert axes.yaxis.get_gridlines()[0].get_alpha() == 0.3
    assert not axes.xaxis.get_gridlines()[0].get_visible()  # horizontal lines only
    np.testing.assert_allclose(figure.get_size_inches(), [6.4, 3.2])
    assert isinstance(figure.get_layout_engine(), ConstrainedLayoutEngine)


def test_per_class_bars_with_another_quantity() -> None:
    figure = plots.plot_per_class(np.array([3, 1]), ["a", "b"], ylabel="errors")
    assert figure.axes[0].get_ylabel() == "errors"
    assert [text.get_text() for text in figure.axes[0].texts] == ["3.00", "1.00"]


def test_per_class_bars_need_one_value_per_class() -> None:
    with pytest.raises(ValueError, match=re.escape("got 2 values for 10 classes")):
        plots.plot_per_class([0.1, 0.2], CLASSES)
