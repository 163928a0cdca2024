"""Generated from notebooks/06_fast_cifar10.ipynb by `python -m helpers.export`.

Do not edit: change the notebook's cells tagged 'export' and run the command again.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

CIFAR_MEAN = jnp.array([0.4914, 0.4822, 0.4465])
CIFAR_STD = jnp.array([0.2470, 0.2435, 0.2616])


class Filter(nnx.Param):
    """Convolution and linear weights: full learning rate and weight decay."""


class NormBias(nnx.Param):
    """Batch-norm and whitening biases: 64x the learning rate, 1/64 the decay."""


class Frozen(nnx.Variable):
    """The whitening filters: computed from the data, never trained."""


class BatchNorm(nnx.Module):
    """Batch norm without a scale (it would only duplicate the next layer's)."""

    def __init__(self, channels: int, momentum: float = 0.6, eps: float = 1e-12):
        self.bias = NormBias(jnp.zeros(channels))
        self.mean = nnx.BatchStat(jnp.zeros(channels))
        self.var = nnx.BatchStat(jnp.ones(channels))
        self.momentum, self.eps = momentum, eps

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if train:
            mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
            m = self.momentum
            self.mean[...] = m * self.mean[...] + (1 - m) * mean.astype(jnp.float32)
            self.var[...] = m * self.var[...] + (1 - m) * var.astype(jnp.float32)
        else:
            mean, var = self.mean[...].astype(x.dtype), self.var[...].astype(x.dtype)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) + self.bias[...].astype(x.dtype)


def conv(x: jax.Array, kernel: jax.Array, padding: str = "SAME") -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def dirac_kernel(key: jax.Array, c_in: int, c_out: int) -> jax.Array:
    """PyTorch's default uniform init, with the first filters passing their input through."""
    bound = 1 / np.sqrt(9 * c_in)
    kernel = jax.random.uniform(key, (3, 3, c_in, c_out), minval=-bound, maxval=bound)
    n = min(c_in, c_out)
    return kernel.at[:, :, :n, :n].set(0).at[1, 1, :n, :n].set(jnp.eye(n))


class ConvGroup(nnx.Module):
    """conv -> 2x2 max-pool -> BN -> GELU -> conv -> BN -> GELU."""

    def __init__(self, c_in: int, c_out: int, key: jax.Array):
        k1, k2 = jax.random.split(key)
        self.conv1 = Filter(dirac_kernel(k1, c_in, c_out))
        self.conv2 = Filter(dirac_kernel(k2, c_out, c_out))
        self.norm1, self.norm2 = BatchNorm(c_out), BatchNorm(c_out)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = conv(x, self.conv1[...])
        x = nnx.max_pool(x, (2, 2), (2, 2))
        x = jax.nn.gelu(self.norm1(x, train), approximate=False)
        return jax.nn.gelu(self.norm2(conv(x, self.conv2[...]), train), approximate=False)


class Airbench(nnx.Module):
    """2x2 whitening conv, three conv groups, a global max-pool, a linear head times 1/9."""

    def __init__(self, widths=(64, 256, 256), seed: int = 0, dtype=jnp.float32):
        keys = jax.random.split(jax.random.key(seed), 4)
        self.whiten = Frozen(jnp.zeros((2, 2, 3, 24)))
        self.whiten_bias = NormBias(jnp.zeros(24))
        self.groups = nnx.List(
            [
                ConvGroup(a, b, k)
                for a, b, k in zip((24, *widths[:-1]), widths, keys[:3], strict=True)
            ]
        )
        bound = 1 / np.sqrt(widths[-1])
        self.head = Filter(
            jax.random.uniform(keys[3], (widths[-1], 10), minval=-bound, maxval=bound)
        )
        self.dtype = dtype

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = conv(x.astype(self.dtype), self.whiten[...], "VALID")
        x = jax.nn.gelu(x + self.whiten_bias[...].astype(x.dtype), approximate=False)
        for group in self.groups:
            x = group(x, train)
        x = x.max(axis=(1, 2))  # the reference's MaxPool2d(3) on the 3x3 map
        return (x @ self.head[...].astype(x.dtype)).astype(jnp.float32) / 9


def whitening_filters(images: jax.Array, eps: float = 5e-4) -> jax.Array:
    """24 filters of 2x2x3 that decorrelate image patches: +- eigenvectors / sqrt(eigenvalue)."""
    patches = jnp.concatenate(
        [images[:, i : i + 31, j : j + 31, :] for i in range(2) for j in range(2)], axis=-1
    ).reshape(-1, 12)  # order (row, column, channel) matches a (2, 2, 3) kernel
    patches = patches - patches.mean(0)
    eigenvalues, eigenvectors = jnp.linalg.eigh(patches.T @ patches / len(patches))
    scaled = (eigenvectors / jnp.sqrt(eigenvalues + eps)).T[::-1]  # largest first
    return jnp.concatenate([scaled, -scaled]).T.reshape(2, 2, 3, 24)


def augment(images: jax.Array, key: jax.Array, epoch: jax.Array, flip: jax.Array) -> jax.Array:
    """Random 2-pixel shifts of reflect-padded images and alternating flips."""
    n, size = images.shape[0], images.shape[1] - 4
    shifts = jax.random.randint(key, (n, 2), 0, 5)
    crop = jax.vmap(lambda im, s: jax.lax.dynamic_slice(im, (s[0], s[1], 0), (size, size, 3)))
    out = crop(images, shifts)
    mirror = jnp.logical_xor(flip, epoch % 2 == 1)  # each image flips every other epoch
    return jnp.where(mirror[:, None, None, None], out[:, :, ::-1], out)


def normalize(images: jax.Array) -> jax.Array:
    return (images.astype(jnp.float32) / 255 - CIFAR_MEAN) / CIFAR_STD


def loss_fn(model: Airbench, x: jax.Array, y: jax.Array, smoothing: float = 0.2) -> jax.Array:
    targets = optax.smooth_labels(jax.nn.one_hot(y, 10), smoothing)
    return optax.softmax_cross_entropy(model(x, train=True), targets).sum()


def make_optimizer(
    total_steps: int,
    batch: int = 1024,
    lr: float = 11.5,
    momentum: float = 0.85,
    wd: float = 0.0153,
    bias_scale: float = 64.0,
) -> optax.GradientTransformation:
    """Nesterov SGD per labelled group, on the reference's triangular schedule."""
    kilostep = 1024 * (1 + 1 / (1 - momentum))  # the reference's lr and wd units
    lr, wd = lr / kilostep, wd * batch / kilostep
    peak = int(0.23 * total_steps)
    shape = optax.join_schedules(
        [
            optax.linear_schedule(0.2, 1.0, peak),
            optax.linear_schedule(1.0, 0.07, total_steps - peak),
        ],
        [peak],
    )

    def group(lr_scale: float, wd_scale: float) -> optax.GradientTransformation:
        return optax.chain(
            optax.add_decayed_weights(wd * wd_scale),
            optax.sgd(lambda step: lr * lr_scale * shape(step), momentum, nesterov=True),
        )

    return optax.multi_transform(
        {"Filter": group(1, 1), "NormBias": group(bias_scale, 1 / bias_scale)},
        lambda params: jax.tree.map(
            lambda v: type(v).__name__, params, is_leaf=lambda v: isinstance(v, nnx.Variable)
        ),
    )


def lookahead_decay(step: jax.Array, total_steps: int) -> jax.Array:
    """The reference's 0.95**5 * (step / total)**3: the average follows faster early on."""
    return 0.95**5 * (step / total_steps) ** 3


def init_state(model: Airbench, tx: optax.GradientTransformation) -> tuple:
    """Split the model into what trains, what is frozen and the batch statistics.

    The lookahead average starts as a copy: the state is donated (its buffers reused for
    the result, which saves memory), so it must not hold the same array twice.
    """
    graphdef, params, frozen, stats = nnx.split(model, nnx.Param, Frozen, nnx.BatchStat)
    slow = jax.tree.map(jnp.copy, (params, stats))
    return graphdef, (params, frozen, stats, tx.init(params), slow, jnp.array(0))


@functools.partial(
    jax.jit, static_argnames=("graphdef", "tx", "total_steps", "batch"), donate_argnames=("state",)
)
def train_epoch(graphdef, tx, state, images, labels, key, epoch, flip, *, total_steps, batch):
    """One epoch, compiled: shuffle, augment, and scan the steps with lookahead every 5."""
    k_perm, k_aug = jax.random.split(key)
    order = jax.random.permutation(k_perm, labels.shape[0])
    steps = labels.shape[0] // batch
    x = augment(images[order], k_aug, epoch, flip[order])[: steps * batch]
    xs = normalize(x).reshape(steps, batch, *x.shape[1:])
    ys = labels[order][: steps * batch].reshape(steps, batch)

    def step(state, batch_xy):
        params, frozen, stats, opt_state, slow, count = state

        def loss_of(p):
            model = nnx.merge(graphdef, p, frozen, stats, copy=True)
            loss = loss_fn(model, *batch_xy)
            return loss, nnx.state(model, nnx.BatchStat)

        (loss, stats), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        count = count + 1
        decay = jnp.where(count == total_steps, 1.0, lookahead_decay(count, total_steps))
        sync = (count % 5 == 0) | (count == total_steps)
        slow = jax.tree.map(
            lambda s, p: jnp.where(sync, decay * s + (1 - decay) * p, s), slow, (params, stats)
        )
        params, stats = jax.tree.map(lambda s, p: jnp.where(sync, s, p), slow, (params, stats))
        return (params, frozen, stats, opt_state, slow, count), loss

    return jax.lax.scan(step, state, (xs, ys))


TTA_WEIGHTS = jnp.array([0.25, 0.25, 0.125, 0.125, 0.125, 0.125])


def tta_views(x: jax.Array) -> jax.Array:
    """Image, mirror, and both shifted by one pixel up-left and down-right (and mirrored)."""
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    up_left, down_right = padded[:, :-2, :-2], padded[:, 2:, 2:]
    views = [x, up_left, down_right]
    return jnp.stack([v for view in views for v in (view, view[:, :, ::-1])])


@functools.partial(jax.jit, static_argnames=("graphdef",))
def tta_logits(graphdef, params, frozen, stats, x):
    """Weighted mean of the six views' logits: half from the image, half from the shifts."""
    model = nnx.merge(graphdef, params, frozen, stats, copy=True)
    views = tta_views(normalize(x))
    logits = model(views.reshape(-1, *x.shape[1:])).reshape(6, x.shape[0], 10)
    return jnp.tensordot(TTA_WEIGHTS, logits, axes=1)
