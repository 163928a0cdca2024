"""A one-call report of the software and hardware a notebook runs on."""

from __future__ import annotations

import platform
import sys
from importlib import metadata


def installed_version(package: str) -> str | None:
    """The installed version of ``package`` (a pip name), or None when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _version(package: str) -> str:
    return installed_version(package) or "not installed"


def environment_report() -> str:
    """Python, JAX, Flax and Optax versions, the JAX backend and its devices, as text."""
    import jax

    devices = jax.devices()
    kinds = sorted({device.device_kind for device in devices})
    lines = [
        f"Python  {platform.python_version()} ({sys.platform}, {platform.machine()})",
        f"JAX     {jax.__version__} (jaxlib {_version('jaxlib')})",
        f"Flax    {_version('flax')}",
        f"Optax   {_version('optax')}",
        f"Backend {jax.default_backend()}: {len(devices)} device(s): {', '.join(kinds)}",
    ]
    if jax.default_backend() == "cpu":
        lines.append("        No GPU found: everything runs on the CPU (slower, but it all works).")
    return "\n".join(lines)


def print_environment() -> None:
    """Print :func:`environment_report`. Notebooks call this once, after their imports."""
    print(environment_report())
