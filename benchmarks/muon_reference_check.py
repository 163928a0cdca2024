"""Check the JAX airbench94_muon step against the PyTorch reference, one step at a time.

    python benchmarks/muon_reference_check.py --reference path/to/airbench94_muon.py
    python benchmarks/muon_reference_check.py --reference ... --float32 --steps 0 3 10

The reference (Keller Jordan's airbench94_muon.py) is not part of this repository: fetch
it from its authors (see README.md). This script imports the reader's copy (on the CPU,
without ``torch.compile``; torchvision is only needed by its data loader and is stubbed
when missing), builds its network in float32, and trains it on one batch of CIFAR-10
(``helpers.load_cifar10()``, so ``CIFAR10_PATH`` picks a local copy) with the optimisers
and schedules of its ``main()``. After K of those steps it copies the weights and momentum
buffers into the state of notebook 06's cells (``lessons.airbench``: ``MUON_RECIPE``,
``make_muon_optimizer``, ``train_step``), and both take step K + 1. For each parameter it
prints how far apart the two results are, relative to the size of the step; it exits with
status 1 if any is above ``--tolerance``.

Both sides orthogonalise in bfloat16, as published: their roundings differ, so expect
differences of a few percent of the step. ``--float32`` runs the Newton-Schulz iteration
in float32 on both sides, which leaves only float32 rounding (about 0.1%). Over several
steps the two trainings drift apart further whatever the precision: a max-pooling choice
that flips on a rounding difference changes the gradient, so the check is per step.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# airbench94_muon's main() (batch 2000): 200 steps, whitening bias trained for 75 of them
TOTAL_STEPS, WHITEN_BIAS_STEPS = 200, 75
BIAS_LR, HEAD_LR, MUON_LR = 0.053, 0.67, 0.24
# the reference's normalisation, typed in from airbench94_muon.py
MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
STD = np.array([0.2470, 0.2435, 0.2616], np.float32)


def load_reference(path: Path) -> types.ModuleType:
    """Import airbench94_muon.py without running it, compiling it or needing torchvision."""
    import torch

    def no_compile(model: Any = None, **_: Any) -> Any:
        return model if model is not None else (lambda function: function)

    stubs: dict[str, types.ModuleType] = {}
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        transforms = types.ModuleType("torchvision.transforms")
        transforms.Normalize = object  # type: ignore[attr-defined]  (used by its loader only)
        vision = types.ModuleType("torchvision")
        vision.transforms = transforms  # type: ignore[attr-defined]
        stubs = {"torchvision": vision, "torchvision.transforms": transforms}
    spec = importlib.util.spec_from_file_location("airbench94_muon_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with mock.patch.dict(sys.modules, stubs), mock.patch.object(torch, "compile", no_compile):
        spec.loader.exec_module(module)
    for name in ("CifarNet", "Muon"):
        if not hasattr(module, name):
            raise SystemExit(f"{path} defines no {name}: is it airbench94_muon.py?")
    return module


class _Float32Instead:
    """``jax.numpy`` with ``bfloat16`` standing for ``float32``: newton_schulz's only cast."""

    bfloat16 = None  # set on first use

    def __getattr__(self, name: str) -> Any:
        import jax.numpy as jnp

        return getattr(jnp, name)


@contextlib.contextmanager
def newton_schulz_in_float32() -> Iterator[None]:
    """Both sides' Newton-Schulz iteration in float32 instead of bfloat16, for a while.

    lessons.airbench.newton_schulz casts to ``jnp.bfloat16``; it runs here with a
    ``jnp`` in which that name means float32 (nothing else in the module names bfloat16).
    """
    import jax.numpy as jnp
    import torch

    from lessons import airbench as ab

    float32_jnp = _Float32Instead()
    float32_jnp.bfloat16 = jnp.float32  # type: ignore[assignment]
    torch_cast = torch.Tensor.bfloat16
    torch.Tensor.bfloat16 = torch.Tensor.float  # type: ignore[method-assign]
    try:
        with mock.patch.object(ab, "jnp", float32_jnp):
            yield
    finally:
        torch.Tensor.bfloat16 = torch_cast  # type: ignore[method-assign]


def reference_optimizers(net: Any, muon_class: type, batch_size: int) -> list[Any]:
    """The two optimisers of airbench94_muon's main(), for ``batch_size`` images a step."""
    import torch

    decay = 2e-6 * batch_size
    filters = [p for p in net.parameters() if len(p.shape) == 4 and p.requires_grad]
    norm_biases = [p for n, p in net.named_parameters() if "norm" in n and p.requires_grad]
    groups = [
        dict(params=[net.whiten.bias], lr=BIAS_LR, weight_decay=decay / BIAS_LR),
        dict(params=norm_biases, lr=BIAS_LR, weight_decay=decay / BIAS_LR),
        dict(params=[net.head.weight], lr=HEAD_LR, weight_decay=decay / HEAD_LR),
    ]
    sgd = torch.optim.SGD(groups, momentum=0.85, nesterov=True)
    muon = muon_class(filters, lr=MUON_LR, momentum=0.6, nesterov=True)
    for optimizer in (sgd, muon):
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
    return [sgd, muon]


def reference_step(net: Any, optimizers: list[Any], images: Any, labels: Any, step: int) -> None:
    """One step of airbench94_muon's training loop (summed loss, its schedules)."""
    from torch.nn import functional

    net.train()
    outputs = net(images, whiten_bias_grad=step < WHITEN_BIAS_STEPS)
    functional.cross_entropy(outputs, labels, label_smoothing=0.2, reduction="sum").backward()
    sgd, muon = optimizers
    for group in sgd.param_groups[:1]:
        group["lr"] = group["initial_lr"] * (1 - step / WHITEN_BIAS_STEPS)
    for group in sgd.param_groups[1:] + muon.param_groups:
        group["lr"] = group["initial_lr"] * (1 - step / TOTAL_STEPS)
    for optimizer in optimizers:
        optimizer.step()
    net.zero_grad(set_to_none=True)


def parameter_pairs(net: Any) -> list[tuple[str, Any, Callable[[Any], Any]]]:
    """(name in the JAX model, PyTorch parameter, PyTorch layout -> Flax layout)."""

    def same(a: Any) -> Any:
        return a

    def conv(a: Any) -> Any:
        return a.transpose(2, 3, 1, 0)  # (out, in, h, w) -> (h, w, in, out)

    def linear(a: Any) -> Any:
        return a.T

    pairs = [("whiten_bias", net.whiten.bias, same), ("head", net.head.weight, linear)]
    for index in range(3):
        group = net.layers[index + 1]
        for name in ("conv1", "conv2"):
            pairs.append((f"groups.{index}.{name}", getattr(group, name).weight, conv))
        for name in ("norm1", "norm2"):
            pairs.append((f"groups.{index}.{name}.bias", getattr(group, name).bias, same))
    return pairs


def variable(model: Any, name: str) -> Any:
    """The nnx.Variable at a dotted name such as ``groups.0.norm1.bias``."""
    for part in name.split("."):
        model = model[int(part)] if part.isdigit() else getattr(model, part)
    return model


def jax_step(
    weights: dict[str, np.ndarray],
    buffers: dict[str, np.ndarray],
    whitening: np.ndarray,
    images: np.ndarray,
    labels: np.ndarray,
    step: int,
) -> dict[str, np.ndarray]:
    """Step ``step`` of airbench94_muon as notebook 06's cells take it, from these weights
    and momentum buffers (Flax layouts, keyed as in ``parameter_pairs``) on one batch of
    normalised ``images``; returns the new weights. The schedules are those of a run of
    ``TOTAL_STEPS``, its first layer's bias trained for ``WHITEN_BIAS_STEPS``."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from lessons import airbench as ab

    batch = len(labels)
    recipe = dataclasses.replace(ab.MUON_RECIPE, batch=batch, dtype="float32")
    model = ab.Airbench(recipe.widths, 0, "float32", recipe.whiten, recipe.dirac)
    model.logit_scale = 1 / recipe.widths[-1]  # as train() sets it for Muon
    model.whiten[...] = jnp.asarray(whitening)  # frozen: not compared
    for name, value in weights.items():
        variable(model, name)[...] = jnp.asarray(value)
    tx = ab.make_muon_optimizer(TOTAL_STEPS, batch, WHITEN_BIAS_STEPS)
    graphdef, state = ab.init_state(model, tx)
    # each momentum buffer goes where the optimiser state holds that parameter's; every
    # step counter (the optimiser's schedules, the state's own count) is set to ``step``
    names = {}  # "['groups'][0]['conv1'].value" -> "groups.0.conv1", for every parameter
    for path, _ in jax.tree_util.tree_leaves_with_path(state[0]):
        keys = [getattr(k, "key", getattr(k, "idx", None)) for k in path]
        names[jax.tree_util.keystr(path)] = ".".join(str(k) for k in keys if k is not None)

    def hand_over(path: Any, leaf: jax.Array) -> jax.Array:
        key = jax.tree_util.keystr(path)
        if leaf.dtype == jnp.int32 and leaf.shape == ():
            return jnp.asarray(step, jnp.int32)
        found = [name for suffix, name in names.items() if key.endswith(suffix)]
        if found and found[0] in buffers:
            return jnp.asarray(buffers[found[0]], leaf.dtype)
        return leaf

    params, frozen, stats, opt_state, slow, _ = state
    opt_state = jax.tree_util.tree_map_with_path(hand_over, opt_state)
    state = (params, frozen, stats, opt_state, slow, jnp.asarray(step, jnp.int32))
    x, y = jnp.asarray(images, jnp.float32), jnp.asarray(labels, jnp.int32)
    state, _ = ab.train_step(graphdef, tx, state, x, y, total_steps=TOTAL_STEPS, recipe=recipe)
    trained = nnx.merge(graphdef, *state[:3])
    return {name: np.asarray(variable(trained, name)[...]) for name in weights}


def compare_one_step(
    reference: types.ModuleType, cifar: Any, steps_before: int, batch: int
) -> float:
    """Train K steps in PyTorch, hand over, take one step on both sides; return the worst ratio."""
    import torch

    torch.manual_seed(0)
    images = cifar.train_images[:batch]
    labels = cifar.train_labels[:batch].astype(np.int32)
    normalized = ((images.astype(np.float32) / 255 - MEAN) / STD).astype(np.float32)
    torch_images = torch.tensor(normalized).permute(0, 3, 1, 2).contiguous()
    torch_labels = torch.tensor(labels, dtype=torch.int64)

    net = reference.CifarNet().float()
    net.reset()
    net.init_whiten(torch_images)
    optimizers = reference_optimizers(net, reference.Muon, batch)
    for step in range(steps_before):
        reference_step(net, optimizers, torch_images, torch_labels, step)

    # PyTorch's momentum buffers are of the summed loss, as the cells' are: copied as they are
    states = {p: s["momentum_buffer"] for opt in optimizers for p, s in opt.state.items()}
    pairs = parameter_pairs(net)
    weights = {name: layout(p.detach().numpy().copy()) for name, p, layout in pairs}
    buffers = {name: layout(states[p].numpy()) for name, p, layout in pairs if p in states}
    whitening = net.whiten.weight.detach().numpy().transpose(2, 3, 1, 0)

    step = steps_before
    reference_step(net, optimizers, torch_images, torch_labels, step)
    ours = jax_step(weights, buffers, whitening, normalized, labels, step)
    worst = 0.0
    print(f"step {step} (after {steps_before} PyTorch steps):")
    for name, parameter, layout in pairs:
        theirs = layout(parameter.detach().numpy())
        moved = np.linalg.norm(theirs - weights[name])
        ratio = float(np.linalg.norm(theirs - ours[name]) / moved)
        if not np.isfinite(ratio):
            ratio = float("inf")  # a NaN step must fail the check, and max() would skip it
        worst = max(worst, ratio)
        print(f"  {name:24s} step {moved:9.3g}   difference / step {ratio:.1e}")
    return worst


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="airbench94_muon.py")
    parser.add_argument(
        "--steps", type=int, nargs="+", default=[0, 3, 10],
        help="PyTorch steps before each compared step (default 0 3 10)",
    )  # fmt: skip
    parser.add_argument("--batch", type=int, default=128, help="images in the batch (128)")
    parser.add_argument("--float32", action="store_true", help="Newton-Schulz in float32")
    parser.add_argument("--tolerance", type=float, help="default 0.05, or 0.005 with --float32")
    args = parser.parse_args(argv)
    if not args.reference.is_file():
        parser.error(f"--reference {args.reference}: no such file (fetch airbench94_muon.py first)")
    if not 2 <= args.batch <= 50_000:
        parser.error(f"--batch must be 2 to 50000, got {args.batch}")
    if any(not 0 <= k < WHITEN_BIAS_STEPS for k in args.steps):
        parser.error(f"--steps must each be 0 to {WHITEN_BIAS_STEPS - 1}, got {args.steps}")
    if args.tolerance is not None and args.tolerance < 0:
        parser.error(f"--tolerance must be 0 or more, got {args.tolerance}")
    if importlib.util.find_spec("torch") is None:
        parser.error("needs PyTorch: pip install -e .[bench] (the CPU build is enough)")
    tolerance = args.tolerance if args.tolerance is not None else (0.005 if args.float32 else 0.05)
    reference = load_reference(args.reference)

    import helpers

    cifar = helpers.load_cifar10()
    precision = newton_schulz_in_float32() if args.float32 else contextlib.nullcontext()
    with precision:
        worst = max(compare_one_step(reference, cifar, k, args.batch) for k in args.steps)
    verdict = "OK" if worst <= tolerance else "MISMATCH"
    print(f"{verdict}: worst difference {worst:.1e} of a step (tolerance {tolerance:g})")
    if worst > tolerance:
        raise SystemExit(1)
    return worst


if __name__ == "__main__":
    main()
