"""Generate the ``lessons`` modules from the notebooks' cells tagged ``export``.

The notebooks are the source of the lessons: the network, loss and training step a
notebook trains are written in its cells. Scripts and tests that need the same
definitions import them from ``lessons/``, generated here (d2l's ``#@save`` pattern):

    python -m helpers.export          # rewrite every generated module from its notebook
    python -m helpers.export --check  # exit 1, naming the module, when one has drifted

An exported cell is plain Python: no IPython magics (``%``, ``!``), and its own imports
(tag the notebook's import cell ``export`` too).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import nbformat

EXPORT_TAG = "export"
ROOT = Path(__file__).resolve().parent.parent
# notebook (in notebooks/) -> generated module (in lessons/); add a notebook here when
# its first cell is tagged, e.g. "05_cifar10_classifier.ipynb": "cifar10_cnn.py"
MODULES: dict[str, str] = {
    "05_cifar10_classifier.ipynb": "cifar10_cnn.py",
    "06_fast_cifar10.ipynb": "airbench.py",
}


class ExportError(Exception):
    """An exported cell cannot become part of a Python module."""


def exported_cells(notebook_path: Path) -> list[str]:
    """The sources of the code cells tagged ``export``, in notebook order."""
    notebook = nbformat.read(notebook_path, as_version=4)
    sources = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code" or EXPORT_TAG not in cell.metadata.get("tags", []):
            continue
        for line in cell.source.splitlines():
            if line.lstrip().startswith(("%", "!")):
                raise ExportError(
                    f"{notebook_path.name}, cell {index}: IPython magic {line.strip()!r} in a "
                    f"cell tagged {EXPORT_TAG!r}; move it to a cell that is not exported"
                )
        sources.append(cell.source.strip("\n"))
    return sources


def module_source(notebook_path: Path) -> str:
    """The text of the module generated from ``notebook_path``."""
    cells = exported_cells(notebook_path)
    if not cells:
        raise ExportError(
            f"{notebook_path.name} has no code cell tagged {EXPORT_TAG!r}; tag the cells "
            "that define the lesson, or remove the notebook from helpers.export.MODULES"
        )
    header = (
        f'"""Generated from notebooks/{notebook_path.name} by `python -m helpers.export`.\n\n'
        "Do not edit: change the notebook's cells tagged 'export' and run the command again.\n"
        '"""\n'
    )
    return header + "\n" + "\n\n\n".join(cells) + "\n"


def drifted(root: Path = ROOT, modules: dict[str, str] | None = None) -> list[str]:
    """One line per generated module that is missing or differs from its notebook."""
    found = []
    for notebook, module in (MODULES if modules is None else modules).items():
        path = root / "lessons" / module
        if not path.exists() or path.read_text() != module_source(root / "notebooks" / notebook):
            found.append(
                f"lessons/{module} differs from notebooks/{notebook}: "
                "run `python -m helpers.export` and commit the result"
            )
    return found


def write(root: Path = ROOT, modules: dict[str, str] | None = None) -> None:
    """(Re)generate every module of ``modules`` (default: :data:`MODULES`) under ``root``."""
    for notebook, module in (MODULES if modules is None else modules).items():
        (root / "lessons" / module).write_text(module_source(root / "notebooks" / notebook))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report drifted modules")
    args = parser.parse_args(argv)
    try:
        if not args.check:
            write()
        found = drifted()
    except ExportError as error:
        print(f"helpers.export: {error}", file=sys.stderr)
        return 2
    print("\n".join(found) or f"{len(MODULES)} generated modules match their notebooks")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
