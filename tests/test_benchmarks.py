"""The benchmarks run end to end on small inputs (not timing tests), and reject bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

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
    import dataclasses

    from helpers import fast_cifar10 as fc

    monkeypatch.setenv("CIFAR10_PATH", str(real_copy))
    if CACHE:
        monkeypatch.setenv("TUTORIAL_CACHE_DIR", CACHE)
    check = load_script(MUON_CHECK)
    argv = ["--reference", str(MUON_REFERENCE), "--float32", "--steps", "0", "3"]
    assert check.main(argv) <= 0.005
    # the check can fail: another Muon momentum makes the steps differ
    wrong = dataclasses.replace(fc.AIRBENCH94_MUON, muon_momentum=0.5)
    monkeypatch.setattr(fc, "AIRBENCH94_MUON", wrong)
    with pytest.raises(SystemExit, match="1"):
        check.main(argv)
