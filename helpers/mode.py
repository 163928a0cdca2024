"""Smoke mode: one switch that shrinks heavy work while the teaching code stays the same.

Set the environment variable ``TUTORIAL_SMOKE=1`` (for example
``TUTORIAL_SMOKE=1 ./tutorial.sh headless``, a quick check that every notebook runs) and
notebooks pick their sizes with :func:`full_or_smoke`. ``./tutorial.sh test`` runs the
notebooks in full mode, except those listed in its ``SMALL_IN_TESTS`` (notebook 06, whose
full mode trains for many minutes on a CPU), which it runs with ``TUTORIAL_SMOKE=1``.
"""

from __future__ import annotations

import os

SMOKE_VARIABLE = "TUTORIAL_SMOKE"


def is_smoke() -> bool:
    """True when ``TUTORIAL_SMOKE`` is set to 1 (or true/yes/on)."""
    value = os.environ.get(SMOKE_VARIABLE, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(
        f"{SMOKE_VARIABLE}={value!r} is not understood: set it to 1 for smoke mode "
        "or unset it (or 0) for full mode."
    )


def full_or_smoke[T](full: T, smoke: T) -> T:
    """``smoke`` in smoke mode, else ``full``; e.g. ``epochs = full_or_smoke(10, 1)``."""
    return smoke if is_smoke() else full
