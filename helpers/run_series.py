"""Execute the notebooks headless, in order, and print each one's wall time and key result.

    python -m helpers.run_series                 # all of notebooks/, outputs to .notebook_runs/
    python -m helpers.run_series --inplace 05_*  # refresh the committed outputs of one notebook

A notebook's key result is the text output of its cell tagged ``key-result``. The run
stops at the first notebook whose cell fails (or times out, or kills the kernel); that
notebook, executed up to the failure, is written to the output directory, never over
the committed one, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import nbformat
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

from helpers.notebook_header import NOTEBOOK_DIR

KEY_RESULT_TAG = "key-result"
RUN_FAILURES = (CellExecutionError, CellTimeoutError, DeadKernelError)


class NotebookRunError(Exception):
    """A notebook stopped early; ``notebook`` holds the outputs up to the failure."""

    def __init__(self, notebook: nbformat.NotebookNode, error: Exception) -> None:
        if isinstance(error, CellExecutionError):
            summary = f"{error.ename}: {error.evalue}"
        else:
            summary = str(error).strip().partition("\n")[0] or type(error).__name__
        super().__init__(summary)
        self.notebook = notebook


def key_result(notebook: nbformat.NotebookNode) -> str:
    """The printed text of the cell tagged ``key-result``, or '' when there is none."""
    for cell in notebook.cells:
        if cell.cell_type == "code" and KEY_RESULT_TAG in cell.metadata.get("tags", []):
            texts = [out["text"] for out in cell.outputs if out.output_type == "stream"]
            return "".join(texts).strip()
    return ""


def strip_metadata(notebook: nbformat.NotebookNode) -> None:
    """Drop per-run noise (execution timestamps, widget state); keep outputs and tags."""
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)


def execute(path: Path, timeout_s: int) -> tuple[nbformat.NotebookNode, float]:
    """The executed notebook and its wall time; :class:`NotebookRunError` if a cell fails."""
    notebook = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="kernel-") as sockets:
        # The kernel talks over Unix sockets in a private folder rather than TCP on
        # localhost, which it would warn about ("running over TCP without encryption").
        manager = KernelManager(kernel_name="python3", transport="ipc", ip=f"{sockets}/ipc")
        client = NotebookClient(
            notebook,
            km=manager,
            timeout=timeout_s,
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
        )
        start = time.perf_counter()
        try:
            # A client handed its kernel's manager leaves the kernel running unless told
            # to shut it down: each notebook's kernel (and its memory) would outlive its run.
            client.execute(cleanup_kc=True)
        except RUN_FAILURES as error:
            strip_metadata(notebook)
            raise NotebookRunError(notebook, error) from error
        elapsed = time.perf_counter() - start
    strip_metadata(notebook)
    return notebook, elapsed


def _write(notebook: nbformat.NotebookNode, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, target)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("patterns", nargs="*", help="notebook file names or globs")
    parser.add_argument("--inplace", action="store_true", help="overwrite the notebooks")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path(".notebook_runs"),
        help="where executed notebooks go; a failed one goes here even with --inplace",
    )
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args(argv)
    patterns = args.patterns or ["*.ipynb"]
    paths = sorted({p for pattern in patterns for p in NOTEBOOK_DIR.glob(Path(pattern).name)})
    if not paths:
        print(f"No notebooks match {patterns} in {NOTEBOOK_DIR}/", file=sys.stderr)
        return 2
    for path in paths:
        print(f"{path.name}: running ...", flush=True)
        try:
            notebook, elapsed = execute(path, args.timeout)
        except NotebookRunError as failure:
            target = args.output_dir / path.name  # even with --inplace
            _write(failure.notebook, target)
            print(
                f"{path.name}: FAILED ({failure}); executed up to the failure in {target}",
                file=sys.stderr,
            )
            return 1
        _write(notebook, path if args.inplace else args.output_dir / path.name)
        result = key_result(notebook) or "(no cell tagged key-result)"
        print(f"{path.name}: {elapsed:.0f} s wall time; {result}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
