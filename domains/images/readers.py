"""Image data readers, without torchvision: IDX (MNIST, Fashion-MNIST), CIFAR-10 binary, image folders, digits.

Every reader returns :class:`ImageData`: pixels as ``(N, C, H, W)`` tensors (uint8 0-255, or float32 in
[0, 1] for the digits), int64 labels, class names and the sha256 of the bytes it read. Corrupt files
(wrong magic number, truncated data, counts that disagree, labels out of range) raise
:class:`~robustkit.errors.DataError` naming the file and what is wrong.

Data specs (``--data``):

- ``digits``: scikit-learn's bundled 8x8 digits (1797 images, 10 classes); always works offline.
- ``mnist:DIR`` / ``fashion-mnist:DIR``: the four original IDX files in DIR, gzipped or not.
- ``cifar10:DIR``: CIFAR-10's *binary* version (``data_batch_1.bin`` ... ``test_batch.bin``, in DIR or
  DIR/cifar-10-batches-bin, or ``cifar-10-binary.tar.gz`` itself). The pickled Python version is refused:
  unpickling a downloaded file can run code.
- ``folder:DIR``: one subfolder per class, images Pillow can read. Unreadable files are **skipped with
  one warning that counts them**; a class folder left without any image is an error.
- ``mnist``, ``fashion-mnist``, ``cifar10`` without DIR: the original files in the cache
  (``$ROBUSTKIT_CACHE``, default ``~/.cache/robustkit``), downloaded there and checked against their
  published checksums if missing; offline, the error says where to put the files.

Example:
    >>> from domains.images.readers import read_spec
    >>> data = read_spec("digits")
    >>> data.name, len(data.train.y), data.class_names[:3]
    ('digits', 1797, ['0', '1', '2'])
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import math
import os
import struct
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from robustkit.errors import ConfigError, DataError

__all__ = [
    "SPECS",
    "ImageData",
    "Images",
    "cache_dir",
    "fetch",
    "load_cifar10",
    "load_digits",
    "load_folder",
    "load_idx_pair",
    "load_mnist",
    "parse_cifar10",
    "parse_idx",
    "read_spec",
]

log = logging.getLogger("robustkit")

#: Data spec kinds :func:`read_spec` understands.
SPECS = ("digits", "mnist", "fashion-mnist", "cifar10", "folder")

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
CIFAR_SIDE = 32
CIFAR_RECORD = 1 + 3 * CIFAR_SIDE * CIFAR_SIDE
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


@dataclass
class Images:
    """One set of images: ``x`` (N, C, H, W) uint8 pixels 0-255 or float32 in [0, 1], ``y`` int64 labels."""

    x: torch.Tensor
    y: torch.Tensor


@dataclass
class ImageData:
    """What a reader returns; ``test`` is None when the data has no official test set."""

    name: str
    train: Images
    test: Images | None
    class_names: list[str]
    sha256: str


class _Hash:
    """sha256 over every byte read, in reading order: the data's identity in ``metrics.json``."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def read(self, path: Path) -> bytes:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
        self._h.update(raw)
        return raw

    def hexdigest(self) -> str:
        return self._h.hexdigest()


# ----------------------------------------------------------------------------- IDX
def _gunzip(raw: bytes, source: str) -> bytes:
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{source} is not a valid gzip file ({exc}): a truncated download? fetch it again") from None


def parse_idx(raw: bytes, source: str = "IDX data") -> tuple[int, torch.Tensor]:
    """The magic number and the array of an IDX file's bytes (gzipped or not).

    Example:
        >>> import struct
        >>> magic, labels = parse_idx(struct.pack(">iI", 2049, 3) + bytes([7, 0, 9]))
        >>> magic, labels.tolist()
        (2049, [7, 0, 9])
    """
    raw = _gunzip(raw, source)
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_TYPES or raw[3] == 0:
        found = struct.unpack(">i", raw[:4])[0] if len(raw) >= 4 else None
        raise DataError(
            f"{source} is not an IDX file: magic number {found} (IDX images have 2051, labels 2049); "
            "a wrong or corrupt file?"
        )
    magic = struct.unpack(">i", raw[:4])[0]
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{source} is truncated: {len(raw)} bytes, shorter than its {header}-byte header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = math.prod(dims) * dtype.itemsize
    got = len(raw) - header
    if got < expected:
        raise DataError(
            f"{source} is truncated: its header promises {dims} values ({expected} bytes) but it holds {got} bytes; "
            "download it again"
        )
    if got > expected:
        raise DataError(f"{source} is corrupt: {got - expected} bytes follow the {dims} values its header describes")
    array = np.frombuffer(raw, dtype=dtype, count=math.prod(dims), offset=header).reshape(dims)
    return magic, torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def load_idx_pair(images_path: Path, labels_path: Path) -> tuple[Images, str]:
    """Images (magic 2051, uint8 N x H x W) and labels (magic 2049, uint8 N, 0-9) from two IDX files.

    Returns the images as (N, 1, H, W) uint8 with int64 labels, and the sha256 of both files' bytes.

    Example:
        >>> load_idx_pair(Path("/nonexistent/images"), Path("/nonexistent/labels"))
        Traceback (most recent call last):
        ...
        robustkit.errors.DataError: cannot read /nonexistent/images: No such file or directory
    """
    digest = _Hash()
    images = _idx_pair(digest, images_path, labels_path)
    return images, digest.hexdigest()


def _idx_pair(digest: _Hash, images_path: Path, labels_path: Path, n_classes: int = 10) -> Images:
    magic, x = parse_idx(digest.read(images_path), str(images_path))
    _expect_magic(images_path, magic, IDX_IMAGES_MAGIC, "images")
    if x.dim() != 3 or x.dtype != torch.uint8:
        raise DataError(f"{images_path} holds {x.dtype} values of shape {tuple(x.shape)}: expected uint8 N x H x W")
    if x.numel() == 0:
        raise DataError(f"{images_path} holds no pixels (shape {tuple(x.shape)}): an empty or corrupt file?")
    magic, y = parse_idx(digest.read(labels_path), str(labels_path))
    _expect_magic(labels_path, magic, IDX_LABELS_MAGIC, "labels")
    if len(x) != len(y):
        raise DataError(
            f"{images_path.name} holds {len(x)} images but {labels_path.name} holds {len(y)} labels: the files "
            "do not belong together (or one is corrupt)"
        )
    if len(y) and int(y.max()) >= n_classes:
        raise DataError(f"{labels_path} holds label {int(y.max())}, outside 0..{n_classes - 1}: a corrupt file?")
    return Images(x.unsqueeze(1), y.long())


def _expect_magic(path: Path, magic: int, expected: int, what: str) -> None:
    if magic != expected:
        kinds = {IDX_IMAGES_MAGIC: "images", IDX_LABELS_MAGIC: "labels"}
        other = f" ({kinds[magic]}): are the file names swapped?" if magic in kinds else ""
        raise DataError(f"{path} has IDX magic number {magic}{other}; IDX {what} files have {expected}")


def _idx_file(directory: Path, stem: str) -> Path:
    """``stem`` in the usual spellings: ``train-images-idx3-ubyte`` or ``train-images.idx3-ubyte``, ``.gz`` or not."""
    spellings = (stem, stem.replace("-idx", ".idx"))
    for name in (s + ext for s in spellings for ext in (".gz", "")):
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"{directory} holds no {stem}(.gz)")


def load_mnist(directory: str | Path, name: str = "mnist") -> ImageData:
    """MNIST or Fashion-MNIST from their four original IDX files (official train and test sets).

    Example:
        >>> load_mnist("/nonexistent")
        Traceback (most recent call last):
        ...
        robustkit.errors.DataError: /nonexistent does not exist: give the folder holding the MNIST files
    """
    path = _existing_dir(directory, name.upper() if name == "mnist" else "Fashion-MNIST")
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    try:
        files = [_idx_file(path, stem) for stem in stems]
    except DataError as exc:
        raise DataError(
            f"{exc}: the {name} folder needs the four original files {', '.join(s + '.gz' for s in stems)} "
            f"(gzipped or not); pass --data {name} without a folder to download them"
        ) from None
    digest = _Hash()
    train = _idx_pair(digest, files[0], files[1])
    test = _idx_pair(digest, files[2], files[3])
    if train.x.shape[1:] != test.x.shape[1:]:
        raise DataError(f"train images are {tuple(train.x.shape[2:])} but test images {tuple(test.x.shape[2:])}")
    classes = FASHION_CLASSES if name == "fashion-mnist" else [str(i) for i in range(10)]
    return ImageData(name, train, test, list(classes), digest.hexdigest())


def _existing_dir(directory: str | Path, what: str) -> Path:
    path = Path(directory).expanduser()
    if not path.exists():
        raise DataError(f"{path} does not exist: give the folder holding the {what} files")
    if not path.is_dir():
        raise DataError(f"{path} is not a folder: give the folder holding the {what} files")
    return path


# ----------------------------------------------------------------------------- CIFAR-10 binary
def parse_cifar10(raw: bytes, source: str = "CIFAR-10 batch", n_classes: int = 10) -> Images:
    """Images (N, 3, 32, 32) uint8 and labels of one CIFAR-10 binary batch: records of 1 label + 3072 pixel bytes.

    Example:
        >>> batch = parse_cifar10(bytes([3]) + bytes(3072) + bytes([9]) + bytes(3072))
        >>> tuple(batch.x.shape), batch.y.tolist()
        ((2, 3, 32, 32), [3, 9])
    """
    if not raw:
        raise DataError(f"{source} is empty")
    if len(raw) % CIFAR_RECORD:
        raise DataError(
            f"{source} is truncated or not a CIFAR-10 binary batch: {len(raw)} bytes is not a whole number of "
            f"{CIFAR_RECORD}-byte records (1 label byte + 3x32x32 pixels); download it again"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    labels = torch.from_numpy(records[:, 0].astype(np.int64))
    if int(labels.max()) >= n_classes:
        bad = int((labels >= n_classes).nonzero()[0, 0])
        raise DataError(
            f"{source}: record {bad} has label {int(labels[bad])}, outside 0..{n_classes - 1}; a corrupt file, or "
            "CIFAR-100's binary format (two label bytes), which this reader does not take"
        )
    pixels = torch.from_numpy(records[:, 1:].copy()).reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE)
    return Images(pixels, labels)


def _cat(parts: list[Images]) -> Images:
    return Images(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))


def load_cifar10(directory: str | Path) -> ImageData:
    """CIFAR-10's binary version: five training batches and the test batch (official split).

    DIR may hold the ``.bin`` files, a ``cifar-10-batches-bin`` folder with them, or the
    ``cifar-10-binary.tar.gz`` archive (read in memory, nothing is extracted).

    Example:
        >>> load_cifar10("/nonexistent")
        Traceback (most recent call last):
        ...
        robustkit.errors.DataError: /nonexistent does not exist: give the folder holding the CIFAR-10 files
    """
    path = _existing_dir(directory, "CIFAR-10")
    train_names = [f"data_batch_{i}.bin" for i in range(1, 6)]
    names = [*train_names, "test_batch.bin"]
    digest = _Hash()
    for folder in (path, path / "cifar-10-batches-bin"):
        if all((folder / n).is_file() for n in names):
            blobs = {n: digest.read(folder / n) for n in names}
            meta = folder / "batches.meta.txt"
            classes = _cifar_classes(digest.read(meta)) if meta.is_file() else CIFAR10_CLASSES
            break
    else:
        archive = path / "cifar-10-binary.tar.gz"
        if not archive.is_file():
            pickled = (path / "data_batch_1").is_file() or (path / "cifar-10-batches-py").is_dir()
            hint = (
                " It holds the pickled Python version, which robustkit refuses to read (unpickling a downloaded file "
                "can run code)." if pickled else ""
            )
            raise DataError(
                f"{path} holds no CIFAR-10 binary version.{hint} Put {', '.join(names)} (from "
                "cifar-10-binary.tar.gz) or the archive itself there, or pass --data cifar10 to download it"
            )
        blobs, classes = _cifar_archive(digest.read(archive), archive, names)
    train = _cat([parse_cifar10(blobs[n], n) for n in train_names])
    test = parse_cifar10(blobs["test_batch.bin"], "test_batch.bin")
    return ImageData("cifar10", train, test, classes, digest.hexdigest())


def _cifar_classes(raw: bytes) -> list[str]:
    names = [line.strip() for line in raw.decode("utf-8", errors="replace").splitlines() if line.strip()]
    if len(names) != len(CIFAR10_CLASSES):
        raise DataError(f"batches.meta.txt lists {len(names)} class names, CIFAR-10 has {len(CIFAR10_CLASSES)}")
    return names


def _cifar_archive(raw: bytes, archive: Path, names: list[str]) -> tuple[dict[str, bytes], list[str]]:
    blobs: dict[str, bytes] = {}
    classes = CIFAR10_CLASSES
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:*") as tar:
            for member in tar.getmembers():
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and (base in names or base == "batches.meta.txt"):
                    handle = tar.extractfile(member)
                    assert handle is not None
                    data = handle.read()
                    if base == "batches.meta.txt":
                        classes = _cifar_classes(data)
                    else:
                        blobs[base] = data
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{archive} is not a readable tar.gz archive ({exc}): a truncated download?") from None
    missing = [n for n in names if n not in blobs]
    if missing:
        raise DataError(f"{archive} lacks {', '.join(missing)}: is it cifar-10-binary.tar.gz?")
    return blobs, classes


# ----------------------------------------------------------------------------- image folders
def load_folder(directory: str | Path, size: int | None = None, channels: int | None = None) -> ImageData:
    """Images in one subfolder per class (sorted names are the classes), read with Pillow.

    Args:
        directory: the folder holding the class subfolders.
        size: resize every image to ``size`` x ``size`` (default: keep the size, which all images must share).
        channels: 1 (grey) or 3 (RGB); default 1 if every image is grey, else 3.

    Unreadable files are skipped with one warning that counts them; a class folder left without any
    readable image is an error, as is a folder with fewer than two classes.

    Example:
        >>> import tempfile
        >>> load_folder(tempfile.mkdtemp())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        robustkit.errors.DataError: ... holds no class subfolder: put the images in one subfolder per class, ...
    """
    path = _existing_dir(directory, "image")
    if channels not in (None, 1, 3):
        raise ConfigError(f"options.channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 4):
        raise ConfigError(f"options.size must be an integer >= 4 (pixels per side), got {size!r}")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(
            f"{path} holds no class subfolder: put the images in one subfolder per class, e.g. {path}/cat/1.png"
        )
    if len(classes) < 2:
        raise DataError(f"{path} holds one class folder ({classes[0]}): a classifier needs at least two classes")
    digest = _Hash()
    loaded: list[tuple[Image.Image, int, Path]] = []
    skipped: list[Path] = []
    for label, name in enumerate(classes):
        files = sorted(f for f in (path / name).rglob("*") if f.is_file() and not f.name.startswith("."))
        before = len(loaded)
        for file in files:
            image = _open_image(digest.read(file))
            if image is None:
                skipped.append(file)
            else:
                loaded.append((image, label, file))
        if len(loaded) == before:
            raise DataError(f"class folder {path / name} holds no readable image ({len(files)} files)")
    if skipped:
        shown = ", ".join(str(f.relative_to(path)) for f in skipped[:3])
        log.warning("skipped %d unreadable file(s) in %s (e.g. %s)", len(skipped), path, shown + (
            ", ..." if len(skipped) > 3 else ""))
    if channels is None:
        channels = 1 if all(image.mode in _GREY_MODES for image, _, _ in loaded) else 3
    side = size if size is not None else _common_side(loaded, path)
    mode = "L" if channels == 1 else "RGB"
    pixels = np.empty((len(loaded), side, side, channels), dtype=np.uint8)
    for i, (image, _, file) in enumerate(loaded):
        try:
            image = image.convert(mode)
        except (ValueError, OSError) as exc:
            raise DataError(f"{file}: its {image.mode} pixels cannot be converted to {mode} ({exc}): save it as RGB "
                            "or greyscale") from None
        if image.size != (side, side):
            image = image.resize((side, side), Image.Resampling.BILINEAR)
        pixels[i] = np.asarray(image, dtype=np.uint8).reshape(side, side, channels)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor([label for _, label, _ in loaded], dtype=torch.long)
    return ImageData(f"folder:{path.name}", Images(x, y), None, classes, digest.hexdigest())


def _open_image(raw: bytes) -> Image.Image | None:
    try:
        image = Image.open(io.BytesIO(raw))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return image


def _common_side(loaded: list[tuple[Image.Image, int, Path]], root: Path) -> int:
    first, _, first_file = loaded[0]
    for image, _, file in loaded:
        if image.size != first.size:
            raise DataError(
                f"images differ in size ({_wh(first)} in {first_file.relative_to(root)}, {_wh(image)} in "
                f"{file.relative_to(root)}): set options size: N to resize them all to N x N"
            )
    if first.size[0] != first.size[1]:
        raise DataError(f"images are {_wh(first)}, not square: set options size: N to resize them to N x N")
    return first.size[0]


def _wh(image: Image.Image) -> str:
    return f"{image.size[0]}x{image.size[1]}"


# ----------------------------------------------------------------------------- digits
def load_digits() -> ImageData:
    """scikit-learn's bundled 8x8 digits (1797 images, pixel levels 0-16 scaled to [0, 1]); no download.

    Example:
        >>> data = load_digits()
        >>> tuple(data.train.x.shape), data.test is None, float(data.train.x.max())
        ((1797, 1, 8, 8), True, 1.0)
    """
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    levels = np.ascontiguousarray(bunch.images, dtype=np.uint8)
    labels = np.ascontiguousarray(bunch.target, dtype="<i8")
    sha = hashlib.sha256(levels.tobytes() + labels.tobytes()).hexdigest()
    x = torch.from_numpy(levels).unsqueeze(1).float() / 16.0
    return ImageData("digits", Images(x, torch.from_numpy(labels)), None, [str(i) for i in range(10)], sha)


# ----------------------------------------------------------------------------- download
@dataclass(frozen=True)
class _Remote:
    """One original file: where to get it and its published checksum."""

    name: str
    urls: tuple[str, ...]
    algorithm: str
    checksum: str


_MNIST_URLS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://yann.lecun.com/exdb/mnist/")
_FASHION_URLS = ("https://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
_REMOTES: dict[str, tuple[_Remote, ...]] = {
    "mnist": tuple(
        _Remote(name, tuple(u + name for u in _MNIST_URLS), "sha256", digest)
        for name, digest in (
            ("train-images-idx3-ubyte.gz", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
            ("train-labels-idx1-ubyte.gz", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
            ("t10k-images-idx3-ubyte.gz", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
            ("t10k-labels-idx1-ubyte.gz", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
        )
    ),
    "fashion-mnist": tuple(
        _Remote(name, tuple(u + name for u in _FASHION_URLS), "sha256", digest)
        for name, digest in (
            ("train-images-idx3-ubyte.gz", "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
            ("train-labels-idx1-ubyte.gz", "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
            ("t10k-images-idx3-ubyte.gz", "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
            ("t10k-labels-idx1-ubyte.gz", "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
        )
    ),
    # the authors publish an md5 for the archive, no sha256
    "cifar10": (
        _Remote("cifar-10-binary.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",), "md5",
                "c32a1d4ab5d03f1284b67883e8d87530"),
    ),
}


def cache_dir() -> Path:
    """Where downloads go: ``$ROBUSTKIT_CACHE``, else ``~/.cache/robustkit``.

    Example:
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"ROBUSTKIT_CACHE": "/tmp/rk-cache"}):
        ...     print(cache_dir())
        /tmp/rk-cache
    """
    return Path(os.environ.get("ROBUSTKIT_CACHE") or Path.home() / ".cache" / "robustkit").expanduser()


def _checksum(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(dataset: str, cache: Path | None = None) -> Path:
    """The cache folder of ``dataset`` holding its original files, downloading any that are missing.

    Each file is checked against its published checksum (sha256; md5 for CIFAR-10, the only one its
    authors publish). Offline, the error says which files to put where.

    Example:
        >>> fetch("imagenet")
        Traceback (most recent call last):
        ...
        robustkit.errors.ConfigError: no download for 'imagenet': choose one of mnist, fashion-mnist, cifar10
    """
    if dataset not in _REMOTES:
        raise ConfigError(f"no download for {dataset!r}: choose one of {', '.join(_REMOTES)}")
    folder = (cache or cache_dir()) / dataset
    for remote in _REMOTES[dataset]:
        target = folder / remote.name
        if target.is_file() and _checksum(target, remote.algorithm) == remote.checksum:
            continue
        _download(remote, target, dataset, [r.name for r in _REMOTES[dataset]])
    return folder


def _download(remote: _Remote, target: Path, dataset: str, names: list[str]) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the cache folder {target.parent}: {exc}; set ROBUSTKIT_CACHE") from None
    partial = target.with_name(target.name + ".partial")
    reasons = []
    for url in remote.urls:
        log.info("downloading %s", url)
        try:
            with urllib.request.urlopen(url, timeout=60) as response, partial.open("wb") as out:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
        except (urllib.error.URLError, OSError) as exc:
            reasons.append(f"{url}: {getattr(exc, 'reason', exc)}")
            continue
        got = _checksum(partial, remote.algorithm)
        if got == remote.checksum:
            partial.replace(target)
            return
        reasons.append(f"{url}: {remote.algorithm} {got}, expected {remote.checksum}")
    partial.unlink(missing_ok=True)
    raise DataError(
        f"could not download {remote.name} ({'; '.join(reasons)}). Offline? Put the original files "
        f"{', '.join(names)} in {target.parent} (or in any folder DIR and pass --data {dataset}:DIR)"
    )


# ----------------------------------------------------------------------------- specs
def read_spec(spec: str, size: int | None = None, channels: int | None = None) -> ImageData:
    """The data a spec names (see the module docstring); ``size`` and ``channels`` apply to folders.

    Example:
        >>> read_spec("digits").name
        'digits'
    """
    kind, _, where = spec.partition(":")
    if kind not in SPECS:
        raise ConfigError(
            f"unknown image data {spec!r}: use digits, mnist:DIR, fashion-mnist:DIR, cifar10:DIR or folder:DIR"
        )
    if kind == "digits":
        if where:
            raise ConfigError(f"digits is built in and takes no folder: use --data digits, not {spec!r}")
        return load_digits()
    if kind == "folder":
        if not where:
            raise ConfigError("folder needs a path: --data folder:DIR, DIR holding one subfolder per class")
        return load_folder(where, size=size, channels=channels)
    directory = Path(where) if where else fetch(kind)
    return load_cifar10(directory) if kind == "cifar10" else load_mnist(directory, kind)
