"""Using a trained run: `jcnn.load_trained` on a run's dir or file gives the run's own test
loss and accuracy, applies the preprocessing to raw pixels, takes one image or many, compiles
once for any number of batches and refuses bad inputs in one line; `jcnn predict` and
`jcnn evaluate` end to end."""
import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import jcnn
from jcnn.cli import main
from jcnn.cli import train as T
from jcnn.train import trained as TR
from jcnn.train.checkpoint import CheckpointError, save_checkpoint
from jcnn.train.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One epoch of `jcnn train` (LeNet on the digits) in this process: its --out dir."""
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--epochs", "1", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def raw():
    """The digits' test images as stored: uint8 pixels 0..16, (360, 8, 8)."""
    with np.load(ROOT / "jcnn" / "assets" / "digits.npz") as z:
        return z["test_images"]


@pytest.fixture(scope="module")
def trained(run):
    return jcnn.load_trained(run)


def _nll(logits, labels):
    logits = np.asarray(logits, np.float64)
    top = logits.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return log_z - logits[np.arange(len(labels)), labels]


def test_the_run_s_own_test_loss_and_accuracy_come_back(run, trained, raw, digits):
    (record,) = [json.loads(line) for line in (run / T.METRICS).read_text().splitlines()]
    logits = trained.logits(raw)
    assert logits.shape == (360, 10) and isinstance(logits, jax.Array)
    np.testing.assert_allclose(_nll(logits, digits.test_labels).mean(), record["test_loss"],
                               rtol=1e-5)
    assert np.mean(trained.predict(raw) == digits.test_labels) == record["test_accuracy"]
    assert TR.CHECKPOINT == T.CHECKPOINT
    assert {k: trained.config[k] for k in ("num_classes", "input_shape", "pixel_max")} == \
        {"num_classes": 10, "input_shape": [8, 8, 1], "pixel_max": 16}


def test_a_file_and_its_dir_load_the_same(run, trained):
    other = jcnn.load_trained(run / T.CHECKPOINT)
    for a, b in zip(jax.tree_util.tree_leaves((trained.params, trained.state)),
                    jax.tree_util.tree_leaves((other.params, other.state))):
        np.testing.assert_array_equal(a, b)
    assert other.config == trained.config and isinstance(other, jcnn.Trained)


def test_raw_pixels_and_scaled_floats_give_the_same_logits(trained, raw, digits):
    np.testing.assert_allclose(trained.logits(raw), trained.logits(digits.test_images),
                               rtol=1e-6, atol=1e-6)
    labels = trained.predict(raw)
    np.testing.assert_array_equal(labels, np.argmax(np.asarray(trained.logits(raw)), axis=1))
    assert labels.dtype.kind == "i"


def test_one_image_or_many_in_every_layout(trained, raw):
    many = trained.predict(raw[:5])
    assert many.shape == (5,)
    np.testing.assert_array_equal(trained.predict(raw[:5, :, :, None]), many)
    for one in (raw[3], raw[3][:, :, None], raw[3].astype(np.float64) / 16):
        np.testing.assert_array_equal(trained.predict(one), many[3:4])
    assert trained.logits(raw[:0]).shape == (0, 10)


def test_batches_are_padded_and_compile_once(trained, raw):
    """50 images in batches of 7: 8 calls of one compiled function, the last one padded."""
    traces = []

    def apply(*args, **kwargs):
        traces.append(1)
        return trained.model.apply(*args, **kwargs)
    counting = jcnn.Trained(trained.model._replace(apply=apply), trained.params,
                            trained.state, trained.config, batch_size=7)
    logits = counting.logits(raw[:50])
    assert logits.shape == (50, 10) and len(traces) == 1
    np.testing.assert_allclose(logits, trained.logits(raw[:50]), rtol=1e-5, atol=1e-6)
    counting.logits(raw[:9])
    assert len(traces) == 1


@pytest.mark.parametrize("images, says", [
    (np.zeros((5, 9, 9), np.uint8), r"must be \(N, 8, 8, 1\), \(N, 8, 8\) or one \(8, 8, 1\) "
                                    r"image, as the run's digits inputs; got shape \(5, 9, 9\)"),
    (np.zeros((5, 8, 8, 3), np.float32), r"got shape \(5, 8, 8, 3\)"),
    (np.zeros((2, 5, 8, 8, 1), np.float32), r"got shape \(2, 5, 8, 8, 1\)"),
    (np.zeros(8, np.float32), r"got shape \(8,\)"),
    (np.full((2, 8, 8), 255, np.uint8), r"raw pixels 0..16 for this run, got values 255..255"),
])
def test_bad_images_are_refused_in_one_line(trained, images, says):
    with pytest.raises(ValueError, match=says) as info:
        trained.predict(images)
    assert "\n" not in str(info.value)


def test_strings_are_not_images(trained):
    with pytest.raises(TypeError, match="integer pixels or floats, got dtype <U1"):
        trained.predict(np.full((8, 8), "a"))


def _resaved(run, tmp_path, **changes):
    """The run's checkpoint, saved again with its config changed (None: key removed)."""
    with np.load(run / T.CHECKPOINT) as z:
        tree = {k: z[k] for k in z.files if not k.startswith("__")}
        config = json.loads(str(z["__config__"]))
    config = {k: v for k, v in {**config, **changes}.items() if v is not None}
    path = tmp_path / "resaved.npz"
    save_checkpoint(path, tree, config)
    return path


def test_a_checkpoint_without_the_inference_fields_gets_them_from_its_dataset(
        run, trained, raw, tmp_path):
    old = _resaved(run, tmp_path, num_classes=None, input_shape=None, pixel_max=None)
    np.testing.assert_array_equal(jcnn.load_trained(old).predict(raw), trained.predict(raw))


@pytest.mark.parametrize("changes, says", [
    ({"num_classes": None, "input_shape": None, "data": "svhn"},
     "records no input shape, and its dataset 'svhn' is not one of"),
    ({"model": None}, "names model None, not one of lenet"),
    ({"model": "vgg"}, "names model 'vgg'"),
    ({"dtype": "float8"}, "names dtype 'float8'"),
    ({"input_shape": [8, 8]}, r"has input_shape \[8, 8\], not \[H, W, C\]"),
    ({"num_classes": "10"}, "has num_classes '10', not an int > 0"),
    ({"pixel_max": 0}, "has pixel_max 0, not an int in 1..255"),
    ({"num_classes": 12}, r"params/9_dense/b has shape \(10,\) .*expected shape \(12,\)"),
])
def test_a_tampered_config_is_named(run, tmp_path, changes, says):
    path = _resaved(run, tmp_path, **changes)
    with pytest.raises(CheckpointError, match=f"checkpoint {path}: .*{says}"):
        jcnn.load_trained(path)


def test_a_dir_without_a_checkpoint_and_a_file_that_is_not_one_are_named(tmp_path):
    with pytest.raises(CheckpointError, match=f"{tmp_path}: a directory without a "
                                              f"checkpoint.npz"):
        jcnn.load_trained(tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    with pytest.raises(CheckpointError, match=f"checkpoint {text}: not an .npz file"):
        jcnn.load_trained(text)


# ---- jcnn predict / jcnn evaluate ---------------------------------------------------------

def _idx(images: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, images.ndim]) + b"".join(
        d.to_bytes(4, "big") for d in images.shape)
    return header + images.tobytes()


def test_predict_reads_npy_and_idx_and_writes_lines_or_csv(run, trained, raw, tmp_path,
                                                          capsys):
    expected = trained.predict(raw[:20])
    npy, idx, gz = tmp_path / "x.npy", tmp_path / "x-idx3-ubyte", tmp_path / "x-idx3-ubyte.gz"
    np.save(npy, raw[:20])
    idx.write_bytes(_idx(raw[:20]))
    gz.write_bytes(gzip.compress(_idx(raw[:20])))
    for images in (npy, idx, gz):
        assert main(["predict", str(run), str(images)]) == 0
        assert capsys.readouterr().out.split() == [str(v) for v in expected]
    csv = tmp_path / "labels.csv"
    assert main(["predict", str(run / T.CHECKPOINT), str(npy), "--out", str(csv)]) == 0
    assert capsys.readouterr().out == ""
    lines = csv.read_text().splitlines()
    assert lines == ["index,label"] + [f"{i},{v}" for i, v in enumerate(expected)]


@pytest.mark.parametrize("make, says", [
    (lambda p: np.save(p, np.zeros((2, 9, 9), np.uint8)), r"got shape \(2, 9, 9\)"),
    (lambda p: p.write_bytes(b"\x93NUMPY garbage"), "not a readable .npy array"),
    (lambda p: np.save(p, np.zeros((2, 8, 8), bool)), "integer pixels or floats"),  # TypeError
])
def test_predict_refuses_bad_images_in_one_line(run, tmp_path, capsys, make, says):
    images = tmp_path / "bad.npy"
    make(images)
    assert main(["predict", str(run), str(images)]) == 1
    assert re.fullmatch(f"jcnn predict: .*{says}.*\n", capsys.readouterr().err)


def test_evaluate_prints_the_run_s_accuracy_and_draws_the_matrix(run, capsys, tmp_path):
    (record,) = [json.loads(line) for line in (run / T.METRICS).read_text().splitlines()]
    png = tmp_path / "confusion.png"
    assert main(["evaluate", str(run), "--data", "digits", "--out", str(png)]) == 0
    out = capsys.readouterr().out.splitlines()
    correct = round(record["test_accuracy"] * 360)
    assert out[0].startswith(f"test accuracy {correct / 360:.2%} ({correct}/360)")
    rows = [list(map(int, line.split()))[1:] for line in out[3:13]]
    assert np.trace(rows) == correct and np.sum(rows) == 360
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _jcnn(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT),
                                                         os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "jcnn", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_command_line_prints_labels_and_fails_in_one_line(run, trained, raw, tmp_path):
    np.save(tmp_path / "x.npy", raw[:4])
    proc = _jcnn("predict", run, tmp_path / "x.npy")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(v) for v in trained.predict(raw[:4])]
    proc = _jcnn("predict", tmp_path, tmp_path / "x.npy")
    assert proc.returncode == 1
    assert proc.stderr == f"jcnn predict: {tmp_path}: a directory without a checkpoint.npz " \
                          f"(not a jcnn train --out directory?)\n"


def test_evaluate_on_another_dataset_s_images_says_what_it_expected(run, tmp_path, capsys):
    for prefix, n in (("train", 3), ("t10k", 2)):
        (tmp_path / f"{prefix}-images-idx3-ubyte").write_bytes(
            _idx(np.zeros((n, 28, 28), np.uint8)))
        (tmp_path / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(np.zeros(n, np.uint8)))
    assert main(["evaluate", str(run), "--data", "mnist", "--data-dir", str(tmp_path)]) == 1
    assert re.fullmatch(r"jcnn evaluate: Trained: images must be \(N, 8, 8, 1\).* got shape "
                        r"\(2, 28, 28, 1\)\n", capsys.readouterr().err)
    none = tmp_path / "none"
    assert main(["evaluate", str(run), "--data", "mnist", "--data-dir", str(none)]) == 1
    assert re.fullmatch(f"jcnn evaluate: .*{none}.*\n", capsys.readouterr().err)
