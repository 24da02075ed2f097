"""Image readers: round trips of files the tests write, rejection of corrupt ones, and the shared MNIST."""

from __future__ import annotations

import gzip
import io
import logging
import os
import struct
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from domains.images import ImagesDomain, ImagesOptions, readers
from robustkit import ConfigError, DataError

STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """An IDX file: two zero bytes, the type code, the number of dimensions, big-endian sizes, the values."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_mnist(folder: Path, *, gz: bool = True, n_train: int = 30, n_test: int = 10, side: int = 6,
                dotted: bool = False) -> dict[str, np.ndarray]:
    """Four MNIST-style IDX files of random images; returns the arrays written."""
    rng = np.random.default_rng(0)
    arrays = {
        STEMS[0]: rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
        STEMS[1]: rng.integers(0, 10, n_train, dtype=np.uint8),
        STEMS[2]: rng.integers(0, 256, (n_test, side, side), dtype=np.uint8),
        STEMS[3]: rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        name = stem.replace("-idx", ".idx") if dotted else stem
        raw = idx_bytes(array)
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)
    return arrays


def mnist_file(folder: Path, stem: str) -> Path:
    return folder / (stem + ".gz")


def rewrite(path: Path, change) -> None:
    path.write_bytes(gzip.compress(change(gzip.decompress(path.read_bytes()))))


# ----------------------------------------------------------------------------- IDX
@pytest.mark.parametrize(("gz", "dotted"), [(True, False), (False, False), (True, True)])
def test_mnist_files_round_trip(tmp_path, gz, dotted):
    arrays = write_mnist(tmp_path, gz=gz, dotted=dotted)
    data = readers.load_mnist(tmp_path)
    assert torch.equal(data.train.x, torch.from_numpy(arrays[STEMS[0]]).unsqueeze(1))
    assert torch.equal(data.train.y, torch.from_numpy(arrays[STEMS[1]]).long())
    assert data.test is not None and torch.equal(data.test.x[:, 0], torch.from_numpy(arrays[STEMS[2]]))
    assert torch.equal(data.test.y, torch.from_numpy(arrays[STEMS[3]]).long())
    assert data.class_names == [str(i) for i in range(10)] and len(data.sha256) == 64
    assert readers.load_mnist(tmp_path, "fashion-mnist").class_names[0] == "T-shirt/top"


def test_dataset_hash_follows_the_bytes(tmp_path):
    write_mnist(tmp_path / "a")
    write_mnist(tmp_path / "b")
    assert readers.load_mnist(tmp_path / "a").sha256 == readers.load_mnist(tmp_path / "b").sha256
    rewrite(mnist_file(tmp_path / "b", STEMS[2]), lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]))
    assert readers.load_mnist(tmp_path / "a").sha256 != readers.load_mnist(tmp_path / "b").sha256


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_value_types_round_trip(dtype):
    code = {np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}[dtype]
    array = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype)
    magic, values = readers.parse_idx(idx_bytes(array, code))
    assert magic == (code << 8) + 3
    assert np.array_equal(values.numpy(), array)


@pytest.mark.parametrize(
    ("stem", "change", "message"),
    [
        (STEMS[0], lambda raw: b"\x89PNG" + raw[4:], "not an IDX file: magic number"),
        (STEMS[0], lambda raw: bytes([0, 0, 8, 1]) + raw[4:], "is corrupt"),
        (STEMS[0], lambda raw: raw[:-5], "is truncated"),
        (STEMS[0], lambda raw: raw[:10], "is truncated"),
        (STEMS[2], lambda raw: raw + b"\0\0", "bytes follow"),
        (STEMS[1], lambda raw: raw[:4] + struct.pack(">I", 29) + raw[8:-1], "30 images but"),
        (STEMS[3], lambda raw: raw[:-1] + bytes([10]), "outside 0..9"),
    ],
)
def test_corrupt_idx_files_are_rejected(tmp_path, stem, change, message):
    write_mnist(tmp_path)
    rewrite(mnist_file(tmp_path, stem), change)
    with pytest.raises(DataError, match=message):
        readers.load_mnist(tmp_path)


def test_swapped_idx_files_are_named(tmp_path):
    write_mnist(tmp_path)
    images, labels = mnist_file(tmp_path, STEMS[0]), mnist_file(tmp_path, STEMS[1])
    raw_images, raw_labels = images.read_bytes(), labels.read_bytes()
    images.write_bytes(raw_labels)
    labels.write_bytes(raw_images)
    with pytest.raises(DataError, match=r"magic number 2049 \(labels\): are the file names swapped"):
        readers.load_mnist(tmp_path)


def test_broken_gzip_and_missing_files(tmp_path):
    write_mnist(tmp_path)
    path = mnist_file(tmp_path, STEMS[0])
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="not a valid gzip file"):
        readers.load_mnist(tmp_path)
    path.unlink()
    with pytest.raises(DataError, match="needs the four original files"):
        readers.load_mnist(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        readers.load_mnist(tmp_path / "nope")


# ----------------------------------------------------------------------------- CIFAR-10 binary
def cifar_batch(n: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, n, dtype=np.uint8)
    raw = b"".join(bytes([int(y[i])]) + x[i].tobytes() for i in range(n))
    return raw, x, y


def write_cifar(folder: Path, meta: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for i in range(1, 6):
        raw, x, y = cifar_batch(3, i)
        (folder / f"data_batch_{i}.bin").write_bytes(raw)
        xs.append(x)
        ys.append(y)
    raw, x_test, _ = cifar_batch(4, 9)
    (folder / "test_batch.bin").write_bytes(raw)
    if meta is not None:
        (folder / "batches.meta.txt").write_text("\n".join(meta) + "\n\n")
    return np.concatenate(xs), np.concatenate(ys), x_test


def test_cifar10_binary_round_trip(tmp_path):
    names = [f"class{i}" for i in range(10)]
    x, y, x_test = write_cifar(tmp_path / "cifar-10-batches-bin", meta=names)
    data = readers.load_cifar10(tmp_path)
    assert torch.equal(data.train.x, torch.from_numpy(x)) and torch.equal(data.train.y, torch.from_numpy(y).long())
    assert data.test is not None and torch.equal(data.test.x, torch.from_numpy(x_test))
    assert data.class_names == names and data.name == "cifar10"
    # the red plane comes first: the first pixel of a record is red
    raw, x1, _ = cifar_batch(1, 0)
    assert readers.parse_cifar10(raw).x[0, 0, 0, 0] == x1[0, 0, 0, 0] == raw[1]


def test_cifar10_archive_is_read_without_extracting(tmp_path):
    x, _, _ = write_cifar(tmp_path / "src" / "cifar-10-batches-bin")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / "cifar-10-binary.tar.gz").write_bytes(buf.getvalue())
    data = readers.load_cifar10(tmp_path / "dl")
    assert torch.equal(data.train.x, torch.from_numpy(x)) and data.class_names == readers.CIFAR10_CLASSES
    assert [p.name for p in (tmp_path / "dl").iterdir()] == ["cifar-10-binary.tar.gz"]
    (tmp_path / "dl" / "cifar-10-binary.tar.gz").write_bytes(buf.getvalue()[:500])
    with pytest.raises(DataError, match=r"not a readable tar\.gz"):
        readers.load_cifar10(tmp_path / "dl")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda raw: raw[:-1], "not a whole number of 3073-byte records"),
        (lambda raw: raw + b"\0", "not a whole number of 3073-byte records"),
        (lambda raw: bytes([12]) + raw[1:], "label 12, outside 0..9"),
        (lambda raw: b"", "is empty"),
    ],
)
def test_corrupt_cifar10_batches_are_rejected(tmp_path, change, message):
    write_cifar(tmp_path)
    path = tmp_path / "data_batch_2.bin"
    path.write_bytes(change(path.read_bytes()))
    with pytest.raises(DataError, match=message):
        readers.load_cifar10(tmp_path)


def test_cifar10_pickled_version_and_bad_meta_are_refused(tmp_path):
    (tmp_path / "py").mkdir()
    (tmp_path / "py" / "data_batch_1").write_bytes(b"\x80\x04not unpickled")
    with pytest.raises(DataError, match="pickled Python version"):
        readers.load_cifar10(tmp_path / "py")
    write_cifar(tmp_path / "bin", meta=["a", "b"])
    with pytest.raises(DataError, match="lists 2 class names"):
        readers.load_cifar10(tmp_path / "bin")


# ----------------------------------------------------------------------------- image folders
def write_folder(root: Path, classes: dict[str, int], mode: str = "L", side: int = 8) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(1)
    written: dict[str, list[np.ndarray]] = {}
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        written[name] = []
        for i in range(count):
            shape = (side, side) if mode == "L" else (side, side, 3)
            pixels = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(pixels, mode=mode).save(root / name / f"{i:03d}.png")
            written[name].append(pixels)
    return written


def test_folder_round_trip_grey_and_colour(tmp_path):
    written = write_folder(tmp_path / "grey", {"zebra": 3, "ant": 2})
    data = readers.load_folder(tmp_path / "grey")
    assert data.class_names == ["ant", "zebra"] and data.train.y.tolist() == [0, 0, 1, 1, 1]
    assert tuple(data.train.x.shape) == (5, 1, 8, 8) and data.test is None
    assert np.array_equal(data.train.x[2, 0].numpy(), written["zebra"][0])
    written = write_folder(tmp_path / "rgb", {"a": 2, "b": 2}, mode="RGB")
    data = readers.load_folder(tmp_path / "rgb")
    assert tuple(data.train.x.shape) == (4, 3, 8, 8)
    assert np.array_equal(data.train.x[3].permute(1, 2, 0).numpy(), written["b"][1])
    assert tuple(readers.load_folder(tmp_path / "rgb", channels=1).train.x.shape) == (4, 1, 8, 8)


def test_folder_skips_unreadable_files_with_a_counted_warning(tmp_path, caplog):
    write_folder(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING, logger="robustkit"):
        data = readers.load_folder(tmp_path)
    assert len(data.train.y) == 4
    assert "skipped 2 unreadable file(s)" in caplog.text and "broken.png" in caplog.text


def test_bad_folders_are_rejected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no class subfolder"):
        readers.load_folder(tmp_path / "empty")
    write_folder(tmp_path / "one", {"a": 2})
    with pytest.raises(DataError, match="needs at least two classes"):
        readers.load_folder(tmp_path / "one")
    write_folder(tmp_path / "unreadable", {"a": 2})
    (tmp_path / "unreadable" / "b").mkdir()
    (tmp_path / "unreadable" / "b" / "x.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="holds no readable image"):
        readers.load_folder(tmp_path / "unreadable")
    write_folder(tmp_path / "sizes", {"a": 2})
    write_folder(tmp_path / "sizes", {"b": 2}, side=12)
    with pytest.raises(DataError, match="options size"):
        readers.load_folder(tmp_path / "sizes")
    assert tuple(readers.load_folder(tmp_path / "sizes", size=10).train.x.shape) == (4, 1, 10, 10)
    with pytest.raises(ConfigError, match="channels"):
        readers.load_folder(tmp_path / "sizes", channels=2)


# ----------------------------------------------------------------------------- digits, specs, downloads
def test_digits_and_stratified_seeded_splits():
    data = readers.load_digits()
    assert tuple(data.train.x.shape) == (1797, 1, 8, 8) and float(data.train.x.max()) == 1.0
    assert torch.bincount(data.train.y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    domain = ImagesDomain()
    a = domain.load_data("digits", seed=0, options=ImagesOptions())
    b = domain.load_data("digits", seed=0, options=ImagesOptions())
    c = domain.load_data("digits", seed=1, options=ImagesOptions())
    assert (len(a.train), len(a.val), len(a.test)) == (1213, 135, 449)
    assert torch.equal(a.test.x, b.test.x) and not torch.equal(a.test.x, c.test.x)
    counts = torch.bincount(a.test.y, minlength=10)
    assert int(counts.min()) >= 43 and int(counts.max()) <= 46  # a quarter of each class
    small = domain.load_data("digits", seed=0, options=ImagesOptions(max_train=100, max_test=50))
    assert len(small.train) == 100 and torch.bincount(small.test.y).tolist() == [5] * 10
    assert a.info.sha256 == readers.load_digits().sha256 and "stratified, seed 0" in a.info.split


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ("imagenet:/x", ConfigError, "unknown image data"),
        ("digits:/x", ConfigError, "takes no folder"),
        ("folder", ConfigError, "needs a path"),
        ("mnist:/nonexistent/robustkit", DataError, "does not exist"),
        ("cifar10:/nonexistent/robustkit", DataError, "does not exist"),
    ],
)
def test_bad_specs(spec, error, message):
    with pytest.raises(error, match=message):
        readers.read_spec(spec)


def test_download_offline_says_where_to_put_the_files(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("ROBUSTKIT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError) as info:
        readers.read_spec("mnist")
    message = str(info.value)
    assert "network is unreachable" in message and str(tmp_path / "cache" / "mnist") in message
    assert "train-images-idx3-ubyte.gz" in message and "--data mnist:DIR" in message


def test_download_rejects_a_wrong_checksum(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"<html>not the file</html>"))
    with pytest.raises(DataError, match="expected c32a1d4a"):
        readers.fetch("cifar10", cache=tmp_path)
    assert not list((tmp_path / "cifar10").iterdir()), "a file failing its checksum is not kept"


# ----------------------------------------------------------------------------- shared data
def shared(name: str) -> Path:
    root = os.environ.get("ROBUSTKIT_DATA")
    if not root:
        pytest.skip("ROBUSTKIT_DATA is not set: point it at the shared data folder to run this test")
    return Path(root) / name


@pytest.mark.shared_data
def test_shared_mnist_has_the_published_counts():
    data = readers.load_mnist(shared("mnist"))
    assert tuple(data.train.x.shape) == (60000, 1, 28, 28) and data.test is not None
    assert tuple(data.test.x.shape) == (10000, 1, 28, 28)
    assert torch.bincount(data.train.y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(data.test.y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.shared_data
def test_shared_fashion_mnist_is_balanced():
    data = readers.load_mnist(shared("fashion_mnist"), "fashion-mnist")
    assert torch.bincount(data.train.y).tolist() == [6000] * 10
    assert data.test is not None and torch.bincount(data.test.y).tolist() == [1000] * 10
