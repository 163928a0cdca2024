"""helpers: smoke mode, environment report, progress bar, timing, plots, Colab set-up,
and the command-line checks of notebook headers and headless runs."""

from __future__ import annotations

import io
import os
import sys
from importlib import metadata
from pathlib import Path

import matplotlib
import nbformat
import pytest

from helpers import mode, notebook_header, run_series
from helpers.environment import environment_report, installed_version, print_environment
from helpers.progress import progress

matplotlib.use("Agg")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        *[(value, False) for value in ("", "0", "false", "no", "off", "FALSE", " No ", "OFF")],
        *[(value, True) for value in ("1", "true", "yes", "on", "TRUE", " Yes ", "ON")],
    ],
)
def test_smoke_switch(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("TUTORIAL_SMOKE", value)
    assert mode.is_smoke() is expected
    assert mode.full_or_smoke(10, 1) == (1 if expected else 10)


def test_smoke_switch_unset_means_full_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUTORIAL_SMOKE", raising=False)
    assert mode.is_smoke() is False
    assert mode.full_or_smoke("full", "smoke") == "full"


@pytest.mark.parametrize("value", ["maybe", "2", "XXXX", "  enabled "])
def test_smoke_switch_rejects_nonsense(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("TUTORIAL_SMOKE", value)
    shown = value.strip().lower()
    expected = (
        f"TUTORIAL_SMOKE={shown!r} is not understood: set it to 1 for smoke mode "
        "or unset it (or 0) for full mode."
    )
    with pytest.raises(ValueError) as raised:
        mode.is_smoke()
    assert str(raised.value) == expected


def test_environment_report_names_versions_and_devices() -> None:
    """Against what the packages say about themselves (their __version__), not metadata."""
    import flax
    import jax
    import jaxlib
    import optax

    lines = environment_report().splitlines()
    python = ".".join(str(part) for part in sys.version_info[:3])
    assert lines[0] == f"Python  {python} ({sys.platform}, {os.uname().machine})"
    assert lines[1] == f"JAX     {jax.__version__} (jaxlib {jaxlib.__version__})"
    assert lines[2] == f"Flax    {flax.__version__}"
    assert lines[3] == f"Optax   {optax.__version__}"
    platform = jax.devices()[0].platform  # "cpu", "gpu", "tpu"
    assert lines[4].startswith(f"Backend {platform}: {jax.device_count()} device(s): ")
    no_gpu = "        No GPU found: everything runs on the CPU (slower, but it all works)."
    assert (lines[5:] == [no_gpu]) == (platform == "cpu")
    assert len(lines) == (6 if platform == "cpu" else 5)


class FakeDevice:
    def __init__(self, kind: str) -> None:
        self.device_kind = kind


def test_environment_report_with_a_gpu_and_a_missing_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import jax

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    kinds = ["NVIDIA H100", "NVIDIA A100", "NVIDIA H100"]
    monkeypatch.setattr(jax, "devices", lambda: [FakeDevice(kind) for kind in kinds])
    real_version = metadata.version

    def version(package: str) -> str:
        if package == "optax":
            raise metadata.PackageNotFoundError(package)
        return real_version(package)

    monkeypatch.setattr(metadata, "version", version)
    lines = environment_report().splitlines()
    assert lines[3] == "Optax   not installed"
    assert lines[4] == "Backend gpu: 3 device(s): NVIDIA A100, NVIDIA H100"
    assert len(lines) == 5  # no "No GPU found" line


def test_installed_version() -> None:
    import numpy

    assert installed_version("numpy") == numpy.__version__
    assert installed_version("no-such-package-here") is None


def test_print_environment_prints_the_report(capsys: pytest.CaptureFixture[str]) -> None:
    print_environment()
    assert capsys.readouterr().out == environment_report() + "\n"


def frames(stream: io.StringIO) -> list[str]:
    """The successive states a text progress bar drew (it redraws after a carriage return)."""
    return [frame for frame in stream.getvalue().replace("\n", "").split("\r") if frame]


def test_progress_counts_and_writes_text(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    items = list(progress(range(7), description="epochs"))
    assert items == list(range(7))
    drawn = frames(stream)
    assert drawn[0].startswith("epochs:   0%|") and " 0/7 [" in drawn[0]
    assert drawn[-1].startswith("epochs: 100%|=") and " 7/7 [" in drawn[-1]
    assert all(len(frame) == 90 for frame in drawn)  # a fixed width, not the terminal's
    bar = drawn[-1].split("|")[1]
    assert set(bar) == {"="}  # plain characters: a log or a notebook shows them as drawn


def test_progress_without_description_and_with_a_total(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    items = list(progress(iter([1, 2, 3]), total=3))  # an iterator has no len()
    assert items == [1, 2, 3]
    drawn = frames(stream)
    assert drawn[0].startswith("  0%|") and drawn[-1].startswith("100%|")
    assert " 3/3 [" in drawn[-1]


def test_progress_redraws_at_most_once_a_second() -> None:
    bar = progress(range(3))
    assert bar.mininterval == 1.0
    bar.close()


def test_progress_bar_shows_live_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    bar = progress(range(3), description="epochs")
    for _ in bar:
        bar.set_postfix(loss=0.25)
    assert "loss=0.25" in stream.getvalue()


def test_notebook_header_outside_the_repository_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert notebook_header.main([]) == 2
    assert "No notebooks in notebooks/ (run from the repository root)" in capsys.readouterr().err


def test_run_series_keeps_a_failed_notebook_for_inspection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("print('before')"),
        nbformat.v4.new_code_cell("1 / 0"),
        nbformat.v4.new_code_cell("print('after')"),
    ]
    (tmp_path / "notebooks").mkdir()
    committed = tmp_path / "notebooks" / "broken.ipynb"
    nbformat.write(notebook, committed)
    original = committed.read_text()
    monkeypatch.chdir(tmp_path)
    assert run_series.main(["--inplace", "--output-dir", "runs", "--timeout", "60"]) == 1
    assert committed.read_text() == original  # --inplace never overwrites with a failed run
    executed = nbformat.read(tmp_path / "runs" / "broken.ipynb", as_version=4)
    assert executed.cells[0].outputs[0]["text"] == "before\n"
    assert executed.cells[1].outputs[0]["ename"] == "ZeroDivisionError"
    assert executed.cells[2].outputs == []
    assert "broken.ipynb: FAILED (ZeroDivisionError: division by zero)" in capsys.readouterr().err
