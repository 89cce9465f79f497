"""jcnn.train.data: the embedded digits, the IDX and CIFAR-10 readers on small files written here
(valid and corrupt, raw and gzipped), and fixed-shape batching."""
import gzip
import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import jcnn.train.data
from jcnn.train.data import (DATASETS, DataError, MissingDataError, batches, channel_stats,
                             load_dataset, num_batches, read_idx_images, standardize)

# ---------------------------------------------------------------- embedded digits

# sha256 of the four uint8 arrays in jcnn/assets/digits.npz; changes only if the file is remade
# differently from scripts/make_digits.py.
DIGITS_SHA256 = "28d636f2f47ec885bab6c1d883c883cd3f85cb5f6d0f1457558c6b672cc71adf"
DIGITS_CLASS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]  # sklearn load_digits


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_digits_shapes_dtypes_range(digits):
    assert digits.train_images.shape == (1437, 8, 8, 1)
    assert digits.test_images.shape == (360, 8, 8, 1)
    assert digits.train_labels.shape == (1437,) and digits.test_labels.shape == (360,)
    assert digits.train_images.dtype == np.float32 and digits.train_labels.dtype == np.int32
    assert (digits.num_classes, digits.name) == (10, "digits")
    for x in (digits.train_images, digits.test_images):
        assert x.min() == 0 and x.max() == 1
        np.testing.assert_array_equal(x * 16, np.round(x * 16))  # pixel counts 0..16, / 16


def test_digits_split_is_stratified(digits):
    total = np.bincount(np.concatenate([digits.train_labels, digits.test_labels]), minlength=10)
    np.testing.assert_array_equal(total, DIGITS_CLASS_COUNTS)
    for labels in (digits.train_labels, digits.test_labels):
        share = total * len(labels) / total.sum()
        assert np.all(np.abs(np.bincount(labels, minlength=10) - share) <= 1)


def test_digits_split_is_fixed(digits):
    again = load_dataset("digits")
    for a, b in zip(digits[:4], again[:4]):
        np.testing.assert_array_equal(a, b)
    h = hashlib.sha256()
    for images, labels in ((digits.train_images, digits.train_labels),
                           (digits.test_images, digits.test_labels)):
        h.update((images[..., 0] * 16).astype(np.uint8).tobytes())
        h.update(labels.astype(np.uint8).tobytes())
    assert h.hexdigest() == DIGITS_SHA256


def test_digits_attribution():
    readme = (Path(jcnn.__file__).parent / "assets" / "README").read_text()
    for text in (readme, jcnn.train.data.__doc__):
        for needed in ("Alpaydin", "Kaynak", "Optical Recognition of Handwritten Digits",
                       "CC BY 4.0", "10.24432/C50P49"):
            assert needed in " ".join(text.split()), needed


# ---------------------------------------------------------------- load_dataset arguments

def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'") as e:
        load_dataset("svhn")
    assert all(name in str(e.value) for name in DATASETS)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_file_datasets_need_data_dir(name):
    with pytest.raises(ValueError, match="--data-dir"):
        load_dataset(name)


def test_digits_takes_no_data_dir(tmp_path):
    with pytest.raises(ValueError, match="embedded"):
        load_dataset("digits", tmp_path)


def test_data_dir_must_exist(tmp_path):
    with pytest.raises(MissingDataError, match="nowhere") as e:
        load_dataset("mnist", tmp_path / "nowhere")
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, DataError)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(MissingDataError, match=f"data_dir '{tmp_path / 'a-file'}' is not a "
                                               f"directory"):
        load_dataset("cifar10", tmp_path / "a-file")


# ---------------------------------------------------------------- MNIST / Fashion-MNIST (IDX)

def idx_bytes(a: np.ndarray, code: int = 0x08) -> bytes:
    """`a` as an IDX file: 0, 0, type code, ndim, big-endian uint32 dims, then the data."""
    dims = np.asarray(a.shape, ">u4").tobytes()
    return bytes([0, 0, code, a.ndim]) + dims + a.tobytes()


def write(path: Path, data: bytes, gz: bool = False) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


IDX_SIZES = {"train": 12, "t10k": 5}


def make_idx(folder: Path, rng, gz: bool = False) -> dict:
    """Small valid MNIST-format files in `folder`; returns the arrays written."""
    arrays = {}
    for prefix, n in IDX_SIZES.items():
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255  # both ends of the range
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        write(folder / f"{prefix}-images-idx3-ubyte", idx_bytes(images), gz)
        write(folder / f"{prefix}-labels-idx1-ubyte", idx_bytes(labels), gz)
        arrays[prefix] = images, labels
    return arrays


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_round_trip(tmp_path, rng, name, gz):
    arrays = make_idx(tmp_path, rng, gz)
    ds = load_dataset(name, str(tmp_path))
    assert (ds.num_classes, ds.name) == (10, name)
    for (images, labels), x, y in ((arrays["train"], ds.train_images, ds.train_labels),
                                   (arrays["t10k"], ds.test_images, ds.test_labels)):
        assert x.shape == (len(labels), 28, 28, 1) and x.dtype == np.float32
        assert y.dtype == np.int32
        np.testing.assert_array_equal(x[..., 0], images.astype(np.float32) / 255)
        np.testing.assert_array_equal(y, labels)
    assert ds.train_images.min() == 0 and ds.train_images.max() == 1


def _replace(name: str, data: Callable) -> Callable:
    """A corruption: overwrite file `name` with `data(arrays)`."""
    return lambda folder, arrays: write(folder / name, data(arrays))


TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"

# (id, corruption, the file the message must name, what the message must say)
IDX_CORRUPT = [
    ("labels-file-as-images", _replace(TRAIN_IMAGES, lambda a: idx_bytes(a["train"][1])),
     TRAIN_IMAGES, "magic number 2049"),
    ("float-dtype-code", _replace(TRAIN_LABELS, lambda a: idx_bytes(a["train"][1], 0x0D)),
     TRAIN_LABELS, "type code 0x0D"),
    ("gzip-without-.gz", _replace(TRAIN_LABELS, lambda a: gzip.compress(idx_bytes(a["train"][1]))),
     TRAIN_LABELS, "gzipped"),
    ("header-cut", _replace(TRAIN_IMAGES, lambda a: idx_bytes(a["train"][0])[:10]),
     TRAIN_IMAGES, "truncated"),
    ("images-truncated", _replace(TRAIN_IMAGES, lambda a: idx_bytes(a["train"][0])[:-100]),
     TRAIN_IMAGES, "truncated"),
    ("trailing-bytes", _replace(TRAIN_LABELS, lambda a: idx_bytes(a["train"][1]) + b"\0"),
     TRAIN_LABELS, "trailing bytes"),
    ("wrong-image-size", _replace(TRAIN_IMAGES, lambda a: idx_bytes(a["train"][0][:, :27, :27])),
     TRAIN_IMAGES, "27x27, expected 28x28"),
    ("count-mismatch", _replace(TRAIN_LABELS, lambda a: idx_bytes(a["train"][1][:-1])),
     TRAIN_LABELS, "12 images .* 11 labels"),
    ("label-out-of-range", _replace(TRAIN_LABELS, lambda a: idx_bytes(
        np.where(np.arange(12) == 3, 10, a["train"][1]).astype(np.uint8))),
     TRAIN_LABELS, "label 10 at index 3"),
    ("bad-gzip", lambda folder, arrays: (folder / "t10k-labels-idx1-ubyte").rename(
        folder / "t10k-labels-idx1-ubyte.gz"),
     "t10k-labels-idx1-ubyte.gz", "not a valid gzip file"),
    ("truncated-gzip", lambda folder, arrays: (folder / "t10k-images-idx3-ubyte").rename(
        write(folder / "t10k-images-idx3-ubyte.gz",
              gzip.compress(idx_bytes(arrays["t10k"][0]))[:-20]).with_suffix(".moved")),
     "t10k-images-idx3-ubyte.gz", "not a valid gzip file \\(Compressed file ended"),
    ("garbage", _replace(TRAIN_IMAGES, lambda a: bytes(range(256)) * 3),
     TRAIN_IMAGES, "IDX data type code 0x02 \\(not a valid code\\)"),
    ("empty-file", _replace(TRAIN_LABELS, lambda a: b""),
     TRAIN_LABELS, "truncated: 0 bytes, shorter than the 8-byte IDX header"),
    ("dims-overflow-int64", _replace(TRAIN_IMAGES, lambda a: bytes([0, 0, 8, 3]) + b"\xff" * 12),
     TRAIN_IMAGES, "truncated: the header gives shape \\(4294967295, 4294967295, 4294967295\\), "
                   "so 79228162458924105385300197391 bytes, but the file has 16"),
    # 2**22 * 2**21 * 2**21 = 2**64 is 0 in int64 arithmetic: the header alone would "fit"
    ("dims-product-wraps-to-0", _replace(TRAIN_IMAGES, lambda a: bytes([0, 0, 8, 3])
                                         + np.asarray([2**22, 2**21, 2**21], ">u4").tobytes()),
     TRAIN_IMAGES, "truncated: the header gives shape \\(4194304, 2097152, 2097152\\), so "
                   "18446744073709551632 bytes, but the file has 16"),
    ("empty-test-split", _replace("t10k-images-idx3-ubyte", lambda a: idx_bytes(
        np.zeros((0, 28, 28), np.uint8))),
     "t10k-images-idx3-ubyte", "holds no images \\(an empty t10k split\\)"),
    ("labels-missing", lambda folder, arrays: (folder / "t10k-labels-idx1-ubyte").unlink(),
     "t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte not found: looked for"),
    ("directory-in-its-place", lambda folder, arrays: (
        (folder / TRAIN_LABELS).unlink(), (folder / TRAIN_LABELS).mkdir()),
     TRAIN_LABELS, "not found: looked for"),
]


@pytest.mark.parametrize("corrupt, filename, says", [c[1:] for c in IDX_CORRUPT],
                         ids=[c[0] for c in IDX_CORRUPT])
def test_idx_corrupt(tmp_path, rng, corrupt, filename, says):
    corrupt(tmp_path, make_idx(tmp_path, rng))
    with pytest.raises(DataError, match=says) as e:
        load_dataset("mnist", tmp_path)
    assert str(tmp_path / filename) in str(e.value) and "\n" not in str(e.value)


def test_idx_missing_file_lists_names_tried(tmp_path, rng):
    make_idx(tmp_path, rng)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(MissingDataError) as e:
        load_dataset("fashion-mnist", tmp_path)
    for tried in ("t10k-labels-idx1-ubyte", "t10k-labels-idx1-ubyte.gz"):
        assert str(tmp_path / tried) in str(e.value)


@pytest.mark.parametrize("shape", [(3, 5, 4), (2, 5), (2, 3, 3, 3)])
def test_read_idx_images_takes_the_header_s_dimensions(tmp_path, rng, shape):
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    np.testing.assert_array_equal(read_idx_images(write(tmp_path / "x", idx_bytes(images))),
                                  images)
    np.testing.assert_array_equal(read_idx_images(write(tmp_path / "x", idx_bytes(images), True)),
                                  images)
    with pytest.raises(DataError, match="truncated"):
        read_idx_images(write(tmp_path / "y", idx_bytes(images)[:-1]))


# ---------------------------------------------------------------- CIFAR-10

CIFAR_BATCHES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


def cifar_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """Records of 1 label byte + the image's R, G, B planes (CHW)."""
    chw = images.transpose(0, 3, 1, 2).reshape(len(labels), -1)
    return np.concatenate([labels[:, None], chw], axis=1).astype(np.uint8).tobytes()


def make_cifar(folder: Path, rng) -> list:
    """Six small batch files (3 records each) in `folder`; returns (images, labels) per file."""
    folder.mkdir(exist_ok=True)
    arrays = []
    for filename in CIFAR_BATCHES:
        images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, 3, dtype=np.uint8)
        write(folder / filename, cifar_bytes(images, labels))
        arrays.append((images, labels))
    return arrays


@pytest.mark.parametrize("subfolder", ["", "cifar-10-batches-bin"])
def test_cifar_round_trip(tmp_path, rng, subfolder):
    arrays = make_cifar(tmp_path / subfolder, rng)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.train_images.shape == (15, 32, 32, 3) and ds.test_images.shape == (3, 32, 32, 3)
    assert ds.train_images.dtype == np.float32 and ds.train_labels.dtype == np.int32
    assert ds.train_images.flags.c_contiguous and ds.test_images.flags.c_contiguous
    images, labels = (np.concatenate(a) for a in zip(*arrays[:5]))
    np.testing.assert_array_equal(ds.train_images, images.astype(np.float32) / 255)
    np.testing.assert_array_equal(ds.train_labels, labels)
    np.testing.assert_array_equal(ds.test_images, arrays[5][0].astype(np.float32) / 255)
    np.testing.assert_array_equal(ds.test_labels, arrays[5][1])
    assert (ds.num_classes, ds.name) == (10, "cifar10")


@pytest.mark.parametrize("cut", [1, 3073 * 3, 3073 * 3 - 1], ids=["short", "empty", "one-byte"])
def test_cifar_wrong_length(tmp_path, rng, cut):
    make_cifar(tmp_path, rng)
    path = tmp_path / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(DataError, match="multiple of 3073") as e:
        load_dataset("cifar10", tmp_path)
    assert str(path) in str(e.value)


def test_cifar_label_out_of_range(tmp_path, rng):
    make_cifar(tmp_path, rng)
    path = tmp_path / "test_batch.bin"
    path.write_bytes(b"\xff" + path.read_bytes()[1:])
    with pytest.raises(DataError, match="label 255 at index 0") as e:
        load_dataset("cifar10", tmp_path)
    assert str(path) in str(e.value)


def test_cifar_missing_file_lists_names_tried(tmp_path, rng):
    make_cifar(tmp_path, rng)
    (tmp_path / "data_batch_5.bin").unlink()
    with pytest.raises(MissingDataError) as e:
        load_dataset("cifar10", tmp_path)
    for tried in ("cifar-10-batches-bin/data_batch_5.bin", "data_batch_5.bin",
                  "data_batch_5.bin.gz"):
        assert str(tmp_path / tried) in str(e.value)


# ---------------------------------------------------------------- normalisation

def test_standardize_uses_train_statistics(rng):
    ds = load_dataset("digits")._replace(
        train_images=rng.random((50, 4, 4, 3), dtype=np.float32),
        test_images=rng.random((20, 4, 4, 3), dtype=np.float32))
    mean, std = channel_stats(ds.train_images)
    flat = ds.train_images.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(mean, flat.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, flat.std(0), rtol=1e-5)
    out = standardize(ds)
    assert out.train_images.dtype == np.float32
    np.testing.assert_allclose(channel_stats(out.train_images)[0], 0, atol=1e-6)
    np.testing.assert_allclose(channel_stats(out.train_images)[1], 1, rtol=1e-5)
    np.testing.assert_allclose(out.test_images, (ds.test_images - mean) / std, rtol=1e-6)


# ---------------------------------------------------------------- batching

N, B = 23, 5  # 4 full batches and a remainder of 3


def epoch_of(**kw) -> list:
    images = np.arange(N, dtype=np.float32).reshape(N, 1, 1, 1)
    return list(batches(images, np.arange(N, dtype=np.int32), B, **kw))


def order(bs: list) -> np.ndarray:
    """The example ids seen in an epoch, in order (padding rows left out)."""
    return np.concatenate([b[1] if len(b) == 2 else b[1][b[2] > 0] for b in bs])


def test_batches_deterministic_per_seed_and_epoch():
    first = order(epoch_of(seed=7, epoch=2))
    np.testing.assert_array_equal(first, order(epoch_of(seed=7, epoch=2)))
    assert not np.array_equal(first, order(epoch_of(seed=7, epoch=3)))
    assert not np.array_equal(first, order(epoch_of(seed=8, epoch=2)))


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_padded_cover_each_example_once(shuffle):
    bs = epoch_of(seed=1, epoch=0, shuffle=shuffle, remainder="pad")
    assert len(bs) == num_batches(N, B, remainder="pad") == 5
    for images, labels, mask in bs:
        assert images.shape == (B, 1, 1, 1) and labels.shape == (B,) and mask.shape == (B,)
        assert mask.dtype == np.float32
        np.testing.assert_array_equal(images[:, 0, 0, 0], labels)  # rows stay paired
    assert sum(mask.sum() for _, _, mask in bs) == N
    np.testing.assert_array_equal(bs[-1][2], [1, 1, 1, 0, 0])
    seen = order(bs)
    np.testing.assert_array_equal(np.sort(seen), np.arange(N))
    if not shuffle:
        np.testing.assert_array_equal(seen, np.arange(N))


def test_batches_drop_skips_only_the_remainder():
    bs = epoch_of(seed=3, epoch=1)
    assert len(bs) == num_batches(N, B) == N // B
    for images, labels in bs:
        assert images.shape == (B, 1, 1, 1) and labels.shape == (B,)
        np.testing.assert_array_equal(images[:, 0, 0, 0], labels)
    seen = order(bs)
    assert len(np.unique(seen)) == len(seen) == N - N % B
    # The same permutation as the padded epoch, less its tail.
    padded = order(epoch_of(seed=3, epoch=1, remainder="pad"))
    np.testing.assert_array_equal(seen, padded[:len(seen)])


@pytest.mark.parametrize("kw, says", [
    (dict(labels=np.arange(N - 1)), "images has 23 rows but labels has 22"),
    (dict(batch_size=0), "positive int"),
    (dict(batch_size=N + 1), "remainder='drop' would yield no batch"),
    (dict(remainder="keep"), "remainder must be one of"),
], ids=["length-mismatch", "zero-batch", "batch-bigger-than-data", "bad-remainder"])
def test_batches_bad_arguments(kw, says):
    args = dict(images=np.zeros((N, 1, 1, 1)), labels=np.arange(N), batch_size=B) | kw
    with pytest.raises(ValueError, match=says):
        next(batches(**args))
