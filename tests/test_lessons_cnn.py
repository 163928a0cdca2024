"""lessons.cifar10_cnn (notebook 05's cells tagged 'export') against independent expectations:
pooling against a NumPy loop, the network against the same layers written with jax.lax,
the loss and the evaluation against cross-entropies computed by hand, the optimiser against
SGD with momentum written out, and the training epoch's batch order."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lessons import cifar10_cnn as cnn


def test_max_pool_takes_the_largest_value_of_each_2x2_block() -> None:
    x = np.random.default_rng(0).normal(size=(2, 6, 4, 3)).astype(np.float32)
    expected = np.empty((2, 3, 2, 3), np.float32)
    for n in range(2):
        for i in range(3):
            for j in range(2):
                for c in range(3):
                    expected[n, i, j, c] = x[n, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, c].max()
    np.testing.assert_array_equal(np.asarray(cnn.max_pool_2x2(jnp.asarray(x))), expected)


def test_to_float_maps_pixels_onto_zero_to_one() -> None:
    pixels = np.array([0, 51, 255], np.uint8)
    scaled = cnn.to_float(pixels)
    assert scaled.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(scaled), [0.0, 0.2, 1.0], rtol=1e-7)


@nnx.jit
def reference_logits(model: cnn.CNN, x: jax.Array) -> jax.Array:
    """The original tutorial's network written with jax.lax from the model's arrays: two
    5x5 VALID convolutions with ReLU and 2x2 max pooling, then three dense layers."""

    def conv(layer: nnx.Conv, x: jax.Array) -> jax.Array:
        y = jax.lax.conv_general_dilated(
            x, layer.kernel[...], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return y + layer.bias[...]

    def pool(x: jax.Array) -> jax.Array:
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

    x = pool(jax.nn.relu(conv(model.conv1, x)))
    x = pool(jax.nn.relu(conv(model.conv2, x)))
    x = x.reshape(len(x), 5 * 5 * 8)
    for layer in (model.dense1, model.dense2, model.dense3):
        x = x @ layer.kernel[...] + layer.bias[...]
    return x


@nnx.jit
def reference_loss_and_grads(model: cnn.CNN, x: jax.Array, labels: jax.Array) -> tuple:
    """Mean -log softmax(logits)[label] of :func:`reference_logits`, and its gradient."""

    def loss(model: cnn.CNN) -> jax.Array:
        log_p = jax.nn.log_softmax(reference_logits(model, x))
        return -jnp.take_along_axis(log_p, labels[:, None], axis=1).mean()

    return nnx.value_and_grad(loss)(model)


def images_and_labels(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    return images, rng.integers(0, 10, count).astype(np.int32)


def cross_entropy(logits: jax.Array, labels: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[label] per example, in float64 NumPy."""
    z = np.asarray(logits, np.float64)
    log_sum = np.log(np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1)) + z.max(axis=1)
    return log_sum - z[np.arange(len(z)), labels]


def test_network_matches_the_layers_written_with_lax() -> None:
    model = cnn.CNN(nnx.Rngs(0))
    shapes = [
        (model.conv1.kernel[...].shape, model.conv2.kernel[...].shape),
        tuple(layer.kernel[...].shape for layer in (model.dense1, model.dense2, model.dense3)),
    ]
    assert shapes == [((5, 5, 3, 16), (5, 5, 16, 8)), ((200, 120), (120, 84), (84, 10))]
    images, _ = images_and_labels(3)
    x = images.astype(np.float32) / 255
    logits = nnx.jit(lambda model, x: model(x))(model, jnp.asarray(x))
    assert logits.shape == (3, 10)
    np.testing.assert_allclose(logits, reference_logits(model, jnp.asarray(x)), atol=1e-5)


class FixedLogits(nnx.Module):
    """A stand-in network: the logits are 5 for the class written in an image's first
    pixel (its value / 255, as to_float gives it, times 255) and 0 for the others."""

    def __call__(self, x: jax.Array) -> jax.Array:
        predicted = jnp.round(x[:, 0, 0, 0] * 255).astype(jnp.int32)
        return 5.0 * jax.nn.one_hot(predicted, 10)


# -log softmax of such logits: for the class scored 5, and for a class scored 0
RIGHT = math.log(math.exp(5) + 9) - 5
WRONG = math.log(math.exp(5) + 9)


def test_loss_is_the_mean_cross_entropy_of_the_scaled_images() -> None:
    images = np.zeros((4, 32, 32, 3), np.uint8)
    images[:, 0, 0, 0] = [3, 3, 7, 9]  # the predicted classes
    labels = np.array([3, 1, 7, 0])
    loss = cnn.loss_fn(FixedLogits(), images, labels)
    assert float(loss) == pytest.approx((2 * RIGHT + 2 * WRONG) / 4, rel=1e-6)


@pytest.mark.parametrize("batch_size", [3, 7, 1_000])
def test_evaluate_counts_every_example_once_in_any_batch_size(batch_size: int) -> None:
    """Seven examples: with batches of 3 the last one holds a single example."""
    images = np.zeros((7, 32, 32, 3), np.uint8)
    images[:, 0, 0, 0] = [1, 2, 3, 4, 5, 6, 7]
    labels = np.array([1, 2, 0, 4, 0, 0, 7])  # 4 of 7 right
    loss, accuracy = cnn.evaluate(FixedLogits(), images, labels, batch_size=batch_size)
    assert accuracy == pytest.approx(4 / 7)
    assert loss == pytest.approx((4 * RIGHT + 3 * WRONG) / 7, rel=1e-6)


def test_evaluate_defaults_to_batches_of_a_thousand(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = []
    logits_of = cnn.logits_of

    def recording(model: nnx.Module, images: np.ndarray) -> jax.Array:
        sizes.append(len(images))
        return logits_of(model, images)

    monkeypatch.setattr(cnn, "logits_of", recording)
    images = np.zeros((2_500, 32, 32, 3), np.uint8)
    cnn.evaluate(FixedLogits(), images, np.zeros(2_500, np.int32))
    assert sizes == [1_000, 1_000, 500]


def test_optimizer_is_sgd_with_momentum() -> None:
    """loss = sum(w) has gradient 1: velocity 1, then 1.9; steps of 0.01 and 0.019."""
    layer = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    start = np.asarray(layer.kernel[...])
    optimizer = cnn.make_optimizer(layer)
    grad = nnx.grad(lambda m: m.kernel[...].sum() + m.bias[...].sum())
    optimizer.update(layer, grad(layer))
    np.testing.assert_allclose(layer.kernel[...], start - 0.01, rtol=1e-6)
    optimizer.update(layer, grad(layer))
    np.testing.assert_allclose(layer.kernel[...], start - 0.01 - 0.019, rtol=1e-6)


@pytest.mark.parametrize("seed", [None, 3], ids=["fixed order", "shuffled"])
def test_train_epoch_steps_through_whole_batches_in_order(seed: int | None) -> None:
    """Seven examples in batches of 3: two steps (the last example is dropped). The first
    step's loss is the untrained network's on the first batch of the order, and its update
    is plain SGD (no velocity yet) with the gradient of that loss."""
    key = None if seed is None else jax.random.key(seed)  # no JAX work when collected
    images, labels = images_and_labels(7)
    model = cnn.CNN(nnx.Rngs(0))
    order = np.arange(7) if key is None else np.asarray(jax.random.permutation(key, 7))
    first = order[:3]
    x = jnp.asarray(images[first].astype(np.float32) / 255)

    expected_loss, grads = reference_loss_and_grads(model, x, jnp.asarray(labels[first]))
    assert float(expected_loss) == pytest.approx(
        cross_entropy(reference_logits(model, x), labels[first]).mean(), rel=1e-5
    )
    expected_kernel = model.dense3.kernel[...] - 0.01 * grads.dense3.kernel[...]

    one_step = cnn.CNN(nnx.Rngs(0))
    losses = cnn.train_epoch(
        one_step, cnn.make_optimizer(one_step), images[first], labels[first], None, 3
    )
    assert losses.shape == (1,)
    assert float(losses[0]) == pytest.approx(float(expected_loss), rel=1e-5)
    np.testing.assert_allclose(one_step.dense3.kernel[...], expected_kernel, atol=1e-6)

    optimizer = cnn.make_optimizer(model)
    losses = cnn.train_epoch(model, optimizer, images, labels, key, batch_size=3)
    assert losses.shape == (2,)
    assert float(losses[0]) == pytest.approx(float(expected_loss), rel=1e-5)
    assert int(optimizer.step[...]) == 2  # the trained state is back in the objects
    # eight examples: still two whole batches of 3, never a short third one of 2
    losses = cnn.train_epoch(model, optimizer, *images_and_labels(8), None, batch_size=3)
    assert losses.shape == (2,) and int(optimizer.step[...]) == 4


@pytest.mark.parametrize("seed", [None, 5], ids=["fixed order", "shuffled"])
def test_train_epoch_feeds_batches_of_a_thousand_in_the_drawn_order(
    monkeypatch: pytest.MonkeyPatch, seed: int | None
) -> None:
    """With the training step faked (it records the rows it is given): 2,500 examples make
    two batches of 1,000, the rest dropped; rows 0-999 and 1,000-1,999 without a key, the
    permutation drawn from the key with one."""
    seen = []

    def fake_step(
        graphdef: object, state: object, images: jax.Array, labels: jax.Array
    ) -> tuple[jax.Array, object]:
        seen.append((np.asarray(images), np.asarray(labels)))
        return jnp.float32(len(seen)), state

    monkeypatch.setattr(cnn, "fast_step", fake_step)
    layer = nnx.Linear(1, 1, rngs=nnx.Rngs(0))
    rows = np.arange(2_500)
    key = None if seed is None else jax.random.key(seed)
    losses = cnn.train_epoch(layer, cnn.make_optimizer(layer), rows, 10 * rows, key)
    np.testing.assert_array_equal(losses, [1.0, 2.0])
    order = rows if key is None else np.asarray(jax.random.permutation(key, 2_500))
    for (images, labels), start in zip(seen, (0, 1_000), strict=True):
        np.testing.assert_array_equal(images, order[start : start + 1_000])
        np.testing.assert_array_equal(labels, 10 * images)
