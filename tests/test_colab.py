"""helpers.colab: the install plan for each kind of Colab runtime, and setup_colab end to end.

The runtimes are fakes: a folder standing for / (with /proc/driver/nvidia/version and PCI
devices under /sys as Colab's machines have them) and faked installed versions.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from helpers import colab

ROOT = Path(__file__).resolve().parents[1]
DECLARED = [Requirement(t) for t in ("jax>=0.12", "flax>=0.12.12", "optax>=0.2.8", "ipykernel")]
OTHERS = ["flax>=0.12.12", "optax>=0.2.8"]  # what is installed besides jax, in declared order
# /proc/driver/nvidia/version as the proprietary and the open kernel modules write it
PROPRIETARY = (
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  575.57.08  Sat May 24 07:21:18 UTC 2025\n"
    "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
)
OPEN = (
    "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  "
    "(dvs-builder@U16-I3-B13-4-3)  Sun Jul 27 07:09:47 UTC 2025\n"
    "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
)


def gpu(driver: str, **installed: str) -> colab.Runtime:
    return colab.Runtime("gpu", Version(driver), installed)


def test_tpu_runtime_with_old_jax_gets_tpu_jax_not_a_cpu_only_one() -> None:
    runtime = colab.Runtime("tpu", None, {"jax": "0.4.33", "jaxlib": "0.4.33", "libtpu": "0.0.2"})
    plan = colab.install_plan(runtime, DECLARED)
    assert plan == colab.Plan(["jax[tpu]>=0.12", *OTHERS], [])
    assert plan.installs_jax


def test_tpu_runtime_keeps_a_new_enough_tpu_jax_with_its_libtpu() -> None:
    installed = {"jax": "0.12.1", "jaxlib": "0.12.0", "libtpu": "0.0.50", "flax": "0.12.12"}
    plan = colab.install_plan(colab.Runtime("tpu", None, installed), DECLARED)
    assert plan == colab.Plan(OTHERS, ["jax==0.12.1", "jaxlib==0.12.0", "libtpu==0.0.50"])
    assert not plan.installs_jax


def test_tpu_runtime_with_a_new_but_cpu_only_jax_gets_the_tpu_one() -> None:
    runtime = colab.Runtime("tpu", None, {"jax": "0.12.0", "jaxlib": "0.12.0"})
    assert colab.install_plan(runtime, DECLARED).packages[0] == "jax[tpu]>=0.12"


@pytest.mark.parametrize(
    ("driver", "wheel"),
    [
        ("525.60.13", "jax[cuda12]"),  # the oldest CUDA 12 driver
        ("575.57.08", "jax[cuda12]"),
        ("579.99", "jax[cuda12]"),
        ("580", "jax[cuda13]"),  # CUDA 13 needs 580 or newer
        ("580.65.06", "jax[cuda13]"),
        ("1001.2", "jax[cuda13]"),  # compared as versions, not as text
    ],
)
def test_gpu_runtime_picks_the_cuda_wheel_from_the_driver(driver: str, wheel: str) -> None:
    plan = colab.install_plan(gpu(driver, jax="0.5.2", jaxlib="0.5.1"), DECLARED)
    assert plan == colab.Plan([f"{wheel}>=0.12", *OTHERS], [])
    assert colab.install_plan(gpu(driver), DECLARED).packages[0] == f"{wheel}>=0.12"  # no jax


def test_gpu_runtime_keeps_a_new_enough_cuda_jax_and_its_own_jaxlib() -> None:
    runtime = gpu("575.57.08", jax="0.12.2", jaxlib="0.12.1", **{"jax-cuda12-plugin": "0.12.1"})
    plan = colab.install_plan(runtime, DECLARED)
    assert plan == colab.Plan(
        OTHERS, ["jax==0.12.2", "jaxlib==0.12.1", "jax-cuda12-plugin==0.12.1"]
    )


def test_gpu_runtime_with_a_cpu_only_jax_gets_the_cuda_plugin() -> None:
    plan = colab.install_plan(gpu("580.65.06", jax="0.12.0", jaxlib="0.12.0"), DECLARED)
    assert plan.packages[0] == "jax[cuda13]>=0.12" and plan.constraints == []


def test_gpu_driver_too_old_for_any_cuda_wheel_is_an_error() -> None:
    with pytest.raises(ValueError) as raised:
        colab.install_plan(gpu("470.82"), DECLARED)
    assert str(raised.value) == (
        "NVIDIA driver 470.82 is older than 525.60.13, the oldest JAX's CUDA wheels run on; "
        "choose a newer GPU runtime, or a CPU runtime"
    )


def test_cpu_runtime_keeps_new_jax_and_gets_plain_jax_otherwise() -> None:
    kept = colab.install_plan(colab.Runtime("cpu", None, {"jax": "0.12.0"}), DECLARED)
    assert kept == colab.Plan(OTHERS, ["jax==0.12.0"])  # no jaxlib installed: none pinned
    old = colab.Runtime("cpu", None, {"jax": "0.11.9", "jaxlib": "0.11.9"})
    assert colab.install_plan(old, DECLARED) == colab.Plan(["jax>=0.12", *OTHERS], [])
    assert colab.install_plan(colab.Runtime("cpu"), DECLARED).packages[0] == "jax>=0.12"


def test_a_prerelease_jax_inside_the_bound_is_kept() -> None:
    plan = colab.install_plan(colab.Runtime("cpu", None, {"jax": "0.13.0rc1"}), DECLARED)
    assert plan.constraints == ["jax==0.13.0rc1"]


def test_old_preinstalled_flax_and_optax_are_upgraded_and_named() -> None:
    runtime = gpu("575.57.08", jax="0.12.0", jaxlib="0.12.0", flax="0.10.4", optax="0.2.8")
    runtime.installed["jax-cuda12-plugin"] = "0.12.0"  # type: ignore[index]
    plan = colab.install_plan(runtime, DECLARED)
    assert plan.packages == OTHERS  # pip installs flax>=0.12.12 over flax 0.10.4
    assert colab.outdated(runtime, DECLARED) == ["flax"]  # optax 0.2.8 is new enough
    assert colab.outdated(colab.Runtime("cpu"), DECLARED) == ["flax", "optax"]


def test_jupyter_tooling_and_jaxlib_are_never_installed() -> None:
    declared = [*DECLARED, Requirement("jaxlib>=0.12"), Requirement("jupyterlab>=4.2")]
    for plan in (
        colab.install_plan(colab.Runtime("cpu"), declared),
        colab.install_plan(colab.Runtime("cpu", None, {"jax": "0.12.0"}), declared),
    ):
        names = {Requirement(p).name for p in plan.packages}
        assert names.isdisjoint({"jaxlib", *colab.JUPYTER_TOOLING})
    assert colab.outdated(colab.Runtime("cpu"), declared) == ["flax", "optax"]


def test_the_real_requirements_leave_jupyter_out_and_read_pyproject() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = {Requirement(t).name for t in pyproject["project"]["dependencies"]}
    assert {req.name for req in colab.requirements()} == declared
    assert set(colab.JUPYTER_TOOLING) <= declared
    plan = colab.install_plan(colab.Runtime("cpu"), colab.requirements())
    assert {Requirement(p).name for p in plan.packages} == declared - set(colab.JUPYTER_TOOLING)


@pytest.mark.parametrize(
    ("accelerator", "driver", "message"),
    [
        ("cuda", None, "accelerator must be one of ['cpu', 'gpu', 'tpu'], not 'cuda'"),
        ("gpu", None, "an NVIDIA driver version goes with a GPU runtime and only with one "),
        ("cpu", Version("580"), "an NVIDIA driver version goes with a GPU runtime"),
    ],
)
def test_runtime_rejects_impossible_facts(
    accelerator: str, driver: Version | None, message: str
) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("[", r"\[").replace("]", r"\]")):
        colab.Runtime(accelerator, driver)  # type: ignore[arg-type]


def test_declared_requirements_without_jax_are_an_error() -> None:
    with pytest.raises(ValueError, match=r"^the declared requirements name no jax requirement$"):
        colab.install_plan(colab.Runtime("cpu"), DECLARED[1:])


# --- reading the runtime from a fake / ---


def fake_root(tmp_path: Path, driver_file: str | None = None, pci: dict[str, str] = {}) -> Path:  # noqa: B006
    for address, ids in pci.items():
        folder = tmp_path / "sys/bus/pci/devices" / address
        folder.mkdir(parents=True)
        vendor, device = ids.split(":")
        (folder / "vendor").write_text(f"{vendor}\n")
        (folder / "device").write_text(f"{device}\n")
    if driver_file is not None:
        (tmp_path / "proc/driver/nvidia").mkdir(parents=True)
        (tmp_path / "proc/driver/nvidia/version").write_text(driver_file)
    return tmp_path


def test_nvidia_driver_read_from_both_kernel_modules(tmp_path: Path) -> None:
    assert colab.nvidia_driver(fake_root(tmp_path / "a", PROPRIETARY)) == Version("575.57.08")
    assert colab.nvidia_driver(fake_root(tmp_path / "b", OPEN)) == Version("580.65.06")
    assert colab.nvidia_driver(fake_root(tmp_path / "c")) is None


def test_an_unreadable_driver_file_is_an_error_naming_it(tmp_path: Path) -> None:
    root = fake_root(tmp_path, "NVRM version: something else\n")
    with pytest.raises(ValueError, match=r"^no driver version in .*proc/driver/nvidia/version: "):
        colab.nvidia_driver(root)


def test_tpu_found_among_pci_devices(tmp_path: Path) -> None:
    gvnic = {"0000:00:04.0": "0x1ae0:0x0042"}  # Google's network card: not a TPU
    nvidia = {"0000:00:05.0": "0x10de:0x2330"}
    v5e = {"0000:00:06.0": "0x1ae0:0x0063"}
    assert colab.has_tpu(fake_root(tmp_path / "a", pci={**gvnic, **v5e}))
    assert not colab.has_tpu(fake_root(tmp_path / "b", pci={**gvnic, **nvidia}))
    assert not colab.has_tpu(fake_root(tmp_path / "c", pci={"0000:00:06.0": "0x10de:0x0063"}))
    assert not colab.has_tpu(tmp_path / "empty")


def test_detect_runtime_of_each_kind(tmp_path: Path) -> None:
    tpu = colab.detect_runtime(fake_root(tmp_path / "tpu", pci={"0000:00:04.0": "0x1ae0:0x006f"}))
    assert (tpu.accelerator, tpu.nvidia_driver) == ("tpu", None)
    gpu_runtime = colab.detect_runtime(fake_root(tmp_path / "gpu", OPEN))
    assert (gpu_runtime.accelerator, gpu_runtime.nvidia_driver) == ("gpu", Version("580.65.06"))
    cpu = colab.detect_runtime(fake_root(tmp_path / "cpu"))
    assert (cpu.accelerator, cpu.nvidia_driver) == ("cpu", None)
    from importlib import metadata  # this venv's own versions, as the runtime's installed ones

    assert cpu.installed["jax"] == metadata.version("jax")
    assert cpu.installed["flax"] == metadata.version("flax")
    assert "libtpu" not in cpu.installed  # not installed here


# --- setup_colab end to end, with pip faked ---


def read_tested_pins() -> dict[str, str]:
    lines = (ROOT / "requirements/tested-versions.txt").read_text().splitlines()
    pins = [line.split("==") for line in lines if "==" in line and not line.startswith("#")]
    return {name.lower(): version for name, version in pins}


class FakePip:
    """Records pip's command line and the constraints file's text at the time of the call."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []
        self.constraints: list[str] = []

    def __call__(self, command: list[str], check: bool) -> subprocess.CompletedProcess[str]:
        assert check is True
        self.commands.append(command)
        self.constraints.append(Path(command[command.index("-c") + 1]).read_text())
        return subprocess.CompletedProcess(command, 0)


@pytest.fixture
def pip(monkeypatch: pytest.MonkeyPatch) -> FakePip:
    fake = FakePip()
    monkeypatch.setattr(subprocess, "run", fake)
    return fake


def fake_installed(monkeypatch: pytest.MonkeyPatch, versions: dict[str, str]) -> None:
    monkeypatch.setattr(colab, "installed_version", lambda name: versions.get(name))


def run_setup(
    pip: FakePip, root: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[list[str], str, str]:
    colab.setup_colab(root)
    [command] = pip.commands
    constraints_file = Path(command[command.index("-c") + 1])
    assert not constraints_file.exists()  # removed after pip ran
    return command, pip.constraints[0], capsys.readouterr().out


def test_setup_colab_keeps_a_tested_gpu_jax(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    pip: FakePip,
) -> None:
    pins = read_tested_pins()  # Colab has exactly the tested jax, its jaxlib and a CUDA 12 plugin
    have = {r.name: pins[r.name.lower()] for r in colab.requirements()}
    have["jaxlib"] = pins["jaxlib"]
    have["jax-cuda12-plugin"] = pins["jax"]
    fake_installed(monkeypatch, have)
    monkeypatch.setitem(sys.modules, "jax", object())  # imported before: no matter
    command, constraints, out = run_setup(pip, fake_root(tmp_path, PROPRIETARY), capsys)
    others = [str(r) for r in colab.requirements() if r.name not in ("jax", *colab.JUPYTER_TOOLING)]
    assert command[:6] == [sys.executable, "-m", "pip", "install", "-q", "-c"]
    assert command[7:] == others and "flax>=0.12.12" in others
    jax_version = pins["jax"]
    assert constraints == (
        f"jax=={jax_version}\njaxlib=={pins['jaxlib']}\njax-cuda12-plugin=={jax_version}\n"
    )
    assert out.splitlines() == [f"Kept Colab's jax {jax_version}."]  # nothing else to install


def test_setup_colab_replaces_an_old_jax_on_a_cuda13_gpu_and_asks_for_a_restart(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    pip: FakePip,
) -> None:
    fake_installed(monkeypatch, {"jax": "0.5.2", "jaxlib": "0.5.1", "flax": "0.10.4"})
    monkeypatch.setitem(sys.modules, "jax", object())
    command, constraints, out = run_setup(pip, fake_root(tmp_path, OPEN), capsys)
    assert command[7] == "jax[cuda13]>=0.12" and constraints == ""
    lines = out.splitlines()
    assert lines[0] == "Installed jax[cuda13]>=0.12 for this gpu runtime (was 0.5.2)."
    assert lines[1].startswith("Installed or upgraded: flax, optax, ")
    assert (
        lines[2] == "Some were imported already: restart the runtime (Runtime > Restart session)."
    )


def test_setup_colab_on_a_fresh_tpu_needs_no_restart(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    pip: FakePip,
) -> None:
    fake_installed(monkeypatch, {})
    for requirement in colab.requirements():  # none imported, whatever ran before
        for module in colab.module_names(requirement.name):
            monkeypatch.delitem(sys.modules, module, raising=False)
    root = fake_root(tmp_path, pci={"0000:00:04.0": "0x1ae0:0x005e"})
    command, constraints, out = run_setup(pip, root, capsys)
    assert command[7] == "jax[tpu]>=0.12" and constraints == ""
    assert (
        out.splitlines()[0] == "Installed jax[tpu]>=0.12 for this tpu runtime (was not installed)."
    )
    assert "restart" not in out


def test_setup_colab_asks_for_a_restart_when_an_upgraded_flax_was_imported(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    pip: FakePip,
) -> None:
    have = {
        name: version
        for name in (r.name for r in colab.requirements())
        if (version := __import__("importlib.metadata").metadata.version(name))
    }
    have |= {"jaxlib": "0.12.0", "flax": "0.10.4"}
    fake_installed(monkeypatch, have)
    monkeypatch.delitem(sys.modules, "jax", raising=False)
    monkeypatch.setitem(sys.modules, "flax", object())
    command, constraints, out = run_setup(pip, fake_root(tmp_path), capsys)
    assert command[7:] == [
        str(r) for r in colab.requirements() if r.name not in ("jax", *colab.JUPYTER_TOOLING)
    ]
    assert constraints == f"jax=={have['jax']}\njaxlib=={have['jaxlib']}\n"
    assert out.splitlines() == [
        f"Kept Colab's jax {have['jax']}.",
        "Installed or upgraded: flax.",
        "Some were imported already: restart the runtime (Runtime > Restart session).",
    ]


def test_setup_colab_removes_the_constraints_file_when_pip_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Path] = []

    def failing(command: list[str], check: bool) -> None:
        seen.append(Path(command[command.index("-c") + 1]))
        raise subprocess.CalledProcessError(1, command)

    fake_installed(monkeypatch, {})
    monkeypatch.setattr(subprocess, "run", failing)
    with pytest.raises(subprocess.CalledProcessError):
        colab.setup_colab(fake_root(tmp_path))
    assert seen and not seen[0].exists()


def test_a_prerelease_of_another_package_inside_its_bound_is_not_upgraded() -> None:
    """Also with packaging older than 25 (Colab's), whose contains() turns prereleases
    away unless asked: prereleases=True is passed explicitly."""
    runtime = colab.Runtime("cpu", None, {"jax": "0.12.0", "flax": "0.13.0rc1", "optax": "0.2.8"})
    assert colab.outdated(runtime, DECLARED) == []


def test_an_unreadable_driver_file_is_quoted_up_to_200_characters(tmp_path: Path) -> None:
    text = "x" * 150 + "y" * 100  # no driver version in it
    with pytest.raises(ValueError) as raised:
        colab.nvidia_driver(fake_root(tmp_path, text))
    path = tmp_path / "proc/driver/nvidia/version"
    assert str(raised.value) == f"no driver version in {path}: '{'x' * 150}{'y' * 50}'"


def test_detect_runtime_of_a_tpu_lists_what_is_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_installed(monkeypatch, {"jax": "0.12.0", "libtpu": "0.0.50", "flax": "0.12.12"})
    tpu = colab.detect_runtime(fake_root(tmp_path, pci={"0000:00:04.0": "0x1ae0:0x0062"}))
    assert tpu == colab.Runtime(
        "tpu", None, {"jax": "0.12.0", "libtpu": "0.0.50", "flax": "0.12.12"}
    )


def test_setup_colab_asks_for_a_restart_when_a_replaced_jax_was_imported(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    pip: FakePip,
) -> None:
    """Everything else new enough: the restart is for jax alone."""
    have = {r.name: "1000.0" for r in colab.requirements()} | {"jax": "0.5.2", "jaxlib": "0.5.2"}
    fake_installed(monkeypatch, have)
    monkeypatch.setitem(sys.modules, "jax", object())
    _, _, out = run_setup(pip, fake_root(tmp_path), capsys)
    assert out.splitlines() == [
        "Installed jax>=0.12 for this cpu runtime (was 0.5.2).",
        "Some were imported already: restart the runtime (Runtime > Restart session).",
    ]


@pytest.mark.parametrize(
    ("distribution", "module"),
    [("tensorflow-datasets", "tensorflow_datasets"), ("orbax-checkpoint", "orbax")],
)
def test_setup_colab_finds_an_imported_package_by_its_module_name(
    distribution: str,
    module: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    pip: FakePip,
) -> None:
    """pip's tensorflow-datasets is the module tensorflow_datasets; orbax-checkpoint is orbax,
    which dashes to underscores would miss."""
    have = {r.name: "1000.0" for r in colab.requirements()} | {"jax": "0.12.0"}
    have[distribution] = "0.1"
    fake_installed(monkeypatch, have)
    monkeypatch.delitem(sys.modules, module, raising=False)
    _, _, out = run_setup(pip, fake_root(tmp_path), capsys)
    assert "restart" not in out  # upgraded, but not imported yet
    monkeypatch.setitem(sys.modules, module, object())
    pip.commands.clear()
    _, _, out = run_setup(pip, fake_root(tmp_path), capsys)
    assert out.splitlines() == [
        "Kept Colab's jax 0.12.0.",
        f"Installed or upgraded: {distribution}.",
        "Some were imported already: restart the runtime (Runtime > Restart session).",
    ]


def test_module_names_come_from_the_installed_metadata() -> None:
    assert colab.module_names("orbax-checkpoint") == {"orbax"}  # no top_level.txt
    assert colab.module_names("Pillow") == {"PIL"}
    assert colab.module_names("matplotlib") == {"matplotlib", "mpl_toolkits", "pylab"}
    assert colab.module_names("tensorflow-datasets") == {"tensorflow_datasets"}
    assert colab.module_names("not-installed-x") == {"not_installed_x"}
    # files outside site-packages (../../../bin/jupyter-lab) and dotted folders are no modules
    assert colab.module_names("jupyterlab") == {"jupyterlab"}
    assert colab.module_names("numpy") == {"numpy"}  # not numpy.libs, nor the .dist-info


def test_module_names_of_a_distribution_that_lists_no_files(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No top_level.txt and no RECORD (some installers write none): the name is the guess;
    with them, as importlib.metadata.packages_distributions reads them."""

    class Bare:
        def __init__(self, files: dict[str, str]) -> None:
            self.files = files

        def read_text(self, name: str) -> str | None:
            return self.files.get(name)

    monkeypatch.setattr(colab.metadata, "distribution", lambda name: Bare({}))
    assert colab.module_names("some-package") == {"some_package"}
    # top_level.txt, where there is one, says which modules: it wins over RECORD's folders
    record = "bar/__init__.py,sha256=x,1\nbaz.py,,\nsome_package-1.0.dist-info/RECORD,,\n"
    files = {"top_level.txt": "foo\n", "RECORD": record}
    monkeypatch.setattr(colab.metadata, "distribution", lambda name: Bare(files))
    assert colab.module_names("some-package") == {"foo"}
    del files["top_level.txt"]
    assert colab.module_names("some-package") == {"bar", "baz"}
