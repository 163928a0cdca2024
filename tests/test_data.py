"""helpers.data: sources, shuffling, caching and every error path."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Generator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import data
from helpers.data import DatasetError, load_cifar10
from tests.conftest import write_image_folder


def _check_tiny(dataset: data.CIFAR10, counts: dict[str, int]) -> None:
    assert dataset.train_images.shape == (10 * counts["train"], 32, 32, 3)
    assert dataset.test_images.shape == (10 * counts["test"], 32, 32, 3)
    assert dataset.train_images.dtype == np.uint8
    assert dataset.class_names == data.CLASS_NAMES
    # each image's pixels were written as label * 20 + index, so labels must match
    for images, labels in [
        (dataset.train_images, dataset.train_labels),
        (dataset.test_images, dataset.test_labels),
    ]:
        np.testing.assert_array_equal(images[:, 0, 0, 0] // 20, labels)
        assert sorted(np.bincount(labels, minlength=10)) == [len(labels) // 10] * 10


def test_loads_image_folder(tiny_folder: Path, tiny_counts: dict[str, int]) -> None:
    _check_tiny(load_cifar10(tiny_folder), tiny_counts)


def test_loads_archive_and_jpeg(tmp_path: Path, tiny_counts: dict[str, int]) -> None:
    folder = write_image_folder(tmp_path / "jpegs", tiny_counts, suffix=".jpg")
    archive = tmp_path / "jpegs.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="jpegs")
    dataset = load_cifar10(archive)
    assert dataset.train_images.shape == (30, 32, 32, 3)
    assert len(dataset.test_labels) == 20


def test_path_from_environment(
    tiny_archive: Path, tiny_counts: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIFAR10_PATH", str(tiny_archive))
    _check_tiny(load_cifar10(), tiny_counts)


def test_sorted_copy_is_shuffled_reproducibly(tiny_folder: Path) -> None:
    first = load_cifar10(tiny_folder)
    labels = first.train_labels
    assert not np.array_equal(labels, np.sort(labels)), "a class-sorted copy must be shuffled"
    for cached in data.cache_dir().glob("*.npz"):
        cached.unlink()
    second = load_cifar10(tiny_folder)
    np.testing.assert_array_equal(first.train_labels, second.train_labels)


def test_second_load_comes_from_cache(tiny_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_cifar10(tiny_folder)
    assert len(list(data.cache_dir().glob("*.npz"))) == 1

    def no_decoding(source: Path) -> data.CIFAR10:
        raise AssertionError(f"{source} was decoded again")

    monkeypatch.setattr(data, "_decode_image_folder", no_decoding)
    second = load_cifar10(tiny_folder)
    np.testing.assert_array_equal(first.test_images, second.test_images)


def test_an_image_replaced_in_place_is_noticed(tiny_folder: Path) -> None:
    first = load_cifar10(tiny_folder)
    root_mtime = tiny_folder.stat().st_mtime_ns
    image = tiny_folder / "test/cat/0000.png"
    before = image.stat()
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(image)
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))  # coarse clocks
    assert tiny_folder.stat().st_mtime_ns == root_mtime  # what the old cache key looked at
    second = load_cifar10(tiny_folder)
    assert (second.test_images == 7).all(axis=(1, 2, 3)).sum() == 1
    assert not (first.test_images == 7).all(axis=(1, 2, 3)).any()


def test_broken_cache_is_rebuilt(tiny_folder: Path, tiny_counts: dict[str, int]) -> None:
    load_cifar10(tiny_folder)
    (cached,) = data.cache_dir().glob("*.npz")
    cached.write_bytes(b"not an npz file")
    _check_tiny(load_cifar10(tiny_folder), tiny_counts)


def test_cache_dir_is_overridable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUTORIAL_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert data.cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("TUTORIAL_CACHE_DIR")
    assert data.cache_dir() == Path.home() / ".cache" / "jax-dl-intro"


# --- errors ---------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"not found at .*nowhere.*CIFAR10_PATH"):
        load_cifar10(tmp_path / "nowhere")


def test_file_that_is_not_an_archive(tmp_path: Path) -> None:
    stray = tmp_path / "cifar.zip"
    stray.write_bytes(b"PK")
    with pytest.raises(DatasetError, match=r"cifar.zip is a file but not an archive"):
        load_cifar10(stray)


def test_missing_class_folder(tiny_folder: Path) -> None:
    for image in (tiny_folder / "train/deer").iterdir():
        image.unlink()
    (tiny_folder / "train/deer").rmdir()
    with pytest.raises(DatasetError, match=r"train/deer is missing or empty"):
        load_cifar10(tiny_folder)


def test_wrong_count(tiny_folder: Path) -> None:
    (tiny_folder / "test/ship/0001.png").unlink()
    with pytest.raises(DatasetError, match=r"test/ship .* holds 1 images; .* holds 2"):
        load_cifar10(tiny_folder)


def test_unknown_class_folder(tiny_folder: Path) -> None:
    (tiny_folder / "train/cats").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tiny_folder / "train/cats/0.png")
    with pytest.raises(DatasetError, match=r"Unknown class folder train/cats"):
        load_cifar10(tiny_folder)


def test_unreadable_image(tiny_folder: Path) -> None:
    (tiny_folder / "train/frog/0002.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DatasetError, match=r"Cannot read image .*train/frog/0002.png"):
        load_cifar10(tiny_folder)


def test_wrong_image_size(tiny_folder: Path) -> None:
    Image.fromarray(np.zeros((64, 48, 3), np.uint8)).save(tiny_folder / "test/dog/0000.png")
    with pytest.raises(DatasetError, match=r"test/dog/0000.png in .* is 48x64 pixels"):
        load_cifar10(tiny_folder)


def test_truncated_archive(tiny_archive: Path) -> None:
    content = tiny_archive.read_bytes()
    tiny_archive.write_bytes(content[: len(content) // 2])
    with pytest.raises(DatasetError, match=r"cifar10-tiny.tar.gz is truncated"):
        load_cifar10(tiny_archive)


@pytest.fixture
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Probes go straight to the download host, whatever proxy the machine has set."""
    for name in ("https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def listening_port() -> Generator[int, None, None]:
    """A local TCP port that accepts connections, standing in for a proxy."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


@pytest.mark.usefixtures("no_proxy_settings")
def test_offline_without_copy_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))  # nothing prepared there
    monkeypatch.setattr(data, "DOWNLOAD_HOST", ("cifar-host.invalid", 443))
    start = time.perf_counter()
    with pytest.raises(DatasetError, match=r"no network .*CIFAR10_PATH"):
        load_cifar10()
    assert time.perf_counter() - start < 15


def test_really_offline_without_copy_fails_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CI situation: no network at all. Skipped where the download host answers."""
    if data._can_reach_download_host():
        pytest.skip("the download host is reachable here: this test would download")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    start = time.perf_counter()
    with pytest.raises(DatasetError, match=r"no network .*CIFAR10_PATH"):
        load_cifar10()
    assert time.perf_counter() - start < 15


@pytest.mark.usefixtures("no_proxy_settings")
def test_probe_goes_through_the_https_proxy(
    monkeypatch: pytest.MonkeyPatch, listening_port: int
) -> None:
    """tensorflow-datasets downloads through HTTPS_PROXY, so a proxy that answers is network
    even where the download host itself cannot be reached directly."""
    monkeypatch.setattr(data, "DOWNLOAD_HOST", ("cifar-host.invalid", 443))
    assert data._can_reach_download_host() is False
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{listening_port}")
    proxy = f"http://127.0.0.1:{listening_port}"
    assert data._download_route() == ("127.0.0.1", listening_port, proxy)
    assert data._can_reach_download_host() is True
    monkeypatch.setenv("NO_PROXY", "cifar-host.invalid")  # exempt: straight to the host again
    assert data._download_route() == ("cifar-host.invalid", 443, None)
    assert data._can_reach_download_host() is False


@pytest.mark.usefixtures("no_proxy_settings")
def test_unreachable_proxy_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        closed_port = server.getsockname()[1]  # nothing listens there once the server closes
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    for setting in (f"127.0.0.1:{closed_port}", "http://127.0.0.1:port"):  # http assumed
        monkeypatch.setenv("https_proxy", setting)
        start = time.perf_counter()
        expected = rf"HTTPS proxy {setting} .*correct HTTPS_PROXY or unset it.*CIFAR10_PATH"
        with pytest.raises(DatasetError, match=expected):
            load_cifar10()
        assert time.perf_counter() - start < 15


def test_slow_name_lookup_cannot_stall_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def hang(*args: object, **kwargs: object) -> None:
        release.wait(30)  # a name lookup that never answers, until the test ends
        raise OSError("lookup timed out")

    monkeypatch.setattr(data.socket, "create_connection", hang)
    monkeypatch.setattr(data, "DOWNLOAD_PROBE_TIMEOUT_S", 0.2)
    start = time.perf_counter()
    try:
        assert data._can_reach_download_host() is False
        assert time.perf_counter() - start < 2
    finally:
        release.set()


def test_tfds_directory_goes_to_tfds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cifar10/3.0.2").mkdir(parents=True)
    assert not data._tfds_has_prepared_cifar10(tmp_path)
    (tmp_path / "cifar10/3.0.2/dataset_info.json").write_text("{}")
    assert data._tfds_has_prepared_cifar10(tmp_path)
    seen: list[Path | None] = []
    monkeypatch.setattr(data, "_load_with_tfds", lambda data_dir: seen.append(data_dir))
    load_cifar10(tmp_path)
    assert seen == [tmp_path]


def test_truncated_cache_is_rebuilt(tiny_folder: Path, tiny_counts: dict[str, int]) -> None:
    load_cifar10(tiny_folder)
    (cached,) = data.cache_dir().glob("*.npz")
    content = cached.read_bytes()
    cached.write_bytes(content[: len(content) // 2])  # a real npz cut short: BadZipFile
    _check_tiny(load_cifar10(tiny_folder), tiny_counts)


def test_order_does_not_depend_on_archive_member_order(tmp_path: Path, tiny_folder: Path) -> None:
    files = sorted(p for p in tiny_folder.rglob("*") if p.is_file())
    archive = tmp_path / "reversed.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for file in reversed(files):
            tar.add(file, arcname=f"copy/{file.relative_to(tiny_folder).as_posix()}")
    np.testing.assert_array_equal(
        load_cifar10(archive).train_images, load_cifar10(tiny_folder).train_images
    )


def test_folder_without_images_says_where_to_point(tmp_path: Path) -> None:
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads/cifar10-jpeg.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(DatasetError, match=r"No CIFAR-10 images in .*folder that holds train/"):
        load_cifar10(tmp_path / "downloads")


def test_appledouble_files_are_ignored(tiny_folder: Path, tiny_counts: dict[str, int]) -> None:
    (tiny_folder / "train/cat/._0000.png").write_bytes(b"\x00\x05\x16\x07Mac OS X")
    _check_tiny(load_cifar10(tiny_folder), tiny_counts)


def test_unwritable_cache_still_returns_the_data(
    tiny_folder: Path, tiny_counts: dict[str, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("TUTORIAL_CACHE_DIR", str(blocker / "cache"))  # a file in the way
    with pytest.warns(UserWarning, match="Could not cache"):
        _check_tiny(load_cifar10(tiny_folder), tiny_counts)


def test_image_folder_named_cifar10_is_not_sent_to_tfds(
    tmp_path: Path, tiny_counts: dict[str, int]
) -> None:
    write_image_folder(tmp_path / "data/cifar10", tiny_counts)
    _check_tiny(load_cifar10(tmp_path / "data"), tiny_counts)


def test_broken_tfds_directory_gives_a_dataset_error(tmp_path: Path) -> None:
    (tmp_path / "cifar10/3.0.2").mkdir(parents=True)
    (tmp_path / "cifar10/3.0.2/dataset_info.json").write_text("{}")  # prepared, then damaged
    with pytest.raises(DatasetError, match=r"could not read the prepared cifar10 in .*Delete"):
        load_cifar10(tmp_path)


# --- the real offline copy ------------------------------------------------------------


def test_real_copy_loads_complete_and_fast_from_cache(real_copy: Path) -> None:
    dataset = load_cifar10(real_copy)
    assert dataset.train_images.shape == (50_000, 32, 32, 3)
    assert dataset.test_images.shape == (10_000, 32, 32, 3)
    np.testing.assert_array_equal(np.bincount(dataset.train_labels), [5000] * 10)
    np.testing.assert_array_equal(np.bincount(dataset.test_labels), [1000] * 10)
    # shuffled: the first 1,000 training images hold every class
    assert len(np.unique(dataset.train_labels[:1000])) == 10
    script = (
        "import time; t = time.perf_counter(); from helpers.data import load_cifar10; "
        f"d = load_cifar10({str(real_copy)!r}); print(time.perf_counter() - t)"
    )
    seconds = float(subprocess.check_output([sys.executable, "-c", script], text=True))
    assert seconds < 2.0, f"second load took {seconds:.2f} s"


def test_source_name_names_what_load_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    assert data.source_name() == "official"
    monkeypatch.setenv("CIFAR10_PATH", "/data/cifar10-jpeg.tar.gz")
    assert data.source_name() == "cifar10-jpeg.tar.gz"
    assert data.source_name("/elsewhere/cifar10-png") == "cifar10-png"
