"""The benchmarks run end to end on small inputs (not timing tests), and reject bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "seed_recipe.py"
CACHE = os.environ.get("TUTORIAL_CACHE_DIR")  # read before conftest's fixture empties it
COMMON_KEYS = {"impl", "device", "epochs", "epoch_s", "first_epoch_s", "test_acc"}


@pytest.mark.slow  # decodes the real copy and compiles both steps: about 30 s
def test_seed_recipe_benchmark_runs_without_tensorflow(real_copy: Path, tmp_path: Path) -> None:
    output = tmp_path / "seed_recipe.jsonl"
    argv = ["--epochs", "2", "--subset", "1000", "--output", str(output)]  # two steps
    # run the script as __main__, then check it never imported TensorFlow
    code = (
        "import runpy, sys; "
        f"sys.argv = [{str(SCRIPT)!r}, *{argv!r}]; "
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__'); "
        "assert 'tensorflow' not in sys.modules, 'the benchmark imported TensorFlow'"
    )
    env = {**os.environ, "CIFAR10_PATH": str(real_copy)}
    if CACHE:
        env["TUTORIAL_CACHE_DIR"] = CACHE  # share the decoded copy with the notebooks
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    has_torch = importlib.util.find_spec("torch") is not None
    assert [line.get("impl") for line in printed] == (
        ["jax", "pytorch", None] if has_torch else ["jax"]
    )
    for line in printed[:-1] if has_torch else printed:
        assert line.keys() >= COMMON_KEYS
        assert line["epochs"] == 2 and line["train_images"] == 1000
        assert 0.0 <= line["test_acc"] <= 1.0 and line["epoch_s"] > 0
    assert 0 < printed[0]["compile_s"] < printed[0]["first_epoch_s"]
    if not has_torch:
        assert "PyTorch not installed: timing JAX only" in result.stderr
    if has_torch:
        assert printed[-1].keys() >= {"ratio_epoch_s", "ratio_first_epoch_s"}
        # same weights, same batches, same maths: the two agree after two short epochs
        assert printed[0]["final_train_loss"] == pytest.approx(
            printed[1]["final_train_loss"], abs=2e-3
        )
    saved = [json.loads(line) for line in output.read_text().splitlines()]
    assert saved == printed


def test_seed_recipe_benchmark_times_the_notebooks_own_definitions() -> None:
    from lessons import cifar10_cnn

    benchmark = load_script(SCRIPT)
    for name in ("CNN", "make_optimizer", "train_epoch", "evaluate"):
        assert getattr(benchmark.lesson, name) is getattr(cifar10_cnn, name)


def hide_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make importlib.util.find_spec report PyTorch as not installed."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "torch" else find_spec(name, *a),
    )


def test_bad_arguments_stop_before_any_data_is_loaded(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    benchmark = load_script(SCRIPT)
    for subset in ("999", "49001"):
        with pytest.raises(SystemExit):
            benchmark.main(["--subset", subset, "--no-save"])
        assert "--subset must be between 1000 and 49000" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        benchmark.main(["--epochs", "0", "--no-save"])
    assert "--epochs must be at least 1, got 0" in capsys.readouterr().err
    hide_torch(monkeypatch)
    with pytest.raises(SystemExit):
        benchmark.main(["--impl", "pytorch", "--no-save"])
    assert "PyTorch is not installed (pip install -e .[bench])" in capsys.readouterr().err


def test_matmul_sizes_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    sizes = load_script(ROOT / "benchmarks" / "matmul_sizes.py")
    for argv in (["--repeats", "0"], ["--sizes", "64", "0"]):
        with pytest.raises(SystemExit):
            sizes.main(argv)
        assert "--repeats and --sizes must be at least 1" in capsys.readouterr().err


MUON_CHECK = ROOT / "benchmarks" / "muon_reference_check.py"
#: the reader's copy of airbench94_muon.py (not part of this repository), if any
MUON_REFERENCE = os.environ.get("AIRBENCH94_MUON_REFERENCE")


def test_muon_check_rejects_bad_arguments_before_loading_anything(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    check = load_script(MUON_CHECK)
    reference = tmp_path / "airbench94_muon.py"
    reference.write_text("")
    cases = [
        (["--reference", str(tmp_path / "missing.py")], "missing.py: no such file (fetch"),
        (["--reference", str(reference), "--batch", "1"], "--batch must be 2 to 50000, got 1"),
        (["--reference", str(reference), "--steps", "0", "75"], "--steps must each be 0 to 74"),
        (["--reference", str(reference), "--tolerance", "-1"], "--tolerance must be 0 or more"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit):
            check.main(argv)
        assert message in capsys.readouterr().err
    hide_torch(monkeypatch)
    with pytest.raises(SystemExit):
        check.main(["--reference", str(reference)])
    assert "needs PyTorch: pip install -e .[bench]" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs PyTorch")
def test_muon_check_rejects_a_file_that_is_not_the_reference(tmp_path: Path) -> None:
    not_it = tmp_path / "airbench94.py"
    not_it.write_text("class Muon:\n    pass\n")  # no CifarNet
    check = load_script(MUON_CHECK)
    message = r"airbench94\.py defines no CifarNet: is it airbench94_muon\.py\?"
    with pytest.raises(SystemExit, match=message):
        check.main(["--reference", str(not_it)])


@pytest.mark.skipif(
    not (MUON_REFERENCE and importlib.util.find_spec("torch")),
    reason="set AIRBENCH94_MUON_REFERENCE to a copy of airbench94_muon.py; needs PyTorch",
)
def test_muon_step_matches_the_pytorch_reference(
    real_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lessons import airbench as ab

    monkeypatch.setenv("CIFAR10_PATH", str(real_copy))
    if CACHE:
        monkeypatch.setenv("TUTORIAL_CACHE_DIR", CACHE)
    check = load_script(MUON_CHECK)
    argv = ["--reference", str(MUON_REFERENCE), "--float32", "--steps", "0", "3"]
    assert check.main(argv) <= 0.005
    # the check can fail: another Muon momentum makes the steps differ
    muon = ab.muon
    monkeypatch.setattr(ab, "muon", lambda lr, momentum: muon(lr, momentum=0.5))
    ab.make_muon_optimizer.cache_clear()  # it caches the optimiser it built
    try:
        with pytest.raises(SystemExit, match="1"):
            check.main(argv)
    finally:
        ab.make_muon_optimizer.cache_clear()


@pytest.mark.slow  # compiles airbench94_muon's training step: 10-35 s on the shared 2-core CPU
@pytest.mark.usefixtures("quickly_compiled")  # rbg draws, train_step compiled quickly
def test_muon_check_hands_weights_and_buffers_to_the_cells(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check's JAX side, without PyTorch: given the weights and momentum buffers of a
    run of the cells after two steps, jax_step takes the same third step as that run."""
    import dataclasses

    import jax.numpy as jnp
    import numpy as np

    from lessons import airbench as ab
    from tests.conftest import learnable_images

    check = load_script(MUON_CHECK)
    recipe = dataclasses.replace(ab.MUON_RECIPE, widths=(8, 16, 16), batch=8, dtype="float32")
    monkeypatch.setattr(ab, "MUON_RECIPE", recipe)  # the recipe jax_step builds
    images, labels = learnable_images(8, 0)
    x = ((images / 255 - check.MEAN) / check.STD).astype(np.float32)
    model = ab.Airbench(recipe.widths, 0, "float32")
    model.logit_scale = 1 / recipe.widths[-1]
    model.whiten[...] = ab.whitening_filters(jnp.asarray(x))
    whitening = np.asarray(model.whiten[...])
    tx = ab.make_muon_optimizer(check.TOTAL_STEPS, 8, check.WHITEN_BIAS_STEPS)
    graphdef, state = ab.init_state(model, tx)

    def step(state: tuple) -> tuple:
        return ab.train_step(graphdef, tx, state, jnp.asarray(x), jnp.asarray(labels),
                             total_steps=check.TOTAL_STEPS, recipe=recipe)[0]  # fmt: skip

    def at(tree: Any, *keys: Any) -> np.ndarray:
        for key in keys:
            tree = tree[key]
        return np.array(tree[...])

    state = step(step(state))
    # the weights, and the buffers read by hand from the optimiser's state (Optax's layout)
    params, groups = state[0], state[3].inner_states
    filters = groups["Filter"].inner_state[0]
    norm_biases = groups["NormBias"].inner_state[1][0].trace
    where = {"head": ("head",), "whiten_bias": ("whiten_bias",)}
    for i in range(3):
        where |= {f"groups.{i}.{conv}": ("groups", i, conv) for conv in ("conv1", "conv2")}
        where |= {f"groups.{i}.{n}.bias": ("groups", i, n, "bias") for n in ("norm1", "norm2")}
    weights = {name: at(params, *keys) for name, keys in where.items()}
    buffers = {
        "head": at(groups["Head"].inner_state[1][0].trace, "head"),
        "whiten_bias": at(groups["WhitenBias"].inner_state[0][1][0].trace, "whiten_bias"),
    }
    for name, keys in where.items():
        if keys[0] == "groups":
            buffers[name] = at(norm_biases if "bias" in keys else filters, *keys)
    assert all(np.abs(b).max() > 0 for b in buffers.values())
    ours = check.jax_step(weights, buffers, whitening, x, labels, step=2)
    third = step(state)[0]
    assert set(ours) == set(where)
    for name, keys in where.items():
        assert not np.allclose(at(third, *keys), weights[name])  # the step moved it
        np.testing.assert_allclose(ours[name], at(third, *keys), rtol=1e-6, atol=1e-7)
