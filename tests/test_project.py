"""Packaging, Colab set-up, notebook headers and the headless runner."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from helpers import notebook_header, repository

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
    supported = SpecifierSet(pyproject["project"]["requires-python"])
    assert supported.contains(python_pin.split("=")[1] + ".0"), (python_pin, supported)


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


# tutorial.sh against a stand-in .venv (TUTORIAL_VENV) whose python and jupyter only log
# their arguments, so that these tests install nothing.
BASH = shutil.which("bash") or "/bin/bash"  # found here even when a test narrows PATH
STAMPED_FILES = ("pyproject.toml", "requirements/tested-versions.txt")
CLEAN_ENV = {
    name: value
    for name, value in os.environ.items()
    if name
    not in {
        "TUTORIAL_JAX",
        "TUTORIAL_VENV",
        "GLIBC_TUNABLES",
        "XLA_FLAGS",
        "PYTHON",
        "CIFAR10_PATH",
        "PYENV_ROOT",
        # set by `./tutorial.sh test-latest` and for notebook 06, not by a reader
        "NNX_GRAPH_MODE",
        "NNX_GRAPH_UPDATES",
        "IPYTHONDIR",
        "TUTORIAL_SMOKE",
    }
}


def fake_venv(
    tmp_path: Path, variant: str | None, python_ok: bool = True, xla_option_ok: bool = True
) -> Path:
    """A .venv stand-in; ``variant`` None leaves it without the installed-stamp.

    Its python answers the version check with ``python_ok``, and tutorial.sh's question
    whether JAX accepts XLA_FLAGS with ``xla_option_ok``, noting each question's XLA_FLAGS
    in the file ``probes`` (other calls go to ``log``).
    """
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "log"
    for tool in ("python", "jupyter", "ruff"):
        stub = venv / "bin" / tool
        stub.write_text(
            "#!/usr/bin/env bash\n"
            'if [[ "$1" == -c && "$2" == *"import jax"* ]]; then\n'
            f'  echo "$XLA_FLAGS" >>"{tmp_path / "probes"}"; exit {0 if xla_option_ok else 1}\n'
            "fi\n"
            f'if [[ "$1" == -c ]]; then exit {0 if python_ok else 1}; fi\n'
            'if [[ "$1" == -V ]]; then echo "Python 3.14.0"; exit; fi\n'
            f'echo "{tool} $* | GLIBC_TUNABLES=${{GLIBC_TUNABLES:-unset}}'
            f" CIFAR10_PATH=${{CIFAR10_PATH:-unset}} NNX_GRAPH_MODE=${{NNX_GRAPH_MODE:-unset}}"
            f' TUTORIAL_SMOKE=${{TUTORIAL_SMOKE:-unset}} XLA_FLAGS=${{XLA_FLAGS:-unset}}"'
            f' >>"{log}"\n'
        )
        stub.chmod(0o755)
    if variant is not None:
        digest = hashlib.sha256(b"".join((ROOT / f).read_bytes() for f in STAMPED_FILES))
        (venv / ".tutorial-installed").write_text(f"{digest.hexdigest()[:16]}-{variant}\n")
    return venv


def run_tutorial_sh(
    *args: str, cwd: Path = ROOT, script: Path | str = ROOT / "tutorial.sh", **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BASH, str(script), *args],
        cwd=cwd,
        env={**CLEAN_ENV, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def logged(tmp_path: Path) -> list[str]:
    log = tmp_path / "log"
    return log.read_text().splitlines() if log.exists() else []


def test_tutorial_sh_rejects_unknown_jax_variant() -> None:
    result = run_tutorial_sh("setup", TUTORIAL_JAX="rocm")
    assert result.returncode == 1
    assert "TUTORIAL_JAX must be cpu, cuda12 or cuda13, not 'rocm'" in result.stderr


def test_tutorial_sh_help_lists_the_commands_from_any_folder(tmp_path: Path) -> None:
    relative = os.path.relpath(ROOT / "tutorial.sh", tmp_path)
    result = run_tutorial_sh("help", cwd=tmp_path, script=relative)
    assert result.returncode == 0, result.stderr
    for command in ("lab", "headless", "test", "TUTORIAL_JAX=cuda12"):
        assert command in result.stdout


def test_tutorial_sh_names_an_unknown_command() -> None:
    result = run_tutorial_sh("bogus")
    assert result.returncode == 1
    assert result.stderr.startswith("tutorial.sh: unknown command 'bogus'\n")
    assert "./tutorial.sh headless" in result.stderr and result.stdout == ""


@pytest.mark.parametrize(("variant", "tunables"), [("cuda12", False), ("cpu", True)])
def test_tutorial_sh_keeps_the_installed_jax_variant(
    tmp_path: Path, variant: str, tunables: bool
) -> None:
    venv = fake_venv(tmp_path, variant)
    result = run_tutorial_sh("headless", "--inplace", "05_x.ipynb", TUTORIAL_VENV=str(venv))
    assert result.returncode == 0, result.stderr
    [line] = logged(tmp_path)  # no pip: the stamp matched
    assert line.startswith("python -m helpers.run_series --inplace 05_x.ipynb | ")
    assert ("GLIBC_TUNABLES=glibc.malloc.arena_max=1" in line) == tunables


def test_tutorial_sh_turns_off_ynnpack_for_the_cpu_build_once_jax_accepts_it(
    tmp_path: Path,
) -> None:
    venv = fake_venv(tmp_path, "cpu")
    for _ in range(2):
        result = run_tutorial_sh("headless", TUTORIAL_VENV=str(venv), XLA_FLAGS="--xla_dump_to=d")
        assert result.returncode == 0, result.stderr
    # JAX was asked once, with the option alone; both runs got it after the reader's flags
    assert (tmp_path / "probes").read_text().splitlines() == [XLA_OPTION]
    assert [line.rpartition(" XLA_FLAGS=")[2] for line in logged(tmp_path)] == [
        f"--xla_dump_to=d {XLA_OPTION}"
    ] * 2


def test_tutorial_sh_asks_jax_again_after_an_install(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path, "cpu")
    assert run_tutorial_sh("headless", TUTORIAL_VENV=str(venv)).returncode == 0
    (venv / ".tutorial-installed").write_text("old-packages-cpu\n")  # the pins changed
    assert run_tutorial_sh("headless", TUTORIAL_VENV=str(venv)).returncode == 0
    assert len((tmp_path / "probes").read_text().splitlines()) == 2


def test_tutorial_sh_leaves_xla_flags_alone_where_jax_rejects_the_option(
    tmp_path: Path,
) -> None:
    venv = fake_venv(tmp_path, "cpu", xla_option_ok=False)
    for _ in range(2):
        assert run_tutorial_sh("headless", TUTORIAL_VENV=str(venv)).returncode == 0
    assert len((tmp_path / "probes").read_text().splitlines()) == 1  # the answer is kept
    assert all(line.endswith(" XLA_FLAGS=unset") for line in logged(tmp_path))


@pytest.mark.parametrize(
    ("variant", "flags", "expected"),
    [
        ("cuda12", None, "unset"),  # the option is for XLA:CPU; a GPU build is left as it is
        ("cpu", "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT", None),
    ],
)
def test_tutorial_sh_does_not_set_the_xla_option(
    tmp_path: Path, variant: str, flags: str | None, expected: str | None
) -> None:
    venv = fake_venv(tmp_path, variant)
    env = {"XLA_FLAGS": flags} if flags else {}
    assert run_tutorial_sh("headless", TUTORIAL_VENV=str(venv), **env).returncode == 0
    assert not (tmp_path / "probes").exists()
    [line] = logged(tmp_path)
    assert line.endswith(f" XLA_FLAGS={expected or flags}")


def test_tutorial_sh_removes_the_cuda_plugin_when_switching_to_cpu(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path, "cuda12")
    result = run_tutorial_sh("setup", TUTORIAL_VENV=str(venv), TUTORIAL_JAX="cpu")
    assert result.returncode == 0, result.stderr
    calls = [line.partition(" |")[0] for line in logged(tmp_path)]
    assert calls == [
        "python -m pip uninstall -q -y jax-cuda12-plugin jax-cuda12-pjrt",
        "python -m pip install -q --upgrade pip",
        "python -m pip install -q -c requirements/tested-versions.txt jax -e .[dev]",
    ]
    assert (venv / ".tutorial-installed").read_text().strip().endswith("-cpu")


#: the notebooks the tests run in full mode: all but 06, which runs at its small sizes
FULL_NOTEBOOKS = " ".join(
    f"notebooks/{p.name}"
    for p in sorted((ROOT / "notebooks").glob("*.ipynb"))
    if p.name != "06_fast_cifar10.ipynb"
)
TUNED_GLIBC = (
    "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647"
)
XLA_OPTION = "--xla_cpu_experimental_ynn_fusion_type="


def test_tutorial_sh_test_latest_upgrades_everything_and_flips_flax_defaults(
    tmp_path: Path,
) -> None:
    venv = fake_venv(tmp_path, "cpu")  # a stamp that matches the pins: latest ignores it
    result = run_tutorial_sh("test-latest", TUTORIAL_VENV=str(venv))
    assert result.returncode == 0, result.stderr
    lines = logged(tmp_path)
    calls = [line.partition(" |")[0] for line in lines]
    assert calls == [
        "python -m pip install -q --upgrade pip",
        "python -m pip install -q --upgrade --upgrade-strategy eager jax -e .[dev]",
        "ruff check .",
        "ruff format --check .",
        "python -m helpers.notebook_header",
        "python -m pytest --nbval --nbval-current-env -p no:cacheprovider"
        " -W error::DeprecationWarning -W error::FutureWarning tests " + FULL_NOTEBOOKS,
        "python -m pytest --nbval --nbval-current-env -p no:cacheprovider"
        " -W error::DeprecationWarning -W error::FutureWarning notebooks/06_fast_cifar10.ipynb",
    ]
    assert lines[-2].endswith(f"NNX_GRAPH_MODE=false TUTORIAL_SMOKE=unset XLA_FLAGS={XLA_OPTION}")
    assert lines[-1].endswith(f"NNX_GRAPH_MODE=false TUTORIAL_SMOKE=1 XLA_FLAGS={XLA_OPTION}")
    # The pinned test runs neither the flipped defaults nor the strict warnings.
    (tmp_path / "log").unlink()
    assert run_tutorial_sh("test", TUTORIAL_VENV=str(venv)).returncode == 0
    *_, every, small = logged(tmp_path)
    assert "-W error" not in every + small
    assert every.endswith(
        FULL_NOTEBOOKS
        + " | GLIBC_TUNABLES="
        + TUNED_GLIBC
        + " CIFAR10_PATH=unset NNX_GRAPH_MODE=unset TUTORIAL_SMOKE=unset XLA_FLAGS="
        + XLA_OPTION
    )
    assert small.endswith(
        "06_fast_cifar10.ipynb | GLIBC_TUNABLES="
        + TUNED_GLIBC
        + " CIFAR10_PATH=unset NNX_GRAPH_MODE=unset TUTORIAL_SMOKE=1 XLA_FLAGS="
        + XLA_OPTION
    )


def test_tutorial_sh_test_stops_when_the_first_run_fails(tmp_path: Path) -> None:
    """The notebooks run in full are tested first; a failure there is the script's result."""
    venv = fake_venv(tmp_path, "cpu")
    python = venv / "bin" / "python"
    python.write_text(python.read_text() + 'if [[ "$*" == *" tests "* ]]; then exit 3; fi\n')
    result = run_tutorial_sh("test", TUTORIAL_VENV=str(venv))
    assert result.returncode == 3
    assert "06_fast_cifar10.ipynb" not in logged(tmp_path)[-1]


def test_tutorial_sh_lab_passes_arguments_on(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path, "cpu")
    for args, expected in (([], "lab notebooks/"), (["--port", "1"], "lab --port 1 notebooks/")):
        (tmp_path / "log").unlink(missing_ok=True)
        result = run_tutorial_sh("lab", *args, TUTORIAL_VENV=str(venv))
        assert result.returncode == 0, result.stderr
        [line] = logged(tmp_path)
        as_root = "--allow-root " if os.geteuid() == 0 else ""
        assert line.partition(" |")[0] == "jupyter " + expected.replace("lab ", "lab " + as_root)


def test_tutorial_sh_makes_relative_data_paths_absolute(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path, "cpu")
    result = run_tutorial_sh(
        "headless", cwd=tmp_path, TUTORIAL_VENV=str(venv), CIFAR10_PATH="data/cifar.tar.gz"
    )
    assert result.returncode == 0, result.stderr
    assert f"CIFAR10_PATH={tmp_path}/data/cifar.tar.gz" in logged(tmp_path)[0]


def test_tutorial_sh_refuses_a_venv_with_an_unsupported_python(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path, None, python_ok=False)
    result = run_tutorial_sh("setup", TUTORIAL_VENV=str(venv))
    assert result.returncode == 1
    assert "has Python 3.14.0, but the series needs 3.12 or 3.13" in result.stderr
    assert logged(tmp_path) == []


def tools_folder(tmp_path: Path, names: tuple[str, ...]) -> Path:
    """A folder to use as PATH that holds only the named programs."""
    folder = tmp_path / "tools"
    folder.mkdir()
    for name in names:
        found = shutil.which(name)
        if found is None:
            pytest.skip(f"{name} is not installed")
        (folder / name).symlink_to(found)
    return folder


def test_tutorial_sh_says_when_no_python_fits(tmp_path: Path) -> None:
    tools = tools_folder(tmp_path, ("cat", "cut", "dirname", "head", "sed", "sha256sum"))
    result = run_tutorial_sh(
        "setup", TUTORIAL_VENV=str(tmp_path / "new"), PATH=str(tools), HOME=str(tmp_path)
    )
    assert result.returncode == 1
    assert result.stderr.startswith("tutorial.sh: needs Python 3.12 or 3.13 (found: none;")
    assert "Install Python 3.13" in result.stderr
    assert "command not found" not in result.stderr


def fake_python(folder: Path, name: str, version: str) -> None:
    """A stand-in interpreter: `-V` prints ``version``, the version check passes for 3.12
    and 3.13, and any other call is logged to ``folder/calls``."""
    major, minor = (int(part) for part in version.split(".")[:2])
    supported = (3, 12) <= (major, minor) <= (3, 13)
    stub = folder / name
    stub.write_text(
        "#!/usr/bin/env bash\n"
        f'if [[ "$1" == -V ]]; then echo "Python {version}"; exit; fi\n'
        f'if [[ "$1" == -c ]]; then exit {0 if supported else 1}; fi\n'
        'echo "$0 $*" >>"$(dirname "$0")/calls"\n'
    )
    stub.chmod(0o755)


def test_tutorial_sh_names_the_pythons_it_found_too_old(tmp_path: Path) -> None:
    tools = tools_folder(tmp_path, ("bash", "cat", "cut", "dirname", "head", "sed", "sha256sum"))
    fake_python(tools, "python3", "3.11.7")
    result = run_tutorial_sh(
        "setup", TUTORIAL_VENV=str(tmp_path / "new"), PATH=str(tools), HOME=str(tmp_path)
    )
    assert result.returncode == 1
    assert "(found: python3 is 3.11.7; jax 0.12 needs 3.12 or newer" in result.stderr
    assert "PYTHON=/path/to/python3.13" in result.stderr
    assert not (tmp_path / "new").exists()


def test_tutorial_sh_finds_a_pyenv_python_behind_an_unselected_shim(tmp_path: Path) -> None:
    """python3 is 3.11 and the python3.13 shim fails, as on a machine with pyenv."""
    tools = tools_folder(tmp_path, ("bash", "cat", "cut", "dirname", "head", "sed", "sha256sum"))
    fake_python(tools, "python3", "3.11.7")
    shim = tools / "python3.13"
    shim.write_text(
        "#!/usr/bin/env bash\necho 'pyenv: python3.13: command not found' >&2\nexit 127\n"
    )
    shim.chmod(0o755)
    pyenv_bin = tmp_path / "pyenv" / "versions" / "3.13.0" / "bin"
    pyenv_bin.mkdir(parents=True)
    fake_python(pyenv_bin, "python3", "3.13.0")
    result = run_tutorial_sh(
        "setup",
        TUTORIAL_VENV=str(tmp_path / "new"),
        PATH=str(tools),
        PYENV_ROOT=str(tmp_path / "pyenv"),
    )
    assert f"Creating {tmp_path / 'new'} with {pyenv_bin / 'python3'} ..." in result.stdout
    assert (pyenv_bin / "calls").read_text().startswith(f"{pyenv_bin / 'python3'} -m venv ")


def test_tutorial_sh_uses_shasum_without_sha256sum(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path, "cpu")
    tools = tools_folder(tmp_path, ("bash", "cat", "cut", "dirname", "sed", "shasum"))
    result = run_tutorial_sh("headless", TUTORIAL_VENV=str(venv), PATH=str(tools))
    assert result.returncode == 0, result.stderr
    assert [line.partition(" |")[0] for line in logged(tmp_path)] == [
        "python -m helpers.run_series"  # the digest matched the stamp: nothing to install
    ]
