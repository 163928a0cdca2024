"""Generated from notebooks/05_cifar10_classifier.ipynb by `python -m helpers.export`.

Do not edit: change the notebook's cells tagged 'export' and run the command again.
"""

from functools import partial

import jax
import jax.numpy as jnp
import optax
from flax import nnx


def max_pool_2x2(x):
    """The largest value of each 2x2 block of NHWC feature maps (halves height and width)."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class CNN(nnx.Module):
    """The original tutorial's network; returns logits, shape (N, 10)."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(3, 16, kernel_size=(5, 5), padding="VALID", rngs=rngs)
        self.conv2 = nnx.Conv(16, 8, kernel_size=(5, 5), padding="VALID", rngs=rngs)
        self.dense1 = nnx.Linear(200, 120, rngs=rngs)
        self.dense2 = nnx.Linear(120, 84, rngs=rngs)
        self.dense3 = nnx.Linear(84, 10, rngs=rngs)

    def __call__(self, x):
        x = max_pool_2x2(nnx.relu(self.conv1(x)))
        x = max_pool_2x2(nnx.relu(self.conv2(x)))
        x = x.reshape(x.shape[0], -1)          # flatten: (N, 5, 5, 8) -> (N, 200)
        return self.dense3(self.dense2(self.dense1(x)))


def to_float(images):
    """uint8 pixels (0-255) -> float32 in [0, 1]."""
    return jnp.asarray(images, dtype=jnp.float32) / 255.0


def loss_fn(model, images, labels):
    """Mean cross-entropy of the model's logits against integer labels (uint8 images)."""
    logits = model(to_float(images))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_optimizer(model):
    """The original's Momentum(0.01): SGD with learning rate 0.01 and momentum 0.9."""
    return nnx.Optimizer(model, optax.sgd(0.01, momentum=0.9), wrt=nnx.Param)


@nnx.jit
def logits_of(model, images):
    return model(to_float(images))


def evaluate(model, images, labels, batch_size=1_000):
    """(mean loss, accuracy) of ``model`` on uint8 ``images`` with integer ``labels``."""
    total_loss, correct = 0.0, 0
    for start in range(0, len(images), batch_size):
        logits = logits_of(model, images[start:start + batch_size])
        y = jnp.asarray(labels[start:start + batch_size])
        total_loss += float(optax.softmax_cross_entropy_with_integer_labels(logits, y).sum())
        correct += int((logits.argmax(axis=-1) == y).sum())
    return total_loss / len(images), correct / len(images)


@nnx.jit
def plain_step(model, optimizer, images, labels):
    loss, grads = nnx.value_and_grad(loss_fn)(model, images, labels)
    optimizer.update(model, grads)     # changes the model's parameters in place
    return loss


@partial(jax.jit, static_argnums=0, donate_argnums=1)
def fast_step(graphdef, state, images, labels):
    model, optimizer = nnx.merge(graphdef, state)
    loss, grads = nnx.value_and_grad(loss_fn)(model, images, labels)
    optimizer.update(model, grads)
    return loss, nnx.state((model, optimizer))


def train_epoch(model, optimizer, images, labels, key, batch_size=1_000):
    """One epoch in a random order drawn from ``key`` (None: the original's fixed order).

    Returns the loss of every step.
    """
    order = jnp.arange(len(images)) if key is None else jax.random.permutation(key, len(images))
    graphdef, state = nnx.split((model, optimizer))
    losses = []
    for start in range(0, len(images) - batch_size + 1, batch_size):
        batch = order[start:start + batch_size]
        loss, state = fast_step(graphdef, state, images[batch], labels[batch])
        losses.append(loss)
    nnx.update((model, optimizer), state)      # the trained arrays back into the objects
    return jnp.stack(losses)
