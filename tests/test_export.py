"""helpers.export: the lessons/ modules are the notebooks' cells tagged 'export'."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from helpers import export


def write_notebook(path: Path, cells: list[tuple[str, str, list[str]]]) -> None:
    """cells: (kind, source, tags)."""
    notebook = nbformat.v4.new_notebook()
    for kind, source, tags in cells:
        cell = (nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell)(
            source
        )
        cell.metadata["tags"] = tags
        notebook.cells.append(cell)
    nbformat.write(notebook, path)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "lessons").mkdir()
    write_notebook(
        tmp_path / "notebooks" / "nb.ipynb",
        [
            ("code", "import math\n", ["export"]),
            ("markdown", "## A square", ["export"]),  # markdown is never exported
            ("code", "print('not part of the lesson')", []),
            ("code", "\n\ndef square(x):\n    return x * x\n", ["export", "other"]),
        ],
    )
    return tmp_path


def test_exports_tagged_code_cells_in_order_and_nothing_else(tree: Path) -> None:
    export.write(tree, {"nb.ipynb": "nb.py"})
    text = (tree / "lessons" / "nb.py").read_text()
    body = text.split('"""\n', 1)[1]
    assert body == "\nimport math\n\n\ndef square(x):\n    return x * x\n"
    assert "Generated from notebooks/nb.ipynb" in text
    namespace: dict[str, object] = {}
    exec(compile(text, "nb.py", "exec"), namespace)
    assert namespace["square"](7) == 49  # type: ignore[operator]


def test_check_names_a_module_that_drifted_from_its_notebook(tree: Path) -> None:
    modules = {"nb.ipynb": "nb.py"}
    assert export.drifted(tree, modules) == [
        "lessons/nb.py differs from notebooks/nb.ipynb: "
        "run `python -m helpers.export` and commit the result"
    ]
    export.write(tree, modules)
    assert export.drifted(tree, modules) == []
    (tree / "lessons" / "nb.py").write_text("def square(x):\n    return x + x\n")
    assert len(export.drifted(tree, modules)) == 1


def test_a_magic_in_an_exported_cell_is_refused(tree: Path) -> None:
    write_notebook(tree / "notebooks" / "nb.ipynb", [("code", "x = 1\n%timeit x", ["export"])])
    with pytest.raises(export.ExportError, match=r"cell 0: IPython magic '%timeit x'"):
        export.module_source(tree / "notebooks" / "nb.ipynb")


def test_a_notebook_with_no_exported_cell_is_an_error(tree: Path) -> None:
    write_notebook(tree / "notebooks" / "nb.ipynb", [("code", "x = 1", [])])
    with pytest.raises(export.ExportError, match="no code cell tagged 'export'"):
        export.module_source(tree / "notebooks" / "nb.ipynb")


def test_generated_lessons_match_their_notebooks() -> None:
    assert export.drifted() == []
    for module in export.MODULES.values():
        assert (export.ROOT / "lessons" / module).exists()
