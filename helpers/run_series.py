"""Execute the notebooks headless, in order, and print each one's wall time and key result.

    python -m helpers.run_series                 # all of notebooks/, outputs to .notebook_runs/
    python -m helpers.run_series --inplace 05_*  # refresh the committed outputs of one notebook

A notebook's key result is the text output of its cell tagged ``key-result``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

KEY_RESULT_TAG = "key-result"
NOTEBOOK_DIR = Path("notebooks")


def key_result(notebook: nbformat.NotebookNode) -> str:
    """The printed text of the cell tagged ``key-result``, or '' when there is none."""
    for cell in notebook.cells:
        if cell.cell_type == "code" and KEY_RESULT_TAG in cell.metadata.get("tags", []):
            texts = [out.get("text", "") for out in cell.outputs if out.output_type == "stream"]
            return "".join(texts).strip()
    return ""


def strip_metadata(notebook: nbformat.NotebookNode) -> None:
    """Drop per-run noise (execution timestamps, widget state); keep outputs and tags."""
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)


def execute(path: Path, timeout_s: int) -> tuple[nbformat.NotebookNode, float]:
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=timeout_s,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    strip_metadata(notebook)
    return notebook, elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("patterns", nargs="*", help="notebook file names or globs")
    parser.add_argument("--inplace", action="store_true", help="overwrite the notebooks")
    parser.add_argument("--output-dir", type=Path, default=Path(".notebook_runs"))
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args()
    patterns = args.patterns or ["*.ipynb"]
    paths = sorted({p for pattern in patterns for p in NOTEBOOK_DIR.glob(Path(pattern).name)})
    if not paths:
        print(f"No notebooks match {patterns} in {NOTEBOOK_DIR}/", file=sys.stderr)
        return 2
    for path in paths:
        print(f"{path.name}: running ...", flush=True)
        notebook, elapsed = execute(path, args.timeout)
        target = path if args.inplace else args.output_dir / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, target)
        result = key_result(notebook) or "(no cell tagged key-result)"
        print(f"{path.name}: {elapsed:.0f} s wall time; {result}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
