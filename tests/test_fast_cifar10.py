"""The fast CIFAR-10 recipe (helpers.fast_cifar10) on tiny synthetic data, and its benchmark."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from helpers import fast_cifar10 as fc
from helpers.data import CIFAR10
from tests.conftest import learnable_images, load_script

ROOT = Path(__file__).resolve().parents[1]
COSTS_SCRIPT = ROOT / "benchmarks" / "fast_cifar10_costs.py"
# The benchmark's --smoke configuration and data shapes, so compiled code is shared.
TINY = dataclasses.replace(fc.smoke_config(fc.AIRBENCH94), epochs=2.0)


def synthetic_cifar(train: int = 256, test: int = 64, seed: int = 0) -> CIFAR10:
    """A learnable stand-in for CIFAR-10 (see ``learnable_images``)."""
    train_images, train_labels = learnable_images(train, seed)
    test_images, test_labels = learnable_images(test, seed + 1)
    return CIFAR10(train_images, train_labels, test_images, test_labels)


@pytest.fixture(scope="module")
def data() -> fc.DeviceData:
    return fc.put_on_device(synthetic_cifar())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"translate": 3}, "translate must be 0 to 2, got 3"),
        ({"tta": 5}, "tta must be 0, 1 or 2, got 5"),
        ({"flip": "sometimes"}, "flip must be none, random or alternating, got 'sometimes'"),
        ({"optimizer": "adam"}, "optimizer must be momentum, nesterov or muon, got 'adam'"),
        ({"optimizer": "muon", "model": "lenet"}, "optimizer 'muon' needs model 'airbench'"),
        ({"model": "resnet"}, "model must be one of lenet, airbench, got 'resnet'"),
        ({"loop": "epochs"}, "loop must be one of epoch, step, got 'epochs'"),
        ({"dtype": "float16"}, "dtype must be one of bfloat16, float32, got 'float16'"),
        ({"whiten_bias_init": "ones"}, "whiten_bias_init must be one of zeros, uniform"),
        ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
        ({"lookahead_every": 0}, "lookahead_every must be at least 1, got 0"),
        ({"epochs": 0.0}, "epochs must be positive, got 0.0"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\), got 1.0"),
        ({"whiten_bias_epochs": -1}, "whiten_bias_epochs and lookahead_start_epochs must be 0"),
    ],
)
def test_config_rejects_bad_settings(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(fc.AIRBENCH94, **change)


def test_run_rejects_a_batch_larger_than_the_training_set(data: fc.DeviceData) -> None:
    too_big = dataclasses.replace(TINY, batch_size=data.train_size + 1)
    with pytest.raises(ValueError, match="256 training images < batch 257: use a smaller"):
        fc.Run(too_big, data)


def test_whitening_layer_decorrelates_patches() -> None:
    rng = np.random.default_rng(1)
    images = rng.normal(size=(20, 9, 9, 3)) @ rng.normal(size=(3, 3))  # correlated channels
    images = (images[:, 1:, 1:] + images[:, :-1, :-1]).astype(np.float32)  # and pixels
    kernel = fc.whitening_kernel(jnp.asarray(images), eps=1e-6)
    assert kernel.shape == (2, 2, 3, 24)
    np.testing.assert_allclose(kernel[..., 12:], -kernel[..., :12])
    out = jax.lax.conv_general_dilated(
        images, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    flat = np.asarray(out[..., :12]).reshape(-1, 12)
    np.testing.assert_allclose(flat.T @ flat / len(flat), np.eye(12), atol=1e-3)
    # the same numbers as the patches times the filters: the conv is the whitening transform
    filters = np.asarray(kernel[..., :12]).reshape(12, 12)
    np.testing.assert_allclose(np.asarray(fc.patches_2x2(images)) @ filters, flat, atol=1e-3)
    norms = np.linalg.norm(filters, axis=0)  # 1 / sqrt(eigenvalue): largest eigenvalue first
    assert np.all(np.diff(norms) >= -1e-6)


def test_sgd_update_matches_optax() -> None:
    params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array([0.5])}
    grads = [{"w": jnp.array([0.3, 0.1]), "b": jnp.array([-1.0])} for _ in range(3)]
    lr, wd, momentum = 0.1, 0.01, 0.85
    hyper = fc.Hyper(
        mean=None, std=None, translate=None, flip_mode=None, base_flip=None,
        label_smoothing=None, momentum=jnp.float32(momentum), nesterov=jnp.bool_(True),
        lr={"w": lr, "b": lr}, weight_decay={"w": wd, "b": wd}, whiten_bias=None,
    )  # fmt: skip
    gate = {"w": 1.0, "b": 1.0}
    tx = optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum, nesterov=True))
    ours, velocity = params, jax.tree.map(jnp.zeros_like, params)
    theirs, state = params, tx.init(params)
    for g in grads:
        ours, velocity = fc.sgd_update(ours, g, velocity, hyper, jnp.float32(1.0), gate)
        updates, state = tx.update(g, state, theirs)
        theirs = optax.apply_updates(theirs, updates)
    for name in params:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-6)


def test_optimizer_settings_reproduce_airbench_pytorch_values() -> None:
    settings = fc.optimizer_settings(fc.AIRBENCH94)
    kilostep = 1024 * (1 + 1 / (1 - 0.85))
    torch_lr = 11.5 / kilostep  # PyTorch lr for the summed loss
    assert settings["lr"] == pytest.approx(torch_lr * 1024)
    assert settings["lr"] * settings["wd"] == pytest.approx(0.0153 * 1024 / kilostep)
    assert settings["lr_bias"] == pytest.approx(64 * settings["lr"])
    schedule = fc.lr_schedule(476, fc.AIRBENCH94)
    assert schedule[0] == pytest.approx(0.2, rel=1e-6)
    assert schedule[-1] == pytest.approx(0.07 + 0.93 / 367)  # the last step is 366 of 367
    assert schedule.max() == pytest.approx(1.0) and int(np.argmax(schedule)) == int(476 * 0.23)


def newton_schulz_float64(matrix: np.ndarray, steps: int = 3) -> np.ndarray:
    """airbench94_muon's iteration, written out in NumPy float64 (the reference's order)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = matrix / (np.linalg.norm(matrix) + 1e-7)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


@pytest.mark.parametrize("shape", [(64, 216), (300, 40)])
def test_newton_schulz_orthogonalises_in_bfloat16(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(4)
    # a gradient-like matrix: a few strong directions and many weak ones
    u, _ = np.linalg.qr(rng.normal(size=(shape[0], min(shape))))
    v, _ = np.linalg.qr(rng.normal(size=(shape[1], min(shape))))
    singular = np.geomspace(10.0, 0.01, min(shape))
    matrix = (u * singular) @ v.T
    ours = np.asarray(fc.newton_schulz(jnp.asarray(matrix, jnp.float32)), np.float64)
    assert ours.shape == shape
    expected = newton_schulz_float64(matrix)
    assert np.linalg.norm(ours - expected) / np.linalg.norm(expected) < 0.05  # bfloat16
    # the same singular vectors; singular values with at least 2% of the norm end up in
    # 0.5-1.3, the weakest grow by about a^3 = 3.4445^3 = 41 (the slope at 0, three times)
    diagonal = u.T @ ours @ v
    off_diagonal = diagonal - np.diag(np.diag(diagonal))
    assert np.linalg.norm(off_diagonal) < 0.05 * np.linalg.norm(np.diag(diagonal))
    share = singular / np.linalg.norm(singular)
    mapped = np.diag(diagonal)
    assert np.all((mapped[share >= 0.02] > 0.5) & (mapped[share >= 0.02] < 1.3))
    np.testing.assert_allclose(mapped[share < 0.002] / share[share < 0.002], 3.4445**3, rtol=0.15)


def leaf_at(names: list[str], tree: Any) -> np.ndarray:
    """The parameter at ``names`` in an nnx.State, as float64."""
    for key in names:
        tree = tree[key]
    return np.asarray(tree[...], np.float64)


def test_muon_update_follows_airbench94_muon() -> None:
    """Filters: momentum, weight normalisation, orthogonalised Nesterov step; others: SGD."""
    rng = np.random.default_rng(5)
    config = fc.smoke_config(fc.AIRBENCH94_MUON)
    _, state, _ = fc.initial_state(config, 0)
    hyper = fc.make_hyper(config, state.params, np.zeros(4, bool))
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), state.params)
    velocity = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), state.params)
    gate = jax.tree.map(lambda _: 1.0, state.params)
    lr_factor = jnp.float32(0.5)
    params, new_velocity = fc.muon_update(state.params, grads, velocity, hyper, lr_factor, gate)
    sgd_params, sgd_velocity = fc.sgd_update(state.params, grads, velocity, hyper, lr_factor, gate)
    filters = 0
    for path, value in jax.tree_util.tree_leaves_with_path(params):
        at = functools.partial(leaf_at, fc._path_names(path)[:-1])  # [:-1]: drop "value"
        if not fc.is_muon_filter(path):
            np.testing.assert_allclose(value, at(sgd_params), rtol=1e-6)
            np.testing.assert_allclose(at(new_velocity), at(sgd_velocity), rtol=1e-6)
            continue
        filters += 1
        p, g, v = at(state.params), at(grads), at(velocity)
        out = p.shape[-1]
        v = 0.6 * v + g
        step = newton_schulz_float64((g + 0.6 * v).reshape(-1, out).T).T.reshape(p.shape)
        expected = p * np.sqrt(out) / np.linalg.norm(p) - 0.24 * 0.5 * step
        np.testing.assert_allclose(at(new_velocity), v, rtol=1e-5, atol=1e-6)
        moved = np.linalg.norm(expected - p * np.sqrt(out) / np.linalg.norm(p))
        assert np.linalg.norm(np.asarray(value) - expected) < 0.05 * moved  # bfloat16
    assert filters == 6  # two convolutions in each of the three blocks
    whiten = params["whiten"]["kernel"][...]
    np.testing.assert_array_equal(whiten, state.params["whiten"]["kernel"][...])  # frozen


def test_airbench94_muon_settings_reproduce_the_pytorch_values() -> None:
    config = fc.AIRBENCH94_MUON
    settings = fc.optimizer_settings(config)
    # PyTorch's SGD on the summed loss: head lr 0.67, biases 0.053, lr x decay 2e-6 x batch
    assert settings["lr"] == pytest.approx(0.67 * 2000)
    assert settings["lr_bias"] == pytest.approx(0.053 * 2000)
    assert settings["lr"] * settings["wd"] == pytest.approx(2e-6 * 2000)
    assert settings["lr_bias"] * settings["wd_bias"] == pytest.approx(2e-6 * 2000)
    _, state, _ = fc.initial_state(fc.smoke_config(config), 0)
    hyper = fc.make_hyper(config, state.params, np.zeros(4, bool))
    assert float(hyper.lr["group2"]["conv1"]["kernel"]) == pytest.approx(0.24)
    assert float(hyper.lr["whiten"]["bias"]) == pytest.approx(0.053 * 2000)
    assert float(hyper.lr["whiten"]["kernel"]) == 0.0 and bool(hyper.nesterov)
    head = np.asarray(state.params["head"]["kernel"][...])
    assert np.std(head) == pytest.approx(1.0, rel=1e-4)
    # the schedule falls linearly to 0; the whitening bias's over its own 3 epochs
    run = fc.Run(config, fc.put_on_device(synthetic_cifar(train=8000, test=8)))
    assert run.total_steps == 32 and run.steps_per_epoch == 4
    np.testing.assert_allclose(run.plan.lr, 1 - np.arange(32) / 32)
    whiten_lr = run.plan.lr * run.plan.train_whiten_bias
    np.testing.assert_allclose(whiten_lr, np.clip(1 - np.arange(32) / 12, 0, None), atol=1e-6)


def test_lookahead_plan_follows_airbench94() -> None:
    flags, decay = fc.lookahead_plan(fc.AIRBENCH94, 48, 476, 480)
    done = np.flatnonzero(flags) + 1
    np.testing.assert_array_equal(done, [*range(5, 476, 5), 476])
    assert decay[4] == pytest.approx(0.95**5 * (5 / 476) ** 3)
    assert decay[474] == pytest.approx(0.95**5 * (475 / 476) ** 3) and decay[475] == 1.0
    # a last step that is also an averaging step averages (it does not drop its update)
    flags, decay = fc.lookahead_plan(fc.AIRBENCH94, 48, 480, 480)
    assert flags[479] and decay[479] == pytest.approx(0.95**5)
    # the airbench package's variant: from epoch 3, plus a copy-back at each epoch's end
    late = dataclasses.replace(fc.AIRBENCH94, lookahead_start_epochs=3)
    flags, decay = fc.lookahead_plan(late, 48, 476, 480)
    done = np.flatnonzero(flags) + 1
    ends = [192, 288, 336, 384, 432, 476]  # epoch ends that are not multiples of 5
    np.testing.assert_array_equal(done, sorted([*range(145, 476, 5), *ends]))
    assert decay[144] == 0.0  # the average starts here, at the current weights
    assert decay[149] == pytest.approx(0.95**5 * (150 / 476) ** 3)
    assert all(decay[d - 1] == 1.0 for d in ends)
    short = fc.lookahead_plan(dataclasses.replace(late, epochs=2.0), 48, 96, 96)
    assert not short[0].any()  # never reaches epoch 3: no lookahead at all


def test_augmentation_identity_translate_and_alternating_flip() -> None:
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    padded = jnp.asarray(np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect"))
    indices = jnp.arange(6)
    key = jax.random.key(0)
    base = jnp.array([True, False, True, False, False, True])

    def augment(translate: int, mode: int, odd: bool) -> np.ndarray:
        return np.asarray(
            fc.augment_batch(padded, indices, key, jnp.int32(translate), jnp.int32(mode),
                             base, jnp.bool_(odd))
        )  # fmt: skip

    np.testing.assert_array_equal(augment(0, 0, False), images)
    even, odd = augment(0, 2, False), augment(0, 2, True)
    flipped = images[:, :, ::-1]
    for i, b in enumerate(np.asarray(base)):
        np.testing.assert_array_equal(even[i], flipped[i] if b else images[i])
        np.testing.assert_array_equal(odd[i], images[i] if b else flipped[i])
    shifted = augment(2, 0, False)
    assert shifted.shape == images.shape and not np.array_equal(shifted, images)
    host = fc.host_augment_batch(
        np.asarray(padded), np.arange(6), np.random.default_rng(0), 0, 2, np.asarray(base), True
    )
    np.testing.assert_array_equal(host, odd)


def test_model_shapes_and_tta() -> None:
    x = jnp.asarray(np.random.default_rng(3).normal(size=(3, 32, 32, 3)), jnp.float32)
    for config in (TINY, fc.smoke_config(fc.BASELINE)):
        graphdef, state, _ = fc.initial_state(config, 0)

        tta = jax.jit(
            lambda p, s, x, g=graphdef: fc.tta_logits(nnx.merge(g, p, s, copy=True), x, 2)
        )
        logits = tta(state.params, state.batch_stats, x)
        assert logits.shape == (3, 3, 10)  # (TTA level, image, class)
        symmetric = tta(state.params, state.batch_stats, x + x[:, :, ::-1])[:2]
        np.testing.assert_allclose(symmetric[0], symmetric[1], atol=1e-4)  # mirror changes nothing
    assert fc.tta_views(x, 2).shape == (6, 3, 32, 32, 3)


def test_training_lowers_the_loss_and_reports_a_result(data: fc.DeviceData) -> None:
    result = fc.train_and_evaluate(TINY, data, seed=0, eval_each_epoch=True)
    assert result.steps == 16 and len(result.epoch_losses) == 2
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    assert len(result.accuracy_by_tta) == 3 and 0 <= result.accuracy <= 1
    assert len(result.epoch_accuracies) == 2
    assert result.seconds > 0 and result.compile_seconds > 0
    again = fc.train_and_evaluate(dataclasses.replace(TINY, label_smoothing=0.0), data, seed=0)
    assert again.compile_seconds == 0, "a numeric switch must not recompile"


def test_muon_recipe_lowers_the_loss(data: fc.DeviceData) -> None:
    config = dataclasses.replace(fc.smoke_config(fc.AIRBENCH94_MUON), epochs=3.0)
    result = fc.train_and_evaluate(config, data, seed=0)
    assert result.steps == 24 and np.isfinite(result.epoch_losses).all()
    assert result.epoch_losses[-1] < result.epoch_losses[0] - 0.05


def test_whitening_bias_starts_as_in_each_reference() -> None:
    """airbench94 zeroes the whitening bias; airbench94_muon keeps PyTorch's Conv2d init."""
    zeros = fc.make_model(fc.AIRBENCH94, 0).whiten.bias[...]
    uniform = np.asarray(fc.make_model(fc.AIRBENCH94_MUON, 0).whiten.bias[...])
    assert not np.asarray(zeros).any()
    assert np.abs(uniform).max() <= 1 / np.sqrt(12) and np.abs(uniform).mean() > 0.05


def test_whitening_bias_can_stay_frozen(data: fc.DeviceData) -> None:
    """whiten_bias_epochs=0 with the Muon recipe's decay: no division by zero, no NaN."""
    config = dataclasses.replace(
        fc.smoke_config(fc.AIRBENCH94_MUON), epochs=1.0, whiten_bias_epochs=0
    )
    run = fc.Run(config, data, seed=0)
    assert not np.asarray(run.plan.train_whiten_bias).any()
    before = np.asarray(run.state.params["whiten"]["bias"][...])
    run.whiten()
    assert np.isfinite(np.asarray(run.train_epoch(0))[: run.total_steps]).all()
    np.testing.assert_array_equal(np.asarray(run.state.params["whiten"]["bias"][...]), before)


def test_a_diverged_run_reports_nan_losses(data: fc.DeviceData) -> None:
    """Padding steps are NaN too, but they must not hide NaN from a diverging step."""
    result = fc.train_and_evaluate(dataclasses.replace(TINY, lr=1e30), data, seed=0)
    assert np.isnan(result.epoch_losses).all()


def test_host_step_and_device_loops_train_alike(data: fc.DeviceData) -> None:
    """Batches made by NumPy on the host, or one call per step without donation: same run."""
    config = dataclasses.replace(TINY, translate=0)  # host and device crops draw differently
    variants = [config, dataclasses.replace(config, data_on_device=False),
                dataclasses.replace(config, loop="step", donate=False)]  # fmt: skip
    losses = []
    for variant in variants:
        run = fc.Run(variant, data, seed=2)
        run.whiten()
        losses.append(np.concatenate([run.train_epoch(epoch) for epoch in range(run.epochs)]))
    assert len(losses[0]) == 16 and np.isfinite(losses[0]).all()
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    np.testing.assert_allclose(losses[2], losses[0], rtol=1e-5)


def test_compiled_code_follows_the_matmul_precision() -> None:
    args = (jnp.ones((4, 4)),)
    _, first = fc.compiled("precision-test", lambda x: x @ x, args, None)
    with jax.default_matmul_precision("highest"):
        _, again = fc.compiled("precision-test", lambda x: x @ x, args, None)
    assert first > 0 and again > 0, "a different precision must compile its own program"


def test_ablation_main_rejects_negative_recipe_runs(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        fc.main(["--out", str(tmp_path / "out.jsonl"), "--recipe-runs", "-1"])
    assert not (tmp_path / "out.jsonl").exists()


def test_one_call_per_step_equals_one_scanned_call(data: fc.DeviceData) -> None:
    """On a CPU, Run calls the step once per step instead of scanning: the same numbers."""
    config = dataclasses.replace(TINY, epochs=1.5)  # the last epoch has padding steps
    per_step, scanned = fc.Run(config, data, seed=1), fc.Run(config, data, seed=1, scan=True)
    assert not per_step.scan, "the default on a CPU is one call per step"
    calls = []
    train_call = per_step._train_call
    per_step._train_call = lambda *args: calls.append(1) or train_call(*args)  # type: ignore[method-assign]
    losses = []
    for run in (per_step, scanned):
        run.whiten()
        losses.append(np.concatenate([run.train_epoch(epoch) for epoch in range(run.epochs)]))
    total = per_step.total_steps  # 12 of 16 planned steps are active
    assert len(calls) == total, "padding steps are not run one by one"
    assert np.isfinite(losses[0][:total]).all() and np.isnan(losses[0][total:]).all()
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    # The two programs round differently (XLA:CPU uses other convolution code in a loop):
    # weights agree to ~2e-4 of their scale; the momentum (a few recent gradients) to ~3%.
    trained = [(run.state.params, run.state.batch_stats) for run in (per_step, scanned)]
    for a, b in zip(*map(jax.tree.leaves, trained), strict=True):
        scale = float(np.abs(np.asarray(b, np.float32)).max())
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-3 * scale + 1e-7)


SHARDED_SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import dataclasses, sys
    import jax, numpy as np
    sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
    from helpers import fast_cifar10 as fc
    from test_fast_cifar10 import TINY, synthetic_cifar
    assert len(jax.devices()) == 8
    config = TINY
    cifar = synthetic_cifar()
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    single = fc.Run(config, fc.put_on_device(cifar), seed=3)
    sharded = fc.Run(config, fc.put_on_device(cifar, sharding=replicated), seed=3, mesh=mesh)
    for run in (single, sharded):
        run.whiten()
    a, b = np.asarray(single.train_range(0, 3)), np.asarray(sharded.train_range(0, 3))
    print(a, b)
    np.testing.assert_allclose(a, b, rtol=1e-4)
    assert "tensorflow" not in sys.modules  # the GPU machine has none
    print("OK")
    """
)


def test_sharded_step_equals_single_device_step() -> None:
    script = SHARDED_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0 and "OK" in done.stdout, done.stdout + done.stderr[-3000:]


@pytest.mark.parametrize("recipe", ["airbench94", "airbench94_muon"])
def test_benchmark_smoke_prints_the_promised_keys(
    recipe: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    import helpers

    bench = load_script(ROOT / "benchmarks/fast_cifar10.py")
    monkeypatch.setattr(helpers, "load_cifar10", synthetic_cifar)
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results.jsonl")
    result = bench.main(["--smoke", "--runs", "2", "--recipe", recipe])
    captured = capsys.readouterr()
    printed = json.loads(captured.out.strip().splitlines()[-1])
    assert "warm-up (not timed)" in captured.err and "run 2/2, seed 1: accuracy" in captured.err
    keys = {"device", "runs", "acc_mean", "acc_std", "seconds_per_run", "compile_seconds", "data"}
    assert keys <= set(printed) and printed == result
    assert printed["runs"] == 2 and 0 <= printed["acc_mean"] <= 1 and printed["recipe"] == recipe
    assert printed["data"] == "official" and not (tmp_path / "results.jsonl").exists()


def test_cost_probes_time_every_variant(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import helpers

    costs = load_script(COSTS_SCRIPT)
    monkeypatch.setattr(helpers, "load_cifar10", synthetic_cifar)
    records = costs.main(["--smoke", "muon", "donation", "--repeats", "2"])
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == records
    assert [(r["probe"], r["label"]) for r in records] == [
        ("muon", "muon"),
        ("muon", "muon recipe, nesterov filters"),
        ("donation", "step, donated"),
        ("donation", "step, not donated"),
        ("donation", "epoch, donated"),
        ("donation", "epoch, not donated"),
    ]
    for record in records[:2]:  # two warm runs each, timed in parts
        assert len(record["seconds"]) == 2 and len(record["accs"]) == 3
        assert all(t > 0 for t in record["train_seconds"] + record["eval_seconds"])
    for record in records[2:]:
        assert len(record["ms_per_step"]) == 2 and min(record["ms_per_step"]) > 0
        assert len(record["idle_call_ms_median"]) == 2 and min(record["idle_call_ms_median"]) > 0
        assert record["steps"] == 8  # epoch 1 of 256 images in batches of 32


def test_cost_probes_reject_zero_repeats(capsys: pytest.CaptureFixture[str]) -> None:
    costs = load_script(COSTS_SCRIPT)
    with pytest.raises(SystemExit):
        costs.main(["donation", "--repeats", "0"])
    assert "--repeats must be at least 1, got 0" in capsys.readouterr().err


# --- lessons.airbench: the recipe written in notebook 06's cells ---------------------


def tiny_recipe(**change: Any) -> Any:
    from lessons import airbench as ab

    return dataclasses.replace(ab.QUICK_RECIPE, **({"widths": (8, 16, 16), "batch": 32} | change))


@pytest.fixture(scope="module")
def cells_data() -> Any:
    from lessons import airbench as ab

    images, labels = learnable_images(128, 0)
    test_images, test_labels = learnable_images(64, 1)
    return ab.to_device(images, labels, test_images, test_labels)


def test_airbench_tta_views_and_weights_by_hand() -> None:
    from lessons import airbench as ab

    x = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    up_left, down_right = padded[:, :4, :4], padded[:, 2:, 2:]
    expected = [x, x[:, :, ::-1], up_left, up_left[:, :, ::-1], down_right, down_right[:, :, ::-1]]
    views = np.asarray(ab.tta_views(jnp.asarray(x)))
    assert views.shape == (6, 2, 4, 4, 1)
    for got, want in zip(views, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    # half the weight on the image and its mirror, half on the four shifted views
    np.testing.assert_allclose(np.asarray(ab.TTA_WEIGHTS), [1 / 4, 1 / 4] + [1 / 8] * 4)


def test_airbench_two_steps_are_torch_nesterov_sgd_per_group() -> None:
    """The reference: lr = 11.5 / kilostep, weight_decay = wd / lr, biases 64x lr."""
    from lessons import airbench as ab

    total, batch, momentum = 10, 64, 0.85
    tx = ab.make_optimizer(total, batch=batch)
    params = {
        "w": ab.Filter(jnp.array([1.0, -2.0])),
        "b": ab.NormBias(jnp.array([0.5])),
        "c": ab.WhitenBias(jnp.array([0.3])),
    }
    state = tx.init(params)
    kilostep = 1024 * (1 + 1 / (1 - momentum))
    torch_lr, torch_wd = 11.5 / kilostep, 0.0153 * batch / kilostep
    groups = {"w": torch_lr, "b": 64 * torch_lr, "c": torch_lr}
    want = {k: np.asarray(v[...]) for k, v in params.items()}
    buf = {k: np.zeros_like(v) for k, v in want.items()}
    peak = int(0.23 * total)
    for step, g in enumerate([{"w": [0.3, 0.1], "b": [-1.0], "c": [2.0]},
                              {"w": [0.2, -0.4], "b": [0.5], "c": [1.0]}]):  # fmt: skip
        grads = {k: type(params[k])(jnp.array(v)) for k, v in g.items()}
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        factor = 0.2 + 0.8 * step / peak  # torch's LambdaLR before the peak
        for k, lr in groups.items():
            d = np.array(g[k]) + torch_wd / lr * want[k]  # PyTorch adds decay to the gradient
            buf[k] = momentum * buf[k] + d
            want[k] = want[k] - lr * factor * (d + momentum * buf[k])
    for k in params:
        np.testing.assert_allclose(np.asarray(params[k][...]), want[k], rtol=1e-5)


def test_airbench_first_layer_bias_stops_after_its_steps() -> None:
    from lessons import airbench as ab

    tx = ab.make_optimizer(10, 64, ab.AIRBENCH94, whiten_bias_steps=2)
    params = {"c": ab.WhitenBias(jnp.array([0.3])), "w": ab.Filter(jnp.array([1.0]))}
    grads = {"c": ab.WhitenBias(jnp.array([1.0])), "w": ab.Filter(jnp.array([1.0]))}
    state, seen = tx.init(params), []
    for _ in range(4):
        updates, state = tx.update(grads, state, params)
        seen.append((float(updates["c"][...][0]), float(updates["w"][...][0])))
    assert all(c != 0 for c, _ in seen[:2]) and all(c == 0 for c, _ in seen[2:])
    assert all(w != 0 for _, w in seen)


def test_airbench_parameters_are_labelled_by_type_not_name() -> None:
    from lessons import airbench as ab

    model = ab.Airbench(widths=(8, 16, 16))
    _, params, _ = nnx.split(model, nnx.Param, ...)
    labels = jax.tree.leaves(ab.kind_of(params))
    assert sorted(set(labels)) == ["Filter", "Head", "NormBias", "WhitenBias"]
    assert labels.count("Filter") == 6 and labels.count("Head") == 1  # 6 conv filter banks
    assert labels.count("WhitenBias") == 1
    assert labels.count("NormBias") == 6  # two batch norms per group
    learned = ab.Airbench(widths=(8, 16, 16), whiten=False)  # the first layer then trains
    assert isinstance(learned.whiten, ab.Filter) and not isinstance(model.whiten, nnx.Param)


def test_airbench_whitening_decorrelates_patches() -> None:
    from lessons import airbench as ab

    rng = np.random.default_rng(0)
    smooth = rng.normal(size=(64, 32, 32, 3)).cumsum(1).cumsum(2)  # correlated pixels
    images = jnp.asarray(smooth / smooth.std(), jnp.float32)
    kernel = ab.whitening_filters(images, eps=1e-8)
    out = np.asarray(ab.conv(images, kernel[..., :12], "VALID")).reshape(-1, 12)
    np.testing.assert_allclose(np.cov(out.T, bias=True), np.eye(12), atol=2e-2)


@pytest.mark.parametrize(
    ("platform", "capability", "dtype"),
    [("gpu", "9.0", "bfloat16"), ("gpu", "8.0", "bfloat16"), ("gpu", "7.5", "float16"),
     ("tpu", None, "bfloat16"), ("cpu", None, "float32"), ("gpu", None, "float32")],
)  # fmt: skip
def test_airbench_compute_dtype_by_device(platform: str, capability: str | None, dtype: str):
    from types import SimpleNamespace

    from lessons import airbench as ab

    device = SimpleNamespace(platform=platform, compute_capability=capability)
    assert ab.compute_dtype(device) == dtype  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"flip": "sometimes"}, "flip must be 'alternating' or 'random' or 'none'"),
        ({"tta": 3}, "tta must be 0, 1 or 2, got 3"),
        ({"translate": 3}, "translate must be 0, 1 or 2, got 3"),
        ({"batch": 0}, "batch must be at least 1, got 0"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\), got 1.0"),
        ({"widths": (8, 16)}, "widths must be three positive ints"),
        ({"dtype": "float64"}, "dtype must be None, 'float32', 'bfloat16' or 'float16'"),
        ({"schedule": "cosine"}, "schedule must be 'triangle' or 'constant'"),
    ],
)
def test_airbench_recipe_rejects_bad_values(change: dict[str, Any], message: str) -> None:
    from lessons import airbench as ab

    with pytest.raises(ValueError, match=message):
        dataclasses.replace(ab.AIRBENCH94, **change)


def test_airbench_train_rejects_a_batch_larger_than_the_data(cells_data: Any) -> None:
    from lessons import airbench as ab

    with pytest.raises(ValueError, match="batch 256 at most the 128 training images"):
        ab.train(cells_data, tiny_recipe(batch=256))
    with pytest.raises(ValueError, match="loop must be 'epoch' or 'step'"):
        ab.train(cells_data, tiny_recipe(), loop="scan")


def test_airbench_lookahead_follows_the_reference_schedule() -> None:
    from lessons import airbench as ab

    total = 20
    for count in (4, 5, 10, 20):
        slow, fast = ab.lookahead(jnp.zeros(1), jnp.ones(1), jnp.array(count), total)
        decay = 1.0 if count == total else 0.95**5 * (count / total) ** 3
        if count % 5 and count != total:  # not a sync step: nothing moves
            assert float(slow[0]) == 0 and float(fast[0]) == 1
        else:  # average <- decay * average + (1 - decay) * weights; weights <- average
            assert float(slow[0]) == pytest.approx(1 - decay, rel=1e-6)
            assert float(fast[0]) == float(slow[0])


def test_airbench_augment_shifts_and_flips() -> None:
    from lessons import airbench as ab

    images = jnp.arange(2 * 36 * 36 * 3, dtype=jnp.float32).reshape(2, 36, 36, 3)
    key = jax.random.key(0)
    centre = np.asarray(images[:, 2:-2, 2:-2])
    still = ab.augment(images, key, 0, jnp.array([False, False]), 0, "none")
    np.testing.assert_array_equal(np.asarray(still), centre)
    flip = jnp.array([True, False])
    even = np.asarray(ab.augment(images, key, 0, flip, 0, "alternating"))
    odd = np.asarray(ab.augment(images, key, 1, flip, 0, "alternating"))
    np.testing.assert_array_equal(even[0], centre[0, :, ::-1])
    np.testing.assert_array_equal(even[1], centre[1])
    np.testing.assert_array_equal(odd, even[:, :, ::-1])  # every image turns each epoch
    shifted = np.asarray(ab.augment(images, key, 0, flip, 2, "none"))
    offsets = [np.argwhere(np.asarray(images[i]) == shifted[i, 0, 0, 0])[0][:2] for i in range(2)]
    assert all(o.min() >= 0 and o.max() <= 4 for o in offsets)


def test_airbench_harness_gives_the_losses_of_the_cells_by_hand(cells_data: Any) -> None:
    """train() (one call per step) against the cells composed by hand (scanned epochs)."""
    from lessons import airbench as ab

    recipe = tiny_recipe(epochs=1.5)  # 4 steps per epoch: 6 steps, the second epoch cut short
    result = ab.train(cells_data, recipe, seed=3, loop="step")

    model = ab.Airbench(recipe.widths, 3, "float32")
    model.whiten[...] = ab.whitening_filters(ab.normalize(cells_data.train[:, 2:-2, 2:-2]))
    tx = ab.make_optimizer(6, 32, recipe, 3 * 4)
    graphdef, state = ab.init_state(model, tx)
    key_flip, key = jax.random.split(jax.random.key(3))
    flip = jax.random.bernoulli(key_flip, 0.5, (128,))
    losses = []
    for epoch in range(2):
        state, loss = ab.train_epoch(
            graphdef, tx, state, cells_data.train, cells_data.train_labels,
            jax.random.fold_in(key, epoch), epoch, flip, total_steps=6, batch=32, recipe=recipe,
        )  # fmt: skip
        losses.extend(np.asarray(loss).tolist())
    assert len(result.losses) == 6 and np.all(np.isfinite(result.losses))
    np.testing.assert_allclose(result.losses, np.array(losses[:6]) / 32, rtol=2e-5)
    assert int(state[-1]) == 6  # the two extra scanned steps changed nothing
    params, _, stats, _, slow, _ = state
    for got, want in zip(jax.tree.leaves((params, stats)), jax.tree.leaves(slow), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))  # last step: average
    accuracy = ab.accuracy(graphdef, state, cells_data.test, cells_data.test_labels, 2, 64)
    assert result.test_accuracy[2] == pytest.approx(accuracy, abs=1 / 64)
    assert set(result.test_accuracy) == {0, 1, 2} and 0 <= result.train_accuracy <= 1


def test_cells_benchmark_quick_prints_its_summary(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    script = load_script(ROOT / "benchmarks" / "fast_cifar10_cells.py")
    cifar = synthetic_cifar(train=128, test=64)
    monkeypatch.setattr("helpers.load_cifar10", lambda: cifar)
    assert script.main(["--recipe", "quick", "--runs", "1"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["recipe"] == "quick" and summary["runs"] == 1 and len(summary["accs"]) == 1
    assert 0 <= summary["acc_mean"] <= 1 and summary["seconds_per_run"] > 0
    with pytest.raises(SystemExit):
        script.main(["--runs", "0"])


def test_airbench_muon_steps_follow_the_reference_in_float64() -> None:
    """airbench94_muon's Muon.step: Nesterov buffer, weight renormalised, Newton-Schulz step."""
    from lessons import airbench as ab

    rng = np.random.default_rng(0)
    p = rng.normal(size=(3, 3, 8, 16))
    tx = ab.muon(lambda s: 0.24 * (1 - s / 10), momentum=0.6)
    params = {"w": jnp.asarray(p, jnp.float32)}
    state = tx.init(params)
    want, buf = p, np.zeros_like(p)
    for step in range(2):
        g = rng.normal(size=p.shape)
        updates, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
        params = optax.apply_updates(params, updates)
        buf = 0.6 * buf + g
        d = g + 0.6 * buf
        want = want * np.sqrt(16) / np.linalg.norm(want)  # len(p) filters in PyTorch's layout
        torch_layout = d.transpose(3, 2, 0, 1).reshape(16, -1)  # (out, in * 3 * 3)
        update = newton_schulz_float64(torch_layout).reshape(16, 8, 3, 3).transpose(2, 3, 1, 0)
        want = want - 0.24 * (1 - step / 10) * update
    got = np.asarray(params["w"], np.float64)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.02  # bfloat16 iteration


def test_airbench_muon_recipe_trains_a_few_steps(cells_data: Any) -> None:
    from lessons import airbench as ab

    recipe = tiny_recipe(optimizer="muon", lookahead=False, epochs=1.0)
    result = ab.train(cells_data, recipe, seed=0, loop="step")
    assert len(result.losses) == 4 and np.all(np.isfinite(result.losses))
