"""Time the original tutorial's CIFAR-10 recipe in JAX (notebook 05's loop) and in PyTorch.

    python benchmarks/seed_recipe.py                       # 10 epochs on 49,000 images
    python benchmarks/seed_recipe.py --epochs 2 --subset 2000 --no-save   # a quick check

Both implementations train the same network (Conv 5x5 3->16, pool, Conv 5x5 16->8,
pool, Dense 200-120-84-10, softmax) from the same initial weights, on the same
batches in the same order (batch 1,000, no shuffling, as in the original), with SGD
learning rate 0.01 and momentum 0.9 and the same cross-entropy; then both are tested
on the 10,000 test images. JAX trains with ``helpers.seed_recipe.train_epoch``, the
loop notebook 05 uses. PyTorch is optional (``pip install -e .[bench]``); without it
only JAX runs. Data: ``helpers.load_cifar10()``, so ``CIFAR10_PATH`` picks a local copy.

Output: one JSON line per implementation (``impl``, ``device``, ``epochs``,
``epoch_s``: median seconds per epoch after the first, ``first_epoch_s``: the first
epoch, compilation included, ``test_acc``, ...; for JAX also ``compile_s``, the part of
the first epoch XLA spent compiling), then one line with
``ratio_epoch_s`` and ``ratio_first_epoch_s`` (JAX / PyTorch). Lines are appended to
``benchmarks/results/seed_recipe.jsonl`` unless ``--no-save``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers import seed_recipe  # noqa: E402  (after the path; imports no TensorFlow)

RESULTS = ROOT / "benchmarks" / "results" / "seed_recipe.jsonl"
TRAIN_IMAGES = 49_000  # the original: 49 batches of 1,000; the last 1,000 validate


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def median_after_first(times: list[float]) -> float:
    return statistics.median(times[1:]) if len(times) > 1 else times[0]


def run_jax(data: Any, args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    # JAX reports how long XLA took to compile each function
    compile_durations: list[float] = []

    def record(event: str, seconds: float, **_: Any) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            compile_durations.append(seconds)

    jax.monitoring.register_event_duration_secs_listener(record)

    device = jax.devices()[0]
    model = seed_recipe.SeedCNN(nnx.Rngs(args.seed))
    optimizer = seed_recipe.make_optimizer(model)
    images = jnp.asarray(data.train_images[: args.subset])
    labels = jnp.asarray(data.train_labels[: args.subset])
    loop = args.jax_loop or seed_recipe.default_loop()
    options = {**seed_recipe.default_compiler_options(), **dict(args.xla_option)}
    times = []
    for epoch in range(args.epochs):
        compiled_before = len(compile_durations)
        start = time.perf_counter()
        losses = seed_recipe.train_epoch(
            model, optimizer, images, labels, loop=loop, compiler_options=options
        )
        jax.block_until_ready(losses)
        times.append(time.perf_counter() - start)
        if epoch == 0:
            compile_s = sum(compile_durations[compiled_before:])
    _, accuracy = seed_recipe.evaluate(model, data.test_images, data.test_labels)
    name = cpu_name() if device.platform == "cpu" else device.device_kind
    extra = {"loop": loop, "chunks": seed_recipe.default_chunks(seed_recipe.BATCH_SIZE)}
    extra |= {"compile_s": round(compile_s, 4), "compiler_options": options}
    extra |= {"jax": jax.__version__}
    return result("jax", name, times, accuracy, float(losses[-1]), **extra)


def initial_weights(seed: int) -> dict[str, Any]:
    """JAX's initial SeedCNN weights for this seed, as NumPy arrays ("conv1.kernel", ...)."""
    import numpy as np
    from flax import nnx

    model = seed_recipe.SeedCNN(nnx.Rngs(seed))
    return {
        f"{layer}.{name}": np.array(getattr(getattr(model, layer), name)[...])
        for layer in ("conv1", "conv2", "dense1", "dense2", "dense3")
        for name in ("kernel", "bias")
    }


def run_pytorch(data: Any, args: argparse.Namespace, initial: dict[str, Any]) -> dict[str, Any]:
    import torch
    from torch import nn

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)

    class SeedCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(3, 16, 5), nn.Conv2d(16, 8, 5)
            self.dense1, self.dense2 = nn.Linear(200, 120), nn.Linear(120, 84)
            self.dense3 = nn.Linear(84, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
            x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
            x = x.permute(0, 2, 3, 1).flatten(1)  # flatten in JAX's (H, W, C) order
            return torch.softmax(self.dense3(self.dense2(self.dense1(x))), dim=-1)

    model = SeedCNN()
    with torch.no_grad():  # JAX's initial weights: HWIO -> OIHW, (in, out) -> (out, in)
        for key, value in initial.items():
            layer, name = key.split(".")
            tensor = torch.from_numpy(value)
            if name == "kernel":
                tensor = tensor.permute(3, 2, 0, 1) if tensor.ndim == 4 else tensor.T
            target = (
                getattr(model, layer).weight if name == "kernel" else getattr(model, layer).bias
            )
            target.copy_(tensor)
    model.to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=seed_recipe.LEARNING_RATE, momentum=seed_recipe.MOMENTUM
    )

    def to_tensor(images: Any) -> torch.Tensor:  # uint8 NHWC -> float NCHW on the device
        return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div(255.0)

    images = to_tensor(data.train_images[: args.subset]).contiguous()
    labels = torch.from_numpy(data.train_labels[: args.subset]).long().to(device)
    batch = seed_recipe.BATCH_SIZE
    times = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        for first in range(0, len(images) - batch + 1, batch):
            x, y = images[first : first + batch], labels[first : first + batch]
            probabilities = model(x)
            picked = probabilities.gather(1, y[:, None]).squeeze(1)
            loss = -torch.log(picked + 1e-7).mean()  # the same cross-entropy as JAX's
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    correct = 0
    with torch.no_grad():
        for first in range(0, len(data.test_images), batch):
            x = to_tensor(data.test_images[first : first + batch])
            predicted = model(x).argmax(dim=-1).cpu().numpy()
            correct += int((predicted == data.test_labels[first : first + batch]).sum())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    accuracy = correct / len(data.test_labels)
    return result("pytorch", name, times, accuracy, loss.item(), torch=torch.__version__)


def result(
    impl: str, device: str, times: list[float], accuracy: float, loss: float, **extra: Any
) -> dict[str, Any]:
    return {
        "impl": impl,
        "device": device,
        "epochs": len(times),
        "epoch_s": round(median_after_first(times), 4),
        "first_epoch_s": round(times[0], 4),
        "test_acc": round(accuracy, 4),
        "final_train_loss": round(loss, 4),
        "epoch_times_s": [round(t, 4) for t in times],
        **extra,
    }


def device_report() -> str:
    import jax

    lines = [f"jax {jax.__version__}: {jax.default_backend()}, devices {jax.devices()}"]
    try:
        import torch
    except ImportError:
        lines.append("torch: not installed (pip install -e .[bench]); only JAX runs")
    else:
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
        lines.append(f"torch {torch.__version__}: {gpu}; {torch.get_num_threads()} CPU threads")
    lines.append(f"cpu: {cpu_name()}")
    return "\n".join(lines)


def xla_option(text: str) -> tuple[str, bool | int | str]:
    """``name=value`` -> (name, value), the value as a bool or int where it reads as one."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    if value.lower() in ("true", "false"):
        return name, value.lower() == "true"
    try:
        return name, int(value)
    except ValueError:
        return name, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--subset", type=int, default=TRAIN_IMAGES, help="training images")
    parser.add_argument("--impl", choices=["both", "jax", "pytorch"], default="both")
    parser.add_argument("--jax-loop", choices=["python", "scan"], default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--xla-option",
        type=xla_option,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="XLA option for JAX's step or epoch (over seed_recipe.default_compiler_options)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--no-save", action="store_true", help="print only")
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's malloc as it is (see helpers.seed_recipe.reuse_freed_memory)",
    )
    parser.add_argument("--device-report", action="store_true", help="print devices first")
    args = parser.parse_args(argv)
    if not seed_recipe.BATCH_SIZE <= args.subset <= TRAIN_IMAGES:
        parser.error(f"--subset must be between {seed_recipe.BATCH_SIZE} and {TRAIN_IMAGES}")
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    impls = ["jax", "pytorch"] if args.impl == "both" else [args.impl]
    if "pytorch" in impls and importlib.util.find_spec("torch") is None:
        if args.impl == "pytorch":
            parser.error("PyTorch is not installed (pip install -e .[bench])")
        print("PyTorch not installed: timing JAX only", file=sys.stderr)
        impls.remove("pytorch")
    tuned = False if args.default_malloc else seed_recipe.reuse_freed_memory()
    if args.device_report:
        print(device_report(), file=sys.stderr, flush=True)

    import helpers

    data = helpers.load_cifar10()
    common = {
        "train_images": args.subset,
        "batch_size": seed_recipe.BATCH_SIZE,
        "malloc_tuned": tuned,
        "data": helpers.data.source_name(),
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
    }
    lines = []
    if "jax" in impls:
        lines.append({**run_jax(data, args), **common})
        print(json.dumps(lines[-1]), flush=True)
    if "pytorch" in impls:  # from the same initial weights as JAX
        lines.append({**run_pytorch(data, args, initial_weights(args.seed)), **common})
        print(json.dumps(lines[-1]), flush=True)
    if len(lines) == 2:
        ratios = {
            "ratio_epoch_s": round(lines[0]["epoch_s"] / lines[1]["epoch_s"], 3),
            "ratio_first_epoch_s": round(lines[0]["first_epoch_s"] / lines[1]["first_epoch_s"], 3),
            "device": lines[0]["device"],
            **common,
        }
        lines.append(ratios)
        print(json.dumps(ratios), flush=True)
    if not args.no_save:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with args.output.open("a") as file:
            file.writelines(json.dumps(line) + "\n" for line in lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
