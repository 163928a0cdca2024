"""Check the JAX airbench94_muon step against the PyTorch reference, one step at a time.

    python benchmarks/muon_reference_check.py --reference path/to/airbench94_muon.py
    python benchmarks/muon_reference_check.py --reference ... --float32 --steps 0 3 10

The reference (Keller Jordan's airbench94_muon.py) is not part of this repository: fetch
it from its authors (see README.md). This script imports the reader's copy (on the CPU,
without ``torch.compile``; torchvision is only needed by its data loader and is stubbed
when missing), builds its network in float32, and trains it on one batch of CIFAR-10
(``helpers.load_cifar10()``, so ``CIFAR10_PATH`` picks a local copy) with the optimisers
and schedules of its ``main()``. After K of those steps it copies the weights and momentum
buffers into ``helpers.fast_cifar10``'s state for ``AIRBENCH94_MUON``, and both take step
K + 1. For each parameter it prints how far apart the two results are, relative to the
size of the step; it exits with status 1 if any is above ``--tolerance``.

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
import functools
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


@contextlib.contextmanager
def newton_schulz_in_float32() -> Iterator[None]:
    """Both sides' Newton-Schulz iteration in float32 instead of bfloat16, for a while."""
    import jax.numpy as jnp
    import torch

    from helpers import fast_cifar10 as fc

    jax_version, torch_cast = fc.newton_schulz, torch.Tensor.bfloat16
    fc.newton_schulz = functools.partial(jax_version, dtype=jnp.float32)
    torch.Tensor.bfloat16 = torch.Tensor.float  # type: ignore[method-assign]
    try:
        yield
    finally:
        fc.newton_schulz = jax_version
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


def parameter_pairs(net: Any) -> list[tuple[tuple[str, ...], Any, Callable[[Any], Any]]]:
    """(path in the JAX state, PyTorch parameter, PyTorch layout -> Flax layout)."""

    def same(a: Any) -> Any:
        return a

    def conv(a: Any) -> Any:
        return a.transpose(2, 3, 1, 0)  # (out, in, h, w) -> (h, w, in, out)

    def linear(a: Any) -> Any:
        return a.T

    pairs = [
        (("whiten", "bias"), net.whiten.bias, same),
        (("head", "kernel"), net.head.weight, linear),
    ]
    for index in range(3):
        group = net.layers[index + 1]
        for name in ("conv1", "conv2"):
            pairs.append(((f"group{index + 1}", name, "kernel"), getattr(group, name).weight, conv))
        for name in ("norm1", "norm2"):
            pairs.append(((f"group{index + 1}", name, "bias"), getattr(group, name).bias, same))
    return pairs


def leaf(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def compare_one_step(
    reference: types.ModuleType, cifar: Any, steps_before: int, batch: int
) -> float:
    """Train K steps in PyTorch, hand over, take one step on both sides; return the worst ratio."""
    import jax
    import jax.numpy as jnp
    import torch

    from helpers import fast_cifar10 as fc

    torch.manual_seed(0)
    images = cifar.train_images[:batch]
    labels = cifar.train_labels[:batch].astype(np.int32)
    mean, std = np.asarray(fc.CIFAR_MEAN, np.float32), np.asarray(fc.CIFAR_STD, np.float32)
    normalized = (images.astype(np.float32) / 255 - mean) / std
    torch_images = torch.tensor(normalized).permute(0, 3, 1, 2).contiguous()
    torch_labels = torch.tensor(labels, dtype=torch.int64)

    net = reference.CifarNet().float()
    net.reset()
    net.init_whiten(torch_images)
    optimizers = reference_optimizers(net, reference.Muon, batch)
    for step in range(steps_before):
        reference_step(net, optimizers, torch_images, torch_labels, step)

    # the JAX state: the same weights; momentum buffers per example (PyTorch's sum the batch)
    config = dataclasses.replace(fc.AIRBENCH94_MUON, batch_size=batch, dtype="float32")
    graphdef, state = fc.init_state(fc.make_model(config, 0))
    buffers = {p: s["momentum_buffer"] for opt in optimizers for p, s in opt.state.items()}
    whitening = net.whiten.weight.detach().numpy().transpose(2, 3, 1, 0)  # frozen: not compared
    state.params["whiten"]["kernel"][...] = jnp.asarray(whitening)
    pairs = parameter_pairs(net)
    for path, parameter, layout in pairs:
        leaf(state.params, path)[...] = jnp.asarray(layout(parameter.detach().numpy()))
        if parameter in buffers:
            velocity = layout(buffers[parameter].numpy()) / batch
            leaf(state.velocity, path)[...] = jnp.asarray(velocity)
    before = {path: layout(p.detach().numpy().copy()) for path, p, layout in pairs}
    hyper = fc.make_hyper(config, state.params, np.zeros(batch, bool))

    step = steps_before
    reference_step(net, optimizers, torch_images, torch_labels, step)
    schedule = 1 - step / TOTAL_STEPS
    whiten_bias = max(0.0, 1 - step / WHITEN_BIAS_STEPS) / schedule
    inputs = fc.StepInputs(
        indices=None, key=None, lr=jnp.float32(schedule), odd_epoch=None,
        train_whiten_bias=jnp.float32(whiten_bias), lookahead=jnp.bool_(False),
        lookahead_decay=jnp.float32(0.0), active=None,
    )  # fmt: skip
    step_fn = functools.partial(fc.train_step, graphdef, dtype=jnp.float32)
    state, _ = jax.jit(step_fn)(state, hyper, jnp.asarray(images), jnp.asarray(labels), inputs)
    worst = 0.0
    print(f"step {step} (after {steps_before} PyTorch steps):")
    for path, parameter, layout in pairs:
        theirs, ours = layout(parameter.detach().numpy()), np.asarray(leaf(state.params, path)[...])
        moved = np.linalg.norm(theirs - before[path])
        ratio = float(np.linalg.norm(theirs - ours) / moved)
        if not np.isfinite(ratio):
            ratio = float("inf")  # a NaN step must fail the check, and max() would skip it
        worst = max(worst, ratio)
        print(f"  {'.'.join(path):24s} step {moved:9.3g}   difference / step {ratio:.1e}")
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
