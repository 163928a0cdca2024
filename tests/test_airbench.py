"""lessons.airbench, the recipe written in notebook 06's cells, and its benchmark script.

Every expectation is computed independently of the code under test: by hand, in NumPy, or
from PyTorch's formulas written out. The networks are tiny (widths 8, 16, 16) and train a
few steps on 128 synthetic images; the runs that compile share one recipe and one data
shape (module-scoped fixtures), so the whole file compiles only a handful of programs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from helpers.data import CIFAR10
from lessons import airbench as ab
from tests.conftest import learnable_images, load_script

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK = ROOT / "benchmarks" / "fast_cifar10.py"
NOTEBOOK = ROOT / "notebooks" / "06_fast_cifar10.ipynb"
# airbench94 at tiny sizes: 4 steps per epoch of the 128 training images, 6 steps in all
# (the second epoch cut short), evaluated without test-time augmentation (one compiled
# evaluation instead of three; TTA is tested on its own below). Every compiled run below
# uses it, so they share programs.
TINY = dataclasses.replace(ab.AIRBENCH94, widths=(8, 16, 16), batch=32, epochs=1.5, tta=0)
TRAIN_IMAGES, TEST_IMAGES = 128, 64
# The reference's constants, typed in from airbench94.py (not read from lessons.airbench)
MEAN = np.array([0.4914, 0.4822, 0.4465])
STD = np.array([0.2470, 0.2435, 0.2616])


def synthetic_cifar(train: int = TRAIN_IMAGES, test: int = TEST_IMAGES) -> CIFAR10:
    """A learnable stand-in for CIFAR-10 (see ``learnable_images``)."""
    return CIFAR10(*learnable_images(train, 0), *learnable_images(test, 1))


# compiled quickly (tests/conftest.py): rbg draws, the cells' functions without XLA's
# backend optimisation; module-scoped, so the whole file shares the compiled programs
pytestmark = pytest.mark.usefixtures("quickly_compiled")


@pytest.fixture(scope="module")
def data() -> ab.DeviceData:
    cifar = synthetic_cifar()
    return ab.to_device(
        cifar.train_images, cifar.train_labels, cifar.test_images, cifar.test_labels
    )


@pytest.fixture(scope="module")
def tiny_run(data: ab.DeviceData) -> ab.Result:
    """TINY trained by ``train`` one step per call (the CPU default), seed 3."""
    return ab.train(data, TINY, seed=3, loop="step")


# --- the recipe's settings --------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"flip": "sometimes"}, "flip must be 'alternating' or 'random' or 'none'"),
        ({"tta": 3}, "tta must be 0, 1 or 2, got 3"),
        ({"translate": 3}, "translate must be 0, 1 or 2, got 3"),
        ({"batch": 0}, "batch must be at least 1, got 0"),
        ({"epochs": 0.0}, "epochs must be positive, got 0.0"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\), got 1.0"),
        ({"smoothing": 1.0}, r"smoothing must be in \[0, 1\), got 1.0"),
        ({"widths": (8, 16)}, "widths must be three positive ints"),
        ({"widths": (8, 0, 16)}, "widths must be three positive ints"),
        ({"optimizer": "adam"}, "optimizer must be 'sgd' or 'muon', got 'adam'"),
        ({"dtype": "float64"}, "dtype must be None, 'float32', 'bfloat16' or 'float16'"),
        ({"schedule": "cosine"}, "schedule must be 'triangle' or 'constant'"),
    ],
)
def test_recipe_rejects_bad_values(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(ab.AIRBENCH94, **change)


def test_recipe_names_every_problem_at_once() -> None:
    with pytest.raises(ValueError, match=r"batch must be at least 1.*; tta must be 0, 1 or 2"):
        dataclasses.replace(ab.AIRBENCH94, batch=0, tta=7)


def test_a_muon_recipe_refuses_the_sgd_fields_it_would_ignore() -> None:
    """make_muon_optimizer takes the reference's rates: a changed lr would silently do nothing."""
    message = r"optimizer must be 'sgd' to change lr, schedule \(Muon takes the reference's"
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(ab.MUON_RECIPE, lr=1.0, schedule="constant")
    dataclasses.replace(ab.MUON_RECIPE, widths=(8, 16, 16), batch=64, smoothing=0.1)  # fine


@pytest.mark.parametrize(
    ("platform", "capability", "dtype"),
    [("gpu", "9.0", "bfloat16"), ("gpu", "8.0", "bfloat16"), ("gpu", "7.5", "float16"),
     ("gpu", "12.0", "bfloat16"), ("tpu", None, "bfloat16"), ("cpu", None, "float32"),
     ("gpu", None, "float32")],
)  # fmt: skip
def test_compute_dtype_by_device(platform: str, capability: str | None, dtype: str) -> None:
    from types import SimpleNamespace

    device = SimpleNamespace(platform=platform, compute_capability=capability)
    assert ab.compute_dtype(device) == dtype  # type: ignore[arg-type]


# --- the network --------------------------------------------------------------------------


def test_model_shapes_by_layer() -> None:
    """32x32 -> 31 (2x2 whitening, no padding) -> 15 -> 7 -> 3 (pooled), then one max."""
    model = ab.Airbench(widths=(8, 16, 16), seed=0)
    assert model.whiten[...].shape == (2, 2, 3, 24) and model.head[...].shape == (16, 10)
    kernels = [(g.conv1[...].shape, g.conv2[...].shape) for g in model.groups]
    assert kernels == [((3, 3, 24, 8), (3, 3, 8, 8)), ((3, 3, 8, 16), (3, 3, 16, 16)),
                       ((3, 3, 16, 16), (3, 3, 16, 16))]  # fmt: skip
    graphdef, state = nnx.split(model)

    def layers(state: nnx.State, x: jax.Array) -> list[jax.Array]:
        net = nnx.merge(graphdef, state, copy=True)
        h = jax.nn.gelu(ab.conv(x, net.whiten[...], "VALID") + net.whiten_bias[...], False)
        outputs = [h]
        for group in net.groups:
            outputs.append(group(outputs[-1], train=False))
        return [*outputs, net(x)]

    x = jnp.asarray(np.random.default_rng(3).normal(size=(3, 32, 32, 3)), jnp.float32)
    shapes = [out.shape for out in jax.eval_shape(layers, state, x)]  # traced, not compiled
    assert shapes == [(3, 31, 31, 24), (3, 15, 15, 8), (3, 7, 7, 16), (3, 3, 3, 16), (3, 10)]
    assert model.logit_scale == 1 / 9  # the reference's Mul(1/9) after the head
    low = ab.Airbench(widths=(8, 16, 16), seed=0, dtype="bfloat16")
    assert jax.eval_shape(lambda x: low(x), x).dtype == jnp.float32  # bfloat16 inside


def test_identity_init_passes_the_input_through() -> None:
    """With ``dirac`` the first c_in filters of a conv copy their input channel: only the
    centre tap, from the same channel, is 1 (checked on the kernel, by hand)."""
    kernel = np.asarray(ab.conv_kernel(jax.random.key(0), 4, 6))
    identity = np.zeros((3, 3, 4, 4))
    identity[1, 1] = np.eye(4)
    np.testing.assert_array_equal(kernel[..., :4], identity)
    bound = 1 / np.sqrt(9 * 4)  # PyTorch's default uniform init for the rest
    assert np.abs(kernel[..., 4:]).max() <= bound and np.abs(kernel[..., 4:]).std() > bound / 4
    plain = np.asarray(ab.conv_kernel(jax.random.key(0), 4, 6, dirac=False))
    assert np.abs(plain).max() <= bound and not np.array_equal(plain[..., :4], identity)


def test_batch_norm_normalises_and_keeps_running_statistics() -> None:
    norm = ab.BatchNorm(2, momentum=0.6, eps=1e-12)
    norm.bias[...] = jnp.array([0.5, -1.0])
    x = np.random.default_rng(1).normal(3.0, 2.0, size=(4, 3, 3, 2)).astype(np.float32)
    out = np.asarray(norm(jnp.asarray(x), train=True))
    mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    np.testing.assert_allclose(out, (x - mean) / np.sqrt(var) + [0.5, -1.0], atol=1e-5)
    # running averages as PyTorch's momentum = 1 - 0.6 keeps them, of the unbiased variance
    unbiased = x.var((0, 1, 2), ddof=1)
    np.testing.assert_allclose(norm.mean[...], 0.4 * mean, rtol=1e-5)
    np.testing.assert_allclose(norm.var[...], 0.6 + 0.4 * unbiased, rtol=1e-5)
    evaluated = np.asarray(norm(jnp.asarray(x), train=False))
    expected = (x - 0.4 * mean) / np.sqrt(0.6 + 0.4 * unbiased) + [0.5, -1.0]
    np.testing.assert_allclose(evaluated, expected, rtol=1e-5, atol=1e-5)


def test_parameters_are_labelled_by_type_not_name() -> None:
    model = ab.Airbench(widths=(8, 16, 16))
    _, params, _ = nnx.split(model, nnx.Param, ...)
    labels = jax.tree.leaves(ab.kind_of(params))
    assert sorted(set(labels)) == ["Filter", "Head", "NormBias", "WhitenBias"]
    assert labels.count("Filter") == 6 and labels.count("Head") == 1  # 6 conv filter banks
    assert labels.count("WhitenBias") == 1
    assert labels.count("NormBias") == 6  # two batch norms per group
    learned = ab.Airbench(widths=(8, 16, 16), whiten=False)  # the first layer then trains
    assert isinstance(learned.whiten, ab.Filter) and not isinstance(model.whiten, nnx.Param)


# --- whitening, augmentation, loss ----------------------------------------------------------


def test_whitening_filters_decorrelate_patches() -> None:
    rng = np.random.default_rng(0)
    smooth = rng.normal(size=(64, 32, 32, 3)).cumsum(1).cumsum(2)  # correlated pixels
    smooth = smooth @ rng.normal(size=(3, 3))  # and channels
    images = np.asarray(smooth / smooth.std() + 0.5, np.float32)  # not centred
    kernel = np.asarray(ab.whitening_filters(jnp.asarray(images), eps=1e-8))
    assert kernel.shape == (2, 2, 3, 24)
    np.testing.assert_array_equal(kernel[..., 12:], -kernel[..., :12])  # +- each filter
    out = np.asarray(ab.conv(jnp.asarray(images), jnp.asarray(kernel[..., :12]), "VALID"))
    flat = out.reshape(-1, 12)
    # as in the reference, the second moment about zero (not the mean) becomes the identity
    np.testing.assert_allclose(flat.T @ flat / len(flat), np.eye(12), atol=2e-2)
    # the convolution is the patches, read in (row, column, channel) order, times the filters
    patches = np.concatenate(
        [images[:, i : i + 31, j : j + 31] for i in range(2) for j in range(2)], axis=-1
    ).reshape(-1, 12)
    np.testing.assert_allclose(patches @ kernel[..., :12].reshape(12, 12), flat, atol=2e-3)
    # largest eigenvalue first: filter norms 1 / sqrt(eigenvalue) grow
    eigenvalues = np.linalg.eigvalsh(patches.T @ patches / len(patches))[::-1]
    norms = np.linalg.norm(kernel[..., :12].reshape(12, 12), axis=0)
    np.testing.assert_allclose(norms, 1 / np.sqrt(eigenvalues), rtol=2e-2)


def test_normalize_uses_the_reference_mean_and_std() -> None:
    pixels = np.array([[[[0, 128, 255]]]], np.uint8)
    expected = (pixels / 255 - MEAN) / STD
    np.testing.assert_allclose(ab.normalize(jnp.asarray(pixels)), expected, rtol=1e-5)


def test_augment_shifts_and_alternating_flips() -> None:
    images = jnp.arange(2 * 36 * 36 * 3, dtype=jnp.float32).reshape(2, 36, 36, 3)
    key = jax.random.key(0)
    centre = np.asarray(images[:, 2:-2, 2:-2])
    still = ab.augment(images, key, 0, jnp.array([False, False]), 0, "none")
    np.testing.assert_array_equal(np.asarray(still), centre)
    flip = jnp.array([True, False])
    even = np.asarray(ab.augment(images, key, 0, flip, 0, "alternating"))
    odd = np.asarray(ab.augment(images, key, 1, flip, 0, "alternating"))
    np.testing.assert_array_equal(even[0], centre[0, :, ::-1])
    np.testing.assert_array_equal(even[1], centre[1])
    np.testing.assert_array_equal(odd, even[:, :, ::-1])  # every image turns each epoch
    shifted = np.asarray(ab.augment(images, key, 0, flip, 2, "none"))
    padded = np.asarray(images)
    for i in range(2):  # each output is one 32x32 window of the padded image, within 2 pixels
        row, col = np.argwhere(padded[i, :, :, 0] == shifted[i, 0, 0, 0])[0]
        assert 0 <= row <= 4 and 0 <= col <= 4
        np.testing.assert_array_equal(shifted[i], padded[i, row : row + 32, col : col + 32])


def test_loss_is_summed_cross_entropy_against_smoothed_targets() -> None:
    """PyTorch's cross_entropy(label_smoothing=0.2, reduction="sum"), written out."""

    class Fixed(nnx.Module):
        def __init__(self, logits: np.ndarray) -> None:
            self.logits = nnx.Param(jnp.asarray(logits))

        def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
            return self.logits[...]

    logits = np.random.default_rng(2).normal(size=(3, 10))
    labels = np.array([1, 4, 9])
    targets = np.full((3, 10), 0.2 / 10)
    targets[np.arange(3), labels] += 0.8
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -(targets * log_softmax).sum()
    got = ab.loss_fn(Fixed(logits), jnp.zeros(3), jnp.asarray(labels), 0.2)  # type: ignore[arg-type]
    assert float(got) == pytest.approx(expected, rel=1e-5)


# --- the optimiser and lookahead --------------------------------------------------------------


def test_lr_shape_is_the_reference_triangle() -> None:
    """airbench94: np.interp(step, [0, int(0.23 * total), total], [0.2, 1, 0.07])."""
    total = 476
    shape = ab.lr_shape(total)
    steps = np.arange(total + 1)
    expected = np.interp(steps, [0, int(0.23 * total), total], [0.2, 1.0, 0.07])
    np.testing.assert_allclose([float(shape(s)) for s in steps], expected, rtol=1e-5)
    assert float(ab.lr_shape(total, "constant")(300)) == 1.0


def test_two_steps_are_torch_nesterov_sgd_per_group() -> None:
    """The reference: lr = 11.5 / kilostep, weight_decay = wd / lr, biases 64x lr."""
    total, batch, momentum = 10, 64, 0.85
    tx = ab.make_optimizer(total, batch=batch)
    params = {
        "w": ab.Filter(jnp.array([1.0, -2.0])),
        "h": ab.Head(jnp.array([0.7])),
        "b": ab.NormBias(jnp.array([0.5])),
        "c": ab.WhitenBias(jnp.array([0.3])),
    }
    state = tx.init(params)
    kilostep = 1024 * (1 + 1 / (1 - momentum))
    torch_lr, torch_wd = 11.5 / kilostep, 0.0153 * batch / kilostep
    groups = {"w": torch_lr, "h": torch_lr, "b": 64 * torch_lr, "c": torch_lr}
    want = {k: np.asarray(v[...]) for k, v in params.items()}
    buf = {k: np.zeros_like(v) for k, v in want.items()}
    peak = int(0.23 * total)
    gradients = [{"w": [0.3, 0.1], "h": [0.4], "b": [-1.0], "c": [2.0]},
                 {"w": [0.2, -0.4], "h": [-0.1], "b": [0.5], "c": [1.0]}]  # fmt: skip
    for step, g in enumerate(gradients):
        grads = {k: type(params[k])(jnp.array(v)) for k, v in g.items()}
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        factor = 0.2 + 0.8 * step / peak  # torch's LambdaLR before the peak
        for k, lr in groups.items():
            d = np.array(g[k]) + torch_wd / lr * want[k]  # PyTorch adds decay to the gradient
            buf[k] = momentum * buf[k] + d
            want[k] = want[k] - lr * factor * (d + momentum * buf[k])
    for k in params:
        np.testing.assert_allclose(np.asarray(params[k][...]), want[k], rtol=1e-5)


def test_first_layer_bias_stops_after_its_steps() -> None:
    tx = ab.make_optimizer(10, 64, ab.AIRBENCH94, whiten_bias_steps=2)
    params = {"c": ab.WhitenBias(jnp.array([0.3])), "w": ab.Filter(jnp.array([1.0]))}
    grads = {"c": ab.WhitenBias(jnp.array([1.0])), "w": ab.Filter(jnp.array([1.0]))}
    state, seen = tx.init(params), []
    for _ in range(4):
        updates, state = tx.update(grads, state, params)
        seen.append((float(updates["c"][...][0]), float(updates["w"][...][0])))
    assert all(c != 0 for c, _ in seen[:2]) and all(c == 0 for c, _ in seen[2:])
    assert all(w != 0 for _, w in seen)


def test_lookahead_follows_the_reference_schedule() -> None:
    total = 20
    for count in (4, 5, 10, 20):
        slow, fast = ab.lookahead(jnp.zeros(1), jnp.ones(1), jnp.array(count), total)
        decay = 1.0 if count == total else 0.95**5 * (count / total) ** 3
        if count % 5 and count != total:  # not a sync step: nothing moves
            assert float(slow[0]) == 0 and float(fast[0]) == 1
        else:  # average <- decay * average + (1 - decay) * weights; weights <- average
            assert float(slow[0]) == pytest.approx(1 - decay, rel=1e-6)
            assert float(fast[0]) == float(slow[0])


# --- test-time augmentation and the accuracy ----------------------------------------------


class LinearLogits(nnx.Module):
    """A stand-in network: logits = flattened image @ weights (linear, so the combination of
    views is easy to compute independently)."""

    def __init__(self, weights: np.ndarray) -> None:
        self.weights = nnx.Param(jnp.asarray(weights))

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return x.reshape(len(x), -1).astype(jnp.float32) @ self.weights[...]


def numpy_views(x: np.ndarray) -> list[np.ndarray]:
    """The six test-time views: the image, its mirror, and both shifted one pixel up-left
    and down-right (reflect padding), each with its mirror."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    up_left, down_right = padded[:, :-2, :-2], padded[:, 2:, 2:]
    return [x, x[:, :, ::-1], up_left, up_left[:, :, ::-1], down_right, down_right[:, :, ::-1]]


def numpy_tta_logits(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(level 0, 1, 2) x images x classes: the view, the mean of two, 1/4 1/4 1/8 1/8 1/8 1/8."""
    logits = [view.reshape(len(x), -1) @ weights for view in numpy_views(x)]
    return np.stack(
        [
            logits[0],
            (logits[0] + logits[1]) / 2,
            (logits[0] + logits[1]) / 4 + sum(logits[2:]) / 8,
        ]
    )


def test_tta_views_by_hand() -> None:
    x = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1)
    views = np.asarray(ab.tta_views(jnp.asarray(x)))
    assert views.shape == (6, 2, 4, 4, 1)
    # the first image's up-left view, row by row: reflect padding repeats row 1 and column 1
    np.testing.assert_array_equal(views[2, 0, :2, :, 0], [[5, 4, 5, 6], [1, 0, 1, 2]])
    for got, want in zip(views, numpy_views(x), strict=True):
        np.testing.assert_array_equal(got, want)


def test_tta_logits_weight_the_views_as_airbench_does() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    weights = rng.normal(size=(48, 10)).astype(np.float32)
    expected = numpy_tta_logits(((images / 255 - MEAN) / STD).astype(np.float32), weights)
    graphdef, params, frozen, stats = nnx.split(
        LinearLogits(weights), nnx.Param, ab.Frozen, nnx.BatchStat
    )
    for level in (0, 1, 2):
        got = ab.tta_logits(graphdef, params, frozen, stats, jnp.asarray(images), level)
        np.testing.assert_allclose(got, expected[level], rtol=1e-4, atol=1e-4)


def test_accuracy_counts_a_last_partial_chunk_and_never_its_padding() -> None:
    """Seven images in chunks of 3: the last chunk is padded with two blank images, whose
    predictions must not be counted (nor shift the labels of the real ones)."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (7, 4, 4, 3), dtype=np.uint8)
    weights = rng.normal(size=(48, 10)).astype(np.float32)
    normalized = ((images / 255 - MEAN) / STD).astype(np.float32)
    predicted = numpy_tta_logits(normalized, weights).argmax(-1)
    labels = predicted[2].copy()
    labels[[1, 6]] = (labels[[1, 6]] + 1) % 10  # 5 of 7 right at level 2; one in the last chunk
    expected = (predicted == labels).sum(-1) / 7
    assert expected[2] == 5 / 7
    graphdef, *state = nnx.split(LinearLogits(weights), nnx.Param, ab.Frozen, nnx.BatchStat)
    for chunk in (3, 7):
        for level in (0, 1, 2):
            got = ab.accuracy(graphdef, state, jnp.asarray(images), labels, level, chunk)
            assert got == pytest.approx(expected[level]), (chunk, level)


# --- training: the harness, the cells by hand, the loops --------------------------------------


def test_train_rejects_a_batch_larger_than_the_data(data: ab.DeviceData) -> None:
    with pytest.raises(ValueError, match="batch 256 at most the 128 training images"):
        ab.train(data, dataclasses.replace(TINY, batch=256))
    with pytest.raises(ValueError, match="loop must be 'epoch' or 'step'"):
        ab.train(data, TINY, loop="scan")


def test_harness_gives_the_losses_of_the_cells_by_hand(
    data: ab.DeviceData, tiny_run: ab.Result
) -> None:
    """train() (one call per step) against the cells composed by hand (scanned epochs)."""
    model = ab.Airbench(TINY.widths, 3, "float32")
    model.whiten[...] = ab.whitening_filters(ab.normalize(data.train[:, 2:-2, 2:-2]))
    tx = ab.make_optimizer(6, 32, TINY, 3 * 4)
    graphdef, state = ab.init_state(model, tx)
    key_flip, key = jax.random.split(jax.random.key(3))
    flip = jax.random.bernoulli(key_flip, 0.5, (TRAIN_IMAGES,))
    losses = []
    for epoch in range(2):
        state, loss = ab.train_epoch(
            graphdef, tx, state, data.train, data.train_labels,
            jax.random.fold_in(key, epoch), epoch, flip, total_steps=6, batch=32, recipe=TINY,
        )  # fmt: skip
        losses.extend(np.asarray(loss).tolist())
    assert len(tiny_run.losses) == 6 and np.all(np.isfinite(tiny_run.losses))
    np.testing.assert_allclose(tiny_run.losses, np.array(losses[:6]) / 32, rtol=2e-5)
    assert int(state[-1]) == 6  # the two extra scanned steps changed nothing
    params, _, stats, _, slow, _ = state
    for got, want in zip(jax.tree.leaves((params, stats)), jax.tree.leaves(slow), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))  # last step: average
    accuracy = ab.accuracy(graphdef, state, data.test, data.test_labels, 0, TEST_IMAGES)
    assert tiny_run.test_accuracy[0] == pytest.approx(accuracy, abs=1 / TEST_IMAGES)
    assert set(tiny_run.test_accuracy) == {0} and 0 <= tiny_run.train_accuracy <= 1


def test_a_run_repeats_exactly_and_seeds_differ(data: ab.DeviceData, tiny_run: ab.Result) -> None:
    again = ab.train(data, TINY, seed=3)  # the CPU default: one call per step
    np.testing.assert_array_equal(again.losses, tiny_run.losses)
    assert again.test_accuracy == tiny_run.test_accuracy
    other = ab.train(data, TINY, seed=4)
    assert not np.array_equal(other.losses, tiny_run.losses)
    # the first loss, before any update, is about ln 10 (ten classes, logits near 0)
    assert abs(tiny_run.losses[0] - np.log(10)) < 0.1


def test_a_diverged_run_reports_nan_losses(data: ab.DeviceData) -> None:
    """A step past the float range must show as NaN, not be dropped or averaged away."""
    result = ab.train(data, dataclasses.replace(TINY, lr=1e30), seed=0)
    assert len(result.losses) == 6 and np.isfinite(result.losses[0])  # before any update
    assert np.isnan(result.losses[1:]).all()


# --- airbench94_muon ----------------------------------------------------------------------


def newton_schulz_float64(matrix: np.ndarray, steps: int = 3) -> np.ndarray:
    """airbench94_muon's iteration, written out in NumPy float64 (the reference's order)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = matrix / (np.linalg.norm(matrix) + 1e-7)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


@pytest.mark.parametrize("shape", [(64, 216), (300, 40)])
def test_newton_schulz_orthogonalises_in_bfloat16(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(4)
    # a gradient-like matrix: a few strong directions and many weak ones
    u, _ = np.linalg.qr(rng.normal(size=(shape[0], min(shape))))
    v, _ = np.linalg.qr(rng.normal(size=(shape[1], min(shape))))
    singular = np.geomspace(10.0, 0.01, min(shape))
    matrix = (u * singular) @ v.T
    result = ab.newton_schulz(jnp.asarray(matrix, jnp.float32))
    assert result.dtype == jnp.bfloat16 and result.shape == shape
    ours = np.asarray(result.astype(jnp.float32), np.float64)
    expected = newton_schulz_float64(matrix)
    assert np.linalg.norm(ours - expected) / np.linalg.norm(expected) < 0.05  # bfloat16
    # the same singular vectors; singular values with at least 2% of the norm end up in
    # 0.5-1.3, the weakest grow by about a^3 = 3.4445^3 = 41 (the slope at 0, three times)
    diagonal = u.T @ ours @ v
    off_diagonal = diagonal - np.diag(np.diag(diagonal))
    assert np.linalg.norm(off_diagonal) < 0.05 * np.linalg.norm(np.diag(diagonal))
    share = singular / np.linalg.norm(singular)
    mapped = np.diag(diagonal)
    assert np.all((mapped[share >= 0.02] > 0.5) & (mapped[share >= 0.02] < 1.3))
    np.testing.assert_allclose(mapped[share < 0.002] / share[share < 0.002], 3.4445**3, rtol=0.15)


def test_muon_steps_follow_the_reference_in_float64() -> None:
    """airbench94_muon's Muon.step: Nesterov buffer, weight renormalised, Newton-Schulz step."""
    rng = np.random.default_rng(0)
    p = rng.normal(size=(3, 3, 8, 16))
    tx = ab.muon(lambda s: 0.24 * (1 - s / 10), momentum=0.6)
    params = {"w": jnp.asarray(p, jnp.float32)}
    state = tx.init(params)
    want, buf = p, np.zeros_like(p)
    for step in range(2):
        g = rng.normal(size=p.shape)
        updates, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
        params = optax.apply_updates(params, updates)
        buf = 0.6 * buf + g
        d = g + 0.6 * buf
        want = want * np.sqrt(16) / np.linalg.norm(want)  # len(p) filters in PyTorch's layout
        torch_layout = d.transpose(3, 2, 0, 1).reshape(16, -1)  # (out, in * 3 * 3)
        update = newton_schulz_float64(torch_layout).reshape(16, 8, 3, 3).transpose(2, 3, 1, 0)
        want = want - 0.24 * (1 - step / 10) * update
    got = np.asarray(params["w"], np.float64)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.02  # bfloat16 iteration


def test_muon_recipe_sgd_groups_are_the_reference_torch_sgd() -> None:
    """airbench94_muon's optimizer1: Nesterov SGD (0.85), head lr 0.67, biases 0.053,
    weight_decay = 2e-6 * batch / lr, every lr times (1 - step / total); the whitening
    bias's over its own steps, and no update at all once they are done."""
    total, batch, bias_steps, momentum = 10, 2000, 2, 0.85
    tx = ab.make_muon_optimizer(total, batch, bias_steps)
    params = {
        "h": ab.Head(jnp.array([0.7, -0.2])),
        "b": ab.NormBias(jnp.array([0.5])),
        "c": ab.WhitenBias(jnp.array([0.3])),
    }
    state = tx.init(params)
    lrs = {"h": 0.67, "b": 0.053, "c": 0.053}
    want = {k: np.asarray(v[...], np.float64) for k, v in params.items()}
    buf = {k: np.zeros_like(v) for k, v in want.items()}
    gradients = [{"h": [0.3, 0.1], "b": [-1.0], "c": [2.0]},
                 {"h": [0.2, -0.4], "b": [0.5], "c": [1.0]},
                 {"h": [-0.5, 0.3], "b": [0.2], "c": [-3.0]}]  # fmt: skip
    for step, g in enumerate(gradients):
        grads = {k: type(params[k])(jnp.array(v)) for k, v in g.items()}
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        for k, lr in lrs.items():
            if k == "c" and step >= bias_steps:  # whiten_bias_grad=False: no gradient, no step
                continue
            steps = bias_steps if k == "c" else total
            d = np.array(g[k]) + 2e-6 * batch / lr * want[k]
            buf[k] = momentum * buf[k] + d
            want[k] = want[k] - lr * (1 - step / steps) * (d + momentum * buf[k])
    for k in params:
        np.testing.assert_allclose(np.asarray(params[k][...]), want[k], rtol=1e-5)


def test_muon_whitening_bias_can_stay_frozen() -> None:
    """whiten_bias_epochs=0: no division by zero in the bias's schedule, no NaN, no step."""
    tx = ab.make_muon_optimizer(10, 64, whiten_bias_steps=0)
    params = {"c": ab.WhitenBias(jnp.array([0.3, -0.1]))}
    state = tx.init(params)
    for _ in range(2):
        updates, state = tx.update({"c": ab.WhitenBias(jnp.array([1.0, 2.0]))}, state, params)
        np.testing.assert_array_equal(np.asarray(updates["c"][...]), [0.0, 0.0])


def test_muon_recipe_trains_a_few_steps(data: ab.DeviceData) -> None:
    recipe = dataclasses.replace(ab.MUON_RECIPE, widths=TINY.widths, batch=32, epochs=1.0, tta=0)
    result = ab.train(data, recipe, seed=0)
    assert len(result.losses) == 4 and np.all(np.isfinite(result.losses))
    # near chance at the start (these synthetic images are not centred, so not exactly log 10)
    assert abs(result.losses[0] - np.log(10)) < 0.25


# --- several devices --------------------------------------------------------------------------

SHARDED = textwrap.dedent(
    """
    import dataclasses, json, sys
    sys.path.insert(0, {root!r})
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    jax.config.update("jax_default_prng_impl", "rbg")  # see quickly_compiled
    import jax.numpy as jnp, numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    from lessons import airbench as ab

    recipe = dataclasses.replace(ab.AIRBENCH94, widths=(8, 16, 16), batch=32)
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.normal(size=(3, 32, 32, 32, 3)), jnp.float32)
    ys = jnp.asarray(rng.integers(0, 10, (3, 32)), jnp.int32)

    def three_steps(place_state, place_batch):
        model = ab.Airbench(recipe.widths, 0, "float32")
        model.whiten[...] = ab.whitening_filters(xs[0])
        tx = ab.make_optimizer(3, recipe.batch, recipe)
        graphdef, state = ab.init_state(model, tx)
        state, losses = place_state(state), []
        for x, y in zip(xs, ys):
            x, y = place_batch(x, y)
            state, loss = ab.train_step(graphdef, tx, state, x, y, total_steps=3, recipe=recipe)
            losses.append(float(loss))
        return losses, state, x

    one, one_state, _ = three_steps(lambda s: s, lambda x, y: (x, y))
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    with jax.set_mesh(mesh):
        eight, eight_state, x = three_steps(
            lambda s: jax.device_put(s, NamedSharding(mesh, P())),
            lambda x, y: jax.device_put((x, y), NamedSharding(mesh, P("data"))),
        )
    worst = max(
        float(jnp.abs(a - b).max() / (jnp.abs(a).max() + 1e-12))
        for a, b in zip(jax.tree.leaves(one_state[0]), jax.tree.leaves(eight_state[0]))
    )
    shards = sorted({{s.data.shape[0] for s in x.addressable_shards}})
    print(json.dumps(dict(devices=len(jax.devices()), one=one, eight=eight, worst=worst,
                          shards=shards)))
    """
)


@pytest.mark.slow  # a fresh JAX process that compiles the step twice: 15-40 s on 2 CPU cores
def test_sharded_step_on_eight_devices_equals_one_device() -> None:
    """Three steps with the batch split over 8 simulated CPU devices (state replicated)
    against the same steps on one device: the all-reduce only reorders the sums."""
    done = subprocess.run(
        [sys.executable, "-c", SHARDED.format(root=str(ROOT))],
        capture_output=True,
        text=True,
        env={  # compiled as quickly as the rest of this file (see quickly_compiled)
            **os.environ,
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0",
        },
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["devices"] == 8 and out["shards"] == [4]  # 32 images: 4 on each device
    np.testing.assert_allclose(out["eight"], out["one"], rtol=1e-4)
    assert out["worst"] < 1e-4


# --- benchmarks/fast_cifar10.py and the notebook's results cell -------------------------------


def fake_result(accuracy: float, seconds: float) -> ab.Result:
    return ab.Result({0: accuracy - 0.01, 1: accuracy - 0.005, 2: accuracy}, 0.5,
                     np.ones(3), seconds)  # fmt: skip


def test_benchmark_summarises_and_records_the_notebooks_cpu_recipe(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--recipe cpu trains whatever CPU_RECIPE is in lessons.airbench; the summary's numbers
    by hand; the line is appended after the file's earlier (historic) lines."""
    bench = load_script(BENCHMARK)
    results = tmp_path / "fast_cifar10.jsonl"
    results.write_text('{"benchmark": "fast_cifar10", "device": "NVIDIA H200"}\n')
    monkeypatch.setattr(bench, "RESULTS", results)
    monkeypatch.setattr("helpers.load_cifar10", synthetic_cifar)
    chosen = dataclasses.replace(TINY, smoothing=0.1)
    monkeypatch.setattr(ab, "CPU_RECIPE", chosen)
    # (accuracy, seconds) of each call: the warm-up first, then the timed runs
    runs = iter([(0.50, 9.0), (0.40, 1.0), (0.60, 2.0), (0.80, 4.0)] + [(0.1, 1.0)] * 2)
    trained = []

    def train(data: ab.DeviceData, recipe: ab.Recipe, seed: int) -> ab.Result:
        trained.append((recipe, seed, data.train.shape[0]))
        return fake_result(*next(runs))

    monkeypatch.setattr(ab, "train", train)
    summary = bench.main(["--recipe", "cpu", "--runs", "3", "--seed", "10"])
    assert trained == [(chosen, 13, 128), (chosen, 10, 128), (chosen, 11, 128), (chosen, 12, 128)]
    assert summary["acc_mean"] == pytest.approx(0.6) and summary["acc_std"] == pytest.approx(0.2)
    assert summary["seconds_per_run"] == 2.0 and summary["seconds_min"] == 1.0
    assert summary["seconds_max"] == 4.0 and summary["warmup_seconds"] == 9.0
    assert summary["acc_no_tta_mean"] == pytest.approx(0.59)
    assert summary["code"] == "lessons.airbench" and summary["recipe"] == "cpu"
    assert summary["settings"] == str(chosen) and summary["data"] == "official"
    lines = results.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1]) == summary
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == summary
    bench.main(["--recipe", "cpu", "--runs", "1", "--no-record"])
    assert len(results.read_text().splitlines()) == 2
    # without a warm-up: the first run compiles, counts for accuracy, not for the times
    runs = iter([(0.50, 9.0), (0.70, 1.0), (0.90, 3.0)])
    trained.clear()
    summary = bench.main(["--recipe", "cpu", "--runs", "3", "--no-warmup", "--no-record"])
    assert [seed for _, seed, _ in trained] == [0, 1, 2]
    assert summary["acc_mean"] == pytest.approx(0.7) and summary["seconds_per_run"] == 2.0
    assert (summary["seconds_min"], summary["seconds_max"]) == (1.0, 3.0)
    assert summary["warmup_seconds"] is None and summary["first_run_seconds"] == 9.0
    with pytest.raises(SystemExit):
        bench.main(["--runs", "1", "--no-warmup"])
    assert "--runs must be at least 2, got 1" in capsys.readouterr().err


def test_benchmark_quick_trains_each_recipe_at_quick_sizes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_script(BENCHMARK)
    for name, full in [("airbench94", ab.AIRBENCH94), ("airbench94_muon", ab.MUON_RECIPE),
                       ("cpu", ab.CPU_RECIPE)]:  # fmt: skip
        quick = bench.recipe_named(name, quick=True)
        sizes = (ab.QUICK_RECIPE.widths, ab.QUICK_RECIPE.batch, ab.QUICK_RECIPE.epochs)
        assert (quick.widths, quick.batch, quick.epochs) == sizes
        assert dataclasses.replace(quick, widths=full.widths, batch=full.batch,
                                   epochs=full.epochs) == full  # fmt: skip
    # a real run, at TINY's sizes and TTA level so that it reuses tiny_run's compiled programs
    monkeypatch.setattr(ab, "QUICK_RECIPE", TINY)
    monkeypatch.setattr(ab, "AIRBENCH94", dataclasses.replace(ab.AIRBENCH94, tta=TINY.tta))
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results.jsonl")
    monkeypatch.setattr("helpers.load_cifar10", synthetic_cifar)
    summary = bench.main(["--quick", "--runs", "1"])
    err = capsys.readouterr().err
    assert "warm-up (compiles, not counted), seed 1" in err and "run 1/1, seed 0:" in err
    assert summary["quick"] and summary["runs"] == 1 and summary["train_images"] == 128
    assert 0 <= summary["acc_mean"] <= 1 and summary["seconds_per_run"] > 0
    assert summary["settings"] == str(TINY)
    assert not (tmp_path / "results.jsonl").exists()  # --quick is never recorded
    with pytest.raises(SystemExit):
        bench.main(["--runs", "0"])
    assert "--runs must be at least 1, got 0" in capsys.readouterr().err


def test_notebook_prints_only_the_lines_of_its_own_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Section 10's cell, run in a copy of the layout: the old port's lines are left out."""
    notebook = json.loads(NOTEBOOK.read_text())
    cells = [
        "".join(cell["source"])
        for cell in notebook["cells"]
        if cell["cell_type"] == "code" and "results/fast_cifar10.jsonl" in "".join(cell["source"])
    ]
    assert len(cells) == 1
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    exec(cells[0], {})  # nothing recorded yet
    assert "nothing recorded yet: run benchmarks/fast_cifar10.py" in capsys.readouterr().out
    results = tmp_path / "benchmarks" / "results" / "fast_cifar10.jsonl"
    results.parent.mkdir(parents=True)
    old = {
        "benchmark": "fast_cifar10",
        "device": "NVIDIA H200",
        "recipe": "airbench94",
        "runs": 20,
        "acc_mean": 0.9062,
        "acc_std": 0.002,
        "seconds_per_run": 1.9017,
        "compile_seconds": 28.8,
        "data": "cifar10-jpeg.tar.gz",
    }  # an old port's line
    new = old | {"code": "lessons.airbench", "acc_mean": 0.9071, "runs": 5, "cpu_count": 16,
                 "seconds_min": 1.88, "seconds_max": 1.95, "warmup_seconds": 31.0,
                 "date": "2026-12-01"}  # fmt: skip
    muon = new | {"recipe": "airbench94_muon", "acc_mean": 0.9066}
    newer = new | {"acc_mean": 0.9080, "date": "2026-12-07"}  # the same recipe and machine
    results.write_text("".join(json.dumps(line) + "\n" for line in (old, new, muon, newer)))
    exec(cells[0], {})
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2, printed  # the cells' lines only, the newest of each recipe
    assert printed[0].startswith("NVIDIA H200, AIRBENCH94: ")  # the recipe's name in the cells
    assert "90.80%" in printed[0] and "5 seeds" in printed[0] and "2026-12-07" in printed[0]
    assert printed[1].startswith("NVIDIA H200, MUON_RECIPE: 90.66%")
    assert "90.62%" not in "".join(printed) and "90.71%" not in "".join(printed)
