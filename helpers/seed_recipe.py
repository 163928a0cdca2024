"""The original tutorial's CIFAR-10 recipe, and the fast training epoch notebook 05 uses.

The seed recipe is the Julia/Flux tutorial's LeNet-style network (two 5x5
convolutions with ReLU and 2x2 max-pooling, three dense layers, softmax), trained
with cross-entropy and Momentum(0.01) on mini-batches of 1,000 images.

Notebook 05 writes the same network out as the lesson, checks that :class:`SeedCNN`
computes the same function, and trains :class:`SeedCNN` with :func:`train_epoch`;
``benchmarks/seed_recipe.py`` does the same, so it times exactly what the reader runs.

Why :func:`train_epoch` is fast on a CPU (measured on a shared 2-core CPU; see
``benchmarks/README.md``):

- The model and optimizer are split into a graph definition and plain arrays
  (``nnx.split``) and the step is compiled with ``jax.jit``, its state buffers
  donated so XLA updates them in place. On a GPU the whole epoch is one compiled
  ``lax.scan``; on a CPU a Python loop calls the compiled step, because XLA:CPU
  runs convolutions inside a loop body through a much slower path.
- The images stay on the device as uint8 and each batch is converted to float32
  inside the compiled code.
- :func:`max_pool_2x2` pools with a reshape and a max, whose gradient is far
  cheaper on XLA:CPU than that of ``lax.reduce_window`` (``nnx.max_pool``).
- On a CPU each batch's gradient is computed in slices of about 100 images
  (:func:`default_chunks`), whose scratch buffers are ten times smaller.
- On a CPU :class:`SeedCNN` computes each convolution-ReLU-pooling block on 2x2 blocks
  of pixels (:func:`conv_relu_pool`), a shape XLA:CPU convolves faster, and
  :func:`default_compiler_options` keeps XLA's YNNPACK library to matrix products.
- :func:`reuse_freed_memory` stops glibc from handing every large temporary buffer
  back to the kernel: without it XLA:CPU maps about 600 MB of fresh memory per
  step on a whole batch of 1,000 and spends most of the step in page faults (with
  the slices the cost is smaller: 4.0 against 2.5 s per epoch).

On a GPU, compiling the epoch is what a reader waits for; :func:`reuse_freed_memory`
stays off there and :func:`default_compiler_options` skips XLA's search for matrix
product kernels (23 s -> about 1.5 s on an H200).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

BATCH_SIZE = 1000
LEARNING_RATE = 0.01
MOMENTUM = 0.9  # Flux's Momentum(0.01) is learning rate 0.01 with momentum 0.9
NUM_CLASSES = 10

# XLA options (name -> value) as a hashable tuple, the key of the compiled-function caches
CompilerOptions = tuple[tuple[str, Any], ...]

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


# Device files of NVIDIA and AMD GPUs and of TPUs (Linux)
_ACCELERATOR_DEVICE_FILES = ("/dev/nvidia0", "/dev/kfd", "/dev/accel0", "/dev/vfio/0")


def accelerator_expected() -> bool:
    """Whether JAX will probably run on a GPU or TPU, judged without starting JAX.

    ``jax.default_backend()`` would answer exactly, but it starts JAX's runtime and its
    threads, after which :func:`reuse_freed_memory` comes too late. So: the platforms
    named in ``JAX_PLATFORMS`` if set, else whether the machine has a GPU or TPU
    device file.
    """
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() != "cpu"
    return any(os.path.exists(path) for path in _ACCELERATOR_DEVICE_FILES)


def reuse_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel.

    XLA:CPU allocates large temporary buffers on every call of a compiled function
    (the convolutions alone take about 600 MB per training step of this recipe).
    By default glibc serves each with a fresh ``mmap`` and unmaps it afterwards, so
    every call touches new pages and pays one page fault per 4 KB. This asks glibc
    (``mallopt``) to serve all threads from one heap that is never trimmed, and JAX
    to run CPU computations on the calling thread (``jax_cpu_enable_async_dispatch``
    off), so that freed blocks are reused and, after the first steps, no page faults
    are left.

    Call it once, before the first JAX computation. It works fully in a fresh
    Python process; in a process whose other threads allocated memory before
    (a Jupyter kernel), glibc has already fixed its number of heaps, so XLA's worker
    threads keep heaps of their own and only part of the faults go away.

    It is skipped where JAX will run on an accelerator (:func:`accelerator_expected`):
    there XLA's compiler works in many threads, which then queue for the one heap
    (compiling notebook 05's training epoch on an H200 took 23 s instead of 3 s).
    Returns False where it does not apply (not Linux with glibc, or an accelerator),
    True once applied.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if accelerator_expected():
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
    applied = all(libc.mallopt(option, value) == 1 for option, value in settings)
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return applied


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pooling with stride 2 of NHWC images (odd rows/columns are dropped).

    The same as ``nnx.max_pool(x, (2, 2), strides=(2, 2))``, written as a reshape
    and a max, whose gradient XLA:CPU computes several times faster.
    """
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2, :]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def space_to_depth(x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (N, H/2, W/2, 4C): each 2x2 block of pixels becomes one pixel.

    Its 4C channels are ordered (row in the block, column in the block, channel).
    """
    n, h, w, c = x.shape
    x = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h // 2, w // 2, 4 * c)


def space_to_depth_kernel(kernel: jax.Array) -> jax.Array:
    """A k x k convolution kernel (k, k, C, O), k odd, for inputs in :func:`space_to_depth` form.

    Returns an m x m kernel (m = k // 2 + 1) of shape (m, m, 4C, 4O): convolving
    ``space_to_depth(x)`` with it gives ``space_to_depth(conv(x, kernel))``, the output's
    four pixels of every 2x2 block as four groups of O channels. Entries that fall
    outside the k x k kernel are zero, so it does (m / k * 2)^2 times the multiplications
    (1.44 for k = 5), in a shape XLA:CPU computes faster.
    """
    k, _, c, o = kernel.shape
    m = k // 2 + 1
    # select[a, d, p, u] = 1 where an input row 2a + d of the block grid meets output row
    # p of the block through kernel row u = 2a + d - p
    select = np.zeros((m, 2, 2, k), np.float32)
    for a, d, p in np.ndindex(m, 2, 2):
        if 0 <= 2 * a + d - p < k:
            select[a, d, p, 2 * a + d - p] = 1.0
    blocked = jnp.einsum("adpu,beqv,uvco->abdecpqo", select, select, kernel)
    return blocked.reshape(m, m, 4 * c, 4 * o)


_NHWC = ("NHWC", "HWIO", "NHWC")


def _convolve(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=_NHWC)


@jax.custom_vjp
def _convolve_data(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """:func:`_convolve` of an input that is data (no gradient flows back into it).

    The kernel's gradient is computed as one matrix product per kernel position
    (einsum over images, rows and columns). XLA:CPU's own weight-gradient convolution
    first transposes the output gradient (5 MB per 100 images in the first layer); with
    the products a training step took about 52 ms instead of 60 on a 2-core CPU.
    """
    return _convolve(x, kernel)


def _convolve_data_forward(x: jax.Array, kernel: jax.Array) -> tuple[jax.Array, jax.Array]:
    return _convolve(x, kernel), x


def _convolve_data_backward(x: jax.Array, grad: jax.Array) -> tuple[jax.Array, jax.Array]:
    _, rows, cols, channels = grad.shape
    kernel_rows, kernel_cols = x.shape[1] - rows + 1, x.shape[2] - cols + 1
    grad_rows = grad.reshape(-1, cols, channels)  # (images x rows, cols, channels)
    products = []
    for i in range(kernel_rows):
        # the input rows that kernel row i sees, as (images x rows, all columns, channels)
        band = x[:, i : i + rows].reshape(-1, x.shape[2], x.shape[3])
        products += [
            jnp.einsum("rwc,rwo->co", band[:, j : j + cols], grad_rows) for j in range(kernel_cols)
        ]
    kernel_grad = jnp.stack(products).reshape(kernel_rows, kernel_cols, x.shape[3], channels)
    return jnp.zeros_like(x), kernel_grad


_convolve_data.defvjp(_convolve_data_forward, _convolve_data_backward)


def conv_relu_pool(conv: nnx.Conv, x: jax.Array, input_is_data: bool = False) -> jax.Array:
    """``max_pool_2x2(nnx.relu(conv(x)))``, computed faster on a CPU.

    On a GPU or TPU, and for convolutions other than this recipe's kind (stride 1,
    'VALID', odd square kernel, bias, even output size), it is computed as written. On a
    CPU it convolves ``space_to_depth(x)`` with :func:`space_to_depth_kernel`, whose
    output holds each 2x2 block's four pixels as channel groups: pooling is then a max
    over the groups, and bias and ReLU follow it (a max commutes with adding a constant
    and with ReLU). Same values up to rounding; for this recipe on a 2-core CPU the
    forward convolutions took about half as long and a training step 52 ms instead of
    87 (see ``benchmarks/README.md``).

    ``input_is_data=True`` treats ``x`` as data (the images), through which no gradient
    flows; the kernel's gradient is then computed in a way that is faster for a first
    layer (:func:`_convolve_data`).
    """
    kernel = conv.kernel[...]
    k = kernel.shape[0]
    applies = (
        jax.default_backend() == "cpu"
        and conv.padding == "VALID"
        and conv.strides in (1, (1, 1))
        and conv.input_dilation in (1, (1, 1))
        and conv.kernel_dilation in (1, (1, 1))
        and conv.feature_group_count == 1
        and conv.mask is None
        and conv.bias is not None
        and conv.dtype is None  # the fast path computes in the inputs' dtype, at default
        and conv.precision is None  # precision, as an unconfigured nnx.Conv does
        and x.dtype == kernel.dtype
        and kernel.shape[1] == k
        and k % 2 == 1
        and x.shape[1] % 2 == 0
        and x.shape[2] % 2 == 0
    )
    if not applies:
        return max_pool_2x2(nnx.relu(conv(x)))
    convolve = _convolve_data if input_is_data else _convolve
    y = convolve(space_to_depth(x), space_to_depth_kernel(kernel))
    n, h, w, groups = y.shape
    pooled = y.reshape(n, h, w, 4, groups // 4).max(axis=3)
    return nnx.relu(pooled + conv.bias[...])


class SeedCNN(nnx.Module):
    """Conv 5x5 3->16 relu, pool, Conv 5x5 16->8 relu, pool, Dense 200-120-84-10, softmax.

    The same function as notebook 05's ``CNN``, with the convolution, ReLU and pooling
    of each block computed by :func:`conv_relu_pool`.
    """

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.conv1 = nnx.Conv(3, 16, kernel_size=(5, 5), padding="VALID", rngs=rngs)
        self.conv2 = nnx.Conv(16, 8, kernel_size=(5, 5), padding="VALID", rngs=rngs)
        self.dense1 = nnx.Linear(200, 120, rngs=rngs)
        self.dense2 = nnx.Linear(120, 84, rngs=rngs)
        self.dense3 = nnx.Linear(84, NUM_CLASSES, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = conv_relu_pool(self.conv1, x, input_is_data=True)
        x = conv_relu_pool(self.conv2, x)
        x = x.reshape(x.shape[0], -1)
        x = self.dense3(self.dense2(self.dense1(x)))
        return nnx.softmax(x)


def make_optimizer(model: nnx.Module) -> nnx.Optimizer:
    """Momentum(0.01) as in Flux: SGD with learning rate 0.01 and momentum 0.9."""
    return nnx.Optimizer(model, optax.sgd(LEARNING_RATE, momentum=MOMENTUM), wrt=nnx.Param)


def to_float(images: jax.Array) -> jax.Array:
    """uint8 images in 0-255 to float32 in [0, 1]."""
    return images.astype(jnp.float32) / 255.0


def cross_entropy(probabilities: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy of predicted class probabilities and integer labels.

    Like Flux's ``crossentropy``, it adds a tiny epsilon before the log so that a
    probability that underflowed to 0 gives a large loss instead of infinity.
    """
    one_hot = jax.nn.one_hot(labels, probabilities.shape[-1])
    return -jnp.mean(jnp.sum(one_hot * jnp.log(probabilities + 1e-7), axis=-1))


def _one_step(
    graphdef: nnx.GraphDef[Any],
    batch_size: int,
    chunks: int,
    state: nnx.State,
    images: jax.Array,
    labels: jax.Array,
    step: jax.Array,
) -> tuple[nnx.State, jax.Array]:
    """Train on batch number ``step`` of the device-resident data; pure, for jax.jit.

    The batch's loss and gradient are the means over ``chunks`` equal slices of it,
    each computed on its own (the same numbers as for the whole batch at once, up to
    rounding; see :func:`default_chunks` for why).
    """
    model, optimizer = nnx.merge(graphdef, state)
    start = step * batch_size
    x = to_float(jax.lax.dynamic_slice_in_dim(images, start, batch_size))
    y = jax.lax.dynamic_slice_in_dim(labels, start, batch_size)
    loss_and_grads = nnx.value_and_grad(lambda m, xs, ys: cross_entropy(m(xs), ys))
    size = batch_size // chunks
    loss, grads = loss_and_grads(model, x[:size], y[:size])
    for first in range(size, batch_size, size):
        chunk_loss, chunk_grads = loss_and_grads(
            model, x[first : first + size], y[first : first + size]
        )
        loss = loss + chunk_loss
        grads = jax.tree.map(jnp.add, grads, chunk_grads)
    optimizer.update(model, jax.tree.map(lambda g: g / chunks, grads))
    return nnx.state((model, optimizer)), loss / chunks


@functools.cache
def _compiled_step(
    graphdef: nnx.GraphDef[Any], batch_size: int, chunks: int, options: CompilerOptions
) -> Any:
    step = functools.partial(_one_step, graphdef, batch_size, chunks)
    return jax.jit(step, donate_argnums=0, compiler_options=dict(options))


@functools.cache
def _compiled_epoch(
    graphdef: nnx.GraphDef[Any],
    batch_size: int,
    chunks: int,
    steps: int,
    options: CompilerOptions,
) -> Any:
    def epoch(
        state: nnx.State, images: jax.Array, labels: jax.Array
    ) -> tuple[nnx.State, jax.Array]:
        def body(state: nnx.State, step: jax.Array) -> tuple[nnx.State, jax.Array]:
            return _one_step(graphdef, batch_size, chunks, state, images, labels, step)

        return jax.lax.scan(body, state, jnp.arange(steps))

    return jax.jit(epoch, donate_argnums=0, compiler_options=dict(options))


def default_chunks(batch_size: int) -> int:
    """How many slices of a batch :func:`train_epoch` differentiates one at a time.

    On a CPU, slices of 100-200 images: XLA:CPU's convolutions unfold their input
    into a scratch buffer (235 MB for the first convolution of a batch of 1,000),
    which no cache holds; for 100 images it is a tenth of that, and the convolutions'
    weight gradients run about twice as fast. On a GPU, one piece (the whole batch
    keeps the GPU busy). Always a divisor of ``batch_size``.
    """
    if jax.default_backend() != "cpu":
        return 1
    return next(k for k in range(max(batch_size // 100, 1), 0, -1) if batch_size % k == 0)


# On a CPU: YNNPACK (XLA:CPU's kernel library) for matrix products only
_CPU_OPTIONS: CompilerOptions = (
    ("xla_cpu_experimental_ynn_fusion_type", "LIBRARY_FUSION_TYPE_DOT"),
)


@functools.cache
def _compiler_accepts(options: CompilerOptions) -> bool:
    """Whether this JAX's XLA knows these options (experimental ones come and go)."""
    try:
        jax.jit(jnp.negative, compiler_options=dict(options)).lower(jnp.zeros(2)).compile()
    except jax.errors.JaxRuntimeError:
        return False
    return True


def default_compiler_options() -> dict[str, Any]:
    """XLA options :func:`train_epoch` compiles with.

    On a GPU, cuBLAS for matrix products: by default XLA's GPU compiler generates its
    own (Triton) kernels for them and, to pick their tile sizes, compiles and times
    several candidates for each product: half of the 3 s that compiling this recipe's
    epoch took on an H200. For the dense layers of this small network cuBLAS is as fast
    and needs no search.

    On a CPU, YNNPACK only for matrix products: by default XLA:CPU also hands it
    convolutions, elementwise operations and reductions, and for this recipe's
    convolutions in :func:`conv_relu_pool`'s form a training step then took 70-78 ms
    instead of 57-63 on a 2-core CPU. Left out where this JAX does not know the
    (experimental) option.
    """
    backend = jax.default_backend()
    if backend == "gpu":
        return {"xla_gpu_enable_triton_gemm": False}
    if backend == "cpu" and _compiler_accepts(_CPU_OPTIONS):
        return dict(_CPU_OPTIONS)
    return {}


def default_loop() -> str:
    """``"python"`` on a CPU, ``"scan"`` on an accelerator (see :func:`train_epoch`)."""
    return "python" if jax.default_backend() == "cpu" else "scan"


def train_epoch(
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    images: jax.Array | np.ndarray,
    labels: jax.Array | np.ndarray,
    batch_size: int = BATCH_SIZE,
    loop: str | None = None,
    chunks: int | None = None,
    compiler_options: dict[str, Any] | None = None,
) -> jax.Array:
    """Train ``model`` for one epoch, in order, on mini-batches of ``batch_size``.

    Args:
        model, optimizer: updated in place. Their arrays are donated to the compiled
            step during the epoch and replaced at the end; if the epoch is
            interrupted, build both again.
        images: uint8 (N, 32, 32, 3); put them on the device once with
            ``jnp.asarray`` so that no epoch copies them again.
        labels: int (N,) class indices.
        batch_size: images per step; a last partial batch is dropped, as in the
            original (49,000 images make 49 batches of 1,000).
        loop: ``"python"`` runs one compiled step per batch from a Python loop;
            ``"scan"`` compiles the whole epoch into one ``lax.scan``. Both compute
            the same updates. XLA:CPU runs the convolutions of a loop body through a
            much slower path, so ``"python"`` is faster on a CPU and ``"scan"``, which
            has no per-step dispatch cost, on a GPU. None picks :func:`default_loop`.
        chunks: compute each batch's gradient in this many equal slices, one after
            another (must divide ``batch_size``); None picks :func:`default_chunks`.
        compiler_options: XLA options for compiling the step or epoch (as
            ``jax.jit(..., compiler_options=...)``), on top of
            :func:`default_compiler_options`; ``benchmarks/seed_recipe.py`` uses
            them to measure alternatives.

    Returns:
        The loss of every step, shape (steps,).
    """
    steps = len(images) // batch_size
    if steps == 0:
        raise ValueError(f"{len(images)} images make no batch of {batch_size}")
    loop = loop or default_loop()
    chunks = chunks or default_chunks(batch_size)
    if batch_size % chunks:
        raise ValueError(f"chunks ({chunks}) must divide batch_size ({batch_size})")
    images = jnp.asarray(images)
    labels = jnp.asarray(labels)
    graphdef, state = nnx.split((model, optimizer))
    options = tuple(sorted({**default_compiler_options(), **(compiler_options or {})}.items()))
    if loop == "scan":
        epoch_fn = _compiled_epoch(graphdef, batch_size, chunks, steps, options)
        state, losses = epoch_fn(state, images, labels)
    elif loop == "python":
        step_fn = _compiled_step(graphdef, batch_size, chunks, options)
        per_step = []
        for step in range(steps):
            state, loss = step_fn(state, images, labels, step)
            per_step.append(loss)
        losses = jnp.stack(per_step)
    else:
        raise ValueError(f"loop must be 'python' or 'scan', not {loop!r}")
    nnx.update((model, optimizer), state)
    return losses


@nnx.jit
def _forward(model: nnx.Module, images: jax.Array) -> jax.Array:
    return model(to_float(images))


def predict(
    model: nnx.Module, images: jax.Array | np.ndarray, batch_size: int = 1000
) -> np.ndarray:
    """Class probabilities (N, 10) for uint8 images, computed in batches to bound memory."""
    parts = [
        np.asarray(_forward(model, jnp.asarray(images[start : start + batch_size])))
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts)


def evaluate(
    model: nnx.Module, images: jax.Array | np.ndarray, labels: jax.Array | np.ndarray
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on uint8 images and integer labels."""
    probabilities = predict(model, images)
    labels = np.asarray(labels)
    loss = float(cross_entropy(jnp.asarray(probabilities), jnp.asarray(labels)))
    accuracy = float(np.mean(probabilities.argmax(axis=-1) == labels))
    return loss, accuracy
