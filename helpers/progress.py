"""A progress bar for training loops that reads well in JupyterLab, Colab and plain logs."""

from __future__ import annotations

from collections.abc import Iterable

from tqdm.std import tqdm


def progress[T](iterable: Iterable[T], description: str = "", total: int | None = None) -> tqdm[T]:
    """Wrap ``iterable`` in a text progress bar (tqdm) that updates at most once a second.

    A text bar, not a widget, so it renders the same in JupyterLab, Colab, a
    terminal, a CI log and a notebook viewed on GitHub, and saves no widget state.
    The returned tqdm bar iterates like ``iterable``; call ``bar.set_postfix(loss=...)``
    on it to show live numbers.
    """
    return tqdm(
        iterable,
        desc=description,
        total=total,
        mininterval=1.0,
        ncols=90,
        ascii=" =",  # writes to sys.stderr as it is when the bar starts (tqdm's default)
    )
