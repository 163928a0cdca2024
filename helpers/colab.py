"""Make a Colab runtime ready for the series without breaking its JAX.

A notebook's first cell installs this package alone (``pip install --no-deps``),
then calls :func:`setup_colab`, which installs the other dependencies. Colab ships
jax already matched to its accelerator; reinstalling it carelessly gives a
CPU-only jax on a GPU or TPU runtime, or a jax/jaxlib mismatch. So:

- Colab's jax is new enough for this package and has the backend of the runtime
  (libtpu on a TPU, a CUDA plugin on a GPU): keep it, with its jaxlib, pinned while
  pip installs the rest.
- Otherwise install ``jax[tpu]`` on a TPU runtime, ``jax[cuda13]`` on a GPU whose
  NVIDIA driver is 580 or newer (CUDA 13 needs it), ``jax[cuda12]`` on an older
  driver, plain ``jax`` on a CPU runtime (what JAX's installation guide names).
- Every other dependency is installed at this package's lower bound or newer, so a
  preinstalled flax or optax older than the bound is upgraded.

The Jupyter tooling this package declares (for JupyterLab, headless runs and the
header check) is never installed on Colab: Colab runs its own notebook server and
kernel, and its ``google-colab`` package pins ipykernel and ipython, which pip warns
may crash the runtime when upgraded.
"""

from __future__ import annotations

import csv
import inspect
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Literal

from packaging.requirements import Requirement
from packaging.version import Version

from helpers.environment import installed_version
from helpers.repository import DISTRIBUTION

Accelerator = Literal["cpu", "gpu", "tpu"]
JUPYTER_TOOLING = ("jupyterlab", "ipykernel", "nbclient", "nbformat")
# The packages that make jax use an accelerator, per runtime (any one is enough).
BACKENDS: dict[str, tuple[str, ...]] = {
    "cpu": (),
    "gpu": ("jax-cuda13-plugin", "jax-cuda12-plugin"),
    "tpu": ("libtpu", "libtpu-nightly"),
}
CUDA13_DRIVER = Version("580")  # the oldest NVIDIA driver CUDA 13 runs on (Linux)
CUDA12_DRIVER = Version("525.60.13")  # the oldest for CUDA 12, per JAX's install guide
# A TPU chip is a PCI device with Google's vendor id and one of these device ids (TPU v2/v3
# to TPU8t: the ids jax's own check for a TPU knows, in jax/_src/hardware_utils.py).
GOOGLE_PCI_VENDOR = "0x1ae0"
TPU_PCI_DEVICES = {"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076", "0x0083"}
TPU_PCI_DEVICES |= {"0x007c"}
_DRIVER_PATTERN = re.compile(r"Kernel Module.*?\s(\d+\.\d+(?:\.\d+)?)\s")


@dataclass(frozen=True)
class Runtime:
    """What a Colab runtime has: its accelerator, NVIDIA driver and installed packages.

    ``installed`` maps pip names to versions of what is installed (absent: not installed).
    """

    accelerator: Accelerator
    nvidia_driver: Version | None = None
    installed: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.accelerator not in BACKENDS:
            raise ValueError(
                f"accelerator must be one of {sorted(BACKENDS)}, not {self.accelerator!r}"
            )
        if (self.accelerator == "gpu") != (self.nvidia_driver is not None):
            raise ValueError(
                "an NVIDIA driver version goes with a GPU runtime and only with one "
                f"(accelerator {self.accelerator!r}, driver {self.nvidia_driver})"
            )


@dataclass(frozen=True)
class Plan:
    """pip's arguments (requirements) and the constraint lines that keep Colab's jax."""

    packages: list[str]
    constraints: list[str]

    @property
    def installs_jax(self) -> bool:
        return any(Requirement(p).name == "jax" for p in self.packages)


def requirements() -> list[Requirement]:
    """This package's dependencies, as declared in pyproject.toml, without extras."""
    parsed = [Requirement(text) for text in metadata.requires(DISTRIBUTION) or []]
    return [req for req in parsed if req.marker is None or req.marker.evaluate({"extra": ""})]


def jax_extra(runtime: Runtime) -> str:
    """The extra of the jax wheel that runs on ``runtime``: '', 'tpu', 'cuda12' or 'cuda13'."""
    if runtime.accelerator == "tpu":
        return "tpu"
    if runtime.nvidia_driver is None:
        return ""
    if runtime.nvidia_driver >= CUDA13_DRIVER:
        return "cuda13"
    if runtime.nvidia_driver >= CUDA12_DRIVER:
        return "cuda12"
    raise ValueError(
        f"NVIDIA driver {runtime.nvidia_driver} is older than {CUDA12_DRIVER}, the oldest "
        "JAX's CUDA wheels run on; choose a newer GPU runtime, or a CPU runtime"
    )


def install_plan(runtime: Runtime, declared: list[Requirement]) -> Plan:
    """What pip should install on ``runtime`` for the ``declared`` requirements."""
    jax = next((req for req in declared if req.name == "jax"), None)
    if jax is None:
        raise ValueError("the declared requirements name no jax requirement")
    extra = jax_extra(runtime)
    skipped = {"jax", "jaxlib", *JUPYTER_TOOLING}
    others = [str(req) for req in declared if req.name not in skipped]
    have = runtime.installed
    backends = BACKENDS[runtime.accelerator]
    has_backend = not backends or any(name in have for name in backends)
    if "jax" in have and jax.specifier.contains(have["jax"], prereleases=True) and has_backend:
        kept = ["jax", "jaxlib", *backends]
        return Plan(others, [f"{name}=={have[name]}" for name in kept if name in have])
    wheel = f"jax[{extra}]" if extra else "jax"
    return Plan([f"{wheel}{jax.specifier}", *others], [])


def nvidia_driver(root: Path = Path("/")) -> Version | None:
    """The NVIDIA kernel driver's version, from ``/proc/driver/nvidia/version``; None without."""
    path = root / "proc/driver/nvidia/version"
    if not path.exists():
        return None
    text = path.read_text()
    match = _DRIVER_PATTERN.search(text)
    if match is None:
        raise ValueError(f"no driver version in {path}: {text[:200]!r}")
    return Version(match.group(1))


def has_tpu(root: Path = Path("/")) -> bool:
    """Whether a TPU chip is attached (a PCI device of Google's with a TPU's device id)."""
    return any(
        vendor.read_text().strip() == GOOGLE_PCI_VENDOR
        and vendor.with_name("device").read_text().strip() in TPU_PCI_DEVICES
        for vendor in (root / "sys/bus/pci/devices").glob("*/vendor")
    )


def detect_runtime(root: Path = Path("/")) -> Runtime:
    """The runtime this process runs on (``root``: where /proc and /sys are, for tests)."""
    names = {*(name for names in BACKENDS.values() for name in names), "jax", "jaxlib"}
    names |= {req.name for req in requirements()}
    installed = {name: version for name in names if (version := installed_version(name))}
    if has_tpu(root):
        return Runtime("tpu", None, installed)
    driver = nvidia_driver(root)
    return Runtime("gpu" if driver else "cpu", driver, installed)


def outdated(runtime: Runtime, declared: list[Requirement]) -> list[str]:
    """The declared packages but jax missing on ``runtime`` or older than their bound."""
    have = runtime.installed
    return [
        req.name
        for req in declared
        if req.name not in {"jax", "jaxlib", *JUPYTER_TOOLING}
        and not (req.name in have and req.specifier.contains(have[req.name], prereleases=True))
    ]


def module_names(distribution: str) -> set[str]:
    """The top-level modules a pip distribution installs (``orbax-checkpoint``: ``orbax``),
    read from its installed metadata as ``importlib.metadata.packages_distributions`` does,
    for this one distribution; its name with ``_`` for ``-`` when it is not installed or
    its metadata lists no files."""
    guess = {distribution.replace("-", "_")}
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return guess
    declared = set((dist.read_text("top_level.txt") or "").split())
    # RECORD lists the installed files; dist.files would also stat each one (slow)
    record = csv.reader((dist.read_text("RECORD") or "").splitlines())
    paths = [PurePosixPath(row[0]) for row in record if row]
    tops = {p.parts[0] if len(p.parts) > 1 else inspect.getmodulename(p.name) for p in paths}
    # no "." in an importable name: leaves out ../bin, name.dist-info, numpy.libs
    inferred = {name for name in tops if name and "." not in name and name != "__pycache__"}
    return declared or inferred or guess


def setup_colab(root: Path = Path("/")) -> None:
    """Install the series' dependencies on Colab, keeping or replacing jax as above."""
    runtime = detect_runtime(root)
    declared = requirements()
    plan = install_plan(runtime, declared)
    with tempfile.NamedTemporaryFile("w", delete=False) as file:  # pip -c takes any name
        file.write("".join(f"{line}\n" for line in plan.constraints))
    command = [sys.executable, "-m", "pip", "install", "-q", "-c", file.name, *plan.packages]
    try:
        subprocess.run(command, check=True)
    finally:
        Path(file.name).unlink()
    if plan.installs_jax:
        was = runtime.installed.get("jax", "not installed")
        print(f"Installed {plan.packages[0]} for this {runtime.accelerator} runtime (was {was}).")
    else:
        print(f"Kept Colab's jax {runtime.installed['jax']}.")
    changed = outdated(runtime, declared)
    if changed:
        print(f"Installed or upgraded: {', '.join(changed)}.")
    imported = any(  # the quick guess first: most modules are named like their package
        name.replace("-", "_") in sys.modules or module_names(name) & sys.modules.keys()
        for name in changed
    )
    if imported or (plan.installs_jax and "jax" in sys.modules):
        print("Some were imported already: restart the runtime (Runtime > Restart session).")
