"""helpers: smoke mode, environment report, progress bar, timing, plots, Colab set-up,
and the command-line checks of notebook headers and headless runs."""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import ClassVar

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


# --- helpers.notebook_header: what it reports and what --fix writes -------------------------

BADGE_07 = (
    "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
    "(https://colab.research.google.com/github/jax-dl-intro/intro-to-deep-learning-jax"
    "/blob/main/notebooks/07_new.ipynb)"
)


def write_notebook(path: Path, *cells: nbformat.NotebookNode) -> Path:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = list(cells)
    nbformat.write(notebook, path)
    return path


def colab_cell(tags: tuple[str, ...] = ("nbval-skip",)) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(notebook_header.colab_cell_source())
    cell.metadata["tags"] = list(tags)
    return cell


def test_badge_is_the_colab_badge_image_linking_to_the_notebook() -> None:
    assert notebook_header.badge_markdown("07_new.ipynb") == BADGE_07


def test_colab_cell_installs_the_package_and_sets_up_only_on_colab(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cell's text runs as IPython runs it: on Colab it pip-installs this repository
    without its dependencies, then calls setup_colab; elsewhere it does nothing."""
    import types

    from IPython.core.inputtransformer2 import TransformerManager

    from helpers import colab

    calls: list[tuple[str, ...]] = []

    class FakeShell:
        def run_line_magic(self, name: str, line: str) -> None:
            calls.append((name, line))

    monkeypatch.setattr(colab, "setup_colab", lambda: calls.append(("setup_colab",)))
    source = notebook_header.colab_cell_source()
    assert source.splitlines()[0] == (  # what a reader of the cell is told
        "# On Colab: install this series' helpers and check Colab's JAX, Flax and Optax."
    )
    assert len([line for line in source.splitlines() if line and line[0] != "#"]) <= 5
    python = TransformerManager().transform_cell(source)
    exec(compile(python, "cell", "exec"), {"get_ipython": FakeShell})
    assert calls == []  # not on Colab
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    exec(compile(python, "cell", "exec"), {"get_ipython": FakeShell})
    target = "git+https://github.com/jax-dl-intro/intro-to-deep-learning-jax@main"
    assert calls == [("pip", f"install -q --no-deps {target}"), ("setup_colab",)]


@pytest.mark.parametrize(
    "first",
    [
        None,  # no cells at all
        nbformat.v4.new_code_cell("# Title"),
        nbformat.v4.new_markdown_cell("## Title"),
        nbformat.v4.new_markdown_cell("#Title"),
    ],
)
def test_header_check_wants_a_markdown_title_first(
    tmp_path: Path, first: nbformat.NotebookNode | None
) -> None:
    path = write_notebook(tmp_path / "07_new.ipynb", *([first] if first else []), colab_cell())
    assert notebook_header.problems(path) == [
        "07_new.ipynb: the first cell must be a markdown title starting with '# '"
    ]


def test_header_check_accepts_a_complete_header(tmp_path: Path) -> None:
    title = nbformat.v4.new_markdown_cell(f"# Title\n\n{BADGE_07}\nText")
    path = write_notebook(tmp_path / "07_new.ipynb", title, colab_cell())
    assert notebook_header.problems(path) == []


@pytest.mark.parametrize("badges", [0, 2])
def test_header_check_wants_exactly_one_badge(tmp_path: Path, badges: int) -> None:
    title = nbformat.v4.new_markdown_cell("# Title\n" + "\n".join([BADGE_07] * badges))
    path = write_notebook(tmp_path / "07_new.ipynb", title, colab_cell())
    assert notebook_header.problems(path) == [
        "07_new.ipynb: title cell needs one Colab badge opening 07_new.ipynb"
    ]


@pytest.mark.parametrize(
    "second",
    [
        None,  # only the title
        nbformat.v4.new_markdown_cell(notebook_header.colab_cell_source()),
        nbformat.v4.new_code_cell(notebook_header.colab_cell_source() + "\n"),
    ],
)
def test_header_check_wants_the_colab_cell_second(
    tmp_path: Path, second: nbformat.NotebookNode | None
) -> None:
    title = nbformat.v4.new_markdown_cell(f"# Title\n{BADGE_07}")
    path = write_notebook(tmp_path / "07_new.ipynb", title, *([second] if second else []))
    assert notebook_header.problems(path) == [
        "07_new.ipynb: second cell must be the Colab install cell"
    ]


def test_header_check_wants_the_colab_cell_tagged_even_without_any_tags(tmp_path: Path) -> None:
    title = nbformat.v4.new_markdown_cell(f"# Title\n{BADGE_07}")
    untagged = nbformat.v4.new_code_cell(notebook_header.colab_cell_source())
    path = write_notebook(tmp_path / "07_new.ipynb", title, untagged)
    assert notebook_header.problems(path) == [
        "07_new.ipynb: the Colab install cell must be tagged nbval-skip"
    ]


def test_header_fix_fills_an_empty_code_cell_but_keeps_an_empty_markdown_cell(
    tmp_path: Path,
) -> None:
    title = nbformat.v4.new_markdown_cell(f"# Title\n{BADGE_07}")
    for second in (nbformat.v4.new_code_cell("  \n"), nbformat.v4.new_markdown_cell("")):
        path = write_notebook(tmp_path / "07_new.ipynb", title, second)
        notebook_header.fix(path)
        cells = nbformat.read(path, as_version=4).cells
        assert cells[1].source == notebook_header.colab_cell_source()
        if second.cell_type == "code":  # a placeholder: filled in, keeping its id
            assert len(cells) == 2 and cells[1].id == second.id
        else:
            assert len(cells) == 3 and cells[2].id == second.id


def test_header_check_wants_the_colab_cell_skipped_and_only_it(tmp_path: Path) -> None:
    title = nbformat.v4.new_markdown_cell(f"# Title\n{BADGE_07}")
    tagged = nbformat.v4.new_markdown_cell("text")
    tagged.metadata["tags"] = ["nbval-skip"]
    path = write_notebook(
        tmp_path / "07_new.ipynb",
        title,
        colab_cell(tags=("export",)),
        nbformat.v4.new_code_cell("1"),
        tagged,
    )
    assert notebook_header.problems(path) == [
        "07_new.ipynb: the Colab install cell must be tagged nbval-skip",
        "07_new.ipynb: cell 4 is tagged nbval-skip; only the Colab cell may be",
    ]


def test_header_fix_puts_the_badge_under_the_title_line(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path / "07_new.ipynb",
        nbformat.v4.new_markdown_cell("# Title\nFirst line\nSecond"),
        nbformat.v4.new_code_cell("print(1)"),
    )
    before = nbformat.read(path, as_version=4).cells[1].id
    notebook_header.fix(path)
    cells = nbformat.read(path, as_version=4).cells
    assert cells[0].source == f"# Title\n\n{BADGE_07}\nFirst line\nSecond"
    assert [cell.source for cell in cells[1:]] == [
        notebook_header.colab_cell_source(),
        "print(1)",  # an ordinary first code cell stays, after the inserted one
    ]
    assert cells[1].metadata["tags"] == ["nbval-skip"] and cells[2].id == before
    assert notebook_header.problems(path) == []


def test_header_fix_replaces_only_the_first_badge_and_an_old_colab_cell(tmp_path: Path) -> None:
    old_badge = BADGE_07.replace("07_new", "03_old")
    old_cell = nbformat.v4.new_code_cell("import google.colab  # an older install cell")
    path = write_notebook(
        tmp_path / "07_new.ipynb",
        nbformat.v4.new_markdown_cell(f"# Title\n{old_badge} and {old_badge}"),
        old_cell,
        nbformat.v4.new_code_cell("2"),
    )
    notebook_header.fix(path)
    cells = nbformat.read(path, as_version=4).cells
    assert cells[0].source == f"# Title\n{BADGE_07} and {old_badge}"
    assert [cell.source for cell in cells[1:]] == [notebook_header.colab_cell_source(), "2"]
    assert cells[1].id == old_cell.id  # replaced in place: the cell keeps its id


def test_header_fix_adds_the_colab_cell_to_a_title_only_notebook(tmp_path: Path) -> None:
    path = write_notebook(tmp_path / "07_new.ipynb", nbformat.v4.new_markdown_cell("# Title"))
    notebook_header.fix(path)
    cells = nbformat.read(path, as_version=4).cells
    assert [cell.source for cell in cells] == [
        f"# Title\n\n{BADGE_07}\n",
        notebook_header.colab_cell_source(),
    ]


def test_header_command_checks_and_fixes_the_given_notebooks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_notebook(
        tmp_path / "07_new.ipynb",
        nbformat.v4.new_markdown_cell(f"# Title\n{BADGE_07}"),
        colab_cell(),
    )
    bad = write_notebook(tmp_path / "08_bad.ipynb", nbformat.v4.new_markdown_cell("# Title"))
    assert notebook_header.main([str(good)]) == 0
    assert capsys.readouterr().out == "1 notebook headers OK\n"
    assert notebook_header.main([str(good), str(bad)]) == 1
    assert capsys.readouterr().out == (
        "08_bad.ipynb: title cell needs one Colab badge opening 08_bad.ipynb\n"
        "08_bad.ipynb: second cell must be the Colab install cell\n"
    )
    assert notebook_header.main(["--fix", str(good), str(bad)]) == 0
    assert capsys.readouterr().out == "2 notebook headers OK\n"


def test_header_command_checks_every_notebook_in_notebooks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notebooks").mkdir()
    write_notebook(tmp_path / "notebooks" / "b.ipynb", nbformat.v4.new_markdown_cell("# B"))
    write_notebook(tmp_path / "notebooks" / "a.ipynb", nbformat.v4.new_markdown_cell("text"))
    (tmp_path / "notebooks" / "notes.txt").write_text("not a notebook")
    monkeypatch.chdir(tmp_path)
    assert notebook_header.main([]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "a.ipynb: the first cell must be a markdown title starting with '# '",
        "b.ipynb: title cell needs one Colab badge opening b.ipynb",
        "b.ipynb: second cell must be the Colab install cell",
    ]


def test_header_command_help_describes_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        notebook_header.main(["--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Check (and fix) the first two cells every notebook must have." in text
    assert "--fix rewrite badge and Colab cell" in text
    assert "default: all of notebooks/" in text


# --- helpers.run_series: the runner's parts, with the kernel faked where a real one adds nothing


def stream(text: str, name: str = "stdout") -> nbformat.NotebookNode:
    return nbformat.v4.new_output("stream", name=name, text=text)


def test_key_result_is_the_printed_text_of_the_first_tagged_code_cell() -> None:
    tagged = nbformat.v4.new_code_cell("...")
    tagged.metadata["tags"] = ["nbval-ignore-output", "key-result"]
    tagged.outputs = [
        stream("accuracy "),
        nbformat.v4.new_output("execute_result", data={"text/plain": "'not printed'"}),
        stream("0.5\n\n", name="stderr"),
    ]
    later = nbformat.v4.new_code_cell("...")
    later.metadata["tags"] = ["key-result"]
    later.outputs = [stream("second")]
    markdown = nbformat.v4.new_markdown_cell("text")
    markdown.metadata["tags"] = ["key-result"]
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [markdown, nbformat.v4.new_code_cell("x"), tagged, later]
    assert run_series.key_result(notebook) == "accuracy 0.5"
    notebook.cells = [markdown, nbformat.v4.new_code_cell("x")]
    assert run_series.key_result(notebook) == ""


def test_strip_metadata_drops_timestamps_and_widgets_only() -> None:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata.update(widgets={"state": 1}, kernelspec={"name": "python3"})
    cell = nbformat.v4.new_code_cell("1")
    cell.metadata.update(execution={"iopub.status.busy": "2026"}, tags=["key-result"])
    notebook.cells = [cell, nbformat.v4.new_markdown_cell("text")]
    run_series.strip_metadata(notebook)
    assert dict(notebook.metadata) == {"kernelspec": {"name": "python3"}}
    assert dict(cell.metadata) == {"tags": ["key-result"]}


@pytest.mark.parametrize(
    ("error", "summary"),
    [
        (
            run_series.CellExecutionError("trace", "ValueError", "bad value"),
            "ValueError: bad value",
        ),
        (
            run_series.CellTimeoutError("Cell timed out after 5 s\nsource:\n1 / 0"),
            "Cell timed out after 5 s",
        ),
        (run_series.DeadKernelError("\n  Kernel died\nmore"), "Kernel died"),
        (run_series.DeadKernelError(""), "DeadKernelError"),
    ],
)
def test_a_failed_run_is_summarised_in_one_line(error: Exception, summary: str) -> None:
    notebook = nbformat.v4.new_notebook()
    failure = run_series.NotebookRunError(notebook, error)
    assert str(failure) == summary and failure.notebook is notebook


class FakeClient:
    """Stands in for nbclient's NotebookClient: records its arguments, 'executes' by
    adding a timestamp to the cells, and raises ``error`` when given one."""

    error: Exception | None = None
    made: ClassVar[list[dict[str, object]]] = []
    executed: ClassVar[list[dict[str, object]]] = []

    def __init__(self, notebook: nbformat.NotebookNode, **kwargs: object) -> None:
        self.notebook = notebook
        FakeClient.made.append(kwargs)

    def execute(self, **kwargs: object) -> None:
        FakeClient.executed.append(kwargs)
        self.notebook.metadata["widgets"] = {"state": 1}
        for cell in self.notebook.cells:
            cell.metadata["execution"] = {"iopub.status.busy": "2026"}
        if self.error is not None:
            raise self.error


@pytest.fixture
def fake_client(monkeypatch: pytest.MonkeyPatch) -> type[FakeClient]:
    monkeypatch.setattr(run_series, "NotebookClient", FakeClient)
    monkeypatch.setattr(FakeClient, "made", [])
    monkeypatch.setattr(FakeClient, "executed", [])
    monkeypatch.setattr(FakeClient, "error", None)
    return FakeClient


def test_execute_runs_the_kernel_in_the_notebooks_folder_and_times_it(
    tmp_path: Path, fake_client: type[FakeClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = iter([100.0, 103.5])
    monkeypatch.setattr(run_series.time, "perf_counter", lambda: next(clock))
    path = write_notebook(tmp_path / "nb.ipynb", nbformat.v4.new_code_cell("1"))
    notebook, seconds = run_series.execute(path, timeout_s=42)
    assert seconds == 3.5
    [made] = fake_client.made
    manager = made.pop("km")
    assert made == {
        "timeout": 42,
        "kernel_name": "python3",
        "resources": {"metadata": {"path": str(tmp_path)}},
    }
    assert (manager.kernel_name, manager.transport) == ("python3", "ipc")
    assert fake_client.executed == [{"cleanup_kc": True}]  # the kernel is shut down after
    assert not Path(manager.ip).parent.exists()  # the sockets' folder is removed afterwards
    assert "widgets" not in notebook.metadata and "execution" not in notebook.cells[0].metadata


def test_execute_hands_back_the_stripped_notebook_of_a_failed_run(
    tmp_path: Path, fake_client: type[FakeClient]
) -> None:
    fake_client.error = run_series.CellTimeoutError("Cell timed out")
    path = write_notebook(tmp_path / "nb.ipynb", nbformat.v4.new_code_cell("1"))
    with pytest.raises(run_series.NotebookRunError) as raised:
        run_series.execute(path, timeout_s=1)
    assert raised.value.__cause__ is fake_client.error
    assert raised.value.notebook.cells[0].source == "1"
    assert "execution" not in raised.value.notebook.cells[0].metadata


def test_execute_runs_a_real_kernel_in_the_notebooks_folder(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    tagged = nbformat.v4.new_code_cell("print('accuracy', 0.5)")
    tagged.metadata["tags"] = ["key-result"]
    path = write_notebook(
        tmp_path / "nb.ipynb",
        nbformat.v4.new_code_cell("import os\nprint(os.getcwd())\nprint(os.getpid())"),
        tagged,
    )
    notebook, seconds = run_series.execute(path, timeout_s=60)
    folder, kernel_pid = notebook.cells[0].outputs[0]["text"].splitlines()
    assert folder == str(tmp_path)
    with pytest.raises(ProcessLookupError):  # the kernel has exited; it does not linger
        os.kill(int(kernel_pid), 0)
    assert run_series.key_result(notebook) == "accuracy 0.5"
    assert seconds > 0 and "execution" not in notebook.cells[1].metadata
    assert "without encryption" not in capfd.readouterr().err  # IPC, not TCP
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nb.ipynb"]  # no socket files left


@dataclass
class Series:
    """What the faked runner saw: execute's calls (path, timeout) and every printed line
    as (stream, text, flushed)."""

    calls: list[tuple[Path, int]] = field(default_factory=list)
    printed: list[tuple[str, str, bool]] = field(default_factory=list)

    def out(self) -> list[str]:
        return [text for stream, text, _ in self.printed if stream == "stdout"]


@pytest.fixture
def series(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Series:
    """notebooks/ with three notebooks in the current folder, and execute faked: it gives the
    notebook back with an output added to its first cell, 12.4 s, or fails on 'broken'.
    print is recorded: each line to stdout must be flushed (shown live in a pipe or a log)."""
    (tmp_path / "notebooks").mkdir()
    for name in ("01_a", "02_b", "03_broken"):
        tagged = nbformat.v4.new_code_cell(f"print('{name} result')")
        tagged.metadata["tags"] = ["key-result"] if name != "02_b" else []
        write_notebook(tmp_path / "notebooks" / f"{name}.ipynb", tagged)
    monkeypatch.chdir(tmp_path)
    seen = Series()

    def execute(path: Path, timeout_s: int) -> tuple[nbformat.NotebookNode, float]:
        seen.calls.append((path, timeout_s))
        assert seen.printed[-1] == ("stdout", f"{path.name}: running ...", True)
        notebook = nbformat.read(path, as_version=4)
        notebook.cells[0].outputs = [stream(f"{path.stem} result\n")]
        if "broken" in path.name:
            error = run_series.CellExecutionError("trace", "ZeroDivisionError", "division")
            raise run_series.NotebookRunError(notebook, error)
        return notebook, 12.4

    def fake_print(text: str, file: object = None, flush: bool = False) -> None:
        stream = {None: "stdout", sys.stdout: "stdout", sys.stderr: "stderr"}[file]
        seen.printed.append((stream, text, flush))

    monkeypatch.setattr(run_series, "execute", execute)
    monkeypatch.setattr(run_series, "print", fake_print, raising=False)
    return seen


def test_run_series_writes_runs_aside_with_default_options(series: Series) -> None:
    committed = (Path("notebooks") / "02_b.ipynb").read_text()
    assert run_series.main(["02_b.ipynb", "notebooks/01_*"]) == 0
    assert series.calls == [
        (Path("notebooks/01_a.ipynb"), 1800),
        (Path("notebooks/02_b.ipynb"), 1800),
    ]
    assert series.printed == [
        ("stdout", "01_a.ipynb: running ...", True),
        ("stdout", "01_a.ipynb: 12 s wall time; 01_a result", True),
        ("stdout", "02_b.ipynb: running ...", True),
        ("stdout", "02_b.ipynb: 12 s wall time; (no cell tagged key-result)", True),
    ]
    written = nbformat.read(Path(".notebook_runs/02_b.ipynb"), as_version=4)
    assert written.cells[0].outputs[0]["text"] == "02_b result\n"
    assert (Path("notebooks") / "02_b.ipynb").read_text() == committed


def test_run_series_inplace_overwrites_the_notebooks_it_ran(series: Series) -> None:
    assert run_series.main(["--inplace", "--timeout", "7", "01_a.ipynb"]) == 0
    assert series.calls == [(Path("notebooks/01_a.ipynb"), 7)]
    written = nbformat.read(Path("notebooks") / "01_a.ipynb", as_version=4)
    assert written.cells[0].outputs[0]["text"] == "01_a result\n"
    assert not Path(".notebook_runs").exists()


def test_run_series_stops_at_the_first_failure(series: Series) -> None:
    (Path("notebooks") / "04_d.ipynb").write_text((Path("notebooks") / "01_a.ipynb").read_text())
    assert run_series.main(["--output-dir", "out/nested"]) == 1  # every notebook, in order
    assert [p.name for p, _ in series.calls] == ["01_a.ipynb", "02_b.ipynb", "03_broken.ipynb"]
    assert series.printed[-1] == (
        "stderr",
        "03_broken.ipynb: FAILED (ZeroDivisionError: division); executed up to the failure"
        " in out/nested/03_broken.ipynb",
        False,
    )
    assert not any("04_d" in line for line in series.out())
    failed = nbformat.read(Path("out/nested/03_broken.ipynb"), as_version=4)
    assert failed.cells[0].outputs[0]["text"] == "03_broken result\n"


def test_run_series_names_patterns_that_match_nothing(series: Series) -> None:
    assert run_series.main(["09_*", "nope.ipynb"]) == 2
    assert series.printed == [
        ("stderr", "No notebooks match ['09_*', 'nope.ipynb'] in notebooks/", False)
    ]
    assert series.calls == []


def test_run_series_help_describes_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run_series.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Execute the notebooks headless, in order" in text
    for option in (
        "--inplace overwrite the notebooks",
        "--output-dir OUTPUT_DIR where executed notebooks go; a failed one goes here even",
        "--timeout TIMEOUT seconds per cell",
        "patterns notebook file names or globs options:",
    ):
        assert option in text
