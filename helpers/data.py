"""Loading CIFAR-10 as NumPy arrays, from a local copy or from tensorflow-datasets.

Where the data comes from, in this order:

1. ``path`` (an argument), else the environment variable ``CIFAR10_PATH``: a local
   copy, which is one of
   - an image-folder directory ``<root>/{train,test}/<class name>/*.png|jpg``,
   - a ``.tar.gz`` (or ``.tgz``/``.tar``) archive holding such a folder,
   - a TFDS data directory that already holds a prepared ``cifar10``.
2. Otherwise tensorflow-datasets, which downloads CIFAR-10 (about 160 MB) on
   first use. Without network and without a prepared copy this fails within
   seconds, with a message that says what to do.

Image folders are read with Pillow (no TensorFlow needed) and shuffled with a fixed
seed, because such copies are usually sorted by class. The decoded arrays are
cached as one ``.npz`` file per source in :func:`cache_dir`, so a second load, even
in a new process, takes about a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import socket
import tarfile
import threading
import urllib.parse
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
SPLITS: tuple[str, ...] = ("train", "test")
#: Images per class in a complete copy. Tests shrink these to build small copies.
EXPECTED_PER_CLASS: dict[str, int] = {"train": 5000, "test": 1000}
IMAGE_SHAPE: tuple[int, int, int] = (32, 32, 3)
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
ARCHIVE_SUFFIXES: tuple[str, ...] = (".tar.gz", ".tgz", ".tar")
SHUFFLE_SEED = 0
#: Host that tensorflow-datasets downloads CIFAR-10 from; probed before a download.
DOWNLOAD_HOST: tuple[str, int] = ("www.cs.toronto.edu", 443)
DOWNLOAD_PROBE_TIMEOUT_S = 5.0
CACHE_FORMAT_VERSION = 1


class DatasetError(RuntimeError):
    """The data set could not be found, downloaded or read. The message says why."""


@dataclass(frozen=True)
class CIFAR10:
    """CIFAR-10 as NumPy arrays: images are uint8 (N, 32, 32, 3), labels int32 0-9."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...] = CLASS_NAMES

    def __repr__(self) -> str:
        return (
            f"CIFAR10(train_images={self.train_images.shape} {self.train_images.dtype}, "
            f"test_images={self.test_images.shape} {self.test_images.dtype}, "
            f"classes={len(self.class_names)})"
        )


def cache_dir() -> Path:
    """Folder for decoded arrays: ``$TUTORIAL_CACHE_DIR``, else ``~/.cache/jax-dl-intro``."""
    configured = os.environ.get("TUTORIAL_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "jax-dl-intro"


def load_cifar10(path: str | os.PathLike[str] | None = None) -> CIFAR10:
    """Load CIFAR-10's 50,000 training and 10,000 test images.

    Args:
        path: a local copy (image folder, archive of one, or TFDS data directory).
            When None, ``$CIFAR10_PATH`` is used, and when that is unset too,
            tensorflow-datasets (which downloads on first use).

    Raises:
        DatasetError: the copy is missing, incomplete or corrupt (the message names
            the file), or there is no local copy and no network to download one.
    """
    path = _local_copy(path)
    if path is None:
        return _load_with_tfds(data_dir=None)
    source = Path(path).expanduser()
    if not source.exists():
        raise DatasetError(
            f"CIFAR-10 copy not found at {source}. Point `path` or CIFAR10_PATH at an "
            "image folder, a .tar.gz of one, or a TFDS data directory; or unset "
            "CIFAR10_PATH to download with tensorflow-datasets."
        )
    if source.is_dir() and _tfds_has_prepared_cifar10(source):
        return _load_with_tfds(data_dir=source)
    if source.is_file() and not source.name.endswith(ARCHIVE_SUFFIXES):
        raise DatasetError(
            f"{source} is a file but not an archive ({', '.join(ARCHIVE_SUFFIXES)}). "
            "Give an image folder, a .tar.gz of one, or a TFDS data directory."
        )
    return _load_cached(source)


def source_name(path: str | os.PathLike[str] | None = None) -> str:
    """What :func:`load_cifar10` reads, for result records: the local copy's file name
    (``path``, else ``$CIFAR10_PATH``), or ``"official"`` for tensorflow-datasets."""
    path = _local_copy(path)
    return Path(path).name if path else "official"


def _local_copy(path: str | os.PathLike[str] | None) -> str | os.PathLike[str] | None:
    """``path``, else ``$CIFAR10_PATH``, else None (no local copy: tensorflow-datasets)."""
    return path or os.environ.get("CIFAR10_PATH") or None


# --- image folders and archives ---------------------------------------------------


def _fingerprint(source: Path) -> str:
    """Size and modification time of the archive ``source``, or of every file in the folder
    ``source``: replacing, adding or removing an image changes it. (For 60,000 files this
    takes 0.2 s on a 2-core CPU.)"""
    if source.is_file():
        stat = source.stat()
        return f"{stat.st_size}|{stat.st_mtime_ns}"
    digest = hashlib.sha256()

    def add(folder: str, prefix: str) -> None:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
        for entry in entries:
            if entry.is_dir():
                add(entry.path, f"{prefix}{entry.name}/")
            elif entry.is_file():
                stat = entry.stat()
                digest.update(f"{prefix}{entry.name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())

    add(str(source), "")
    return digest.hexdigest()


def _cache_file(source: Path) -> Path:
    counts = ",".join(f"{k}={v}" for k, v in sorted(EXPECTED_PER_CLASS.items()))
    key = f"{source.resolve()}|{_fingerprint(source)}|{counts}|v{CACHE_FORMAT_VERSION}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / f"cifar10-{source.name.split('.')[0]}-{digest}.npz"


def _load_cached(source: Path) -> CIFAR10:
    cached = _cache_file(source)
    if cached.exists():
        try:
            with np.load(cached) as arrays:
                return CIFAR10(**{name: arrays[name] for name in arrays.files})
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, zlib.error):
            cached.unlink(missing_ok=True)  # a broken cache is rebuilt, never trusted
    dataset = _decode_image_folder(source)
    partial = cached.with_suffix(f".{os.getpid()}.tmp.npz")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            partial,
            train_images=dataset.train_images,
            train_labels=dataset.train_labels,
            test_images=dataset.test_images,
            test_labels=dataset.test_labels,
        )
        partial.replace(cached)  # atomic: a concurrent reader never sees half a file
    except OSError as error:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        warnings.warn(
            f"Could not cache the decoded CIFAR-10 in {cached.parent} ({error}); the next "
            "load decodes again. Set TUTORIAL_CACHE_DIR to a writable folder.",
            stacklevel=3,
        )
    return dataset


#: (path inside the copy, (split, class folder) from :func:`_locate`, file contents)
ImageFile = tuple[PurePosixPath, tuple[str, str], bytes]


def _iter_folder(root: Path) -> Generator[ImageFile, None, None]:
    for file in sorted(root.rglob("*")):
        relative = PurePosixPath(file.relative_to(root).as_posix())
        located = _locate(relative)
        if located is not None and file.is_file():
            yield relative, located, file.read_bytes()  # only images are read


def _iter_archive(archive: Path) -> Generator[ImageFile, None, None]:
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                relative = PurePosixPath(member.name)
                located = _locate(relative)
                if member.isfile() and located is not None:
                    handle = tar.extractfile(member)
                    assert handle is not None
                    yield relative, located, handle.read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise DatasetError(
            f"{archive} is truncated or not a valid archive ({error}). Download or copy it again."
        ) from error


def _locate(relative: PurePosixPath) -> tuple[str, str] | None:
    """Find ``<split>/<class>/<file>`` at the end of a path, or None for other files."""
    parts = relative.parts
    if len(parts) < 3 or parts[-3] not in SPLITS:
        return None
    if relative.suffix.lower() not in IMAGE_SUFFIXES or relative.name.startswith("."):
        return None  # also skips macOS's AppleDouble "._name.jpg" files
    return parts[-3], parts[-2]


def _decode_image(data: bytes, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            pixels = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"Cannot read image {where}: {error}") from error
    if pixels.shape != IMAGE_SHAPE:
        raise DatasetError(
            f"Image {where} is {pixels.shape[1]}x{pixels.shape[0]} pixels; "
            f"CIFAR-10 images are 32x32. Is this the right data set?"
        )
    return pixels


def _decode_image_folder(source: Path) -> CIFAR10:
    files = _iter_archive(source) if source.is_file() else _iter_folder(source)
    images: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    labels: dict[str, list[int]] = {split: [] for split in SPLITS}
    keys: dict[str, list[tuple[str, str]]] = {split: [] for split in SPLITS}
    counts = {(s, c): 0 for s in SPLITS for c in CLASS_NAMES}
    with contextlib.closing(files):  # an error below closes the archive at once
        for relative, (split, class_name), data in files:
            if class_name not in CLASS_NAMES:
                raise DatasetError(
                    f"Unknown class folder {relative.parent} in {source}; "
                    f"expected one of {', '.join(CLASS_NAMES)}."
                )
            images[split].append(_decode_image(data, f"{relative} in {source}"))
            labels[split].append(CLASS_NAMES.index(class_name))
            keys[split].append((class_name, relative.name))
            counts[split, class_name] += 1
    _check_counts(source, counts)
    rng = np.random.default_rng(SHUFFLE_SEED)
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        # the same order whatever the folder walk or the archive's member order
        canonical = sorted(range(len(keys[split])), key=keys[split].__getitem__)
        order = np.asarray(canonical, dtype=np.int64)[rng.permutation(len(canonical))]
        arrays[f"{split}_images"] = np.stack(images[split])[order]
        arrays[f"{split}_labels"] = np.asarray(labels[split], dtype=np.int32)[order]
    return CIFAR10(**arrays)


def _check_counts(source: Path, counts: dict[tuple[str, str], int]) -> None:
    if not any(counts.values()):
        raise DatasetError(
            f"No CIFAR-10 images in {source}: expected files laid out as "
            "train/<class>/*.jpg|png and test/<class>/... Point CIFAR10_PATH at the folder "
            "that holds train/ and test/, at the .tar.gz itself, or at a TensorFlow Datasets "
            "data directory with a prepared cifar10."
        )
    for (split, class_name), count in counts.items():
        expected = EXPECTED_PER_CLASS[split]
        if count == 0:
            raise DatasetError(
                f"Class folder {split}/{class_name} is missing or empty in {source}. "
                "The copy is incomplete: copy or download it again."
            )
        if count != expected:
            raise DatasetError(
                f"Class folder {split}/{class_name} in {source} holds {count} images; "
                f"a complete CIFAR-10 copy holds {expected}. Copy or download it again."
            )


# --- tensorflow-datasets ------------------------------------------------------------


def _tfds_has_prepared_cifar10(data_dir: Path | None) -> bool:
    root = data_dir or Path(os.environ.get("TFDS_DATA_DIR", Path.home() / "tensorflow_datasets"))
    return any((root / "cifar10").glob("*/dataset_info.json"))


def _download_route() -> tuple[str, int, str | None]:
    """Where a download connects first: ``(host, port, proxy setting or None)``.

    tensorflow-datasets downloads with ``requests``, which goes through the proxy named
    in ``HTTPS_PROXY``/``https_proxy`` unless ``NO_PROXY`` exempts the host; behind such
    a proxy the download host itself is often unreachable, so the proxy is what to probe.
    A setting whose port is not a number gets port 0, which no connection reaches.
    """
    proxy = urllib.request.getproxies().get("https")
    if not proxy or urllib.request.proxy_bypass(DOWNLOAD_HOST[0]):
        return (*DOWNLOAD_HOST, None)
    url = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
    except ValueError:
        port = 0
    return url.hostname or proxy, port, proxy


def _can_reach_download_host() -> bool:
    """Whether the download host, or the HTTPS proxy in front of it, answers in time.

    The probe runs in a thread with a deadline (DOWNLOAD_PROBE_TIMEOUT_S) because a name
    lookup on a machine without network can hang far longer than the connect timeout.
    """
    host, port, _ = _download_route()
    reached: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=DOWNLOAD_PROBE_TIMEOUT_S).close()
            reached.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(DOWNLOAD_PROBE_TIMEOUT_S)
    return bool(reached)


def _load_with_tfds(data_dir: Path | None) -> CIFAR10:
    prepared = _tfds_has_prepared_cifar10(data_dir)
    if not prepared and not _can_reach_download_host():
        host, _, proxy = _download_route()
        if proxy is None:
            problem, fix = f"{host} cannot be reached", "connect to the internet"
        else:
            problem = f"the HTTPS proxy {proxy} (HTTPS_PROXY) cannot be reached"
            fix = "correct HTTPS_PROXY or unset it"
        raise DatasetError(
            f"No local CIFAR-10 copy and no network to download one: {problem}. "
            f"Either {fix} (tensorflow-datasets then downloads about 160 MB once), or set "
            "CIFAR10_PATH to a local copy: an image folder split/class/*.jpg, a "
            ".tar.gz of one, or a TFDS data directory holding a prepared cifar10."
        )
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise DatasetError(
            f"Loading CIFAR-10 with tensorflow-datasets needs it installed ({error}). "
            "Install this project (`pip install -e .`), or set CIFAR10_PATH to a local "
            "image-folder copy, which needs no TensorFlow."
        ) from error
    tf.config.set_visible_devices([], "GPU")  # leave GPU memory to JAX
    try:
        splits = tfds.as_numpy(
            tfds.load(
                "cifar10",
                split=["train", "test"],
                batch_size=-1,
                as_supervised=True,
                data_dir=None if data_dir is None else str(data_dir),
                download=not prepared,
            )
        )
    except Exception as error:  # tfds raises AssertionError, tf.errors.*, DownloadError, ...
        where = data_dir or "tensorflow-datasets' data directory"
        action = "read the prepared" if prepared else "download and prepare"
        raise DatasetError(
            f"tensorflow-datasets could not {action} cifar10 in {where} "
            f"({type(error).__name__}: {error}). Delete its cifar10/ folder and try again, "
            "or set CIFAR10_PATH to an image folder or a .tar.gz of one."
        ) from error
    (train_images, train_labels), (test_images, test_labels) = splits
    return CIFAR10(
        train_images=np.asarray(train_images, dtype=np.uint8),
        train_labels=np.asarray(train_labels, dtype=np.int32),
        test_images=np.asarray(test_images, dtype=np.uint8),
        test_labels=np.asarray(test_labels, dtype=np.int32),
    )
