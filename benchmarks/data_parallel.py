"""Train notebook 06's recipe data-parallel over the devices of one or of several machines.

Every process runs this same script. Alone, it uses every device of its machine:

    python benchmarks/data_parallel.py --epochs 1

On two GPU machines, start it once on each (10.0.0.1: the first machine's address, which
the second must reach; any free port):

    python benchmarks/data_parallel.py --coordinator 10.0.0.1:4321 --num-processes 2 --process-id 0
    python benchmarks/data_parallel.py --coordinator 10.0.0.1:4321 --num-processes 2 --process-id 1

``jax.distributed.initialize`` connects the processes; then ``jax.devices()`` lists the
devices of every process and one mesh spans them all. The training is that of
``lessons.airbench.train`` (notebook 06's cells) step by step, with one difference: each
process hands its own devices only its own rows of every global batch. Every process
reads the same data set and draws the same epoch (shuffle, shifts, flips) from the same
keys, so the rows add up to exactly the batch one process would train on. The parameters
and optimiser state are replicated, and the compiler adds the all-reduces across
processes (the gradient and the batch-norm statistics are sums over the batch), so every
process gets the loss that one process training on the whole batch gets.

On a CPU, ``--cpu-devices 4`` gives each process 4 simulated devices;
tests/test_distributed.py runs two such processes on 127.0.0.1.

Output: one JSON line per process: ``process``, ``processes``, ``global_devices``,
``local_devices``, ``platform``, ``batch_rows`` (this process's rows of every global
batch), ``batch_fully_addressable`` (false when a batch spans processes), ``losses``
(the mean loss per example of every step, as ``lessons.airbench.train`` reports them),
``seconds`` (the training loop, compilation included) and ``test_accuracy`` (with the
recipe's test-time augmentation, every device classifying its share of the test set;
null without a test set).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# lessons.airbench (generated from notebook 06's cells) is imported in train(): importing
# it creates arrays, which starts JAX, and the device count and the connection to the
# other processes must be set before that.


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--coordinator", help="HOST:PORT of process 0; leave out to run alone")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--init-timeout", type=int, default=300, help="seconds to wait for all")
    parser.add_argument("--cpu-devices", type=int, help="simulated CPU devices per process")
    parser.add_argument("--data", default="cifar10", help="'cifar10' or a .npz file")
    parser.add_argument("--train-images", type=int, help="only the first N training images")
    parser.add_argument("--batch", type=int, default=1024, help="global batch, all devices")
    parser.add_argument("--epochs", type=float, default=9.9)
    parser.add_argument("--widths", default="64,256,256", help="the three groups' channels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.num_processes < 1:
        parser.error(f"--num-processes must be at least 1, got {args.num_processes}")
    if not 0 <= args.process_id < args.num_processes:
        parser.error(f"--process-id must be in 0..{args.num_processes - 1}, got {args.process_id}")
    if args.num_processes > 1 and not args.coordinator:
        parser.error("--num-processes > 1 needs --coordinator HOST:PORT (process 0's address)")
    if args.cpu_devices is not None and args.cpu_devices < 1:
        parser.error(f"--cpu-devices must be at least 1, got {args.cpu_devices}")
    return args


def load_data(data: str, count: int | None) -> dict[str, np.ndarray]:
    """uint8 images (N, 32, 32, 3) and int32 labels: CIFAR-10, or a .npz file's arrays
    ``images`` and ``labels`` (and, if it has them, ``test_images`` and ``test_labels``).
    ``count``: keep only the first training images."""
    if data == "cifar10":
        from helpers import load_cifar10

        cifar = load_cifar10()
        arrays = {
            "images": cifar.train_images,
            "labels": cifar.train_labels,
            "test_images": cifar.test_images,
            "test_labels": cifar.test_labels,
        }
    elif data.endswith(".npz"):
        with np.load(data) as npz:
            arrays = dict(npz)
    else:
        raise SystemExit(f"--data must be 'cifar10' or a .npz file, got {data!r}")
    arrays["images"], arrays["labels"] = arrays["images"][:count], arrays["labels"][:count]
    return {name: a.astype(np.int32) if "labels" in name else a for name, a in arrays.items()}


def own_rows(sharding: NamedSharding, length: int) -> slice:
    """The rows of an array of ``length`` rows, split by ``sharding``, that this process's
    devices hold (one block: a mesh lists each process's devices together)."""
    held = [index[0] for index in sharding.addressable_devices_indices_map((length,)).values()]
    return slice(min(s.start or 0 for s in held), max(s.stop or length for s in held))


def evaluate(ab, graphdef, state, images, labels, level: int, sharding: NamedSharding) -> float:
    """Test accuracy with ``level`` views of test-time augmentation, each device
    classifying its own rows of every chunk of the test set.

    Classifying needs no communication, so ``jax.shard_map`` runs the notebook's
    ``tta_logits`` on each device's rows as they are. (Under ``jax.jit`` alone the
    partitioner gathers the whole chunk onto every device: the six views are stacked and
    reshaped in a way it cannot split.)
    """
    replicated, split = PartitionSpec(), sharding.spec

    @jax.jit
    def predict(params, frozen, stats, x):
        logits = ab.tta_logits(graphdef, params, frozen, stats, x, level)
        return logits.argmax(-1)

    predict_rows = jax.shard_map(
        predict, mesh=sharding.mesh, in_specs=(replicated,) * 3 + (split,), out_specs=split
    )
    devices = sharding.mesh.size
    chunk = min(devices * max(1, 2000 // devices), -(-len(labels) // devices) * devices)
    padding = -len(labels) % chunk
    images = np.pad(images, ((0, padding), (0, 0), (0, 0), (0, 0)))
    labels = np.pad(labels, (0, padding), constant_values=-1)  # padded rows never count
    rows = own_rows(sharding, chunk)
    correct = 0
    for first in range(0, len(labels), chunk):
        mine = slice(first + rows.start, first + rows.stop)
        x = jax.make_array_from_process_local_data(sharding, images[mine], (chunk, 32, 32, 3))
        y = jax.make_array_from_process_local_data(sharding, labels[mine], (chunk,))
        correct += int((predict_rows(*state[:3], x) == y).sum())
    return correct / (len(labels) - padding)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        return train(args)
    except BaseException:
        if not args.coordinator:
            raise
        # At exit, jax.distributed waits for every process to get there too (up to 5
        # minutes), while the others wait for this one in their next all-reduce. A process
        # that failed leaves at once instead, so that the others fail soon after.
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def train(args: argparse.Namespace) -> dict:
    """Connect, train and evaluate; print and return this process's JSON line."""
    if args.cpu_devices:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    if args.coordinator:
        # Between CPU processes the collectives go through Gloo over TCP (jax 0.12's
        # default, set here to say so). On GPUs JAX uses NCCL.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
            initialization_timeout=args.init_timeout,
        )
    from lessons import airbench as ab

    arrays = load_data(args.data, args.train_images)
    images, labels = arrays["images"], arrays["labels"]
    widths = tuple(int(w) for w in args.widths.split(","))
    try:
        recipe = dataclasses.replace(
            ab.AIRBENCH94, widths=widths, batch=args.batch, epochs=args.epochs
        )
    except ValueError as error:
        raise SystemExit(str(error)) from None
    devices, batch = jax.device_count(), recipe.batch
    if batch % devices or len(labels) < batch:
        raise SystemExit(
            f"--batch {batch} must be a multiple of the {devices} devices and at most "
            f"the {len(labels)} training images"
        )

    # One axis over every device of every process: each batch is split along it; the
    # parameters and the optimiser state are replicated (the same on every device).
    mesh = jax.make_mesh((devices,), ("data",), axis_types=(AxisType.Auto,))
    rows_sharding = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())
    rows = own_rows(rows_sharding, batch)  # this process's rows of every batch

    # From here on, lessons.airbench.train's loop (loop="step"), with global batches.
    start = time.perf_counter()
    train_images = jax.numpy.asarray(np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), "reflect"))
    steps_per_epoch = len(labels) // batch
    total = math.ceil(recipe.epochs * steps_per_epoch)
    dtype = recipe.dtype or ab.compute_dtype()
    model = ab.Airbench(recipe.widths, args.seed, dtype, recipe.whiten, recipe.dirac)
    model.whiten[...] = ab.whitening_filters(ab.normalize(train_images[:5000, 2:-2, 2:-2]))
    tx = ab.make_optimizer(total, batch, recipe, recipe.whiten_bias_epochs * steps_per_epoch)
    graphdef, state = ab.init_state(model, tx)
    state = jax.device_put(state, replicated)
    key_flip, key = jax.random.split(jax.random.key(args.seed))
    flip = jax.random.bernoulli(key_flip, 0.5, (len(labels),))
    losses, fully_addressable = [], True
    for epoch in range(math.ceil(total / steps_per_epoch)):
        xs, ys = ab.epoch_batches(
            train_images, labels, jax.random.fold_in(key, epoch), epoch, flip,
            batch=batch, recipe=recipe,
        )  # fmt: skip
        for i in range(min(steps_per_epoch, total - epoch * steps_per_epoch)):
            x = jax.make_array_from_process_local_data(rows_sharding, xs[i, rows], xs.shape[1:])
            y = jax.make_array_from_process_local_data(rows_sharding, ys[i, rows], (batch,))
            fully_addressable = fully_addressable and x.is_fully_addressable
            state, loss = ab.train_step(graphdef, tx, state, x, y, total_steps=total, recipe=recipe)
            losses.append(loss)  # a replicated scalar: every process can read it
    losses = [float(loss) / batch for loss in losses]
    seconds = time.perf_counter() - start
    test = None
    if "test_images" in arrays:
        test = evaluate(
            ab, graphdef, state, arrays["test_images"], arrays["test_labels"], recipe.tta,
            rows_sharding,
        )  # fmt: skip

    result = {
        "process": jax.process_index(),
        "processes": jax.process_count(),
        "global_devices": devices,
        "local_devices": jax.local_device_count(),
        "platform": jax.devices()[0].platform,
        "batch_rows": [rows.start, rows.stop],
        "batch_fully_addressable": fully_addressable,
        "losses": losses,
        "seconds": round(seconds, 2),
        "test_accuracy": test,
    }
    print(json.dumps(result), flush=True)
    if args.coordinator:
        jax.distributed.shutdown()
    return result


if __name__ == "__main__":
    main()
