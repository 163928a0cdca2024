"""Draw images/broadcasting.png: the broadcasting rules, case by case.

    python images/make_broadcasting.py

Each row adds two arrays. Solid cells hold real data; pale cells with dashed
edges are the copies broadcasting pretends are there (no memory is used for
them). The values are the ones notebook 01 computes, so the reader can check
the figure against the notebook.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyBboxPatch, Rectangle

OUTPUT = Path(__file__).resolve().parent / "broadcasting.png"

BLUE = "#3b6fb6"
ORANGE = "#e08a1e"
GREEN = "#2f9e6e"
RED = "#c8323c"
INK = "#222222"
MUTED = "#666666"

A = np.arange(12).reshape(3, 4)
ROW = np.array([10, 20, 30, 40])
COLUMN = np.array([[100], [200], [300]])
LEFT = np.array([[0], [10], [20]])
TOP = np.array([[0, 1, 2, 3]])


def lighten(colour: str, amount: float) -> tuple[float, float, float]:
    """Mix ``colour`` with white; ``amount`` 0 keeps it, 1 gives white."""
    rgb = np.array(matplotlib.colors.to_rgb(colour))
    return tuple(rgb + (1.0 - rgb) * amount)


def draw_cells(ax, x0: float, y0: float, values, colour: str, real=None, text_size=11) -> None:
    """Draw a grid of cells with its top-left corner at (x0, y0), one unit per cell.

    ``real`` marks the cells that hold data; the others are drawn as broadcast copies.
    """
    values = np.atleast_2d(values)
    real = np.ones(values.shape, bool) if real is None else real
    for (row, column), value in np.ndenumerate(values):
        solid = bool(real[row, column])
        ax.add_patch(
            Rectangle(
                (x0 + column, y0 - row - 1),
                1,
                1,
                facecolor=lighten(colour, 0.55 if solid else 0.88),
                edgecolor=colour if solid else lighten(colour, 0.35),
                linewidth=1.6 if solid else 1.0,
                linestyle="-" if solid else (0, (3, 2)),
            )
        )
        ax.text(
            x0 + column + 0.5,
            y0 - row - 0.5,
            str(value),
            ha="center",
            va="center",
            fontsize=text_size,
            color=INK if solid else MUTED,
            fontweight="bold" if solid else "normal",
        )


def operator(ax, x: float, y: float, symbol: str) -> None:
    ax.text(x, y, symbol, ha="center", va="center", fontsize=22, color=INK)


def shapes_note(ax, x: float, y: float, lines: list[tuple[str, str]]) -> None:
    """Right-aligned shapes, one per line, coloured like the arrays they describe."""
    for index, (text, colour) in enumerate(lines):
        ax.text(
            x,
            y - 0.62 * index,
            text,
            ha="left",
            va="center",
            fontsize=11.5,
            family="DejaVu Sans Mono",
            color=colour,
        )


def expand(values: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Broadcast ``values`` to ``shape`` and mark which cells are real (the first copy)."""
    values = np.atleast_2d(values)
    full = np.broadcast_to(values, shape)
    real = np.zeros(shape, bool)
    real[: values.shape[0], : values.shape[1]] = True
    return full, real


def case(ax, top: float, title: str, left, right, notes) -> None:
    """One row of the figure: left + right = result, with the shape arithmetic."""
    ax.text(-0.2, top + 0.65, title, fontsize=13, fontweight="bold", color=INK, va="center")
    left_values, left_real = expand(left, (3, 4))
    right_values, right_real = expand(right, (3, 4))
    draw_cells(ax, 0, top, left_values, BLUE, left_real)
    operator(ax, 4.75, top - 1.5, "+")
    draw_cells(ax, 5.5, top, right_values, ORANGE, right_real)
    operator(ax, 10.25, top - 1.5, "=")
    draw_cells(ax, 11, top, left_values + right_values, GREEN)
    shapes_note(ax, 15.8, top - 0.55, notes)


def mismatch(ax, top: float) -> None:
    """The failing case: (3, 4) + (3,) lines up 4 against 3."""
    ax.text(
        -0.2,
        top + 0.65,
        "5. Mismatch: (3, 4) + (3,) is an error",
        fontsize=13,
        fontweight="bold",
        color=RED,
        va="center",
    )
    draw_cells(ax, 0, top, A, BLUE)
    operator(ax, 4.75, top - 1.5, "+")
    draw_cells(ax, 5.5, top, np.array([[1, 2, 3]]), ORANGE)
    ax.add_patch(
        Rectangle(
            (8.5, top - 1),
            1,
            1,
            facecolor="white",
            edgecolor=RED,
            linewidth=1.6,
            linestyle=(0, (3, 2)),
        )
    )
    ax.text(
        9.0, top - 0.5, "?", ha="center", va="center", fontsize=14, color=RED, fontweight="bold"
    )
    ax.text(
        7.5,
        top - 1.75,
        "3 values for 4 columns:\nnothing to stretch",
        ha="center",
        va="top",
        fontsize=10.5,
        color=RED,
    )
    operator(ax, 10.25, top - 1.5, "=")
    ax.add_patch(
        FancyBboxPatch(
            (11.1, top - 2.9),
            3.8,
            2.8,
            boxstyle="round,pad=0.02,rounding_size=0.2",
            facecolor=lighten(RED, 0.9),
            edgecolor=RED,
            linewidth=1.6,
        )
    )
    ax.text(
        13.0,
        top - 1.5,
        "ValueError:\nincompatible\nshapes",
        ha="center",
        va="center",
        fontsize=11.5,
        color=RED,
        fontweight="bold",
    )
    shapes_note(
        ax,
        15.8,
        top - 0.55,
        [
            ("a       3  4", BLUE),
            ("b          3", ORANGE),
            ("4 vs 3  ✗", RED),
            ("fix: b[:, None]", MUTED),
            ("   gives (3, 1)", MUTED),
        ],
    )


def main() -> None:
    figure = plt.figure(figsize=(10.5, 14.6))
    ax = figure.add_axes((0.02, 0.01, 0.96, 0.98))
    ax.set_xlim(-0.4, 21.6)
    ax.set_ylim(-25.9, 4.6)
    ax.set_aspect("equal")
    ax.axis("off")

    ax.text(
        -0.2,
        4.0,
        "Broadcasting: how a + b works when the shapes differ",
        fontsize=17,
        fontweight="bold",
        color=INK,
        va="center",
    )
    rules = (
        "1. Line the shapes up on the right.  A missing size counts as 1.\n"
        "2. Each pair of sizes must be equal, or one of them must be 1.\n"
        "3. A size of 1 is stretched to match the other; the result takes the larger size."
    )
    ax.text(-0.2, 2.55, rules, fontsize=12, color=INK, va="center", linespacing=1.6)
    ax.add_patch(
        Rectangle(
            (13.3, 0.95), 0.55, 0.55, facecolor=lighten(MUTED, 0.55), edgecolor=MUTED, linewidth=1.6
        )
    )
    ax.text(14.05, 1.22, "real data", fontsize=10.5, va="center", color=INK)
    ax.add_patch(
        Rectangle(
            (16.3, 0.95),
            0.55,
            0.55,
            facecolor=lighten(MUTED, 0.88),
            edgecolor=lighten(MUTED, 0.35),
            linewidth=1.0,
            linestyle=(0, (3, 2)),
        )
    )
    ax.text(17.05, 1.22, "stretched copy (no memory)", fontsize=10.5, va="center", color=INK)

    case(
        ax,
        -0.6,
        "1. Scalar: (3, 4) + 100",
        A,
        np.array([[100]]),
        [
            ("a       3  4", BLUE),
            ("b       (scalar)", ORANGE),
            ("   →    1  1", ORANGE),
            ("result  3  4", GREEN),
        ],
    )
    case(
        ax,
        -6.0,
        "2. Row: (3, 4) + (4,)",
        A,
        ROW[None, :],
        [
            ("a       3  4", BLUE),
            ("b          4", ORANGE),
            ("   →    1  4", ORANGE),
            ("result  3  4", GREEN),
        ],
    )
    case(
        ax,
        -11.4,
        "3. Column: (3, 4) + (3, 1)",
        A,
        COLUMN,
        [("a       3  4", BLUE), ("b       3  1", ORANGE), ("result  3  4", GREEN)],
    )
    case(
        ax,
        -16.8,
        "4. Both stretch: (3, 1) + (1, 4)",
        LEFT,
        TOP,
        [
            ("a       3  1", BLUE),
            ("b       1  4", ORANGE),
            ("result  3  4", GREEN),
            ("", INK),
            ("(an outer sum)", MUTED),
        ],
    )
    mismatch(ax, -22.2)

    figure.savefig(OUTPUT, dpi=120, facecolor="white")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
