"""Datasets for `jcnn train`, and the fixed-size batches a jitted step eats.

`load_dataset(name, data_dir)` returns a `Dataset` of numpy arrays: images float32 NHWC scaled
to [0, 1], labels int32 in [0, 10).

- "digits" (the default) ships inside the package, so nothing is downloaded: 1,797 grey 8x8
  images, pixels 0..16 divided by 16, split once, stratified by label, into 1,437 train and 360
  test images (`jcnn/assets/digits.npz`, made by `scripts/make_digits.py`). They are the test part
  of the UCI "Optical Recognition of Handwritten Digits" data set by E. Alpaydin and C. Kaynak
  (1998), https://doi.org/10.24432/C50P49, licensed CC BY 4.0, as distributed by scikit-learn's
  `load_digits()`; see `jcnn/assets/README`.
- "mnist" and "fashion-mnist": the four IDX files in `data_dir`, each raw or gzipped;
  (60000, 28, 28, 1) train and (10000, 28, 28, 1) test images, pixels / 255.
- "cifar10": the binary batches in `data_dir` or `data_dir/cifar-10-batches-bin/`;
  (50000, 32, 32, 3) train and (10000, 32, 32, 3) test images, pixels / 255.

Files are read whole with `np.frombuffer` and checked before use (magic numbers, sizes, counts,
label range, an empty split): a bad file raises `DataError` (a ValueError) naming the file and
what is wrong, a missing one `MissingDataError` (a DataError and a FileNotFoundError) naming
every path looked for.

`batches` always yields `batch_size` rows, so one compiled step serves every batch:
`remainder="drop"` for training skips the last partial batch, `remainder="pad"` for evaluation
fills it up and adds a float mask (1 real, 0 padding), so every example counts exactly once.
"""
from __future__ import annotations

import gzip
import math
import os
import zlib
from importlib import resources
from pathlib import Path
from typing import Iterator, NamedTuple, Optional, Union

import numpy as np

PathLike = Union[str, os.PathLike]

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
NUM_CLASSES = 10  # every dataset here has ten classes
# What each dataset's images are: (height, width, channels), and the largest pixel value, which
# the loaders divide by (digits are 0..16, the others bytes 0..255).
INPUT_SHAPES = {"digits": (8, 8, 1), "mnist": (28, 28, 1), "fashion-mnist": (28, 28, 1),
                "cifar10": (32, 32, 3)}
PIXEL_MAX = {"digits": 16, "mnist": 255, "fashion-mnist": 255, "cifar10": 255}

_MNIST_FILES = "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], " \
               "t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz]"
_WHAT_TO_PASS = {
    "mnist": _MNIST_FILES,
    "fashion-mnist": _MNIST_FILES,
    "cifar10": "data_batch_1.bin .. data_batch_5.bin and test_batch.bin "
               "(or a cifar-10-batches-bin/ folder with them)",
}


class DataError(ValueError):
    """A dataset file that is missing, unreadable or not what it should be; the message (one
    line) names the file."""


class MissingDataError(DataError, FileNotFoundError):
    """A dataset file or folder that does not exist."""


class Dataset(NamedTuple):
    train_images: np.ndarray  # (N, H, W, C) float32 in [0, 1]
    train_labels: np.ndarray  # (N,) int32 in [0, num_classes)
    test_images: np.ndarray  # (M, H, W, C) float32 in [0, 1]
    test_labels: np.ndarray  # (M,) int32 in [0, num_classes)
    num_classes: int
    name: str  # one of DATASETS


def load_dataset(name: str, data_dir: Optional[PathLike] = None) -> Dataset:
    """The dataset `name` (one of `DATASETS`); `data_dir` is the folder holding its files, and
    must be None for "digits", which is embedded."""
    if name not in DATASETS:
        raise ValueError(f"load_dataset: unknown dataset {name!r}; choose one of "
                         f"{', '.join(DATASETS)}")
    if name == "digits":
        if data_dir is not None:
            raise ValueError(f"load_dataset: 'digits' is embedded in jcnn and reads no files, "
                             f"but data_dir={str(data_dir)!r} was given; to read files pass "
                             f"one of {', '.join(DATASETS[1:])} as the dataset (--data)")
        return _load_digits()
    if data_dir is None:
        raise ValueError(f"load_dataset: {name!r} is read from files; pass data_dir "
                         f"(--data-dir DIR), the folder holding {_WHAT_TO_PASS[name]}")
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise MissingDataError(f"load_dataset: data_dir {str(folder)!r} is not a directory")
    return _load_cifar10(folder) if name == "cifar10" else _load_idx_dataset(folder, name)


def _dataset(name: str, train_images: np.ndarray, train_labels: np.ndarray,
             test_images: np.ndarray, test_labels: np.ndarray) -> Dataset:
    """uint8 NHWC images with pixel values 0..PIXEL_MAX[name] and uint8 labels -> a `Dataset`."""
    def scaled(images: np.ndarray) -> np.ndarray:
        x = images.astype(np.float32, order="C")  # order: CIFAR arrives as a transposed view
        x /= PIXEL_MAX[name]
        return x
    return Dataset(scaled(train_images), train_labels.astype(np.int32),
                   scaled(test_images), test_labels.astype(np.int32), NUM_CLASSES, name)


def _load_digits() -> Dataset:
    with resources.files("jcnn").joinpath("assets/digits.npz").open("rb") as f, np.load(f) as z:
        return _dataset("digits", z["train_images"][..., None], z["train_labels"],
                        z["test_images"][..., None], z["test_labels"])


def _find(folders: list[Path], filename: str) -> Path:
    """The first file that exists of `folder/filename` and `folder/filename.gz`, for each of
    `folders` in turn."""
    tried = [folder / name for folder in folders for name in (filename, f"{filename}.gz")]
    for path in tried:
        if path.is_file():
            return path
    raise MissingDataError(f"{filename} not found: looked for "
                           f"{', '.join(str(p) for p in tried)}")


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed if its name ends in .gz."""
    try:
        if path.suffix != ".gz":
            return path.read_bytes()
        with gzip.open(path, "rb") as f:
            return f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a valid gzip file ({e})") from e
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from e


def _check_labels(path: Path, labels: np.ndarray) -> None:
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        raise DataError(f"{path}: label {labels[bad[0]]} at index {bad[0]} is outside "
                        f"0..{NUM_CLASSES - 1} ({bad.size} label(s) out of range in all)")


# IDX (MNIST's format), big-endian: 0, 0, a type code, the number of dimensions, one uint32 per
# dimension, then the values in C order. The magic number is the first four bytes as a uint32.
_UBYTE = 0x08
_IDX_TYPES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "int16", 0x0C: "int32",
              0x0D: "float32", 0x0E: "float64"}


def _read_idx(path: Path, ndim: Optional[int]) -> np.ndarray:
    """An IDX file of unsigned bytes with `ndim` dimensions (None: as many as its header says)
    -> uint8 array of the header's shape. Labels files have magic number 2049 (ndim 1), images
    files 2051 (ndim 3)."""
    raw = _read_bytes(path)
    if ndim is None and len(raw) >= 4:
        ndim = raw[3]
    header = 4 + 4 * (ndim or 0)
    if len(raw) < header:
        raise DataError(f"{path}: truncated: {len(raw)} bytes, shorter than the {header}-byte "
                        f"IDX header")
    expected = (_UBYTE << 8) | ndim
    magic = int.from_bytes(raw[:4], "big")
    if raw[2] != _UBYTE:
        raise DataError(f"{path}: IDX data type code 0x{raw[2]:02X} "
                        f"({_IDX_TYPES.get(raw[2], 'not a valid code')}), expected 0x08 "
                        f"(unsigned byte): magic number {magic}, expected {expected}")
    if magic != expected:
        hint = (f"the data is gzipped: name the file {path.name}.gz" if raw[:2] == b"\x1f\x8b"
                else "is this the right file?")
        raise DataError(f"{path}: magic number {magic} (0x{magic:08X}), expected {expected} "
                        f"(0x{expected:08X}: unsigned bytes, {ndim} dimension(s)); {hint}")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    size = header + math.prod(shape)  # Python ints: dims of 2**32 - 1 cannot wrap around
    if len(raw) != size:
        problem = "truncated" if len(raw) < size else "trailing bytes"
        raise DataError(f"{path}: {problem}: the header gives shape {shape}, so {size} bytes, "
                        f"but the file has {len(raw)}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def read_idx_images(path: PathLike) -> np.ndarray:
    """The uint8 array of an IDX file of unsigned bytes (raw, or gzipped if its name ends in
    .gz), in the shape its header gives: (N, H, W) images, say, for `jcnn predict`."""
    return _read_idx(Path(path), None)


def _load_idx_split(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """images (n, 28, 28, 1) uint8 and labels (n,) uint8 from `{prefix}-*-idx?-ubyte[.gz]`."""
    images_path = _find([folder], f"{prefix}-images-idx3-ubyte")
    labels_path = _find([folder], f"{prefix}-labels-idx1-ubyte")
    images, labels = _read_idx(images_path, 3), _read_idx(labels_path, 1)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, "
                        f"expected 28x28")
    if not len(images):
        raise DataError(f"{images_path}: holds no images (an empty {prefix} split)")
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                        f"{len(labels)} labels")
    _check_labels(labels_path, labels)
    return images[..., None], labels


def _load_idx_dataset(folder: Path, name: str) -> Dataset:
    """MNIST or Fashion-MNIST, which share file names and format."""
    return _dataset(name, *_load_idx_split(folder, "train"), *_load_idx_split(folder, "t10k"))


_CIFAR_RECORD = 1 + 3 * 32 * 32  # a label byte, then the R, G and B planes, 32x32 each


def _read_cifar(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch -> images (n, 32, 32, 3) uint8 (a view), labels (n,) uint8."""
    raw = _read_bytes(path)
    if not raw or len(raw) % _CIFAR_RECORD:
        raise DataError(f"{path}: {len(raw)} bytes is not a positive multiple of "
                        f"{_CIFAR_RECORD}, the size of a CIFAR-10 record (1 label byte + "
                        f"3x32x32 pixel bytes): truncated or not a CIFAR-10 batch")
    records = np.frombuffer(raw, np.uint8).reshape(-1, _CIFAR_RECORD)
    _check_labels(path, records[:, 0])
    return records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), records[:, 0]


def _load_cifar10(folder: Path) -> Dataset:
    # The folder the archive unpacks to, or the files themselves. Find every file before
    # reading any, so that a missing one fails fast.
    folders = [folder / "cifar-10-batches-bin", folder]
    train_paths = [_find(folders, f"data_batch_{i}.bin") for i in range(1, 6)]
    test_path = _find(folders, "test_batch.bin")
    train_images, train_labels = zip(*map(_read_cifar, train_paths))
    return _dataset("cifar10", np.concatenate(train_images), np.concatenate(train_labels),
                    *_read_cifar(test_path))


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of images (N, H, W, C) over N, H and W: two (C,)
    float32 arrays. Sums run in float64 without a float64 copy of the images."""
    x = images.reshape(-1, images.shape[-1])
    mean = x.mean(axis=0, dtype=np.float64)
    mean_sq = np.einsum("nc,nc->c", x, x, dtype=np.float64) / len(x)
    return mean.astype(np.float32), np.sqrt(np.maximum(mean_sq - mean**2, 0)).astype(np.float32)


def standardize(dataset: Dataset) -> Dataset:
    """`dataset` with both splits mapped to (x - mean) / std per channel, the statistics taken
    from the train images alone so that nothing about the test set leaks into training."""
    mean, std = channel_stats(dataset.train_images)
    std = np.where(std > 0, std, np.float32(1))  # a constant channel is only centred
    return dataset._replace(train_images=(dataset.train_images - mean) / std,
                            test_images=(dataset.test_images - mean) / std)


REMAINDERS = ("drop", "pad")


def num_batches(n: int, batch_size: int, remainder: str = "drop") -> int:
    """How many batches `batches` yields for `n` examples."""
    return n // batch_size if remainder == "drop" else -(-n // batch_size)


def batches(images: np.ndarray, labels: np.ndarray, batch_size: int, *, seed: int = 0,
            epoch: int = 0, shuffle: bool = True, remainder: str = "drop"
            ) -> Iterator[tuple[np.ndarray, ...]]:
    """One epoch of batches, each exactly `batch_size` (B) rows, as numpy arrays.

    images (N, H, W, C), labels (N,) -> tuples (images (B, H, W, C), labels (B,)) for
    remainder="drop", (images (B, H, W, C), labels (B,), mask (B,) float32) for "pad".

    shuffle: visit the examples in a permutation drawn from (seed, epoch) alone, so the same pair
    gives the same order on every run and every host, and each epoch a new order; otherwise in
    stored order. remainder="drop" (training): N // B batches; the N % B examples left over
    (others each epoch when shuffled) are skipped. remainder="pad" (evaluation): ceil(N / B)
    batches covering every example exactly once; the last is filled up to B rows with copies of
    its last example, which the mask weights 0, so sum(mask * per_example_loss) / N is the mean
    over the N examples.
    """
    n = len(labels)
    if len(images) != n:
        raise ValueError(f"batches: images has {len(images)} rows but labels has {n}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batches: batch_size must be a positive int, got {batch_size!r}")
    if remainder not in REMAINDERS:
        raise ValueError(f"batches: remainder must be one of {REMAINDERS}, got {remainder!r}")
    if remainder == "drop" and n < batch_size:
        raise ValueError(f"batches: batch_size {batch_size} is more than the {n} examples, so "
                         f"remainder='drop' would yield no batch; use a smaller batch_size or "
                         f"remainder='pad'")
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    for start in range(0, num_batches(n, batch_size, remainder) * batch_size, batch_size):
        rows = order[start:start + batch_size]
        if remainder == "drop":
            yield images[rows], labels[rows]
        else:
            mask = (np.arange(batch_size) < len(rows)).astype(np.float32)
            rows = np.pad(rows, (0, batch_size - len(rows)), mode="edge")
            yield images[rows], labels[rows], mask


__all__ = ["DATASETS", "NUM_CLASSES", "INPUT_SHAPES", "PIXEL_MAX", "REMAINDERS", "DataError",
           "MissingDataError", "Dataset", "load_dataset", "channel_stats", "standardize",
           "read_idx_images", "num_batches", "batches"]
