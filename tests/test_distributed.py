"""benchmarks/data_parallel.py over two processes gives the losses of one process.

Two processes on 127.0.0.1, each with 4 simulated CPU devices, connect through
``jax.distributed.initialize`` (Gloo carries the collectives) and train notebook 06's
recipe data-parallel over the 8 devices, each process feeding only its half of every
batch. A third process, alone on one CPU device, trains the same steps with the
notebook's own ``lessons.airbench.train_epoch``. Each runs in its own subprocess, so
this process's JAX keeps its own devices.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import learnable_images, load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "data_parallel.py"
IMAGES, BATCH, EPOCHS, WIDTHS, SEED = 96, 32, 2, "8,16,16", 0  # 3 steps per epoch, 6 in all
DEADLINE_S = 240  # about 30-60 s on the shared 2-core CPU; past this a child has hung


def reference_run(data: str, batch: int, epochs: float, widths: str, seed: int) -> dict:
    """The notebook's own ``lessons.airbench.train`` on one device: its losses per step and
    its test accuracy.

    Run in a subprocess (``python -c``): it starts JAX with one CPU device. It trains with
    ``loop="epoch"``: each epoch one compiled ``jax.lax.scan``, not the script's steps.
    """
    import dataclasses

    from lessons import airbench as ab

    with np.load(data) as arrays:
        arrays = {name: arrays[name] for name in arrays.files}
    recipe = dataclasses.replace(
        ab.AIRBENCH94, widths=tuple(int(w) for w in widths.split(",")), batch=batch, epochs=epochs
    )
    device_data = ab.to_device(
        arrays["images"], arrays["labels"].astype(np.int32),
        arrays["test_images"], arrays["test_labels"].astype(np.int32),
    )  # fmt: skip
    result = ab.train(device_data, recipe, seed, loop="epoch")
    return {"losses": result.losses.tolist(), "test_accuracy": result.accuracy}


def convolution_shapes(devices: int, batch: int, widths: str) -> list[list[int]]:
    """The output shapes of the convolutions in ``train_step`` compiled for a mesh of
    ``devices`` simulated CPU devices, as each device runs them. Run in a subprocess."""
    import dataclasses
    import re

    import jax

    jax.config.update("jax_num_cpu_devices", devices)
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    from lessons import airbench as ab

    recipe = dataclasses.replace(
        ab.AIRBENCH94, widths=tuple(int(w) for w in widths.split(",")), batch=batch
    )
    tx = ab.make_optimizer(10, batch, recipe)
    graphdef, state = ab.init_state(ab.Airbench(recipe.widths), tx)
    mesh = jax.make_mesh((devices,), ("data",), axis_types=(AxisType.Auto,))
    rows = NamedSharding(mesh, PartitionSpec("data"))
    state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
    x = jax.device_put(np.zeros((batch, 32, 32, 3), np.float32), rows)
    y = jax.device_put(np.zeros(batch, np.int32), rows)
    step = ab.train_step.lower(graphdef, tx, state, x, y, total_steps=10, recipe=recipe)
    shapes = re.findall(r"= f32\[([\d,]+)\]\S* convolution\(", step.compile().as_text())
    return sorted({tuple(int(n) for n in shape.split(",")) for shape in shapes})


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_all(commands: dict[str, list[str]], env: dict[str, str], logs: Path) -> dict[str, str]:
    """Start every command at once; return each one's stdout. Fail fast and kill them all
    when one fails or the deadline passes (a process waiting for a dead peer would hang)."""
    procs, outputs = {}, {}
    for name, argv in commands.items():
        out, err = (open(logs / f"{name}.{kind}", "w") for kind in ("out", "err"))  # noqa: SIM115
        procs[name] = (subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=ROOT), out, err)

    def tail(name: str) -> str:  # without the native stack trace of an abort
        lines = (logs / f"{name}.err").read_text().splitlines()
        return "\n".join(line for line in lines if not line.startswith("    @ "))[-3000:]

    start, failure = time.monotonic(), None
    try:
        while failure is None and len(outputs) < len(procs):
            for name, (proc, _, _) in procs.items():
                if name in outputs or proc.poll() is None:
                    continue
                if proc.returncode != 0:
                    failure = f"{name} exited with {proc.returncode}:\n{tail(name)}"
                    break
                outputs[name] = (logs / f"{name}.out").read_text()
            if failure is None and time.monotonic() - start > DEADLINE_S:
                running = [name for name, (p, _, _) in procs.items() if p.poll() is None]
                failure = f"{running} still running after {DEADLINE_S} s (hung?); " + "".join(
                    f"\n--- {name} stderr:\n{tail(name)}" for name in running
                )
            time.sleep(0.2)
    finally:
        for proc, out, err in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
            out.close()
            err.close()
    if failure:
        pytest.fail(failure)
    return outputs


@pytest.mark.slow  # three JAX processes compile and train: about 30 s
def test_two_processes_train_like_one(tmp_path: Path) -> None:
    images, labels = learnable_images(IMAGES, seed=1)
    test_images, test_labels = learnable_images(12, seed=2)  # 16 rows with padding
    data = tmp_path / "data.npz"
    np.savez(data, images=images, labels=labels, test_images=test_images, test_labels=test_labels)
    coordinator = f"127.0.0.1:{free_port()}"
    common = ["--data", str(data), "--batch", str(BATCH), "--epochs", str(EPOCHS)]
    common += ["--widths", WIDTHS, "--seed", str(SEED), "--cpu-devices", "4"]
    distributed = ["--coordinator", coordinator, "--num-processes", "2", "--init-timeout", "60"]
    reference = (
        "import json; from tests.test_distributed import reference_run; "
        f"print(json.dumps(reference_run({str(data)!r}, {BATCH}, {EPOCHS}, {WIDTHS!r}, {SEED})))"
    )
    commands = {
        f"process{i}": [sys.executable, str(SCRIPT), *common, *distributed, "--process-id", str(i)]
        for i in range(2)
    }
    commands["reference"] = [sys.executable, "-c", reference]
    # XLA's optimisation level 0 compiles these tiny programs about 2.5 times faster (less
    # CPU time); the losses stay the same to float32 rounding. Any XLA_FLAGS of the caller
    # are replaced: the device count comes from --cpu-devices alone.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
    outputs = run_all(commands, env, tmp_path)

    def last_json(name: str) -> dict:  # Gloo prints its connections on stdout too
        return json.loads([line for line in outputs[name].splitlines() if line[:1] == "{"][-1])

    results = [last_json(f"process{i}") for i in range(2)]
    expected = last_json("reference")
    assert len(expected["losses"]) == IMAGES // BATCH * EPOCHS
    for i, result in enumerate(results):
        assert result["process"] == i and result["processes"] == 2
        assert (result["global_devices"], result["local_devices"]) == (8, 4)
        assert result["platform"] == "cpu"
        # each process fed only its half of every batch; the batch spans both processes
        assert result["batch_rows"] == [i * BATCH // 2, (i + 1) * BATCH // 2]
        assert result["batch_fully_addressable"] is False
    # the loss is one replicated value: both processes read the same number
    assert results[0]["losses"] == results[1]["losses"]
    assert results[0]["test_accuracy"] == results[1]["test_accuracy"]
    # Eight devices add up the batch's losses, gradients and batch-norm statistics as
    # eight partial sums, one device as one sum: the same numbers up to float32 rounding,
    # which six steps carry on (at most 4.2e-7 apart, relatively, when this was written).
    # A process training alone on its half would see half the summed loss and its own
    # batch-norm statistics.
    np.testing.assert_allclose(results[0]["losses"], expected["losses"], rtol=5e-6)
    # 12 test images: a fraction k / 12, which rounding at this level leaves alone
    assert results[0]["test_accuracy"] == expected["test_accuracy"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--num-processes", "2"], "--num-processes > 1 needs --coordinator HOST:PORT"),
        (["--num-processes", "2", "--process-id", "2"], "--process-id must be in 0..1, got 2"),
        (["--num-processes", "0"], "--num-processes must be at least 1, got 0"),
        (["--cpu-devices", "0"], "--cpu-devices must be at least 1, got 0"),
    ],
)
def test_bad_arguments_are_refused(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    script = load_script(SCRIPT)
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_batch_the_devices_cannot_share_is_refused(tmp_path: Path) -> None:
    images, labels = learnable_images(16)
    data = tmp_path / "data.npz"
    np.savez(data, images=images, labels=labels)
    argv = [sys.executable, str(SCRIPT), "--data", str(data), "--cpu-devices", "4"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    for batch, message in [
        ("6", "--batch 6 must be a multiple of the 4 devices and at most the 16 training images"),
        ("0", "Recipe: batch must be at least 1, got 0"),
    ]:
        result = subprocess.run(
            [*argv, "--batch", batch], capture_output=True, text=True, env=env, timeout=120
        )
        assert result.returncode == 1 and result.stderr.strip().endswith(message), result.stderr


@pytest.mark.slow  # a JAX process compiles the step for 2 and 4 devices: about 9 s
def test_each_device_computes_only_its_rows() -> None:
    """Equal losses alone would not show that the work is split: a compiler that copied
    the whole batch to every device would compute them too."""
    code = (
        "import json; from tests.test_distributed import convolution_shapes; "
        f"print(json.dumps(convolution_shapes(8, {BATCH}, {WIDTHS!r})))"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=180
    )
    assert result.returncode == 0, result.stderr[-3000:]
    shapes = [tuple(shape) for shape in json.loads(result.stdout.splitlines()[-1])]
    # the first layer (24 filters of 2x2) on each device's BATCH / 8 images, and no
    # convolution over all BATCH images (the gradients of the filters put the input
    # channels first: (8, 3, 3, 16) is one of those)
    assert (BATCH // 8, 31, 31, 24) in shapes
    assert (BATCH, 31, 31, 24) not in shapes
    assert all(shape[0] != BATCH for shape in shapes), shapes
