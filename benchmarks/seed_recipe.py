"""Time the original tutorial's CIFAR-10 recipe in JAX (notebook 05's loop) and in PyTorch.

    python benchmarks/seed_recipe.py                       # 10 epochs on 49,000 images
    python benchmarks/seed_recipe.py --epochs 2 --subset 2000 --no-save   # a quick check

Both implementations train the same network (Conv 5x5 3->16, pool, Conv 5x5 16->8,
pool, Dense 200-120-84-10, logits) from the same initial weights, on the same batches in
the same order (batch 1,000, the training set reshuffled every epoch from the same JAX
keys), with SGD learning rate 0.01 and momentum 0.9 and softmax cross-entropy; then both
are tested on the 10,000 test images. JAX runs notebook 05's own definitions
(``lessons.cifar10_cnn``, generated from the notebook's cells tagged ``export``:
``CNN``, ``make_optimizer``, ``train_epoch``, ``evaluate``). PyTorch is optional
(``pip install -e .[bench]``); without it only JAX runs, and the script says so.
Data: ``helpers.load_cifar10()``, so ``CIFAR10_PATH`` picks a local copy.

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

from lessons import cifar10_cnn as lesson  # noqa: E402  (generated from notebook 05's cells)

RESULTS = ROOT / "benchmarks" / "results" / "seed_recipe.jsonl"
BATCH_SIZE = 1_000  # lesson.train_epoch's default
LEARNING_RATE, MOMENTUM = 0.01, 0.9  # lesson.make_optimizer's SGD
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


def epoch_keys(seed: int, epochs: int) -> Any:
    """One shuffling key per epoch, as notebook 05 draws them."""
    import jax

    return jax.random.split(jax.random.key(seed), epochs)


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
    model = lesson.CNN(nnx.Rngs(args.seed))
    optimizer = lesson.make_optimizer(model)
    images = jnp.asarray(data.train_images[: args.subset])
    labels = jnp.asarray(data.train_labels[: args.subset])
    keys = epoch_keys(args.seed, args.epochs)
    times = []
    for epoch in range(args.epochs):
        compiled_before = len(compile_durations)
        start = time.perf_counter()
        losses = lesson.train_epoch(model, optimizer, images, labels, keys[epoch])
        jax.block_until_ready(losses)
        times.append(time.perf_counter() - start)
        if epoch == 0:
            compile_s = sum(compile_durations[compiled_before:])
    _, accuracy = lesson.evaluate(model, data.test_images, data.test_labels)
    name = cpu_name() if device.platform == "cpu" else device.device_kind
    extra = {"compile_s": round(compile_s, 4), "jax": jax.__version__}
    return result("jax", name, times, accuracy, float(losses[-1]), **extra)


def initial_weights(seed: int) -> dict[str, Any]:
    """The notebook's initial CNN weights for this seed, as NumPy arrays ("conv1.kernel", ...)."""
    import numpy as np
    from flax import nnx

    model = lesson.CNN(nnx.Rngs(seed))
    return {
        f"{layer}.{name}": np.array(getattr(getattr(model, layer), name)[...])
        for layer in ("conv1", "conv2", "dense1", "dense2", "dense3")
        for name in ("kernel", "bias")
    }


def run_pytorch(data: Any, args: argparse.Namespace, initial: dict[str, Any]) -> dict[str, Any]:
    import jax
    import numpy as np
    import torch
    from torch import nn

    keys = epoch_keys(args.seed, args.epochs)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)

    class CNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(3, 16, 5), nn.Conv2d(16, 8, 5)
            self.dense1, self.dense2 = nn.Linear(200, 120), nn.Linear(120, 84)
            self.dense3 = nn.Linear(84, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
            x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
            x = x.permute(0, 2, 3, 1).flatten(1)  # flatten in JAX's (H, W, C) order
            return self.dense3(self.dense2(self.dense1(x)))  # logits

    model = CNN()
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
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)

    def to_tensor(images: Any) -> torch.Tensor:  # uint8 NHWC -> float NCHW on the device
        return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div(255.0)

    images = to_tensor(data.train_images[: args.subset]).contiguous()
    labels = torch.from_numpy(data.train_labels[: args.subset]).long().to(device)
    batch = BATCH_SIZE
    # the same shuffled order as JAX's train_epoch, epoch by epoch
    orders = [np.asarray(jax.random.permutation(key, len(images))) for key in keys]
    times = []
    for order in orders:
        order_on_device = torch.from_numpy(order).long().to(device)
        start = time.perf_counter()
        for first in range(0, len(images) - batch + 1, batch):
            picked = order_on_device[first : first + batch]
            loss = nn.functional.cross_entropy(model(images[picked]), labels[picked])
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--subset", type=int, default=TRAIN_IMAGES, help="training images")
    parser.add_argument("--impl", choices=["both", "jax", "pytorch"], default="both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--no-save", action="store_true", help="print only")
    parser.add_argument("--device-report", action="store_true", help="print devices first")
    args = parser.parse_args(argv)
    if not BATCH_SIZE <= args.subset <= TRAIN_IMAGES:
        parser.error(f"--subset must be between {BATCH_SIZE} and {TRAIN_IMAGES}")
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    impls = ["jax", "pytorch"] if args.impl == "both" else [args.impl]
    if "pytorch" in impls and importlib.util.find_spec("torch") is None:
        if args.impl == "pytorch":
            parser.error("PyTorch is not installed (pip install -e .[bench])")
        print("PyTorch not installed: timing JAX only", file=sys.stderr)
        impls.remove("pytorch")
    if args.device_report:
        print(device_report(), file=sys.stderr, flush=True)

    import helpers

    data = helpers.load_cifar10()
    common = {
        "train_images": args.subset,
        "batch_size": BATCH_SIZE,
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
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
