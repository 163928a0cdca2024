"""Check (and fix) the first two cells every notebook must have.

1. The title cell carries an "Open in Colab" badge that opens this very notebook.
2. The next cell installs this package on Colab only, and nbval skips it.

``python -m helpers.notebook_header`` lists problems; ``--fix`` rewrites the cells
from :mod:`helpers.repository`, the one place the repository URL is written.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import nbformat

from helpers.repository import colab_url, pip_install_target

COLAB_SKIP_TAG = "nbval-skip"
NOTEBOOK_DIR = Path("notebooks")  # relative: the commands run from the repository root
_BADGE_PATTERN = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")


def badge_markdown(notebook: str) -> str:
    image = "https://colab.research.google.com/assets/colab-badge.svg"
    return f"[![Open In Colab]({image})]({colab_url(notebook)})"


def colab_cell_source() -> str:
    """Four lines of code, like fastbook's bootstrap; what it checks is in helpers.colab."""
    return "\n".join(
        [
            "# On Colab: install this series' helpers and check Colab's JAX, Flax and Optax.",
            "import sys",
            "",
            'if "google.colab" in sys.modules:',
            f"    %pip install -q --no-deps {pip_install_target()}",
            "    from helpers.colab import setup_colab",
            "    setup_colab()",
        ]
    )


def problems(path: Path) -> list[str]:
    """What is wrong with the header of the notebook at ``path`` (empty when nothing)."""
    notebook = nbformat.read(path, as_version=4)
    found = []
    cells = notebook.cells
    if not cells or cells[0].cell_type != "markdown" or not cells[0].source.startswith("# "):
        return [f"{path.name}: the first cell must be a markdown title starting with '# '"]
    badges = _BADGE_PATTERN.findall(cells[0].source)
    if badges != [badge_markdown(path.name)]:
        found.append(f"{path.name}: title cell needs one Colab badge opening {path.name}")
    if len(cells) < 2 or cells[1].cell_type != "code" or cells[1].source != colab_cell_source():
        found.append(f"{path.name}: second cell must be the Colab install cell")
    elif COLAB_SKIP_TAG not in cells[1].metadata.get("tags", []):
        found.append(f"{path.name}: the Colab install cell must be tagged {COLAB_SKIP_TAG}")
    for index, cell in enumerate(cells[2:], start=3):
        if COLAB_SKIP_TAG in cell.metadata.get("tags", []):
            found.append(
                f"{path.name}: cell {index} is tagged {COLAB_SKIP_TAG}; only the Colab cell may be"
            )
    return found


def fix(path: Path) -> None:
    """Rewrite the badge and the Colab cell of the notebook at ``path`` in place."""
    notebook = nbformat.read(path, as_version=4)
    title = notebook.cells[0]
    badge = badge_markdown(path.name)
    if _BADGE_PATTERN.search(title.source):
        title.source = _BADGE_PATTERN.sub(badge, title.source, count=1)
    else:
        head, _, rest = title.source.partition("\n")
        title.source = f"{head}\n\n{badge}\n{rest}"
    cell = nbformat.v4.new_code_cell(colab_cell_source())
    cell.metadata["tags"] = [COLAB_SKIP_TAG]
    second = notebook.cells[1] if len(notebook.cells) > 1 else None
    placeholder = second is not None and second.cell_type == "code" and not second.source.strip()
    if placeholder or (second is not None and "google.colab" in second.source):
        cell.id = second.id
        notebook.cells[1] = cell
    else:
        notebook.cells.insert(1, cell)
    nbformat.write(notebook, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("notebooks", nargs="*", type=Path, help=f"default: all of {NOTEBOOK_DIR}/")
    parser.add_argument("--fix", action="store_true", help="rewrite badge and Colab cell")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    if not paths:
        print(f"No notebooks in {NOTEBOOK_DIR}/ (run from the repository root)", file=sys.stderr)
        return 2
    if args.fix:
        for path in paths:
            fix(path)
    found = [problem for path in paths for problem in problems(path)]
    print("\n".join(found) or f"{len(paths)} notebook headers OK")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
