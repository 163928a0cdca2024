"""Figures the notebooks draw again and again: image grids, curves, confusion matrices."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def _figure(width: float, height: float) -> Figure:
    import matplotlib.pyplot as plt

    return plt.figure(figsize=(width, height), layout="constrained")


def _class_indices(values: Sequence[int] | np.ndarray, name: str, num_classes: int) -> np.ndarray:
    """``values`` as an int64 array, after checking each is a class index in 0..num_classes-1.

    NumPy would otherwise read -1 as the last class, silently.
    """
    array = np.asarray(values)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must be integer class indices, got dtype {array.dtype}")
    outside = np.unique(array[(array < 0) | (array >= num_classes)])
    if outside.size:
        raise ValueError(
            f"{name} must be class indices in 0..{num_classes - 1}, got {outside[:5].tolist()}"
        )
    return array.astype(np.int64)


def show_images(
    images: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    columns: int = 5,
    predictions: Sequence[int] | np.ndarray | None = None,
) -> Figure:
    """A grid of images, each titled with its class name.

    With ``predictions``, titles read ``predicted (true)`` and wrong ones are red.
    Images are uint8 (N, H, W, 3) or float in [0, 1].
    """
    count = len(images)
    if count == 0:
        raise ValueError("show_images needs at least one image, got none")
    if columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    if len(labels) != count:
        raise ValueError(f"need as many labels as images, got {len(labels)} for {count} images")
    if predictions is not None and len(predictions) != count:
        raise ValueError(
            f"need as many predictions as images, got {len(predictions)} for {count} images"
        )
    labels = _class_indices(labels, "labels", len(class_names))
    if predictions is not None:
        predictions = _class_indices(predictions, "predictions", len(class_names))
    rows = -(-count // columns)
    figure = _figure(1.6 * columns, 1.8 * rows)
    for index in range(count):
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.imshow(np.asarray(images[index]), interpolation="nearest")
        axes.set_axis_off()
        truth = class_names[labels[index]]
        if predictions is None:
            axes.set_title(truth, fontsize=9)
        else:
            guess = class_names[predictions[index]]
            colour = "black" if guess == truth else "tab:red"
            axes.set_title(f"{guess}\n({truth})", fontsize=8, color=colour)
    return figure


def plot_training_curves(history: Mapping[str, Sequence[float]], xlabel: str = "epoch") -> Figure:
    """Curves of a training history: one panel for losses, one for accuracies.

    ``history`` maps names such as ``"train_loss"`` or ``"val_accuracy"`` to one
    value per epoch (or per step); names containing ``acc`` go to the right panel.
    """
    if not history:
        raise ValueError("history is empty: record at least one metric per epoch")
    accuracy_names = [name for name in history if "acc" in name]
    loss_names = [name for name in history if "acc" not in name]
    panels = [names for names in (loss_names, accuracy_names) if names]
    figure = _figure(5.0 * len(panels), 3.4)
    for index, names in enumerate(panels):
        axes: Axes = figure.add_subplot(1, len(panels), index + 1)
        for name in names:
            values = np.asarray(history[name], dtype=float)
            axes.plot(np.arange(1, len(values) + 1), values, marker="o", ms=3, label=name)
        axes.set_xlabel(xlabel)
        axes.set_ylabel("accuracy" if names is accuracy_names else "loss")
        axes.grid(alpha=0.3)
        axes.legend()
    return figure


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``matrix[true, predicted]`` as an int64 (num_classes, num_classes) array."""
    labels = _class_indices(labels, "labels", num_classes)
    predictions = _class_indices(predictions, "predictions", num_classes)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} differ")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str]) -> Figure:
    """Draw a confusion matrix (rows: true class, columns: predicted), counts in cells."""
    figure = _figure(6.4, 5.6)
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="Blues")
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, class_names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    threshold = matrix.max() / 2
    for (row, column), count in np.ndenumerate(matrix):
        colour = "white" if count > threshold else "black"
        axes.text(column, row, str(count), ha="center", va="center", fontsize=7, color=colour)
    figure.colorbar(image, ax=axes, shrink=0.8)
    return figure


def plot_per_class(
    values: Sequence[float] | np.ndarray,
    class_names: Sequence[str],
    ylabel: str = "accuracy",
) -> Figure:
    """A bar chart with one bar per class (for example per-class accuracy)."""
    values = np.asarray(values, dtype=float)
    if len(values) != len(class_names):
        raise ValueError(f"got {len(values)} values for {len(class_names)} classes")
    figure = _figure(6.4, 3.2)
    axes = figure.add_subplot()
    bars = axes.bar(class_names, values, color="tab:blue")
    axes.bar_label(bars, fmt="%.2f", fontsize=8)
    axes.set_ylabel(ylabel)
    axes.tick_params(axis="x", rotation=45)
    axes.grid(axis="y", alpha=0.3)
    return figure
