"""The seed recipe's model and its fast training epoch, on tiny synthetic data."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import seed_recipe
from tests.conftest import learnable_images


def readable_step(model: nnx.Module, optimizer: nnx.Optimizer, x: np.ndarray, y: np.ndarray):
    """The plain loop's step, as notebook 05 writes it first (not compiled here)."""

    def loss_fn(model: nnx.Module) -> jax.Array:
        return seed_recipe.cross_entropy(model(seed_recipe.to_float(jnp.asarray(x))), y)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def test_max_pool_matches_flax() -> None:
    x = jax.random.normal(jax.random.key(0), (2, 28, 28, 16))
    expected = nnx.max_pool(x, (2, 2), strides=(2, 2))
    assert seed_recipe.max_pool_2x2(x).shape == (2, 14, 14, 16)
    np.testing.assert_array_equal(seed_recipe.max_pool_2x2(x), expected)
    odd = x[:, :27, :27]  # VALID pooling drops the last row and column
    np.testing.assert_array_equal(
        seed_recipe.max_pool_2x2(odd), nnx.max_pool(odd, (2, 2), strides=(2, 2))
    )


def readable_conv_relu_pool(conv: nnx.Conv, x: jax.Array) -> jax.Array:
    return seed_recipe.max_pool_2x2(nnx.relu(conv(x)))


def test_space_to_depth_groups_each_2x2_block() -> None:
    x = jnp.arange(2 * 4 * 4 * 3.0).reshape(2, 4, 4, 3)
    blocks = seed_recipe.space_to_depth(x)
    assert blocks.shape == (2, 2, 2, 12)
    # pixel (row 1, column 0) of block (1, 1) is pixel (3, 2) of the image
    np.testing.assert_array_equal(blocks[1, 1, 1, 6:9], x[1, 3, 2])


@pytest.mark.parametrize(
    ("size", "kernel", "input_is_data"), [(32, 5, True), (14, 5, False), (12, 3, False)]
)
def test_conv_relu_pool_matches_the_readable_form(
    size: int, kernel: int, input_is_data: bool
) -> None:
    conv = nnx.Conv(3, 8, kernel_size=(kernel, kernel), padding="VALID", rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (4, size, size, 3))
    weights = jax.random.normal(
        jax.random.key(2), (4, (size - kernel + 1) // 2, (size - kernel + 1) // 2, 8)
    )

    def loss(conv: nnx.Conv, fast: bool) -> jax.Array:
        if fast:
            out = seed_recipe.conv_relu_pool(conv, x, input_is_data=input_is_data)
        else:
            out = readable_conv_relu_pool(conv, x)
        return jnp.sum(out * weights)

    with jax.default_matmul_precision("highest"):
        fast_value, fast_grads = nnx.value_and_grad(loss)(conv, True)
        value, grads = nnx.value_and_grad(loss)(conv, False)
    np.testing.assert_allclose(fast_value, value, rtol=1e-5)
    for got, want in zip(jax.tree.leaves(fast_grads), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_conv_relu_pool_computes_other_convolutions_as_written() -> None:
    even = jax.random.normal(jax.random.key(1), (2, 12, 12, 3))
    odd = even[:, :11, :11]  # pooling then drops the last row and column
    cases = [  # each breaks one condition of the blocked computation
        (nnx.Conv(3, 4, kernel_size=(4, 4), padding="VALID", rngs=nnx.Rngs(0)), even),
        (nnx.Conv(3, 4, kernel_size=(5, 5), padding="SAME", rngs=nnx.Rngs(0)), even),
        (
            nnx.Conv(3, 4, kernel_size=(5, 5), padding="VALID", use_bias=False, rngs=nnx.Rngs(0)),
            even,
        ),
        (nnx.Conv(3, 4, kernel_size=(5, 5), padding="VALID", rngs=nnx.Rngs(0)), odd),
    ]
    for conv, x in cases:
        np.testing.assert_array_equal(
            seed_recipe.conv_relu_pool(conv, x), readable_conv_relu_pool(conv, x)
        )


def test_seed_cnn_is_the_readable_network() -> None:
    class Readable(seed_recipe.SeedCNN):
        def __call__(self, x: jax.Array) -> jax.Array:
            x = readable_conv_relu_pool(self.conv2, readable_conv_relu_pool(self.conv1, x))
            x = self.dense3(self.dense2(self.dense1(x.reshape(x.shape[0], -1))))
            return nnx.softmax(x)

    images, labels = learnable_images(16)
    x = seed_recipe.to_float(jnp.asarray(images))

    def loss(model: nnx.Module) -> jax.Array:
        return seed_recipe.cross_entropy(model(x), labels)

    with jax.default_matmul_precision("highest"):
        value, grads = nnx.value_and_grad(loss)(seed_recipe.SeedCNN(nnx.Rngs(0)))
        expected, expected_grads = nnx.value_and_grad(loss)(Readable(nnx.Rngs(0)))
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_model_shapes_and_parameter_count() -> None:
    model = seed_recipe.SeedCNN(nnx.Rngs(0))
    probabilities = model(jnp.zeros((3, 32, 32, 3)))
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-5)
    count = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert count == (5 * 5 * 3 + 1) * 16 + (5 * 5 * 16 + 1) * 8 + 201 * 120 + 121 * 84 + 85 * 10


def test_loss_decreases() -> None:
    images, labels = learnable_images(256)
    model = seed_recipe.SeedCNN(nnx.Rngs(0))
    optimizer = seed_recipe.make_optimizer(model)
    first = seed_recipe.train_epoch(model, optimizer, images, labels, batch_size=32)
    assert first.shape == (8,)
    for _ in range(4):
        last = seed_recipe.train_epoch(model, optimizer, images, labels, batch_size=32)
    assert float(last.mean()) < float(first.mean())
    loss, accuracy = seed_recipe.evaluate(model, images, labels)
    assert 0.0 <= accuracy <= 1.0 and np.isfinite(loss)


@pytest.mark.parametrize(("loop", "chunks"), [("python", 1), ("scan", 1), ("python", 5)])
def test_fast_epoch_equals_readable_loop(loop: str, chunks: int) -> None:
    images, labels = learnable_images(100, seed=1)
    fast = seed_recipe.SeedCNN(nnx.Rngs(3))
    fast_optimizer = seed_recipe.make_optimizer(fast)
    plain = seed_recipe.SeedCNN(nnx.Rngs(3))
    plain_optimizer = seed_recipe.make_optimizer(plain)
    # GPUs multiply float32 in TF32 by default (10-bit mantissa): its rounding, different
    # in the two computations, would exceed these tolerances (measured on an H200)
    with jax.default_matmul_precision("highest"):
        losses = seed_recipe.train_epoch(
            fast, fast_optimizer, images, labels, batch_size=25, loop=loop, chunks=chunks
        )
        expected = [
            readable_step(plain, plain_optimizer, images[i : i + 25], labels[i : i + 25])
            for i in range(0, 100, 25)
        ]
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
    for got, want in zip(
        jax.tree.leaves(nnx.state(fast)), jax.tree.leaves(nnx.state(plain)), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_partial_batch_is_dropped_and_empty_epoch_refused() -> None:
    images, labels = learnable_images(70)
    model = seed_recipe.SeedCNN(nnx.Rngs(0))
    optimizer = seed_recipe.make_optimizer(model)
    assert seed_recipe.train_epoch(model, optimizer, images, labels, batch_size=32).shape == (2,)
    with pytest.raises(ValueError, match="no batch"):
        seed_recipe.train_epoch(model, optimizer, images[:10], labels[:10], batch_size=32)
    with pytest.raises(ValueError, match="loop must be"):
        seed_recipe.train_epoch(model, optimizer, images, labels, batch_size=32, loop="while")
    with pytest.raises(ValueError, match=r"chunks \(3\) must divide batch_size \(32\)"):
        seed_recipe.train_epoch(model, optimizer, images, labels, batch_size=32, chunks=3)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU's choices")
def test_cpu_defaults_chunk_batches_into_100_to_200_images() -> None:
    assert seed_recipe.default_chunks(1000) == 10
    assert seed_recipe.default_chunks(1024) == 8  # 128 images each
    assert seed_recipe.default_chunks(250) == 2  # 125 images each
    assert seed_recipe.default_chunks(401) == 1  # a prime: no equal slices
    assert seed_recipe.default_chunks(32) == 1
    # YNNPACK for matrix products only, where this XLA knows the (experimental) option
    assert seed_recipe.default_compiler_options() in (
        {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"},
        {},
    )


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU's options")
def test_cpu_options_this_xla_does_not_know_are_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    unknown = (("xla_cpu_option_that_does_not_exist", True),)
    monkeypatch.setattr(seed_recipe, "_CPU_OPTIONS", unknown)
    assert seed_recipe.default_compiler_options() == {}


def test_accelerator_expected_reads_jax_platforms_then_device_files(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert not seed_recipe.accelerator_expected()
    monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
    assert seed_recipe.accelerator_expected()
    monkeypatch.delenv("JAX_PLATFORMS")
    monkeypatch.setattr(seed_recipe.os.path, "exists", lambda path: path == "/dev/nvidia0")
    assert seed_recipe.accelerator_expected()
    monkeypatch.setattr(seed_recipe.os.path, "exists", lambda path: False)
    assert not seed_recipe.accelerator_expected()


def test_predict_covers_a_last_partial_batch() -> None:
    images, _ = learnable_images(7)
    probabilities = seed_recipe.predict(seed_recipe.SeedCNN(nnx.Rngs(0)), images, batch_size=4)
    assert probabilities.shape == (7, 10)


def test_reuse_freed_memory_in_a_fresh_process() -> None:
    code = "from helpers.seed_recipe import reuse_freed_memory; print(reuse_freed_memory())"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert result.stdout.strip() == str(glibc and not seed_recipe.accelerator_expected())
    # never on an accelerator: there it slows XLA's multi-threaded compiler
    on_gpu = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "JAX_PLATFORMS": "cuda"},
    )
    assert on_gpu.stdout.strip() == "False"
