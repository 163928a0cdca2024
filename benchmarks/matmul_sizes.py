"""Time matrix products of growing size, and a function with and without jax.jit, per device.

    python benchmarks/matmul_sizes.py                      # every device kind found, default sizes
    python benchmarks/matmul_sizes.py --sizes 64 128 256   # a quick check
    python benchmarks/matmul_sizes.py --platforms gpu --dtype bfloat16

Prints one JSON line per (device, size), the numbers notebook 02 quotes:

- ``matmul_s``: median seconds of ``a @ b`` for two (n, n) matrices, called eagerly;
  ``matmul_jit_s`` the same product inside ``jax.jit``; ``matmul_first_s`` the first
  eager call (it includes compiling the product for this shape);
- ``gflops``: 2 n^3 floating-point operations divided by ``matmul_s``;
- ``gelu_s`` / ``gelu_jit_s``: median seconds of :func:`gelu` on an (n, n) array without and
  with ``jax.jit`` (eager JAX runs its eight operations one by one; jit fuses them);
  ``gelu_jit_first_s`` is the first jitted call, compilation included.

Every timing is :func:`helpers.time_call`: one warm-up call, then ``--repeats`` calls, each
waited for with ``jax.block_until_ready``. Needs only jax, numpy and this repository's
``helpers`` (run it from the repository root, or anywhere: it finds ``helpers`` itself).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

try:
    import helpers
except ImportError:  # run as a script from a checkout: helpers lives one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import helpers

DEFAULT_SIZES = (128, 256, 512, 1024, 2048, 4096, 8192)
#: CPUs take seconds per product beyond this size; pass --cpu-max-size to change it.
DEFAULT_CPU_MAX_SIZE = 4096


def gelu(x: jax.Array) -> jax.Array:
    """The tanh approximation of GELU, written as eight small operations (as in notebook 02)."""
    return 0.5 * x * (1.0 + jnp.tanh(0.7978845608 * (x + 0.044715 * x**3)))


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    return a @ b


def measure(device: jax.Device, size: int, dtype: str, repeats: int) -> dict[str, object]:
    """All timings for one device and one matrix size, as a JSON-ready dict."""
    keys = jax.random.split(jax.random.key(0), 2)
    a, b = (
        jax.device_put(jax.random.normal(key, (size, size), dtype=dtype), device) for key in keys
    )
    eager = helpers.time_call(matmul, a, b, repeats=repeats)
    jitted = helpers.time_call(jax.jit(matmul), a, b, repeats=repeats)
    gelu_eager = helpers.time_call(gelu, a, repeats=repeats)
    gelu_jitted = helpers.time_call(jax.jit(gelu), a, repeats=repeats)
    return {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "size": size,
        "dtype": dtype,
        "matmul_s": eager.median,
        "matmul_jit_s": jitted.median,
        "matmul_first_s": eager.first_call,
        "gflops": round(2 * size**3 / eager.median / 1e9, 1),
        "gelu_s": gelu_eager.median,
        "gelu_jit_s": gelu_jitted.median,
        "gelu_jit_first_s": gelu_jitted.first_call,
        "repeats": repeats,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument(
        "--platforms", nargs="+", default=None, help="e.g. cpu gpu (default: every one found)"
    )
    parser.add_argument("--cpu-max-size", type=int, default=DEFAULT_CPU_MAX_SIZE)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.repeats < 1 or min(args.sizes) < 1:
        parser.error(
            f"--repeats and --sizes must be at least 1, got {args.repeats} and {args.sizes}"
        )

    found = sorted({device.platform for device in jax.devices()} | {"cpu"})
    platforms = args.platforms or found
    print(
        json.dumps(
            {
                "jax": jax.__version__,
                "python": platform.python_version(),
                "default_backend": jax.default_backend(),
                "matmul_precision": str(jax.config.jax_default_matmul_precision),
                "platforms": platforms,
            }
        ),
        flush=True,
    )
    for name in platforms:
        device = jax.devices(name)[0]
        for size in args.sizes:
            if name == "cpu" and size > args.cpu_max_size:
                continue
            print(json.dumps(measure(device, size, args.dtype, args.repeats)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
