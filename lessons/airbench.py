"""Generated from notebooks/06_fast_cifar10.ipynb by `python -m helpers.export`.

Do not edit: change the notebook's cells tagged 'export' and run the command again.
"""

import dataclasses
import functools
import math
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)  # per channel, training set
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], np.float32)


def compute_dtype(device: jax.Device | None = None) -> str:
    """The dtype the network computes in on ``device`` (default: JAX's first device).

    bfloat16 where the chip multiplies it natively (TPUs, NVIDIA compute capability 8.0
    and newer); float16 on older NVIDIA GPUs (a T4 is 7.5), whose tensor cores take
    float16 but not bfloat16; float32 on a CPU and anything else.
    """
    device = device or jax.devices()[0]
    if device.platform == "tpu":
        return "bfloat16"
    capability = getattr(device, "compute_capability", None)  # "9.0" on an H100
    if device.platform == "gpu" and capability:
        return "bfloat16" if int(str(capability).split(".")[0]) >= 8 else "float16"
    return "float32"


FLIPS = ("alternating", "random", "none")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Every choice of one training run. The defaults are airbench94's."""

    widths: tuple[int, int, int] = (64, 256, 256)
    optimizer: str = "sgd"  # or "muon" (section 13)
    batch: int = 1024
    epochs: float = 9.9
    lr: float = 11.5  # per 1,024 examples, the reference's unit (see make_optimizer)
    momentum: float = 0.85
    nesterov: bool = True
    wd: float = 0.0153  # per 1,024 examples
    bias_scale: float = 64.0  # batch-norm biases: this many times the learning rate
    schedule: str = "triangle"  # or "constant"
    whiten: bool = True  # a frozen whitening first layer (else a trained one)
    whiten_bias_epochs: int = 3  # the first layer's bias trains this long
    dirac: bool = True  # conv groups start as the identity
    translate: int = 2  # random shifts of up to this many pixels
    flip: str = "alternating"  # "random" or "none"
    smoothing: float = 0.2
    lookahead: bool = True
    tta: int = 2  # test-time views: 0 the image, 1 and its mirror, 2 and four shifts
    dtype: str | None = None  # None: compute_dtype() of the device

    def __post_init__(self) -> None:
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        sgd_only = ("lr", "momentum", "nesterov", "wd", "bias_scale", "schedule")
        changed = [name for name in sgd_only if getattr(self, name) != defaults[name]]
        problems = [
            f"{name} must be {want}, got {value!r}"
            for name, value, ok, want in [
                (
                    "widths",
                    self.widths,
                    len(self.widths) == 3 and min(self.widths) > 0,
                    "three positive ints",
                ),
                ("optimizer", self.optimizer, self.optimizer in ("sgd", "muon"), "'sgd' or 'muon'"),
                (
                    "optimizer",
                    self.optimizer,
                    self.optimizer == "sgd" or not changed,
                    f"'sgd' to change {', '.join(changed)} (Muon takes the reference's numbers)",
                ),
                ("batch", self.batch, self.batch >= 1, "at least 1"),
                ("epochs", self.epochs, self.epochs > 0, "positive"),
                ("momentum", self.momentum, 0 <= self.momentum < 1, "in [0, 1)"),
                (
                    "schedule",
                    self.schedule,
                    self.schedule in ("triangle", "constant"),
                    "'triangle' or 'constant'",
                ),
                ("translate", self.translate, 0 <= self.translate <= 2, "0, 1 or 2"),
                ("flip", self.flip, self.flip in FLIPS, " or ".join(map(repr, FLIPS))),
                ("smoothing", self.smoothing, 0 <= self.smoothing < 1, "in [0, 1)"),
                ("tta", self.tta, self.tta in (0, 1, 2), "0, 1 or 2"),
                (
                    "dtype",
                    self.dtype,
                    self.dtype in (None, "float32", "bfloat16", "float16"),
                    "None, 'float32', 'bfloat16' or 'float16'",
                ),
            ]
            if not ok
        ]
        if problems:
            raise ValueError("Recipe: " + "; ".join(problems))


AIRBENCH94 = Recipe()
# narrower and shorter, for a laptop CPU (section 10 shows what it reaches)
CPU_RECIPE = dataclasses.replace(AIRBENCH94, widths=(16, 32, 32), batch=128, epochs=2.0)
# tiny, to check quickly that everything runs; its accuracy means nothing
QUICK_RECIPE = dataclasses.replace(AIRBENCH94, widths=(8, 16, 16), batch=64, epochs=2.0)


class DeviceData(NamedTuple):
    """CIFAR-10 on the device as uint8: the training images reflect-padded by 2 pixels."""

    train: jax.Array  # (N, 36, 36, 3)
    train_labels: jax.Array
    test: jax.Array  # (M, 32, 32, 3)
    test_labels: jax.Array


def to_device(images, labels, test_images, test_labels, train_size=None, test_size=None):
    """Copy the data set to the accelerator once; every batch is then cut out there."""
    pad = ((0, 0), (2, 2), (2, 2), (0, 0))
    return DeviceData(
        jnp.asarray(np.pad(images[:train_size], pad, mode="reflect")),
        jnp.asarray(labels[:train_size]),
        jnp.asarray(test_images[:test_size]),
        jnp.asarray(test_labels[:test_size]),
    )


class Filter(nnx.Param):
    """Convolution filters: the base learning rate and weight decay (Muon in section 13)."""


class Head(nnx.Param):
    """The linear head's weights: trained like filters in airbench94 (not by Muon)."""


class NormBias(nnx.Param):
    """Batch-norm biases: ``bias_scale`` times the learning rate, the same decay per step."""


class WhitenBias(nnx.Param):
    """The first layer's bias: trained like a filter, then frozen after a few epochs."""


class Frozen(nnx.Variable):
    """The whitening filters: computed from the data, never trained."""


class BatchNorm(nnx.Module):
    """Batch norm without a scale (the next convolution can rescale), statistics in float32."""

    def __init__(self, channels: int, momentum: float = 0.6, eps: float = 1e-12):
        self.bias = NormBias(jnp.zeros(channels))
        self.mean = nnx.BatchStat(jnp.zeros(channels))
        self.var = nnx.BatchStat(jnp.ones(channels))
        self.momentum, self.eps = momentum, eps

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if train:
            x32 = x.astype(jnp.float32)  # sums over a whole batch overflow float16
            mean, var = x32.mean((0, 1, 2)), x32.var((0, 1, 2))
            n = x32.size // x32.shape[-1]  # values per channel
            m = self.momentum
            self.mean[...] = m * self.mean[...] + (1 - m) * mean
            self.var[...] = m * self.var[...] + (1 - m) * var * n / (n - 1)
        else:
            mean, var = self.mean[...], self.var[...]
        scale = jax.lax.rsqrt(var + self.eps)
        return x * scale.astype(x.dtype) + (self.bias[...] - mean * scale).astype(x.dtype)


def conv(x: jax.Array, kernel: jax.Array, padding: str = "SAME") -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def conv_kernel(key: jax.Array, c_in: int, c_out: int, dirac: bool = True) -> jax.Array:
    """PyTorch's default uniform init; with ``dirac``, the first c_in filters pass their input."""
    bound = 1 / np.sqrt(9 * c_in)
    kernel = jax.random.uniform(key, (3, 3, c_in, c_out), minval=-bound, maxval=bound)
    if not dirac:
        return kernel
    n = min(c_in, c_out)
    return kernel.at[:, :, :, :n].set(0).at[1, 1, :n, :n].set(jnp.eye(n))


class ConvGroup(nnx.Module):
    """conv -> 2x2 max-pool -> BN -> GELU -> conv -> BN -> GELU."""

    def __init__(self, c_in: int, c_out: int, key: jax.Array, dirac: bool = True):
        k1, k2 = jax.random.split(key)
        self.conv1 = Filter(conv_kernel(k1, c_in, c_out, dirac))
        self.conv2 = Filter(conv_kernel(k2, c_out, c_out, dirac))
        self.norm1, self.norm2 = BatchNorm(c_out), BatchNorm(c_out)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = conv(x, self.conv1[...])
        x = nnx.max_pool(x, (2, 2), (2, 2))
        x = jax.nn.gelu(self.norm1(x, train), approximate=False)
        return jax.nn.gelu(self.norm2(conv(x, self.conv2[...]), train), approximate=False)


class Airbench(nnx.Module):
    """A 2x2 first conv (24 filters), three conv groups, a global max-pool, a linear head / 9."""

    def __init__(
        self,
        widths=(64, 256, 256),
        seed: int = 0,
        dtype="float32",
        whiten: bool = True,
        dirac: bool = True,
    ):
        keys = jax.random.split(jax.random.key(seed), 5)
        if whiten:  # set from the data by whitening_filters (section 3)
            self.whiten = Frozen(jnp.zeros((2, 2, 3, 24)))
        else:  # an ordinary trained layer, PyTorch's default init
            bound = 1 / np.sqrt(12)
            self.whiten = Filter(
                jax.random.uniform(keys[4], (2, 2, 3, 24), minval=-bound, maxval=bound)
            )
        self.whiten_bias = WhitenBias(jnp.zeros(24))
        ins = (24, *widths[:-1])
        self.groups = nnx.List(
            [ConvGroup(a, b, k, dirac) for a, b, k in zip(ins, widths, keys[:3], strict=True)]
        )
        bound = 1 / np.sqrt(widths[-1])
        self.head = Head(jax.random.uniform(keys[3], (widths[-1], 10), minval=-bound, maxval=bound))
        self.dtype = jnp.dtype(dtype)
        self.logit_scale = 1 / 9

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = conv(x.astype(self.dtype), self.whiten[...], "VALID")  # 32x32 -> 31x31
        x = jax.nn.gelu(x + self.whiten_bias[...].astype(x.dtype), approximate=False)
        for group in self.groups:  # 31 -> 15 -> 7 -> 3 pixels
            x = group(x, train)
        x = x.max(axis=(1, 2))  # the reference's MaxPool2d(3) on the 3x3 map
        return (x @ self.head[...].astype(x.dtype)).astype(jnp.float32) * self.logit_scale


def normalize(images: jax.Array) -> jax.Array:
    """uint8 pixels -> float32, each channel with mean 0 and standard deviation 1."""
    return (images.astype(jnp.float32) / 255 - CIFAR_MEAN) / CIFAR_STD


def whitening_filters(images: jax.Array, eps: float = 5e-4) -> jax.Array:
    """24 filters of 2x2x3 that decorrelate image patches: +- eigenvectors / sqrt(eigenvalue)."""
    patches = jnp.concatenate(
        [images[:, i : i + 31, j : j + 31, :] for i in range(2) for j in range(2)], axis=-1
    ).reshape(-1, 12)  # order (row, column, channel) matches a (2, 2, 3) kernel
    covariance = jnp.matmul(patches.T, patches, precision="highest") / len(patches)
    eigenvalues, eigenvectors = jnp.linalg.eigh(covariance)
    scaled = (eigenvectors / jnp.sqrt(eigenvalues + eps)).T[::-1]  # largest first
    return jnp.concatenate([scaled, -scaled]).T.reshape(2, 2, 3, 24)


def augment(
    images: jax.Array,
    key: jax.Array,
    epoch: jax.Array,
    flip: jax.Array,
    translate: int = 2,
    flip_mode: str = "alternating",
) -> jax.Array:
    """Crops of the 2-pixel reflect-padded images (shifts of up to ``translate``), and flips.

    ``flip`` holds one random bit per image, drawn once: with "alternating" an image is
    mirrored in the epochs where ``flip`` xor (epoch is odd) holds; "random" draws anew.
    """
    n, size = images.shape[0], images.shape[1] - 4
    k_shift, k_flip = jax.random.split(key)
    shifts = 2 + jax.random.randint(k_shift, (n, 2), -translate, translate + 1)
    crop = jax.vmap(lambda im, s: jax.lax.dynamic_slice(im, (s[0], s[1], 0), (size, size, 3)))
    out = crop(images, shifts)
    if flip_mode == "none":
        return out
    if flip_mode == "random":
        mirror = jax.random.bernoulli(k_flip, 0.5, (n,))
    else:  # each image flips every other epoch
        mirror = jnp.logical_xor(flip, epoch % 2 == 1)
    return jnp.where(mirror[:, None, None, None], out[:, :, ::-1], out)


def loss_fn(model: Airbench, x: jax.Array, y: jax.Array, smoothing: float = 0.2) -> jax.Array:
    """Cross-entropy against smoothed targets, summed over the batch (as the reference does)."""
    targets = optax.smooth_labels(jax.nn.one_hot(y, 10), smoothing)
    return optax.softmax_cross_entropy(model(x, train=True), targets).sum()


def lr_shape(total_steps: int, schedule: str = "triangle") -> optax.Schedule:
    """Multiplier of the learning rate: 0.2 -> 1 over 23% of the steps, then -> 0.07."""
    if schedule == "constant":
        return optax.constant_schedule(1.0)
    peak = int(0.23 * total_steps)
    return optax.join_schedules(
        [
            optax.linear_schedule(0.2, 1.0, peak),
            optax.linear_schedule(1.0, 0.07, total_steps - peak),
        ],
        [peak],
    )


def kind_of(params: nnx.State) -> nnx.State:
    """The label of every parameter: the name of its type (Filter, Head, NormBias, ...)."""
    return jax.tree.map(
        lambda v: type(v).__name__, params, is_leaf=lambda v: isinstance(v, nnx.Variable)
    )


@functools.cache  # the same arguments give the same object, so jit reuses its compilation
def make_optimizer(
    total_steps: int,
    batch: int = 1024,
    recipe: Recipe = AIRBENCH94,
    whiten_bias_steps: int | None = None,
) -> optax.GradientTransformation:
    """PyTorch's SGD (decay added to the gradient, then momentum) per labelled group."""
    kilostep = 1024 * (1 + 1 / (1 - recipe.momentum))  # the reference's unit
    lr = recipe.lr / kilostep  # per example of the summed loss
    decay = recipe.wd * batch / kilostep / lr  # PyTorch's weight_decay = wd / lr
    shape = lr_shape(total_steps, recipe.schedule)

    def sgd(lr_scale: float) -> optax.GradientTransformation:
        return optax.chain(
            optax.add_decayed_weights(decay / lr_scale),  # the same decay per step
            optax.sgd(
                lambda step: lr * lr_scale * shape(step), recipe.momentum, nesterov=recipe.nesterov
            ),
        )

    until = whiten_bias_steps if whiten_bias_steps is not None else total_steps
    return optax.multi_transform(
        {
            "Filter": sgd(1.0),
            "Head": sgd(1.0),
            "NormBias": sgd(recipe.bias_scale),
            "WhitenBias": optax.chain(sgd(1.0), optax.scale_by_schedule(lambda s: s < until)),
        },
        kind_of,
    )


def lookahead(slow, fast, count: jax.Array, total_steps: int):
    """Every 5 steps, and at the last: move the average toward the weights, then copy it back.

    Returns (new average, new weights). The average's decay 0.95**5 * (step / total)**3 is
    near 0 early (the average just follows) and 0.77 at the end; the last step copies it.
    """
    decay = jnp.where(count >= total_steps, 1.0, 0.95**5 * (count / total_steps) ** 3)
    sync = (count % 5 == 0) | (count >= total_steps)
    slow = jax.tree.map(lambda s, f: jnp.where(sync, decay * s + (1 - decay) * f, s), slow, fast)
    fast = jax.tree.map(lambda s, f: jnp.where(sync, s, f), slow, fast)
    return slow, fast


def init_state(model: Airbench, tx: optax.GradientTransformation) -> tuple:
    """Split the model into its graph and its arrays: trained, frozen, batch statistics.

    The lookahead average starts as a copy, not the same arrays: the state is donated to
    each step (see train_step), and one buffer cannot be donated twice.
    """
    graphdef, params, frozen, stats = nnx.split(model, nnx.Param, Frozen, nnx.BatchStat)
    slow = jax.tree.map(jnp.copy, (params, stats))
    return graphdef, (params, frozen, stats, tx.init(params), slow, jnp.array(0))


@functools.partial(
    jax.jit, static_argnames=("graphdef", "tx", "total_steps", "recipe"), donate_argnames="state"
)
def train_step(graphdef, tx, state, x, y, *, total_steps: int, recipe: Recipe = AIRBENCH94):
    """One SGD step on a normalised batch; steps past ``total_steps`` change nothing."""
    params, frozen, stats, opt_state, slow, count = state

    def loss_of(p):
        model = nnx.merge(graphdef, p, frozen, stats, copy=True)
        loss = loss_fn(model, x, y, recipe.smoothing)
        return loss, nnx.state(model, nnx.BatchStat)

    (loss, new_stats), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
    updates, new_opt = tx.update(grads, opt_state, params)
    new_params, new_count = optax.apply_updates(params, updates), count + 1
    new_slow = slow
    if recipe.lookahead:
        new_slow, (new_params, new_stats) = lookahead(
            slow, (new_params, new_stats), new_count, total_steps
        )
    new = (new_params, frozen, new_stats, new_opt, new_slow, new_count)
    old = (params, frozen, stats, opt_state, slow, count)
    active = count < total_steps  # the last epoch may be cut short (9.9 epochs)
    return jax.tree.map(lambda n, o: jnp.where(active, n, o), new, old), loss


@functools.partial(jax.jit, static_argnames=("batch", "recipe"))
def epoch_batches(images, labels, key, epoch, flip, *, batch: int, recipe: Recipe = AIRBENCH94):
    """Shuffle, augment and normalise one epoch: (steps, batch, 32, 32, 3) and (steps, batch)."""
    k_perm, k_aug = jax.random.split(key)
    order = jax.random.permutation(k_perm, labels.shape[0])
    steps = labels.shape[0] // batch  # the last partial batch is dropped
    x = augment(images[order], k_aug, epoch, flip[order], recipe.translate, recipe.flip)
    xs = normalize(x[: steps * batch]).reshape(steps, batch, *x.shape[1:])
    return xs, labels[order][: steps * batch].reshape(steps, batch)


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "tx", "total_steps", "batch", "recipe"),
    donate_argnames="state",
)
def train_epoch(
    graphdef,
    tx,
    state,
    images,
    labels,
    key,
    epoch,
    flip,
    *,
    total_steps: int,
    batch: int,
    recipe: Recipe = AIRBENCH94,
):
    """One epoch in one compiled call: its batches, then jax.lax.scan over train_step."""
    xs, ys = epoch_batches(images, labels, key, epoch, flip, batch=batch, recipe=recipe)
    step = functools.partial(train_step, graphdef, tx, total_steps=total_steps, recipe=recipe)
    return jax.lax.scan(lambda s, xy: step(s, *xy), state, (xs, ys))


TTA_WEIGHTS = jnp.array([0.25, 0.25, 0.125, 0.125, 0.125, 0.125])


def tta_views(x: jax.Array) -> jax.Array:
    """Image, mirror, and both shifted by one pixel up-left and down-right (and mirrored)."""
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    up_left, down_right = padded[:, :-2, :-2], padded[:, 2:, 2:]
    views = [x, up_left, down_right]
    return jnp.stack([v for view in views for v in (view, view[:, :, ::-1])])


@functools.partial(jax.jit, static_argnames=("graphdef", "level"))
def tta_logits(graphdef, params, frozen, stats, x, level: int = 2):
    """Logits averaged over views: 0 the image; 1 and its mirror; 2 (weights above) all six."""
    model = nnx.merge(graphdef, params, frozen, stats, copy=True)
    views = tta_views(normalize(x))[: (1, 2, 6)[level]]
    weights = (jnp.ones(1), jnp.full(2, 0.5), TTA_WEIGHTS)[level]
    logits = model(views.reshape(-1, *x.shape[1:])).reshape(len(views), x.shape[0], 10)
    return jnp.tensordot(weights, logits, axes=1)


def accuracy(graphdef, state, images, labels, level: int = 2, chunk: int = 2000) -> float:
    """Fraction of ``images`` (uint8, unpadded) classified correctly, ``chunk`` at a time."""
    params, frozen, stats = state[:3]
    correct = 0
    for i in range(0, len(labels), chunk):
        x = images[i : i + chunk]
        n = len(x)
        x = jnp.pad(x, ((0, chunk - n), (0, 0), (0, 0), (0, 0)))  # one shape, one compilation
        logits = tta_logits(graphdef, params, frozen, stats, x, level)[:n]
        correct += int((logits.argmax(-1) == labels[i : i + chunk]).sum())
    return correct / len(labels)


@dataclasses.dataclass
class Result:
    test_accuracy: dict  # TTA level -> accuracy; the recipe's own level is the result
    train_accuracy: float  # on up to 10,000 training images, without augmentation or TTA
    losses: np.ndarray  # mean loss per example, one per step
    seconds: float  # whitening, training and the TTA evaluation

    @property
    def accuracy(self) -> float:
        return self.test_accuracy[max(self.test_accuracy)]


def train(
    data: DeviceData, recipe: Recipe = AIRBENCH94, seed: int = 0, loop: str | None = None
) -> Result:
    """Train ``recipe`` from ``seed`` and evaluate it: every result in this notebook.

    ``loop``: "epoch" (one compiled call per epoch, the default on accelerators) or "step"
    (one call per step, the default on a CPU, where XLA runs the gradients of convolutions
    inside a compiled loop far more slowly than outside one).
    """
    loop = loop or ("step" if jax.default_backend() == "cpu" else "epoch")
    n = data.train_labels.shape[0]
    steps_per_epoch = n // recipe.batch
    if loop not in ("epoch", "step") or steps_per_epoch == 0:
        raise ValueError(
            f"loop must be 'epoch' or 'step' (got {loop!r}), and batch "
            f"{recipe.batch} at most the {n} training images"
        )
    start = time.perf_counter()
    total = math.ceil(recipe.epochs * steps_per_epoch)
    model = Airbench(
        recipe.widths, seed, recipe.dtype or compute_dtype(), recipe.whiten, recipe.dirac
    )
    if recipe.whiten:
        model.whiten[...] = whitening_filters(normalize(data.train[:5000, 2:-2, 2:-2]))
    whiten_steps = recipe.whiten_bias_epochs * steps_per_epoch
    if recipe.optimizer == "muon":  # and airbench94_muon's initialisation (section 13)
        tx = make_muon_optimizer(total, recipe.batch, whiten_steps)
        model.head[...] = model.head[...] / model.head[...].std()
        bound = 1 / np.sqrt(12)  # PyTorch's default for the first layer's bias
        key = jax.random.fold_in(jax.random.key(seed), 1)
        model.whiten_bias[...] = jax.random.uniform(key, (24,), minval=-bound, maxval=bound)
        model.logit_scale = 1 / recipe.widths[-1]
    else:
        tx = make_optimizer(total, recipe.batch, recipe, whiten_steps)
    graphdef, state = init_state(model, tx)
    key_flip, key = jax.random.split(jax.random.key(seed))
    flip = jax.random.bernoulli(key_flip, 0.5, (n,))
    losses = []
    for epoch in range(math.ceil(total / steps_per_epoch)):
        args = (data.train, data.train_labels, jax.random.fold_in(key, epoch), epoch, flip)
        if loop == "epoch":
            state, loss = train_epoch(
                graphdef, tx, state, *args, total_steps=total, batch=recipe.batch, recipe=recipe
            )
            losses.append(loss)
            continue
        xs, ys = epoch_batches(*args, batch=recipe.batch, recipe=recipe)
        for i in range(min(steps_per_epoch, total - epoch * steps_per_epoch)):
            state, loss = train_step(
                graphdef, tx, state, xs[i], ys[i], total_steps=total, recipe=recipe
            )
            losses.append(loss[None])
    chunk = min(2000, len(data.test_labels))
    evaluate = functools.partial(accuracy, graphdef, state, chunk=chunk)
    test = {recipe.tta: evaluate(data.test, data.test_labels, recipe.tta)}
    seconds = time.perf_counter() - start  # evaluate() waited for the result
    for level in range(recipe.tta):  # what fewer views give, outside the timing
        test[level] = evaluate(data.test, data.test_labels, level)
    train_acc = evaluate(data.train[:10_000, 2:-2, 2:-2], data.train_labels[:10_000], 0)
    per_step = np.concatenate([np.asarray(x) for x in losses])[:total] / recipe.batch
    return Result(dict(sorted(test.items())), train_acc, per_step, seconds)


def newton_schulz(g: jax.Array, steps: int = 3, eps: float = 1e-7) -> jax.Array:
    """Roughly orthogonalise ``g``: keep its singular vectors, push its singular values to 1.

    The reference's quintic iteration, in bfloat16. Three steps do not converge: they leave
    the singular values spread around 1 (section 13 measures how far).
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.astype(jnp.bfloat16)
    x = x / (jnp.linalg.norm(x) + eps)  # now every singular value is at most 1
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def muon(learning_rate: optax.Schedule, momentum: float = 0.6) -> optax.GradientTransformation:
    """The reference's Muon for conv filters (HWIO), as an Optax transformation.

    Nesterov momentum as in PyTorch; each filter bank rescaled to norm sqrt(filters) (one
    per filter on average); then a step along newton_schulz of the momentum, read as a
    matrix with one row per filter.
    """

    def init(params):
        return jax.tree.map(jnp.zeros_like, params), jnp.zeros([], jnp.int32)

    def update(grads, state, params):
        buffers, count = state
        buffers = jax.tree.map(lambda b, g: momentum * b + g, buffers, grads)
        lr = learning_rate(count)

        def step(p, g, b):
            g = g + momentum * b  # Nesterov
            matrix = g.reshape(-1, g.shape[-1]).T  # (filters, 3 * 3 * inputs)
            direction = newton_schulz(matrix).T.reshape(g.shape).astype(p.dtype)
            normalised = p * jnp.sqrt(p.shape[-1]) / jnp.linalg.norm(p)
            return normalised - lr * direction - p  # Optax adds the update to p

        return jax.tree.map(step, params, grads, buffers), (buffers, count + 1)

    return optax.GradientTransformation(init, update)


@functools.cache
def make_muon_optimizer(
    total_steps: int, batch: int = 2000, whiten_bias_steps: int = 75
) -> optax.GradientTransformation:
    """airbench94_muon's groups: Muon for the filters, Nesterov SGD (0.85) for the rest.

    The reference's numbers, in PyTorch's units for the summed loss; every rate falls
    linearly to 0 over the run (the first layer's bias over its own steps).
    """
    wd = 2e-6 * batch  # decay per step at the start, the same in every SGD group

    def sgd(lr: float, steps: int) -> optax.GradientTransformation:
        shape = optax.linear_schedule(1.0, 0.0, steps)
        return optax.chain(
            optax.add_decayed_weights(wd / lr),
            optax.sgd(lambda s: lr * shape(s), 0.85, nesterov=True),
        )

    return optax.multi_transform(
        {
            "Filter": muon(lambda s: 0.24 * (1 - s / total_steps), momentum=0.6),
            "NormBias": sgd(0.053, total_steps),
            "Head": sgd(0.67, total_steps),
            "WhitenBias": optax.chain(
                sgd(0.053, whiten_bias_steps),
                optax.scale_by_schedule(lambda s: s < whiten_bias_steps),
            ),
        },
        kind_of,
    )


MUON_RECIPE = dataclasses.replace(
    AIRBENCH94, optimizer="muon", batch=2000, epochs=8.0, lookahead=False
)
