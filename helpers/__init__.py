"""Plumbing for the notebooks of this series: data, plots, progress, timing, environment.

The lessons themselves are written out in the notebooks; only what is not the
lesson lives here.
"""

from helpers.data import CIFAR10, DatasetError, load_cifar10
from helpers.environment import environment_report, print_environment
from helpers.mode import full_or_smoke, is_smoke
from helpers.plots import (
    confusion_matrix,
    plot_confusion_matrix,
    plot_per_class,
    plot_training_curves,
    show_images,
)
from helpers.progress import progress
from helpers.timing import Timing, format_seconds, time_call

__all__ = [
    "CIFAR10",
    "DatasetError",
    "Timing",
    "confusion_matrix",
    "environment_report",
    "format_seconds",
    "full_or_smoke",
    "is_smoke",
    "load_cifar10",
    "plot_confusion_matrix",
    "plot_per_class",
    "plot_training_curves",
    "print_environment",
    "progress",
    "show_images",
    "time_call",
]
