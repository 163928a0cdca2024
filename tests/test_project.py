"""Packaging, Colab set-up, notebook headers and the headless runner."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml
from packaging.requirements import Requirement

from helpers import colab, notebook_header, repository, run_series

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_environment_yml_installs_this_repository_and_nothing_else() -> None:
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    dependencies = environment["dependencies"]
    pip_lines = next(d["pip"] for d in dependencies if isinstance(d, dict))
    assert pip_lines == ["-c requirements/tested-versions.txt", "-e .[dev]"]
    conda_names = {d.split("=")[0] for d in dependencies if isinstance(d, str)}
    assert conda_names == {"python", "pip"}
    python_pin = next(d for d in dependencies if isinstance(d, str) and d.startswith("python"))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert python_pin.split("=")[1] in pyproject["project"]["requires-python"].replace(">=", "")


def test_tested_versions_cover_every_dependency() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pinned = {}
    for line in (ROOT / "requirements/tested-versions.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pinned[name.lower().replace("_", "-")] = version
    declared = (
        pyproject["project"]["dependencies"] + pyproject["project"]["optional-dependencies"]["dev"]
    )
    for text in declared:
        requirement = Requirement(text)
        name = requirement.name.lower().replace("_", "-")
        assert name in pinned, f"{name} has no tested version"
        assert requirement.specifier.contains(pinned[name]), f"{name}=={pinned[name]} vs {text}"


def test_colab_keeps_a_new_enough_jax() -> None:
    requirement = Requirement("jax>=0.10")
    packages, constraints = colab.install_plan("0.10.2", has_gpu=True, requirement=requirement)
    assert constraints == ["jax==0.10.2", "jaxlib==0.10.2"]
    assert not any(p.startswith(("jax>", "jax[", "jaxlib")) for p in packages)
    assert any(p.startswith("flax") for p in packages)


@pytest.mark.parametrize(
    ("has_gpu", "expected"), [(True, "jax[cuda12]>=0.10"), (False, "jax>=0.10")]
)
def test_colab_upgrades_old_jax_matching_the_runtime(has_gpu: bool, expected: str) -> None:
    packages, constraints = colab.install_plan("0.4.33", has_gpu, Requirement("jax>=0.10"))
    assert packages[0] == expected and constraints == []
    packages, _ = colab.install_plan(None, has_gpu, Requirement("jax>=0.10"))
    assert packages[0] == expected


def test_colab_reads_jax_requirement_from_package_metadata() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = next(d for d in pyproject["project"]["dependencies"] if d.startswith("jax"))
    assert colab.jax_requirement() == Requirement(declared)


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS, "notebooks/ is empty"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_colab_badge_and_install_cell(path: Path) -> None:
    assert notebook_header.problems(path) == []
    title = nbformat.read(path, as_version=4).cells[0].source
    assert f"/blob/{repository.BRANCH}/notebooks/{path.name})" in title


def test_header_check_catches_and_fixes_a_wrong_badge(tmp_path: Path) -> None:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_markdown_cell("# Title\n\nText"),
        nbformat.v4.new_code_cell("1"),
    ]
    path = tmp_path / "07_new.ipynb"
    nbformat.write(notebook, path)
    assert len(notebook_header.problems(path)) == 2
    notebook_header.fix(path)
    assert notebook_header.problems(path) == []
    fixed = nbformat.read(path, as_version=4)
    assert (
        fixed.cells[2].source == "1"
        and repository.colab_url("07_new.ipynb") in fixed.cells[0].source
    )
    fixed.cells[0].source = fixed.cells[0].source.replace("07_new", "05_other")
    nbformat.write(fixed, path)
    assert notebook_header.problems(path) == [
        "07_new.ipynb: title cell needs one Colab badge opening 07_new.ipynb"
    ]


def test_header_fix_fills_an_empty_placeholder_cell(tmp_path: Path) -> None:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_markdown_cell("# Title"), nbformat.v4.new_code_cell("")]
    notebook.cells[1].metadata["tags"] = ["nbval-skip"]
    notebook.cells.append(nbformat.v4.new_code_cell("2"))
    path = tmp_path / "08_new.ipynb"
    nbformat.write(notebook, path)
    notebook_header.fix(path)
    fixed = nbformat.read(path, as_version=4)
    assert len(fixed.cells) == 3 and fixed.cells[2].source == "2"
    assert notebook_header.problems(path) == []
    fixed.cells[2].metadata["tags"] = ["nbval-skip"]
    nbformat.write(fixed, path)
    assert notebook_header.problems(path) == [
        "08_new.ipynb: cell 3 is tagged nbval-skip; only the Colab cell may be"
    ]


def test_run_series_executes_and_reports_key_result(tmp_path: Path) -> None:
    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print('accuracy 0.5')")
    cell.metadata["tags"] = ["key-result"]
    notebook.cells = [nbformat.v4.new_code_cell("x = 1"), cell]
    path = tmp_path / "demo.ipynb"
    nbformat.write(notebook, path)
    executed, seconds = run_series.execute(path, timeout_s=120)
    assert run_series.key_result(executed) == "accuracy 0.5"
    assert seconds > 0 and "execution" not in executed.cells[1].metadata


def test_tutorial_sh_rejects_unknown_jax_variant() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "tutorial.sh"), "setup"],
        env={**os.environ, "TUTORIAL_JAX": "rocm"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "TUTORIAL_JAX must be cpu, cuda12 or cuda13, not 'rocm'" in result.stderr


def test_tutorial_sh_help_lists_the_commands() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "tutorial.sh"), "help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    for command in ("lab", "headless", "test", "TUTORIAL_JAX=cuda12"):
        assert command in result.stdout
