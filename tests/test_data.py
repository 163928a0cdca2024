"""helpers.data: sources, shuffling, caching and every error path."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tarfile
import threading
import time
import warnings
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


def raises_exactly(message: str) -> pytest.RaisesExc:
    """pytest.raises(DatasetError) whose message must be ``message``, all of it."""
    return pytest.raises(DatasetError, match=f"^{re.escape(message)}$")


def test_missing_path(tmp_path: Path) -> None:
    with raises_exactly(
        f"CIFAR-10 copy not found at {tmp_path / 'nowhere'}. Point `path` or CIFAR10_PATH at "
        "an image folder, a .tar.gz of one, or a TFDS data directory; or unset CIFAR10_PATH "
        "to download with tensorflow-datasets."
    ):
        load_cifar10(tmp_path / "nowhere")


def test_file_that_is_not_an_archive(tmp_path: Path) -> None:
    stray = tmp_path / "cifar.zip"
    stray.write_bytes(b"PK")
    with raises_exactly(
        f"{stray} is a file but not an archive (.tar.gz, .tgz, .tar). Give an image folder, "
        "a .tar.gz of one, or a TFDS data directory."
    ):
        load_cifar10(stray)


def test_missing_class_folder(tiny_folder: Path) -> None:
    for image in (tiny_folder / "train/deer").iterdir():
        image.unlink()
    (tiny_folder / "train/deer").rmdir()
    with raises_exactly(
        f"Class folder train/deer is missing or empty in {tiny_folder}. The copy is "
        "incomplete: copy or download it again."
    ):
        load_cifar10(tiny_folder)


def test_wrong_count(tiny_folder: Path) -> None:
    (tiny_folder / "test/ship/0001.png").unlink()
    with raises_exactly(
        f"Class folder test/ship in {tiny_folder} holds 1 images; a complete CIFAR-10 copy "
        "holds 2. Copy or download it again."
    ):
        load_cifar10(tiny_folder)


def test_unknown_class_folder(tiny_folder: Path) -> None:
    (tiny_folder / "train/cats").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tiny_folder / "train/cats/0.png")
    with raises_exactly(
        f"Unknown class folder train/cats in {tiny_folder}; expected one of airplane, "
        "automobile, bird, cat, deer, dog, frog, horse, ship, truck."
    ):
        load_cifar10(tiny_folder)


def test_unreadable_image(tiny_folder: Path) -> None:
    (tiny_folder / "train/frog/0002.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DatasetError, match=r"Cannot read image .*train/frog/0002.png"):
        load_cifar10(tiny_folder)


def test_wrong_image_size(tiny_folder: Path) -> None:
    Image.fromarray(np.zeros((64, 48, 3), np.uint8)).save(tiny_folder / "test/dog/0000.png")
    with raises_exactly(
        f"Image test/dog/0000.png in {tiny_folder} is 48x64 pixels; CIFAR-10 images are "
        "32x32. Is this the right data set?"
    ):
        load_cifar10(tiny_folder)


def test_truncated_archive(tiny_archive: Path) -> None:
    content = tiny_archive.read_bytes()
    tiny_archive.write_bytes(content[: len(content) // 2])
    message = rf"^{re.escape(str(tiny_archive))} is truncated or not a valid archive \(.+\)\. "
    with pytest.raises(DatasetError, match=message + r"Download or copy it again\.$"):
        load_cifar10(tiny_archive)


NO_NETWORK = "connect to the internet"


def offline_message(problem: str, fix: str) -> str:
    return (
        f"No local CIFAR-10 copy and no network to download one: {problem}. Either {fix} "
        "(tensorflow-datasets then downloads about 160 MB once), or set CIFAR10_PATH to a "
        "local copy: an image folder split/class/*.jpg, a .tar.gz of one, or a TFDS data "
        "directory holding a prepared cifar10."
    )


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
    with raises_exactly(offline_message("cifar-host.invalid cannot be reached", NO_NETWORK)):
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
        problem = f"the HTTPS proxy {setting} (HTTPS_PROXY) cannot be reached"
        with raises_exactly(offline_message(problem, "correct HTTPS_PROXY or unset it")):
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
    with raises_exactly(
        f"No CIFAR-10 images in {tmp_path / 'downloads'}: expected files laid out as "
        "train/<class>/*.jpg|png and test/<class>/... Point CIFAR10_PATH at the folder that "
        "holds train/ and test/, at the .tar.gz itself, or at a TensorFlow Datasets data "
        "directory with a prepared cifar10."
    ):
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
    with pytest.warns(UserWarning) as caught:
        _check_tiny(load_cifar10(tiny_folder), tiny_counts)
    (warning,) = caught
    message = (
        rf"Could not cache the decoded CIFAR-10 in {re.escape(str(blocker / 'cache'))} \(.+\); "
        r"the next load decodes again\. Set TUTORIAL_CACHE_DIR to a writable folder\."
    )
    assert re.fullmatch(message, str(warning.message))


def test_image_folder_named_cifar10_is_not_sent_to_tfds(
    tmp_path: Path, tiny_counts: dict[str, int]
) -> None:
    write_image_folder(tmp_path / "data/cifar10", tiny_counts)
    _check_tiny(load_cifar10(tmp_path / "data"), tiny_counts)


@pytest.mark.slow
def test_broken_tfds_directory_gives_a_dataset_error(tmp_path: Path) -> None:
    (tmp_path / "cifar10/3.0.2").mkdir(parents=True)
    (tmp_path / "cifar10/3.0.2/dataset_info.json").write_text("{}")  # prepared, then damaged
    with pytest.raises(DatasetError, match=r"could not read the prepared cifar10 in .*Delete"):
        load_cifar10(tmp_path)


# --- the real offline copy ------------------------------------------------------------


@pytest.mark.slow
def test_real_copy_loads_complete_and_fast_from_cache(real_copy: Path) -> None:
    dataset = load_cifar10(real_copy)
    assert dataset.train_images.shape == (50_000, 32, 32, 3)
    assert dataset.test_images.shape == (10_000, 32, 32, 3)
    np.testing.assert_array_equal(np.bincount(dataset.train_labels), [5000] * 10)
    np.testing.assert_array_equal(np.bincount(dataset.test_labels), [1000] * 10)
    # shuffled: the first 1,000 training images hold every class
    assert len(np.unique(dataset.train_labels[:1000])) == 10
    # CPU seconds, not wall time: a CPU shared with other jobs must not fail this test.
    # Decoding takes about 13 s of CPU; reading the cache back a fraction of a second.
    script = (
        "import time; from helpers.data import load_cifar10; t = time.process_time(); "
        f"d = load_cifar10({str(real_copy)!r}); print(time.process_time() - t)"
    )
    seconds = float(subprocess.check_output([sys.executable, "-c", script], text=True))
    assert seconds < 2.0, f"second load took {seconds:.2f} s of CPU"


def test_source_name_names_what_load_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    assert data.source_name() == "official"
    monkeypatch.setenv("CIFAR10_PATH", "/data/cifar10-jpeg.tar.gz")
    assert data.source_name() == "cifar10-jpeg.tar.gz"
    assert data.source_name("/elsewhere/cifar10-png") == "cifar10-png"


# --- what the cache is keyed on -------------------------------------------------------


def write_archive(archive: Path, folder: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def test_an_archive_replaced_in_place_is_decoded_again(
    tmp_path: Path, tiny_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = write_archive(tmp_path / "copy.tar.gz", tiny_folder)
    first = load_cifar10(archive)
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(tiny_folder / "train/cat/0001.png")
    before = archive.stat().st_mtime_ns
    write_archive(archive, tiny_folder)  # the same path, new contents
    os.utime(archive, ns=(before + 10**9, before + 10**9))  # coarse clocks
    second = load_cifar10(archive)
    assert (second.train_images == 7).all(axis=(1, 2, 3)).sum() == 1
    assert not (first.train_images == 7).all(axis=(1, 2, 3)).any()
    assert len(list(data.cache_dir().glob("*.npz"))) == 2


def test_cache_file_is_named_after_the_copy(tiny_archive: Path) -> None:
    load_cifar10(tiny_archive)
    (cached,) = data.cache_dir().iterdir()
    assert re.fullmatch(r"cifar10-cifar10-tiny-[0-9a-f]{16}\.npz", cached.name)


def test_two_copies_with_the_same_images_have_their_own_cache(
    tmp_path: Path, tiny_folder: Path
) -> None:
    import shutil

    other = shutil.copytree(tiny_folder, tmp_path / "elsewhere" / tiny_folder.name)
    load_cifar10(tiny_folder)
    load_cifar10(other)
    assert len(list(data.cache_dir().glob("*.npz"))) == 2


def test_changed_expected_counts_are_not_served_from_the_cache(
    tiny_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_cifar10(tiny_folder)  # 3 and 2 images per class, as expected
    monkeypatch.setattr(data, "EXPECTED_PER_CLASS", {"train": 3, "test": 1})
    with pytest.raises(DatasetError, match=r"test/airplane .* holds 2 images; .* holds 1\."):
        load_cifar10(tiny_folder)


def test_moving_an_image_to_another_class_folder_changes_the_key(tmp_path: Path) -> None:
    """A relabelled image (the same file in another class folder) is a different copy."""
    image = tmp_path / "a/train/cat/0000.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"pixels")
    (tmp_path / "a/train/dog").mkdir()
    before = data._fingerprint(tmp_path / "a")
    image.rename(tmp_path / "a/train/dog/0000.png")  # rename keeps size and mtime
    assert data._fingerprint(tmp_path / "a") != before


def test_cache_folder_is_created_with_its_parents(
    tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUTORIAL_CACHE_DIR", str(tmp_path / "new" / "deeper" / "cache"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "could not cache" would fail the test
        load_cifar10(tiny_folder)
    assert len(list((tmp_path / "new/deeper/cache").glob("*.npz"))) == 1


def test_a_second_copy_is_cached_beside_the_first(
    tmp_path: Path, tiny_folder: Path, tiny_archive: Path
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_cifar10(tiny_folder)
        load_cifar10(tiny_archive)  # the cache folder exists now
    assert len(list(data.cache_dir().glob("*.npz"))) == 2


# --- what is read from a copy ----------------------------------------------------------


def test_arrays_have_the_documented_dtypes(tiny_folder: Path, tiny_archive: Path) -> None:
    for source in (tiny_folder, tiny_archive):
        for dataset in (load_cifar10(source), load_cifar10(source)):  # decoded, then cached
            assert dataset.train_images.dtype == dataset.test_images.dtype == np.uint8
            assert dataset.train_labels.dtype == dataset.test_labels.dtype == np.int32


def test_stray_files_in_an_archive_are_skipped(
    tmp_path: Path, tiny_folder: Path, tiny_counts: dict[str, int]
) -> None:
    (tiny_folder / "README.txt").write_text("CIFAR-10, as JPEGs")
    (tiny_folder / "train/cat/notes.txt").write_text("not an image")
    (tiny_folder / "train/cat/extra.png").mkdir()  # a folder that looks like an image
    _check_tiny(load_cifar10(write_archive(tmp_path / "stray.tar.gz", tiny_folder)), tiny_counts)


def test_grey_and_transparent_images_are_read_as_rgb(tiny_folder: Path) -> None:
    Image.fromarray(np.full((32, 32), 90, np.uint8), mode="L").save(
        tiny_folder / "test/frog/0000.png"
    )
    Image.fromarray(np.full((32, 32, 4), 90, np.uint8), mode="RGBA").save(
        tiny_folder / "test/frog/0001.png"
    )
    dataset = load_cifar10(tiny_folder)
    grey = (dataset.test_images == 90).all(axis=(1, 2, 3))
    assert grey.sum() == 2
    assert set(dataset.test_labels[grey]) == {data.CLASS_NAMES.index("frog")}


# --- where a download would go ----------------------------------------------------------


@pytest.mark.usefixtures("no_proxy_settings")
@pytest.mark.parametrize(
    ("setting", "route"),
    [
        ("http://proxy.example:3128", ("proxy.example", 3128)),
        ("127.0.0.1:3128", ("127.0.0.1", 3128)),  # no scheme: http assumed
        ("http://proxy.example", ("proxy.example", 80)),
        ("proxy.example", ("proxy.example", 80)),
        ("https://proxy.example", ("proxy.example", 443)),
        ("http://proxy.example:port", ("proxy.example", 0)),  # 0: no connection reaches it
    ],
)
def test_download_route_through_a_proxy(
    monkeypatch: pytest.MonkeyPatch, setting: str, route: tuple[str, int]
) -> None:
    monkeypatch.setenv("https_proxy", setting)
    assert data._download_route() == (*route, setting)


@pytest.mark.usefixtures("no_proxy_settings")
def test_download_route_without_a_proxy() -> None:
    assert data._download_route() == (*data.DOWNLOAD_HOST, None)


def test_a_hung_probe_does_not_keep_python_from_exiting() -> None:
    """The probe thread is a daemon: a name lookup that never answers cannot hold the
    interpreter open at exit (it would for another 30 s here)."""
    code = (
        "import time; from helpers import data; "
        "data.socket.create_connection = lambda *args, **kwargs: time.sleep(30); "
        "data.DOWNLOAD_PROBE_TIMEOUT_S = 0.1; "
        "print(data._can_reach_download_host())"
    )
    root = Path(data.__file__).parents[1]  # the helpers under test, wherever they are
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=25
    )
    assert result.stdout == "False\n", result.stderr
    assert time.perf_counter() - start < 10


# --- tensorflow-datasets, faked -------------------------------------------------------


class FakeTFDS:
    """Stands in for tensorflow_datasets: records the call, returns four small arrays."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[tuple[tuple, dict]] = []
        rng = np.random.default_rng(0)
        self.arrays = [
            (rng.integers(0, 256, (4, 32, 32, 3)), rng.integers(0, 10, 4)),  # int64, as tf
            (rng.integers(0, 256, (2, 32, 32, 3)), rng.integers(0, 10, 2)),
        ]

    def load(self, *args: object, **kwargs: object) -> str:
        self.calls.append((args, kwargs))
        if self.error is not None:
            raise self.error
        return "tensors"

    def as_numpy(self, loaded: str) -> list:
        assert loaded == "tensors"
        return self.arrays


class FakeTF:
    def __init__(self) -> None:
        self.hidden: list[tuple[list, str]] = []
        self.config = self  # tf.config.set_visible_devices

    def set_visible_devices(self, devices: list, kind: str) -> None:
        self.hidden.append((devices, kind))


@pytest.fixture
def fake_tensorflow(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeTF, FakeTFDS]:
    tf, tfds = FakeTF(), FakeTFDS()
    monkeypatch.setitem(sys.modules, "tensorflow", tf)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", tfds)
    return tf, tfds


def prepare(data_dir: Path) -> Path:
    (data_dir / "cifar10/3.0.2").mkdir(parents=True)
    (data_dir / "cifar10/3.0.2/dataset_info.json").write_text("{}")
    return data_dir


def test_a_prepared_tfds_directory_is_read_without_download(
    tmp_path: Path, fake_tensorflow: tuple[FakeTF, FakeTFDS]
) -> None:
    tf, tfds = fake_tensorflow
    dataset = load_cifar10(prepare(tmp_path / "tfds"))
    expected = {
        "split": ["train", "test"],
        "batch_size": -1,  # everything as one batch: whole arrays
        "as_supervised": True,  # (image, label) pairs
        "data_dir": str(tmp_path / "tfds"),
        "download": False,
    }
    assert tfds.calls == [(("cifar10",), expected)]
    assert tf.hidden == [([], "GPU")]  # TensorFlow leaves the GPU's memory to JAX
    (train_images, train_labels), (test_images, test_labels) = tfds.arrays
    for array, expected_array, dtype in [
        (dataset.train_images, train_images, np.uint8),
        (dataset.train_labels, train_labels, np.int32),
        (dataset.test_images, test_images, np.uint8),
        (dataset.test_labels, test_labels, np.int32),
    ]:
        assert array.dtype == dtype
        np.testing.assert_array_equal(array, expected_array)


def test_without_a_copy_tfds_downloads_into_its_own_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_tensorflow: tuple[FakeTF, FakeTFDS]
) -> None:
    _, tfds = fake_tensorflow
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(data, "_can_reach_download_host", lambda: True)
    load_cifar10()
    ((_, options),) = tfds.calls
    assert options["data_dir"] is None and options["download"] is True


@pytest.mark.usefixtures("fake_tensorflow")
def test_tfds_data_dir_and_home_are_where_tfds_keeps_prepared_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TFDS_DATA_DIR", str(prepare(tmp_path / "configured")))
    assert data._tfds_has_prepared_cifar10(None)
    monkeypatch.delenv("TFDS_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert not data._tfds_has_prepared_cifar10(None)
    prepare(tmp_path / "home/tensorflow_datasets")
    assert data._tfds_has_prepared_cifar10(None)


def test_a_failed_download_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_tensorflow: tuple[FakeTF, FakeTFDS]
) -> None:
    _, tfds = fake_tensorflow
    tfds.error = ConnectionError("connection reset")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(data, "_can_reach_download_host", lambda: True)
    with raises_exactly(
        "tensorflow-datasets could not download and prepare cifar10 in tensorflow-datasets' "
        "data directory (ConnectionError: connection reset). Delete its cifar10/ folder and "
        "try again, or set CIFAR10_PATH to an image folder or a .tar.gz of one."
    ):
        load_cifar10()


def test_an_unreadable_prepared_copy_says_what_to_do(
    tmp_path: Path, fake_tensorflow: tuple[FakeTF, FakeTFDS]
) -> None:
    _, tfds = fake_tensorflow
    tfds.error = AssertionError("bad shard")
    with raises_exactly(
        f"tensorflow-datasets could not read the prepared cifar10 in {tmp_path} "
        "(AssertionError: bad shard). Delete its cifar10/ folder and try again, or set "
        "CIFAR10_PATH to an image folder or a .tar.gz of one."
    ):
        load_cifar10(prepare(tmp_path))


def test_without_tensorflow_the_message_says_to_install_or_use_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # makes `import tensorflow` fail
    with pytest.raises(DatasetError) as raised:
        load_cifar10(prepare(tmp_path))
    error = raised.value.__cause__
    assert isinstance(error, ImportError)
    assert str(raised.value) == (
        f"Loading CIFAR-10 with tensorflow-datasets needs it installed ({error}). Install this "
        "project (`pip install -e .`), or set CIFAR10_PATH to a local image-folder copy, which "
        "needs no TensorFlow."
    )
