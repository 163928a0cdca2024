"""Shared fixtures: small fake CIFAR-10 copies and the real offline copy when present; and
an importer for the scripts in benchmarks/; quicker compilation for lessons.airbench."""

from __future__ import annotations

import importlib.util
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from helpers import data

REAL_COPY = Path(__file__).resolve().parents[1].parent / "shared/data/cifar10-jpeg.tar.gz"
TINY_COUNTS = {"train": 3, "test": 2}
CONFIGURED_COPY = os.environ.get("CIFAR10_PATH")  # read before the fixtures unset it
CONFIGURED_CACHE = os.environ.get("TUTORIAL_CACHE_DIR")


def load_script(path: Path) -> Any:
    """Import a benchmark script (``benchmarks/*.py``) as a module."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def learnable_images(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images whose class (0-9) is written in their mean brightness, and the labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count).astype(np.int32)
    noise = rng.integers(0, 40, (count, 32, 32, 3))
    images = (labels[:, None, None, None] * 20 + noise).astype(np.uint8)
    return images, labels


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty cache folder and no CIFAR10_PATH."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("TUTORIAL_CACHE_DIR", str(cache))
    monkeypatch.delenv("CIFAR10_PATH", raising=False)
    monkeypatch.delenv("TUTORIAL_SMOKE", raising=False)
    return cache


@pytest.fixture
def tiny_counts(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    monkeypatch.setattr(data, "EXPECTED_PER_CLASS", dict(TINY_COUNTS))
    return TINY_COUNTS


def write_image_folder(root: Path, counts: dict[str, int], suffix: str = ".png") -> Path:
    """An image folder root/split/class/NNNN.png whose pixels encode (split, class, index)."""
    for split, count in counts.items():
        for label, name in enumerate(data.CLASS_NAMES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = np.full((32, 32, 3), label * 20 + index, dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index:04d}{suffix}")
    return root


@pytest.fixture
def tiny_folder(tmp_path: Path, tiny_counts: dict[str, int]) -> Path:
    return write_image_folder(tmp_path / "cifar10-tiny", tiny_counts)


@pytest.fixture
def tiny_archive(tmp_path: Path, tiny_folder: Path) -> Path:
    archive = tmp_path / "cifar10-tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tiny_folder, arcname="cifar10-tiny")
    return archive


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for the whole test session, where the real copy is decoded once
    (about 13 s on a 2-core CPU) and read back by every later test: TUTORIAL_CACHE_DIR as
    configured when the tests started (CI shares it with the notebooks), else a new folder."""
    return Path(CONFIGURED_CACHE) if CONFIGURED_CACHE else tmp_path_factory.mktemp("cache")


@pytest.fixture
def real_copy(shared_cache: Path, isolated_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The offline CIFAR-10 copy; its decoded arrays come from :func:`shared_cache`."""
    path = Path(CONFIGURED_COPY) if CONFIGURED_COPY else REAL_COPY
    if not path.exists():
        pytest.skip(f"offline CIFAR-10 copy not found at {path} (set CIFAR10_PATH)")
    monkeypatch.setenv("TUTORIAL_CACHE_DIR", str(shared_cache))
    return path


@pytest.fixture(scope="module")
def quickly_compiled() -> Any:
    """Compile less in the tests of ``lessons.airbench`` (notebook 06's cells): most of
    their time is XLA:CPU compiling on the shared 2-core CPU. For a whole test module.

    - JAX's default generator, threefry, compiles slowly and once per shape: 2-7 s for each
      new parameter shape, 20 s to build the first network. These tests check arithmetic,
      not the random stream, so they draw with the "rbg" generator, which compiles ten
      times faster.
    - The cells' jitted functions are jitted again, from the same Python functions with
      the same static and donated arguments (read from jax's record of the decorator; left
      as they are where a JAX version has no such record), with XLA's backend optimisation
      off: the same computation, compiled in about 60% of the time (the runs are tiny).
      Called inside another jitted function (train_step in train_epoch's scan), where
      jax accepts no compiler options, they are the cells' own.

    The notebook's own runs (nbval) and tests/test_distributed.py keep JAX's defaults.
    """
    import jax

    from lessons import airbench as ab

    with pytest.MonkeyPatch.context() as patch:
        for name in ("train_step", "train_epoch", "epoch_batches", "tta_logits"):
            jitted = getattr(ab, name)
            info = getattr(jitted, "_jit_info", None)
            if info is None:
                continue
            fast = jax.jit(
                jitted.__wrapped__,
                static_argnames=info.static_argnames,
                donate_argnames=info.donate_argnames,
                compiler_options={"xla_backend_optimization_level": 0},
            )

            def top_level_fast(*args: Any, __fast: Any = fast, __own: Any = jitted, **kw: Any):
                leaves = jax.tree.leaves((args, kw))
                nested = any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)
                return (__own if nested else __fast)(*args, **kw)

            patch.setattr(ab, name, top_level_fast)
        before = jax.config.jax_default_prng_impl
        jax.config.update("jax_default_prng_impl", "rbg")
        yield
        jax.config.update("jax_default_prng_impl", before)
