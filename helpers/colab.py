"""Make a Colab runtime ready for the series without breaking its JAX.

A notebook's first cell installs this package alone (``pip install --no-deps``),
then calls :func:`setup_colab`, which installs the other dependencies. Colab ships
jax already matched to its accelerator; reinstalling it carelessly gives a
CPU-only jax on a GPU runtime, or a jax/jaxlib mismatch. So:

- Colab's jax is new enough for this package: keep it, with its jaxlib, pinned while
  pip installs the rest.
- It is missing or too old: upgrade jax, with the CUDA plugin on a GPU runtime.

The Jupyter tooling this package declares (for JupyterLab, headless runs and the
header check) is never installed on Colab: Colab runs its own notebook server and
kernel, and its ``google-colab`` package pins ipykernel and ipython, which pip warns
may crash the runtime when upgraded.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from importlib import metadata

from packaging.requirements import Requirement
from packaging.version import Version

from helpers.environment import installed_version
from helpers.repository import DISTRIBUTION

PINNED_BY_COLAB = ("jax", "jaxlib")
JUPYTER_TOOLING = ("jupyterlab", "ipykernel", "nbclient", "nbformat")


def _requirements() -> list[Requirement]:
    parsed = [Requirement(text) for text in metadata.requires(DISTRIBUTION) or []]
    return [req for req in parsed if req.marker is None or req.marker.evaluate({"extra": ""})]


def jax_requirement() -> Requirement:
    """This package's requirement on jax, as declared in pyproject.toml."""
    return next(req for req in _requirements() if req.name == "jax")


def install_plan(
    installed_jax: str | None,
    has_gpu: bool,
    requirement: Requirement,
    installed_jaxlib: str | None = None,
) -> tuple[list[str], list[str]]:
    """What to install: (pip arguments, constraint lines).

    ``installed_jax`` and ``installed_jaxlib`` are the versions Colab has (None if
    not installed); they often differ (jax 0.5.2 runs on jaxlib 0.5.1), so each is
    pinned to its own. ``requirement`` is this package's jax requirement.
    """
    skipped = (*PINNED_BY_COLAB, *JUPYTER_TOOLING)
    others = [str(req) for req in _requirements() if req.name not in skipped]
    if installed_jax is not None and requirement.specifier.contains(
        Version(installed_jax), prereleases=True
    ):
        installed = {"jax": installed_jax, "jaxlib": installed_jaxlib}
        constraints = [f"{name}=={version}" for name, version in installed.items() if version]
        return others, constraints
    extra = "[cuda12]" if has_gpu else ""
    return [f"jax{extra}{requirement.specifier}", *others], []


def setup_colab() -> None:
    """Install the series' dependencies on Colab, keeping or upgrading jax as above."""
    installed = installed_version("jax")
    has_gpu = shutil.which("nvidia-smi") is not None
    packages, constraints = install_plan(
        installed, has_gpu, jax_requirement(), installed_version("jaxlib")
    )
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as file:
        file.write("\n".join(constraints) + "\n")
    command = [sys.executable, "-m", "pip", "install", "-q", "-c", file.name, *packages]
    subprocess.run(command, check=True)
    if constraints:
        print(f"Kept Colab's jax {installed}; installed the other dependencies.")
    else:
        print(f"Upgraded jax (was {installed or 'missing'}; GPU runtime: {has_gpu}).")
        if "jax" in sys.modules:
            print("jax was already imported: restart the runtime (Runtime > Restart session).")
