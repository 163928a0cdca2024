"""A fast CIFAR-10 trainer in JAX and Flax NNX: the airbench94 recipe, with a switch per idea.

This ports the network and hyperparameters of airbench94 (Keller Jordan, "94% on
CIFAR-10 in 3.29 seconds on a single GPU", 2024, arXiv:2404.00498) to JAX. Notebook
06 builds it up one idea at a time; every row of its ablation table is
:func:`train_and_evaluate` with a different :class:`Config`. :data:`AIRBENCH94_MUON`
is its successor airbench94_muon, which trains the convolution filters with the Muon
optimiser (:func:`muon_update`).

How the code is organised, and why:

- **Data** lives on the accelerator as uint8 (:class:`DeviceData`): 194 MB for the
  training set, reflect-padded once for the random translations. Each training
  step gathers its batch by index, crops, flips and normalises it on the device.
- **Every switch that is only a number is data, not code.** Learning rates, weight
  decay, momentum, label smoothing, augmentation strength, the flip mode, lookahead
  and the learning-rate schedule reach the compiled function as arrays
  (:class:`Hyper` per run, :class:`StepInputs` per step). So most ablation rows
  share one compiled function; the model, the dtype, shapes (batch size, evaluation
  batch, number of TTA views), the loop structure, donation, where the data live and
  the optimiser's state layout (Muon or SGD) select compiled code.
- **One compiled call per epoch**: :func:`train_steps` runs a ``lax.scan`` over the
  steps it is given, with the training state donated, so the state is updated in
  place. The same function given one step at a time is the "one call per step" row.
- Compiled functions are cached per shape and configuration, and their compile time
  is measured apart from the run time (:attr:`Result.compile_seconds`).

Conventions that follow the PyTorch reference: batch norm momentum 0.6 in Flax's
convention (PyTorch's 0.4), epsilon 1e-12, no batch-norm scale; convolutions without
bias, with PyTorch's default uniform init and identity (dirac) init of the first
filters; exact GELU; label smoothing 0.2; Nesterov SGD whose learning rate and weight
decay are given per 1,024 examples. The loss is the batch mean (not the sum, as in
the reference); the learning rates are converted so the updates are the same.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from helpers.data import CIFAR10

#: Per-channel mean and standard deviation of CIFAR-10's training images (0-1 scale).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
#: Training images are reflect-padded by this many pixels once, for random translation.
PAD = 2
Flip = Literal["none", "random", "alternating"]
#: Config fields in the model's compiled-code key; most other fields reach the step as
#: data (shapes, ``loop``, ``donate``, ``tta`` and the optimiser's state layout aside).
STATIC_FIELDS = (
    "model", "widths", "dtype", "batchnorm_momentum", "logit_scale", "head_init",
    "whiten_bias_init",
)  # fmt: skip
#: Muon's quintic Newton-Schulz iteration (coefficients and steps of airbench94_muon).
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NEWTON_SCHULZ_STEPS = 3


# --- configuration -----------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One training recipe. The defaults are airbench94; each field is one ablation switch.

    Accuracy switches:
        model: ``"lenet"`` (notebook 05's small network) or ``"airbench"`` (three
            conv blocks with batch norm, ``widths`` channels).
        normalize: subtract CIFAR-10's channel means and divide by the stds
            (else pixels are scaled to 0-1 only).
        flip: ``"none"``, ``"random"`` (each image each epoch), or ``"alternating"``
            (random in epoch 0, then every image flips every other epoch).
        translate: random shifts of up to this many pixels (0 or up to ``PAD``).
        label_smoothing: weight of the uniform distribution mixed into the targets.
        optimizer: ``"momentum"`` (notebook 05: SGD, learning rate 0.01, momentum 0.9,
            constant), ``"nesterov"`` (airbench: Nesterov SGD with ``lr``,
            ``momentum``, ``weight_decay``, ``bias_scaler`` and a warm-up/decay schedule)
            or ``"muon"`` (airbench94_muon: the conv blocks' filters by Muon with
            ``muon_lr`` and ``muon_momentum``, every other parameter as ``"nesterov"``,
            and the whitening bias in the bias group).
        whiten: first layer initialised from the whitening transform of 2x2 image
            patches and frozen (its bias trains for ``whiten_bias_epochs``, following the
            main schedule, or with ``whiten_bias_decay`` a linear decay to zero over
            those epochs); otherwise the same layer is an ordinary trainable convolution.
        lookahead: every 5 steps, pull the weights towards their moving average.
        tta: test-time augmentation: 0 none, 1 mirror, 2 mirror and 1-pixel shifts.

    Systems switches:
        dtype: ``"bfloat16"`` (compute; parameters, batch-norm statistics and the loss
            stay float32) or ``"float32"``.
        loop: ``"epoch"`` (one compiled call per epoch) or ``"step"`` (one per step).
        donate: let the compiled function reuse the input state's memory.
        data_on_device: ``False`` crops and flips each batch with NumPy on the host and
            copies it to the device every step (implies one call per step).
    """

    model: Literal["lenet", "airbench"] = "airbench"
    widths: tuple[int, int, int] = (64, 256, 256)
    normalize: bool = True
    flip: Flip = "alternating"
    translate: int = 2
    label_smoothing: float = 0.2
    optimizer: Literal["momentum", "nesterov", "muon"] = "nesterov"
    whiten: bool = True
    lookahead: bool = True
    tta: int = 2
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    loop: Literal["epoch", "step"] = "epoch"
    donate: bool = True
    data_on_device: bool = True
    # hyperparameters of airbench94 (lr and weight_decay per 1,024 examples)
    epochs: float = 9.9
    batch_size: int = 1024
    lr: float = 11.5
    momentum: float = 0.85
    weight_decay: float = 0.0153
    bias_scaler: float = 64.0
    warmup_fraction: float = 0.23
    lr_start: float = 0.2
    lr_end: float = 0.07
    whiten_bias_epochs: int = 3
    whiten_bias_decay: bool = False
    whiten_eps: float = 5e-4
    whiten_images: int = 5000
    batchnorm_momentum: float = 0.6
    logit_scale: float = 1 / 9
    #: "uniform": PyTorch's default init of the linear head; "unit_std": the same, then
    #: scaled to standard deviation 1 (airbench94_muon)
    head_init: Literal["uniform", "unit_std"] = "uniform"
    #: the whitening layer's bias at the start: "zeros" (airbench94) or "uniform"
    #: (PyTorch's default for a conv bias, +-1/sqrt(12): airbench94_muon's plain Conv2d)
    whiten_bias_init: Literal["zeros", "uniform"] = "zeros"
    muon_lr: float = 0.24
    muon_momentum: float = 0.6
    lookahead_every: int = 5
    #: 0: lookahead as airbench94.py (averaging from the first step). N > 0: as the
    #: ``airbench`` package's ``train`` (and an earlier airbench94.py): the average starts
    #: in epoch N and the weights are also copied back from it at the end of every epoch.
    lookahead_start_epochs: int = 0
    eval_batch: int = 2000

    def __post_init__(self) -> None:
        choices = {
            "model": ("lenet", "airbench"),
            "dtype": ("bfloat16", "float32"),
            "loop": ("epoch", "step"),
            "head_init": ("uniform", "unit_std"),
            "whiten_bias_init": ("zeros", "uniform"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )
        for name in ("batch_size", "eval_batch", "lookahead_every", "whiten_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.epochs > 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.whiten_bias_epochs < 0 or self.lookahead_start_epochs < 0:
            raise ValueError("whiten_bias_epochs and lookahead_start_epochs must be 0 or more")
        if self.translate < 0 or self.translate > PAD:
            raise ValueError(f"translate must be 0 to {PAD}, got {self.translate}")
        if self.tta not in (0, 1, 2):
            raise ValueError(f"tta must be 0, 1 or 2, got {self.tta}")
        if self.flip not in ("none", "random", "alternating"):
            raise ValueError(f"flip must be none, random or alternating, got {self.flip!r}")
        if self.optimizer not in ("momentum", "nesterov", "muon"):
            raise ValueError(
                f"optimizer must be momentum, nesterov or muon, got {self.optimizer!r}"
            )
        if self.optimizer == "muon" and self.model != "airbench":
            raise ValueError("optimizer 'muon' needs model 'airbench' (it updates its conv blocks)")

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    def static_key(self) -> tuple[Any, ...]:
        """The fields that change the compiled code (the others are data)."""
        return tuple(getattr(self, name) for name in STATIC_FIELDS)


#: airbench94 as published (the defaults of :class:`Config`).
AIRBENCH94 = Config()


def kilostep_scale(momentum: float) -> float:
    """airbench's unit for SGD numbers: 1,024 examples times ``1 + 1/(1 - momentum)``,
    airbench's estimate of how much (Nesterov) momentum amplifies a constant gradient
    (for PyTorch's Nesterov update the exact factor is ``1/(1 - momentum)``).

    A Config's ``lr`` is PyTorch's learning rate for the summed loss times this scale, its
    ``weight_decay`` PyTorch's learning rate x weight decay per example times this scale
    (see :func:`optimizer_settings`).
    """
    return 1024 * (1 + 1 / (1 - momentum))


# airbench94_muon gives its SGD numbers for PyTorch's SGD on the summed loss, momentum 0.85
_KILOSTEP = kilostep_scale(0.85)
#: airbench94_muon (Jordan, github.com/KellerJordan/cifar10-airbench): Muon for the
#: filters, batch 2,000 for 8 epochs, a linear decay to zero, no lookahead, logits
#: divided by the width (256) of a head with unit standard deviation.
AIRBENCH94_MUON = Config(
    optimizer="muon",
    lookahead=False,
    epochs=8.0,
    batch_size=2000,
    lr=0.67 * _KILOSTEP,  # the head's summed-loss learning rate 0.67
    bias_scaler=0.053 / 0.67,  # biases (whitening and batch norm): 0.053
    weight_decay=2e-6 * _KILOSTEP,  # learning rate x decay = 2e-6 x batch size per step
    warmup_fraction=0.0,
    lr_end=0.0,
    whiten_bias_decay=True,
    logit_scale=1 / 256,
    head_init="unit_std",
    whiten_bias_init="uniform",
)
#: Notebook 05's recipe expressed as a Config: small network, raw pixels, plain momentum.
BASELINE = Config(
    model="lenet",
    normalize=False,
    flip="none",
    translate=0,
    label_smoothing=0.0,
    optimizer="momentum",
    whiten=False,
    lookahead=False,
    tta=0,
)


def smoke_config(config: Config, widths: tuple[int, int, int] = (8, 16, 16)) -> Config:
    """The same recipe shrunk for a CPU: narrow blocks, batch 32, float32, small evaluations.

    (bfloat16 is emulated on most CPUs, so float32 is faster there.)
    """
    return dataclasses.replace(
        config, widths=widths, batch_size=32, dtype="float32", eval_batch=128, whiten_images=128
    )


# --- data on the device ------------------------------------------------------------


@dataclass(frozen=True)
class DeviceData:
    """CIFAR-10 on the accelerator, as uint8. Training images are reflect-padded by PAD."""

    train_padded: jax.Array  # (N, 32 + 2 PAD, 32 + 2 PAD, 3) uint8
    train_labels: jax.Array  # (N,) int32
    test_images: jax.Array  # (M, 32, 32, 3) uint8
    test_labels: jax.Array  # (M,) int32
    host_train_padded: np.ndarray = field(repr=False)  # the same, on the host
    host_train_labels: np.ndarray = field(repr=False)

    @property
    def train_size(self) -> int:
        return int(self.train_labels.shape[0])

    @property
    def test_size(self) -> int:
        return int(self.test_labels.shape[0])


def put_on_device(
    cifar: CIFAR10,
    train_size: int | None = None,
    test_size: int | None = None,
    sharding: jax.sharding.Sharding | None = None,
) -> DeviceData:
    """Copy (the first ``train_size``/``test_size`` images of) CIFAR-10 to the device once.

    ``sharding`` places every array (e.g. replicated over a mesh); default: device 0.
    """
    train_images = cifar.train_images[:train_size]
    pad = ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0))
    padded = np.pad(train_images, pad, mode="reflect")
    labels = cifar.train_labels[:train_size].astype(np.int32)

    def put(array: np.ndarray) -> jax.Array:
        return jax.device_put(array, sharding)

    return DeviceData(
        train_padded=put(padded),
        train_labels=put(labels),
        test_images=put(cifar.test_images[:test_size]),
        test_labels=put(cifar.test_labels[:test_size].astype(np.int32)),
        host_train_padded=padded,
        host_train_labels=labels,
    )


def normalize(images: jax.Array, mean: jax.Array, std: jax.Array, dtype: Any) -> jax.Array:
    """uint8 pixels to ``(pixels / 255 - mean) / std`` in ``dtype`` (mean 0, std 1: 0-1 scale)."""
    return ((images.astype(jnp.float32) / 255.0 - mean) / std).astype(dtype)


def augment_batch(
    padded: jax.Array,
    indices: jax.Array,
    key: jax.Array,
    translate: jax.Array,
    flip_mode: jax.Array,
    base_flip: jax.Array,
    odd_epoch: jax.Array,
) -> jax.Array:
    """Gather a batch from the padded training set, shift it randomly and flip it.

    Each image gets its own shift of -``translate`` to +``translate`` pixels (a crop
    of the padded image). ``flip_mode`` 0: no flip; 1: each image with probability
    1/2; 2 (alternating): image i is flipped when ``base_flip[i]`` differs from
    ``odd_epoch``, so every image is seen both ways in any two consecutive epochs.
    """
    crop_key, flip_key = jax.random.split(key)
    batch = indices.shape[0]
    size = padded.shape[1] - 2 * PAD
    offsets = PAD + jax.random.randint(crop_key, (batch, 2), -translate, translate + 1)

    def crop(index: jax.Array, offset: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(padded[index], (offset[0], offset[1], 0), (size, size, 3))

    images = jax.vmap(crop)(indices, offsets)
    random_flip = jax.random.bernoulli(flip_key, 0.5, (batch,))
    alternating = base_flip[indices] != odd_epoch
    flip = jnp.where(flip_mode == 1, random_flip, (flip_mode == 2) & alternating)
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def host_augment_batch(
    padded: np.ndarray,
    indices: np.ndarray,
    rng: np.random.Generator,
    translate: int,
    flip_mode: int,
    base_flip: np.ndarray,
    odd_epoch: bool,
) -> np.ndarray:
    """:func:`augment_batch` in NumPy, on the host (the slow way, for the ablation)."""
    size = padded.shape[1] - 2 * PAD
    offsets = PAD + rng.integers(-translate, translate + 1, size=(len(indices), 2))
    rows = offsets[:, :1, None] + np.arange(size)[None, :, None]
    cols = offsets[:, 1:, None] + np.arange(size)[None, None, :]
    images = padded[indices[:, None, None], rows, cols]
    if flip_mode == 1:
        flip = rng.random(len(indices)) < 0.5
    elif flip_mode == 2:
        flip = base_flip[indices] != odd_epoch
    else:
        flip = np.zeros(len(indices), dtype=bool)
    images[flip] = images[flip, :, ::-1]
    return images


# --- the networks --------------------------------------------------------------------


def torch_uniform_init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    """PyTorch's default weight init: uniform in +-1/sqrt(fan_in)."""
    return jax.nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")(key, shape, dtype)


def torch_bias_init(fan_in: int) -> Callable[..., jax.Array]:
    """PyTorch's default bias init for ``fan_in`` inputs: uniform in +-1/sqrt(fan_in)."""
    bound = 1 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def dirac_init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    """PyTorch-style uniform init, with the first ``in`` filters set to the identity.

    A conv block so initialised starts out passing its input through (plus new
    channels), which lets a deep stack of them train from the first step.
    """
    kernel = torch_uniform_init(key, shape, dtype)
    height, width, channels_in, channels_out = shape
    n = min(channels_in, channels_out)
    kernel = kernel.at[:, :, :, :n].set(0)
    diagonal = jnp.arange(n)
    return kernel.at[height // 2, width // 2, diagonal, diagonal].set(1)


def unit_std_init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    """PyTorch's default init, rescaled to standard deviation 1 (airbench94_muon's head)."""
    kernel = torch_uniform_init(key, shape, jnp.float32)
    return (kernel / jnp.std(kernel)).astype(dtype)


def gelu(x: jax.Array) -> jax.Array:
    """The exact (erf) GELU, as PyTorch's default."""
    return jax.nn.gelu(x, approximate=False)


class ConvGroup(nnx.Module):
    """conv 3x3 -> max-pool 2 -> batch norm -> GELU -> conv 3x3 -> batch norm -> GELU."""

    def __init__(self, channels_in: int, channels_out: int, config: Config, rngs: nnx.Rngs):
        dtype = config.compute_dtype

        def conv(cin: int) -> nnx.Conv:
            return nnx.Conv(
                cin, channels_out, (3, 3), padding="SAME", use_bias=False,
                dtype=dtype, kernel_init=dirac_init, rngs=rngs,
            )  # fmt: skip

        def norm() -> nnx.BatchNorm:
            return nnx.BatchNorm(
                channels_out, momentum=config.batchnorm_momentum, epsilon=1e-12,
                use_scale=False, use_fast_variance=False, dtype=jnp.float32, rngs=rngs,
            )  # fmt: skip

        self.conv1, self.norm1 = conv(channels_in), norm()
        self.conv2, self.norm2 = conv(channels_out), norm()
        self.dtype = dtype

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = self.conv1(x)
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        x = gelu(self.norm1(x, use_running_average=not train)).astype(self.dtype)
        x = self.conv2(x)
        return gelu(self.norm2(x, use_running_average=not train)).astype(self.dtype)


class AirbenchNet(nnx.Module):
    """airbench94's network: a 2x2 (whitening) conv, three conv groups, max-pool, linear."""

    def __init__(self, config: Config, rngs: nnx.Rngs):
        dtype = config.compute_dtype
        w1, w2, w3 = config.widths
        # 24 = 2 * (3 channels * 2 * 2 pixels): each whitening filter and its negative
        uniform_bias = config.whiten_bias_init == "uniform"
        self.whiten = nnx.Conv(
            3, 24, (2, 2), padding="VALID", dtype=dtype, kernel_init=torch_uniform_init,
            bias_init=torch_bias_init(fan_in=3 * 2 * 2) if uniform_bias else nnx.initializers.zeros,
            rngs=rngs,
        )  # fmt: skip
        self.group1 = ConvGroup(24, w1, config, rngs)
        self.group2 = ConvGroup(w1, w2, config, rngs)
        self.group3 = ConvGroup(w2, w3, config, rngs)
        head_init = unit_std_init if config.head_init == "unit_std" else torch_uniform_init
        self.head = nnx.Linear(
            w3, 10, use_bias=False, dtype=dtype, kernel_init=head_init, rngs=rngs
        )
        self.logit_scale = config.logit_scale

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = gelu(self.whiten(x))  # 32x32 -> 31x31
        x = self.group1(x, train)  # -> 15x15
        x = self.group2(x, train)  # -> 7x7
        x = self.group3(x, train)  # -> 3x3
        x = nnx.max_pool(x, (3, 3), strides=(3, 3)).reshape(x.shape[0], -1)
        return self.head(x).astype(jnp.float32) * self.logit_scale


class LeNet(nnx.Module):
    """Notebook 05's network (the Julia original's): two 5x5 convs and three dense layers."""

    def __init__(self, config: Config, rngs: nnx.Rngs):
        dtype = config.compute_dtype
        self.conv1 = nnx.Conv(3, 16, (5, 5), padding="VALID", dtype=dtype, rngs=rngs)
        self.conv2 = nnx.Conv(16, 8, (5, 5), padding="VALID", dtype=dtype, rngs=rngs)
        self.dense1 = nnx.Linear(200, 120, dtype=dtype, rngs=rngs)
        self.dense2 = nnx.Linear(120, 84, dtype=dtype, rngs=rngs)
        self.dense3 = nnx.Linear(84, 10, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nnx.max_pool(nnx.relu(self.conv1(x)), (2, 2), strides=(2, 2))  # 14x14x16
        x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), strides=(2, 2))  # 5x5x8
        x = x.reshape(x.shape[0], -1)
        return self.dense3(self.dense2(self.dense1(x))).astype(jnp.float32)


def make_model(config: Config, seed: int | jax.Array = 0) -> nnx.Module:
    """The network ``config.model`` asks for, initialised from ``seed`` (an int or a key)."""
    rngs = nnx.Rngs(seed)
    return LeNet(config, rngs) if config.model == "lenet" else AirbenchNet(config, rngs)


# --- whitening -----------------------------------------------------------------------


def patches_2x2(images: jax.Array) -> jax.Array:
    """All 2x2 patches of NHWC images as rows of 12 numbers, in (row, column, channel) order."""
    _, h, w, c = images.shape
    shifted = [images[:, i : h - 1 + i, j : w - 1 + j, :] for i in (0, 1) for j in (0, 1)]
    return jnp.stack(shifted, axis=3).reshape(-1, 4 * c)


def whitening_kernel(images: jax.Array, eps: float = 5e-4) -> jax.Array:
    """A (2, 2, 3, 24) conv kernel whose first 12 filters whiten 2x2 patches of ``images``.

    The patches' (uncentred) covariance is ``V diag(lambda) V^T``; filter k is
    eigenvector k divided by ``sqrt(lambda_k + eps)``, largest eigenvalue first, so the
    12 outputs are decorrelated with unit variance. Filters 12-23 are the negatives of
    0-11, so the GELU after the layer keeps both signs of every component.
    """
    patches = patches_2x2(images.astype(jnp.float32))
    # full float32 precision: on GPUs the default lets matmuls round inputs to TF32/bf16
    covariance = jnp.matmul(patches.T, patches, precision="highest") / patches.shape[0]
    eigenvalues, eigenvectors = jnp.linalg.eigh(covariance)  # ascending
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    filters = eigenvectors / jnp.sqrt(eigenvalues + eps)  # column k: filter k
    kernel = filters.reshape(2, 2, 3, 12)
    return jnp.concatenate([kernel, -kernel], axis=-1)


# --- optimiser ---------------------------------------------------------------------


class Hyper(NamedTuple):
    """Per-run numbers the compiled step takes as data, so changing them does not recompile."""

    mean: jax.Array  # (3,)
    std: jax.Array  # (3,)
    translate: jax.Array  # int32
    flip_mode: jax.Array  # int32: 0 none, 1 random, 2 alternating
    base_flip: jax.Array  # (N,) bool: each image's flip in even epochs
    label_smoothing: jax.Array
    momentum: jax.Array
    nesterov: jax.Array  # bool
    lr: Any  # per-parameter learning rate (a tree like the parameters)
    weight_decay: Any  # per-parameter coupled weight decay
    whiten_bias: Any  # per-parameter 1.0 for the whitening bias (frozen by step input)
    muon_momentum: Any = None  # optimizer "muon" only (else None: the step has no Muon)


class StepInputs(NamedTuple):
    """Per-step inputs, stacked along a leading step axis for ``lax.scan``."""

    indices: jax.Array  # (S, B) int32: which training images
    key: jax.Array  # (S, 2) uint32: raw PRNG key data for the augmentation
    lr: jax.Array  # (S,) learning-rate multiplier (the schedule)
    odd_epoch: jax.Array  # (S,) bool
    train_whiten_bias: jax.Array  # (S,) factor on the whitening bias's lr (0: frozen)
    lookahead: jax.Array  # (S,) bool: pull towards the average after this step
    lookahead_decay: jax.Array  # (S,)
    active: jax.Array  # (S,) bool: False for padding steps (skipped)


def optimizer_settings(config: Config) -> dict[str, float]:
    """Learning rates and weight decays for a mean (not summed) loss, per parameter group.

    airbench94 states its SGD hyperparameters per 1,024 examples of a summed loss and
    divides the learning rate by ``1 + 1/(1 - momentum)`` (:func:`kilostep_scale`), its
    estimate of how much Nesterov momentum amplifies a constant gradient, so that lr
    and momentum can be tuned independently. Weight decay ``wd`` is the decay per step
    at learning rate 1, independent of the learning rate. Batch-norm biases get
    ``bias_scaler`` times the learning rate and the same decay per step.
    """
    if config.optimizer == "momentum":
        return {"lr": 0.01, "lr_bias": 0.01, "wd": 0.0, "wd_bias": 0.0, "momentum": 0.9}
    # (Muon's step does not depend on the gradient's scale, so muon_lr needs no conversion.)
    scale = kilostep_scale(config.momentum)
    lr = config.lr / scale * config.batch_size  # per step, for the mean loss
    decay = config.weight_decay * config.batch_size / scale  # lr * coupled decay
    lr_bias = lr * config.bias_scaler
    return {
        "lr": lr,
        "lr_bias": lr_bias,
        "wd": decay / lr,
        "wd_bias": decay / lr_bias,
        "momentum": config.momentum,
    }


def _path_names(path: tuple[Any, ...]) -> list[str]:
    return [str(getattr(entry, "key", getattr(entry, "name", entry))) for entry in path]


def make_hyper(config: Config, params: nnx.State, base_flip: np.ndarray) -> Hyper:
    """The per-run data of the compiled step for ``config`` and the model's parameters."""
    settings = optimizer_settings(config)

    muon = config.optimizer == "muon"

    def per_leaf(path: tuple[Any, ...], _: Any, which: str) -> np.ndarray:
        names = _path_names(path)
        is_norm_bias = any(n.startswith("norm") for n in names) and "bias" in names
        is_whiten = "whiten" in names and config.whiten
        in_bias_group = is_norm_bias or (muon and "bias" in names)
        if which == "whiten_bias":
            return np.float32(is_whiten and "bias" in names)
        if which == "lr":
            if is_whiten and "kernel" in names:
                return np.float32(0.0)  # frozen
            if muon and is_muon_filter(path):
                return np.float32(config.muon_lr)
            return np.float32(settings["lr_bias" if in_bias_group else "lr"])
        return np.float32(settings["wd_bias" if in_bias_group else "wd"])

    def tree(which: str) -> Any:
        return jax.tree_util.tree_map_with_path(functools.partial(per_leaf, which=which), params)

    mean, std = (CIFAR_MEAN, CIFAR_STD) if config.normalize else ((0.0,) * 3, (1.0,) * 3)
    return Hyper(
        mean=np.asarray(mean, np.float32),
        std=np.asarray(std, np.float32),
        translate=np.int32(config.translate),
        flip_mode=np.int32({"none": 0, "random": 1, "alternating": 2}[config.flip]),
        base_flip=base_flip,
        label_smoothing=np.float32(config.label_smoothing),
        momentum=np.float32(settings["momentum"]),
        nesterov=np.bool_(config.optimizer in ("nesterov", "muon")),
        lr=tree("lr"),
        weight_decay=tree("weight_decay"),
        whiten_bias=tree("whiten_bias"),
        muon_momentum=np.float32(config.muon_momentum) if muon else None,
    )


def sgd_update(
    params: Any, grads: Any, velocity: Any, hyper: Hyper, lr_factor: jax.Array, gate: Any
) -> tuple[Any, Any]:
    """One SGD step with coupled weight decay and (Nesterov) momentum, as PyTorch's SGD.

    ``g = grad + wd * p``; ``v = momentum * v + g``; step ``g + momentum * v``
    (Nesterov) or ``v``; ``p -= lr * lr_factor * gate * step``. With a constant
    learning rate this equals ``optax.chain(optax.add_decayed_weights(wd),
    optax.sgd(lr, momentum, nesterov))`` (the tests check it); written out here so
    that every hyperparameter, Nesterov included, is data for the compiled step.
    """
    mu, tree = hyper.momentum, jax.tree.map
    grads = tree(lambda g, p, wd: g + wd * p, grads, params, hyper.weight_decay)
    velocity = tree(lambda v, g: mu * v + g, velocity, grads)
    steps = tree(lambda g, v: jnp.where(hyper.nesterov, g + mu * v, v), grads, velocity)
    params = tree(
        lambda p, s, lr, gate_: p - lr * lr_factor * gate_ * s, params, steps, hyper.lr, gate
    )
    return params, velocity


def is_muon_filter(path: tuple[Any, ...]) -> bool:
    """Whether Muon updates this parameter: the 3x3 filters of the conv blocks."""
    names = _path_names(path)
    return "kernel" in names and any(n.startswith("conv") for n in names)


def newton_schulz(matrix: jax.Array, dtype: Any = jnp.bfloat16) -> jax.Array:
    """Approximately orthogonalise ``matrix``, in bfloat16 as airbench94_muon does.

    With ``X`` the matrix divided by its Frobenius norm (so every singular value is at
    most 1), each step maps ``X -> a X + b (X X^T) X + c (X X^T)^2 X``: the singular
    vectors stay, each singular value ``s`` becomes ``a s + b s^3 + c s^5``, which
    pushes small ones up fast (slope ``a`` at 0) and large ones towards 1: after 3 steps
    those above 2% of the norm lie between about 0.7 and 1.2, and smaller ones have grown
    about ``a^3`` = 41 times. The result keeps the gradient's directions, not their sizes.
    """
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    x = matrix.astype(dtype)
    x = x / (jnp.linalg.norm(x) + 1e-7)
    wide = x.shape[0] <= x.shape[1]
    x = x if wide else x.T  # X X^T is the smaller square
    for _ in range(NEWTON_SCHULZ_STEPS):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.T


def muon_update(
    params: Any, grads: Any, velocity: Any, hyper: Hyper, lr_factor: jax.Array, gate: Any
) -> tuple[Any, Any]:
    """airbench94_muon's step: Muon for the blocks' filters, :func:`sgd_update` for the rest.

    For each filter bank (kernel ``(3, 3, in, out)``): ``v = mu * v + g``; the Nesterov
    direction ``g + mu * v``, as an ``(out, 9 * in)`` matrix (a row per filter), is orthogonalised
    (:func:`newton_schulz`); the filter bank is rescaled to Frobenius norm ``sqrt(out)``
    (filters of root-mean-square norm 1: weight normalisation, as the batch norm after
    it ignores the scale anyway), then
    ``p -= lr * lr_factor * update``. No weight decay.
    """
    sgd_params, sgd_velocity = sgd_update(params, grads, velocity, hyper, lr_factor, gate)
    mu = hyper.muon_momentum

    def leaf(
        path: tuple[Any, ...], p: Any, g: Any, v: Any, lr: Any, new_p: Any, new_v: Any
    ) -> tuple[Any, Any]:
        if not is_muon_filter(path):
            return new_p, new_v
        v = mu * v + g
        direction = (g + mu * v).reshape(-1, p.shape[-1]).T  # (out, 9 * in)
        update = newton_schulz(direction).T.reshape(p.shape).astype(p.dtype)
        p = p * (jnp.sqrt(p.shape[-1]) / jnp.linalg.norm(p))
        return p - lr * lr_factor * update, v

    pairs = jax.tree_util.tree_map_with_path(
        leaf, params, grads, velocity, hyper.lr, sgd_params, sgd_velocity
    )
    is_pair = lambda x: isinstance(x, tuple)  # noqa: E731
    return (
        jax.tree.map(lambda pair: pair[0], pairs, is_leaf=is_pair),
        jax.tree.map(lambda pair: pair[1], pairs, is_leaf=is_pair),
    )


def lr_schedule(total_steps: int, config: Config) -> np.ndarray:
    """Learning-rate multiplier per step: linear warm-up, then linear decay.

    From ``lr_start`` to 1 over the first ``warmup_fraction`` of the steps, then down
    to ``lr_end`` at the last step; constant 1 for the ``"momentum"`` optimizer.
    """
    steps = np.arange(total_steps, dtype=np.float64)
    if config.optimizer == "momentum":
        return np.ones(total_steps, np.float32)
    warmup = int(total_steps * config.warmup_fraction)
    up = config.lr_start + (1 - config.lr_start) * steps / max(warmup, 1)
    down = 1 + (config.lr_end - 1) * (steps - warmup) / (total_steps - warmup)
    return np.where(steps < warmup, up, down).astype(np.float32)


def lookahead_plan(
    config: Config, steps_per_epoch: int, total_steps: int, padded_steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per step: whether to pull towards the moving average after it, and the decay.

    As airbench94.py: the average starts at the initial weights; after every
    ``lookahead_every``-th step, ``average = rho * average + (1 - rho) * weights`` and the
    weights jump to it, with ``rho = 0.95**lookahead_every * (done / total)**3``; after
    the last step the weights jump to the average once more (decay 1), unless that
    step was itself an averaging step (then the jump is already done).

    With ``lookahead_start_epochs`` N > 0, only averaging steps in epoch N or later
    count; the first of them starts the average at the current weights (decay 0), and
    from then on the weights also jump to the average after the last step of every
    epoch (decay 1), as the ``airbench`` package's ``train`` does.
    """
    step = np.arange(padded_steps)
    done = step + 1  # steps completed after this one
    periodic = (done % config.lookahead_every == 0) & (done <= total_steps)
    rho = 0.95**config.lookahead_every * (np.minimum(done, total_steps) / total_steps) ** 3
    last = done == total_steps
    if config.lookahead_start_epochs > 0:
        periodic &= step // steps_per_epoch >= config.lookahead_start_epochs
        first = int(np.argmax(periodic)) if periodic.any() else padded_steps
        epoch_end = ((done % steps_per_epoch == 0) & (done <= total_steps)) | last
        last = epoch_end & (step >= first)
    lookahead = config.lookahead & (periodic | last)
    decay = np.where(periodic, rho, 1.0)
    if config.lookahead_start_epochs > 0 and first < padded_steps:
        decay[first] = 0.0
    return lookahead, decay.astype(np.float32)


# --- training state and step --------------------------------------------------------


class TrainState(NamedTuple):
    """Everything that changes during training, as one pytree (donated each call)."""

    params: nnx.State
    batch_stats: nnx.State
    velocity: Any
    average_params: nnx.State  # lookahead's moving average
    average_stats: nnx.State


def init_state(model: nnx.Module) -> tuple[nnx.GraphDef, TrainState]:
    """Split a model into its static structure and a :class:`TrainState`."""
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    velocity = jax.tree.map(jnp.zeros_like, params)
    copy = functools.partial(jax.tree.map, jnp.copy)  # distinct buffers, so all can be donated
    return graphdef, TrainState(params, batch_stats, velocity, copy(params), copy(batch_stats))


def initial_state(config: Config, seed: int) -> tuple[nnx.GraphDef, TrainState, float]:
    """The model's structure, its initial :class:`TrainState`, and the compile seconds.

    Built by one compiled call: op by op, every initialiser would be dispatched (and
    on a CPU compiled) on its own, which takes seconds.
    """
    abstract = nnx.eval_shape(lambda: make_model(config, 0))
    graphdef, *_ = nnx.split(abstract, nnx.Param, nnx.BatchStat)

    def initialize(seed: jax.Array) -> TrainState:
        return init_state(make_model(config, jax.random.key(seed)))[1]

    args = (np.int32(seed),)
    executable, seconds = compiled("init", initialize, args, config.static_key())
    return graphdef, executable(*args), seconds


def set_whitening(state: TrainState, kernel: jax.Array) -> TrainState:
    """Put a whitening kernel into the first layer (and its moving average)."""

    def put(params: nnx.State) -> nnx.State:
        def leaf(path: tuple[Any, ...], value: jax.Array) -> jax.Array:
            names = _path_names(path)
            return jnp.copy(kernel) if names[:2] == ["whiten", "kernel"] else value

        return jax.tree_util.tree_map_with_path(leaf, params)

    return state._replace(params=put(state.params), average_params=put(state.average_params))


def loss_fn(
    params: nnx.State,
    batch_stats: nnx.State,
    graphdef: nnx.GraphDef,
    images: jax.Array,
    labels: jax.Array,
    label_smoothing: jax.Array,
) -> tuple[jax.Array, nnx.State]:
    """Mean cross-entropy against smoothed one-hot targets; also returns updated BN stats."""
    model = nnx.merge(graphdef, params, batch_stats, copy=True)
    logits = model(images, train=True)
    targets = jax.nn.one_hot(labels, 10) * (1 - label_smoothing) + label_smoothing / 10
    loss = -jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1).mean()
    return loss, nnx.state(model, nnx.BatchStat)


def train_step(
    graphdef: nnx.GraphDef,
    state: TrainState,
    hyper: Hyper,
    images: jax.Array,
    labels: jax.Array,
    step: StepInputs,
    dtype: Any,
) -> tuple[TrainState, jax.Array]:
    """One training step on a uint8 batch: normalise, gradient, SGD, lookahead."""
    x = normalize(images, hyper.mean, hyper.std, dtype)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, batch_stats), grads = grad_fn(
        state.params, state.batch_stats, graphdef, x, labels, hyper.label_smoothing
    )
    gate = jax.tree.map(lambda w: 1 - w + w * step.train_whiten_bias, hyper.whiten_bias)
    update = sgd_update if hyper.muon_momentum is None else muon_update
    params, velocity = update(state.params, grads, state.velocity, hyper, step.lr, gate)
    # Lookahead: every few steps, average <- decay * average + (1 - decay) * weights,
    # and the weights jump to the average (batch-norm statistics included).
    decay = step.lookahead_decay

    def pull(average: Any, current: Any) -> Any:
        mixed = jax.tree.map(lambda a, c: decay * a + (1 - decay) * c, average, current)
        return jax.tree.map(lambda m, a: jnp.where(step.lookahead, m, a), mixed, average)

    average_params = pull(state.average_params, params)
    average_stats = pull(state.average_stats, batch_stats)

    def jump(average: Any, current: Any) -> Any:
        return jax.tree.map(lambda a, c: jnp.where(step.lookahead, a, c), average, current)

    new = TrainState(
        jump(average_params, params), jump(average_stats, batch_stats),
        velocity, average_params, average_stats,
    )  # fmt: skip
    return new, loss


def train_on_device_step(
    graphdef: nnx.GraphDef,
    state: TrainState,
    data: tuple[jax.Array, jax.Array],
    hyper: Hyper,
    step: StepInputs,
    dtype: Any = jnp.bfloat16,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> tuple[TrainState, jax.Array]:
    """One step of :func:`train_steps`: gather and augment the batch on the device, train.

    ``data`` is the padded training set and its labels. An inactive (padding) step
    leaves the state unchanged. ``batch_sharding`` splits the batch over a device mesh.
    """
    padded, labels = data
    key = jax.random.wrap_key_data(step.key)
    images = augment_batch(
        padded, step.indices, key, hyper.translate, hyper.flip_mode,
        hyper.base_flip, step.odd_epoch,
    )  # fmt: skip
    batch_labels = labels[step.indices]
    if batch_sharding is not None:
        images = jax.lax.with_sharding_constraint(images, batch_sharding)
    new_state, loss = train_step(graphdef, state, hyper, images, batch_labels, step, dtype)
    new_state = jax.tree.map(lambda n, o: jnp.where(step.active, n, o), new_state, state)
    return new_state, jnp.where(step.active, loss, jnp.nan)


def train_steps(
    graphdef: nnx.GraphDef,
    state: TrainState,
    data: DeviceData | tuple[jax.Array, jax.Array],
    hyper: Hyper,
    steps: StepInputs,
    dtype: Any = jnp.bfloat16,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> tuple[TrainState, jax.Array]:
    """Run the given steps (leading axis of ``steps``) with ``lax.scan``; return the losses.

    Each step is a :func:`train_on_device_step`: it gathers and augments its batch from
    the on-device training set. ``batch_sharding`` splits each batch over a device mesh
    (data parallelism).
    """
    arrays = data if isinstance(data, tuple) else (data.train_padded, data.train_labels)

    def body(state: TrainState, step: StepInputs) -> tuple[TrainState, jax.Array]:
        return train_on_device_step(graphdef, state, arrays, hyper, step, dtype, batch_sharding)

    return jax.lax.scan(body, state, steps)


# --- evaluation --------------------------------------------------------------------

#: Weights of the views [x, mirror(x), x shifted up-left, its mirror, down-right, its mirror]
TTA_WEIGHTS = (
    (1.0,),
    (0.5, 0.5),
    (0.25, 0.25, 0.125, 0.125, 0.125, 0.125),
)


def tta_views(x: jax.Array, level: int) -> jax.Array:
    """Stack the test-time views of a batch: 1, 2 or 6 of them (see ``TTA_WEIGHTS``)."""
    mirror = x[:, :, ::-1, :]
    if level == 0:
        return x[None]
    if level == 1:
        return jnp.stack([x, mirror])
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    up_left, down_right = padded[:, :-2, :-2, :], padded[:, 2:, 2:, :]
    views = [x, mirror, up_left, up_left[:, :, ::-1], down_right, down_right[:, :, ::-1]]
    return jnp.stack(views)


def tta_logits(model: nnx.Module, x: jax.Array, level: int) -> jax.Array:
    """Logits for each TTA level up to ``level``: shape (level + 1, batch, 10)."""
    views = tta_views(x, level)
    logits = model(views.reshape(-1, *x.shape[1:]), train=False).reshape(len(views), -1, 10)
    combined = [
        jnp.tensordot(jnp.asarray(TTA_WEIGHTS[lv]), logits[: len(TTA_WEIGHTS[lv])], axes=1)
        for lv in range(level + 1)
    ]
    return jnp.stack(combined)


def evaluate_correct(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    batch_stats: nnx.State,
    images: jax.Array,
    labels: jax.Array,
    mean: jax.Array,
    std: jax.Array,
    level: int,
    batch: int,
    dtype: Any,
) -> jax.Array:
    """Number of correct test predictions for each TTA level 0..``level``, in batches."""
    model = nnx.merge(graphdef, params, batch_stats, copy=True)
    n = images.shape[0]
    chunks = -(-n // batch)
    pad = chunks * batch - n
    images = jnp.pad(images, ((0, pad), (0, 0), (0, 0), (0, 0)))
    labels = jnp.pad(labels, (0, pad), constant_values=-1)  # padding never counts

    def one(chunk: tuple[jax.Array, jax.Array]) -> jax.Array:
        x, y = chunk
        logits = tta_logits(model, normalize(x, mean, std, dtype), level)
        return jnp.sum(jnp.argmax(logits, -1) == y[None], axis=-1)

    shaped = (images.reshape(chunks, batch, *images.shape[1:]), labels.reshape(chunks, batch))
    return jax.lax.map(one, shaped).sum(0)


# --- compiled functions with measured compile time ---------------------------------

_COMPILED: dict[Any, Any] = {}


def _spec(tree: Any) -> Any:
    leaves, treedef = jax.tree.flatten(tree)
    specs = tuple(
        (np.shape(x), str(np.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype),
         getattr(x, "sharding", None) if isinstance(x, jax.Array) else None)
        for x in leaves
    )  # fmt: skip
    return treedef, specs


def compiled(
    name: str,
    function: Callable[..., Any],
    args: tuple[Any, ...],
    static_key: Any,
    donate: tuple[int, ...] = (),
) -> tuple[Callable[..., Any], float]:
    """Compile ``function`` for ``args`` once (ahead of time); return it and the seconds spent.

    Later calls with the same shapes and ``static_key`` reuse it and report 0 s.
    """
    # jax.jit's own settings that change the program, as jax.jit's cache also keys on them
    settings = (jax.config.jax_default_matmul_precision, jax.config.jax_enable_x64)
    key = (name, static_key, donate, _spec(args), settings)
    if key in _COMPILED:
        return _COMPILED[key], 0.0
    start = time.perf_counter()
    executable = jax.jit(function, donate_argnums=donate).lower(*args).compile()
    seconds = time.perf_counter() - start
    _COMPILED[key] = executable
    return executable, seconds


# --- one run -----------------------------------------------------------------------


@dataclass
class Result:
    """What one run of :func:`train_and_evaluate` measured."""

    config: Config
    seed: int
    accuracy: float  # test accuracy at ``config.tta``
    accuracy_by_tta: tuple[float, ...]  # levels 0..config.tta
    seconds: float  # whitening + training + evaluation, after compilation
    train_seconds: float
    eval_seconds: float
    compile_seconds: float
    steps: int
    epoch_losses: list[float]
    epoch_accuracies: list[float]  # without TTA, when asked for (not timed)

    def summary(self) -> str:
        return (
            f"accuracy {self.accuracy:.2%} (TTA {self.config.tta}) in {self.seconds:.2f} s "
            f"+ {self.compile_seconds:.1f} s compile, {self.steps} steps"
        )


class Run:
    """The state of one training run; :func:`train_and_evaluate` drives it.

    Kept as a small class so the notebook can also run a few steps at a time (for
    example on a device mesh) with exactly the same compiled code.

    ``scan``: run several steps as one :func:`train_steps` call (a ``lax.scan``). The
    default, None, scans unless the data live on a CPU: XLA:CPU computes the weight
    gradients of convolutions inside a loop body far slower than outside one
    (jax-ml/jax#12868; airbench94's step at batch 128 on a 2-core CPU: 21 s against
    0.6 s), so there each step is its own call of :func:`train_on_device_step`.
    """

    def __init__(
        self,
        config: Config,
        data: DeviceData,
        seed: int = 0,
        mesh: jax.sharding.Mesh | None = None,
        scan: bool | None = None,
    ):
        self.config, self.data, self.seed, self.mesh = config, data, seed, mesh
        on_cpu = all(device.platform == "cpu" for device in data.train_padded.devices())
        self.scan = not on_cpu if scan is None else scan
        self.dtype = config.compute_dtype
        self.steps_per_epoch = data.train_size // config.batch_size
        if self.steps_per_epoch < 1:  # checked before anything compiles
            raise ValueError(
                f"{data.train_size} training images < batch {config.batch_size}: "
                "use a smaller batch_size or more training images"
            )
        rng = np.random.default_rng(seed)
        self.graphdef, state, self.compile_seconds = initial_state(config, seed)
        base_flip = rng.random(data.train_size) < 0.5
        self.hyper = make_hyper(config, state.params, base_flip)
        self.total_steps = math.ceil(self.steps_per_epoch * config.epochs)
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.plan = self._plan(rng)
        self.host_rng = rng
        self.host_base_flip = base_flip
        replicated = self._sharding()
        self.state = jax.device_put(state, replicated)
        self.hyper = jax.device_put(self.hyper, replicated)

    def _sharding(self, *spec: Any) -> jax.sharding.Sharding | None:
        if self.mesh is None:
            return None
        return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(*spec))

    def _plan(self, rng: np.random.Generator) -> StepInputs:
        """Per-step inputs for the whole run, padded to whole epochs (on the host)."""
        config, spe, total = self.config, self.steps_per_epoch, self.total_steps
        padded_steps = self.epochs * spe
        batch = config.batch_size
        order = [rng.permutation(self.data.train_size)[: spe * batch] for _ in range(self.epochs)]
        indices = np.concatenate(order).reshape(padded_steps, batch).astype(np.int32)
        step = np.arange(padded_steps)
        lookahead, decay = lookahead_plan(config, spe, total, padded_steps)
        epoch = step // spe
        schedule = np.ones(padded_steps, np.float32)
        schedule[:total] = lr_schedule(total, config)
        keys = rng.integers(0, 2**32, size=(padded_steps, 2), dtype=np.uint32)
        whiten_bias = (epoch < config.whiten_bias_epochs).astype(np.float32)
        if config.whiten_bias_decay:  # a linear decay to 0 over its epochs, instead of lr
            bias_steps = config.whiten_bias_epochs * spe  # 0: the bias never trains
            linear = np.clip(1 - step / max(bias_steps, 1), 0, None) * (bias_steps > 0)
            whiten_bias = np.where(schedule > 0, linear / schedule, 0).astype(np.float32)
        return StepInputs(
            indices=indices,
            key=keys,
            lr=schedule,
            odd_epoch=epoch % 2 == 1,
            train_whiten_bias=whiten_bias,
            lookahead=lookahead,
            lookahead_decay=decay,
            active=step < total,
        )

    def _compile(
        self,
        name: str,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        static_key: Any,
        donate: tuple[int, ...] = (),
    ) -> Callable[..., Any]:
        """:func:`compiled`, adding the seconds it took to ``compile_seconds``."""
        executable, seconds = compiled(name, function, args, static_key, donate)
        self.compile_seconds += seconds
        return executable

    def _steps(self, start: int, stop: int) -> StepInputs:
        steps = jax.tree.map(lambda a: a[start:stop], self.plan)
        indices = self._sharding(None, "data")
        return steps._replace(indices=jax.device_put(steps.indices, indices))

    def _step(self, index: int) -> StepInputs:
        step = jax.tree.map(lambda a: a[index], self.plan)
        return step._replace(indices=jax.device_put(step.indices, self._sharding("data")))

    def whiten(self) -> TrainState:
        """Initialise the first layer from the training images (if ``config.whiten``).

        Returns the state, so that a caller can wait for the work to finish.
        """
        if not (self.config.whiten and self.config.model == "airbench"):
            return self.state
        count = min(self.config.whiten_images, self.data.train_size)
        images = self.data.train_padded[:count, PAD:-PAD, PAD:-PAD, :]

        def kernel_fn(images: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
            return whitening_kernel(
                normalize(images, mean, std, jnp.float32), self.config.whiten_eps
            )

        args = (images, self.hyper.mean, self.hyper.std)
        fn = self._compile("whiten", kernel_fn, args, self.config.whiten_eps)
        self.state = set_whitening(self.state, fn(*args))
        return self.state

    def train_range(self, start: int, stop: int) -> jax.Array:
        """Run steps ``start`` to ``stop`` as one compiled call; return their losses.

        Without ``scan`` (on a CPU), one call per step: the same steps, the same results,
        except that padding steps after the last one are not run (their losses are NaN).
        """
        if self.scan:
            return self._train_call(train_steps, self._steps(start, stop))
        last = min(stop, self.total_steps)
        losses = [self._train_call(train_on_device_step, self._step(i)) for i in range(start, last)]
        return jnp.concatenate([jnp.stack(losses), jnp.full(stop - last, jnp.nan)])

    def _train_call(self, function: Callable[..., Any], steps: StepInputs) -> jax.Array:
        """One compiled call of :func:`train_steps` or :func:`train_on_device_step`."""
        config = self.config
        fn = functools.partial(
            function, self.graphdef, dtype=self.dtype, batch_sharding=self._sharding("data")
        )
        args = (self.state, (self.data.train_padded, self.data.train_labels), self.hyper, steps)
        key = (config.static_key(), self.mesh is not None)
        donate = (0,) if config.donate else ()
        executable = self._compile(function.__name__, fn, args, key, donate)
        self.state, losses = executable(*args)
        return losses

    def train_host_step(self, index: int) -> jax.Array:
        """One step whose batch is cropped and flipped by NumPy on the host, then copied."""
        config, plan, data = self.config, self.plan, self.data
        step = jax.tree.map(lambda a: a[index], plan)
        images = host_augment_batch(
            data.host_train_padded, step.indices, self.host_rng, config.translate,
            int(self.hyper.flip_mode), self.host_base_flip, bool(step.odd_epoch),
        )  # fmt: skip
        labels = data.host_train_labels[step.indices]
        fn = functools.partial(train_step, self.graphdef, dtype=self.dtype)
        args = (self.state, self.hyper, images, labels, step)
        donate = (0,) if config.donate else ()
        executable = self._compile("train_step", fn, args, config.static_key(), donate)
        self.state, loss = executable(*args)
        return loss

    def epoch_steps(self, epoch: int) -> range:
        """The active (not padding) steps of ``epoch``."""
        start = epoch * self.steps_per_epoch
        return range(start, min(start + self.steps_per_epoch, self.total_steps))

    def train_epoch(self, epoch: int) -> jax.Array:
        """All steps of one epoch, the way ``config.loop`` and ``data_on_device`` say."""
        steps = self.epoch_steps(epoch)
        if not self.config.data_on_device:
            return jnp.stack([self.train_host_step(i) for i in steps])
        if self.config.loop == "step":
            return jnp.concatenate([self.train_range(i, i + 1) for i in steps])
        return self.train_range(steps.start, steps.start + self.steps_per_epoch)  # padded

    def evaluate(self, level: int | None = None) -> np.ndarray:
        """Test accuracy for TTA levels 0..``level`` (default ``config.tta``)."""
        config = self.config
        level = config.tta if level is None else level
        batch = min(config.eval_batch, self.data.test_size)
        fn = functools.partial(
            evaluate_correct, self.graphdef, level=level, batch=batch, dtype=self.dtype
        )
        args = (self.state.params, self.state.batch_stats, self.data.test_images,
                self.data.test_labels, self.hyper.mean, self.hyper.std)  # fmt: skip
        executable = self._compile("evaluate", fn, args, (config.static_key(), level, batch))
        return np.asarray(executable(*args)) / self.data.test_size


def train_and_evaluate(
    config: Config,
    data: DeviceData,
    seed: int = 0,
    *,
    eval_each_epoch: bool = False,
    on_epoch: Callable[[int, float], None] | None = None,
) -> Result:
    """Train ``config`` from scratch on ``data`` and measure its test accuracy and time.

    The clock covers whitening, training and the final (TTA) evaluation; it excludes
    compilation (reported separately; zero when the same shapes were compiled
    before in this process) and the optional per-epoch evaluations.
    """
    run = Run(config, data, seed)
    clock = 0.0

    def timed(function: Callable[[], Any]) -> Any:
        nonlocal clock
        compile_before = run.compile_seconds
        start = time.perf_counter()
        out = jax.block_until_ready(function())
        clock += time.perf_counter() - start - (run.compile_seconds - compile_before)
        return out

    timed(run.whiten)
    losses, accuracies = [], []
    train_start = clock
    for epoch in range(run.epochs):
        epoch_losses = timed(lambda epoch=epoch: run.train_epoch(epoch))
        active = len(run.epoch_steps(epoch))  # the rest are padding steps, NaN
        losses.append(float(np.mean(np.asarray(epoch_losses)[:active])))  # NaN if diverged
        if eval_each_epoch:
            accuracies.append(float(run.evaluate(0)[0]))
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    train_seconds = clock - train_start
    by_level = timed(run.evaluate)
    return Result(
        config=config,
        seed=seed,
        accuracy=float(by_level[-1]),
        accuracy_by_tta=tuple(float(a) for a in by_level),
        seconds=clock,
        train_seconds=train_seconds,
        eval_seconds=clock - train_seconds - (train_start),
        compile_seconds=run.compile_seconds,
        steps=run.total_steps,
        epoch_losses=losses,
        epoch_accuracies=accuracies,
    )


# --- the ablation, as notebook 06 runs it ----------------------------------------------

#: Notebook 06's steps from notebook 05's recipe to airbench94: (label, fields changed),
#: each applied on top of the previous ones, starting from :data:`BASELINE`.
ACCURACY_STEPS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("05 baseline: LeNet, raw pixels, SGD", {}),
    ("+ normalised inputs", {"normalize": True}),
    ("+ conv blocks, batch norm, 64/256/256 wide", {"model": "airbench"}),
    ("+ random flip and 2-pixel translate", {"flip": "random", "translate": 2}),
    ("+ alternating flip", {"flip": "alternating"}),
    ("+ label smoothing 0.2", {"label_smoothing": 0.2}),
    ("+ Nesterov SGD, warm-up/decay, weight decay", {"optimizer": "nesterov"}),
    ("+ frozen whitening first layer", {"whiten": True}),
    ("+ lookahead (weight averaging)", {"lookahead": True}),
    ("+ test-time augmentation", {"tta": 2}),
)


def systems_steps(recipe: Config) -> tuple[tuple[str, dict[str, Any]], ...]:
    """The systems rows: the full recipe with one speed trick taken away each."""
    other = "float32" if recipe.dtype == "bfloat16" else "bfloat16"
    return (
        (f"full recipe in {other} instead of {recipe.dtype}", {"dtype": other}),
        ("one compiled call per step, not per epoch", {"loop": "step"}),
        ("one call per step, no donated buffers", {"loop": "step", "donate": False}),
        ("batches cropped by NumPy on the host", {"data_on_device": False}),
    )


def ablation_configs(
    shrink: Callable[[Config], Config] = lambda c: c,
) -> list[tuple[str, Config]]:
    """Every row of the ablation: the accuracy steps (cumulative), then the systems rows."""
    rows, config = [], BASELINE
    for label, change in ACCURACY_STEPS:
        config = dataclasses.replace(config, **change)
        rows.append((label, shrink(config)))
    assert config == AIRBENCH94, "the accuracy steps must end at the published recipe"
    recipe = shrink(config)
    rows += [(label, dataclasses.replace(recipe, **c)) for label, c in systems_steps(recipe)]
    return rows


def device_name() -> str:
    """The accelerator results are recorded for, e.g. "NVIDIA H200"; "cpu" without one."""
    device = jax.devices()[0]
    return device.device_kind if device.platform != "cpu" else "cpu"


def result_record(label: str, result: Result) -> dict[str, Any]:
    """A JSON-ready summary of one run (one line of an ablation results file)."""
    return {
        "label": label,
        "device": device_name(),
        "seed": result.seed,
        "accuracy": result.accuracy,
        "accuracy_by_tta": list(result.accuracy_by_tta),
        "seconds": result.seconds,
        "train_seconds": result.train_seconds,
        "eval_seconds": result.eval_seconds,
        "compile_seconds": result.compile_seconds,
        "steps": result.steps,
        "epoch_losses": result.epoch_losses,
        "epoch_accuracies": result.epoch_accuracies,
        "config": dataclasses.asdict(result.config),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m helpers.fast_cifar10 --out results.jsonl [--smoke] [--recipe-runs N]``.

    Runs notebook 06's ablation rows once each, then the full recipe ``--recipe-runs``
    more times (other seeds), appending one JSON line per run to ``--out``.
    """
    import argparse
    import json
    import sys

    from helpers.data import load_cifar10

    parser = argparse.ArgumentParser(description="notebook 06's ablation, headless")
    parser.add_argument("--out", required=True, help="JSON-lines file to append to")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes for a CPU")
    parser.add_argument("--recipe-runs", type=int, default=0, help="extra full-recipe runs")
    args = parser.parse_args(argv)
    if args.recipe_runs < 0:
        parser.error(f"--recipe-runs must be 0 or more, got {args.recipe_runs}")
    cifar = load_cifar10()
    sizes = (512, 256) if args.smoke else (None, None)

    def shrink(config: Config) -> Config:
        return dataclasses.replace(smoke_config(config), epochs=1.0) if args.smoke else config

    data = put_on_device(cifar, *sizes)
    rows = ablation_configs(shrink)
    recipe = rows[len(ACCURACY_STEPS) - 1][1]
    rows += [(f"full recipe, seed {s}", recipe) for s in range(1, args.recipe_runs + 1)]
    for index, (label, config) in enumerate(rows):
        seed = int(label.rsplit(" ", 1)[1]) if label.startswith("full recipe, seed") else 0
        start = time.perf_counter()
        result = train_and_evaluate(config, data, seed, eval_each_epoch=index == 9)
        record = result_record(label, result)
        record["wall_seconds"] = time.perf_counter() - start
        with open(args.out, "a") as file:
            file.write(json.dumps(record) + "\n")
        print(f"{label:48s} {result.summary()}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
