"""Training: the step learns, hand rules and autodiff trace the same curve, bfloat16 keeps
float32 master params, and `jcnn train` resumes exactly, stops on NaN and saves on Ctrl-C."""
import functools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jcnn
from jcnn import layers as L
from jcnn import models, reference
from jcnn.cli import main
from jcnn.cli import train as T
from jcnn.train.checkpoint import read_config
from jcnn.train.data import batches, load_dataset
from jcnn.train.parallel import data_mesh, shard_batch
from jcnn.train.step import evaluate, init_train_state, make_eval_step, make_train_step

ROOT = Path(__file__).resolve().parents[1]
tiny_lenet = functools.partial(models.lenet, channels=(4, 8), hidden=(16,))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _train(model, ops, optimizer, digits, steps, *, dtype=None, compute_dtype=None, bs=32):
    """`steps` steps on the first digits batches; returns (losses, final TrainState)."""
    ts = init_train_state(model, optimizer, jax.random.key(0), (bs, 8, 8, 1))
    def cast(a):
        return a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a
    ts = jax.tree_util.tree_map(cast, ts) if dtype else ts
    step = make_train_step(model, optimizer, ops=ops, compute_dtype=compute_dtype)
    losses = []
    for epoch in range(steps // (len(digits.train_labels) // bs) + 1):
        for x, y in batches(digits.train_images, digits.train_labels, bs, seed=0, epoch=epoch):
            if len(losses) == steps:
                return losses, ts
            ts, loss = step(ts, *shard_batch((x.astype(dtype or x.dtype), y), data_mesh()))
            losses.append(float(loss))
    return losses, ts


def test_a_short_run_learns_the_digits(digits):
    # seeds 0-3 reach 93-95% with this model: the bar leaves room for other float orders
    model, optimizer = models.lenet(10, channels=(8, 16), hidden=(32,)), optax.adam(3e-3)
    _, ts = _train(model, jcnn, optimizer, digits, 3 * 44)
    loss, accuracy = evaluate(make_eval_step(model), ts.params, ts.state,
                                digits.test_images, digits.test_labels, 64, data_mesh())
    assert accuracy >= 0.9, f"test accuracy {accuracy:.3f} after 3 epochs"


def tiny_bn_net(num_classes, ops):
    """conv-batch_norm-relu: batch statistics and running state in the training step."""
    return L.serial(L.conv2d(4, 3, padding=1, ops=ops), L.batch_norm(ops=ops), L.relu(ops=ops),
                    L.global_avg_pool2d(ops=ops), L.dense(num_classes, ops=ops))


@pytest.mark.parametrize("build", [
    tiny_lenet, tiny_bn_net, lambda n, ops: models.resnet(n, 8, width=4, ops=ops),
], ids=["lenet", "batch-norm", "resnet8"])
def test_hand_rules_and_autodiff_give_the_same_curve_in_float64(build, digits):
    optimizer = optax.sgd(0.05, momentum=0.9)
    runs = [_train(build(10, ops=ops), ops, optimizer, digits, 6, dtype=jnp.float64, bs=16)
            for ops in (jcnn, reference)]
    (hand, ts_hand), (auto, ts_auto) = runs
    assert hand[-1] < hand[0]
    np.testing.assert_allclose(hand, auto, rtol=1e-10)
    for a, b in zip(jax.tree_util.tree_leaves(ts_hand), jax.tree_util.tree_leaves(ts_auto)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_bfloat16_computes_in_bfloat16_on_float32_master_params(digits):
    model, optimizer = tiny_lenet(10), optax.sgd(0.1)
    full, _ = _train(model, jcnn, optimizer, digits, 3)
    half, ts = _train(model, jcnn, optimizer, digits, 3, compute_dtype=jnp.bfloat16)
    assert {a.dtype for a in jax.tree_util.tree_leaves(ts.params)} == {jnp.dtype(jnp.float32)}
    assert half != full  # the forward really ran in bfloat16 ...
    np.testing.assert_allclose(half, full, rtol=0.05)  # ... and still tracks float32


# ---- `jcnn train`, in this process, on a tiny LeNet -------------------------------------

@pytest.fixture
def cli(monkeypatch, capsys):
    """Run `jcnn train ARGS --model lenet` in-process with a tiny LeNet; returns
    (exit code, stdout, stderr)."""
    monkeypatch.setitem(T.MODELS, "lenet", tiny_lenet)

    def run(*args):
        code = main(["train", "--batch-size", "32", "--lr", "0.01", *map(str, args)])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def _params(out_dir):
    with np.load(out_dir / T.CHECKPOINT, allow_pickle=False) as data:
        return {k: data[k] for k in data.files if not k.startswith("__")}


def _interrupt_at_step(monkeypatch, n):
    """Send this process a real SIGINT when the n-th training batch is sharded."""
    calls = []

    def shard(tree, mesh):
        if len(tree) == 2:  # (images, labels): a training batch
            calls.append(1)
            if len(calls) == n:
                os.kill(os.getpid(), signal.SIGINT)
        return shard_batch(tree, mesh)
    monkeypatch.setattr(T, "shard_batch", shard)


def test_resume_continues_exactly_after_an_epoch_or_a_ctrl_c(cli, tmp_path, monkeypatch):
    straight, split, interrupted = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert cli("--epochs", 2, "--out", straight)[0] == 0
    assert cli("--epochs", 1, "--out", split)[0] == 0
    assert cli("--epochs", 2, "--out", split, "--resume")[0] == 0
    with monkeypatch.context() as m:
        _interrupt_at_step(m, 10)
        code, _, err = cli("--epochs", 2, "--out", interrupted)
    assert code == 130 and "interrupted at step 10" in err
    assert int(_params(interrupted)["step"]) == 10
    code, out, _ = cli("--epochs", 2, "--out", interrupted, "--resume")
    assert code == 0 and "step 10" in out
    expected = _params(straight)
    for run in (split, interrupted):
        got = _params(run)
        assert got.keys() == expected.keys()
        for k in expected:
            np.testing.assert_array_equal(got[k], expected[k], err_msg=f"{run.name}: {k}")
    records = {run: [json.loads(line) for line in (run / "metrics.jsonl").read_text()
                     .splitlines()] for run in (straight, split, interrupted)}
    for run in (split, interrupted):
        assert [r["epoch"] for r in records[run]] == [1, 2], run.name
    # the Ctrl-C'd epoch's record covers its steps before the interrupt too (saved with it)
    assert records[interrupted][0]["train_loss"] == records[straight][0]["train_loss"]
    assert "interrupted_epoch" not in read_config(interrupted / T.CHECKPOINT)


def test_a_run_that_died_before_its_checkpoint_reruns_the_epoch_once(cli, tmp_path):
    """Each epoch writes its metrics record, then its checkpoint. Dying between the two leaves
    the last checkpoint one epoch behind the metrics: the resumed run re-runs that epoch and
    keeps one record for it, the new one."""
    out = tmp_path / "run"
    assert cli("--epochs", 1, "--out", out)[0] == 0
    epoch_1 = (out / T.CHECKPOINT).read_bytes()
    assert cli("--epochs", 2, "--out", out, "--resume")[0] == 0
    (out / T.CHECKPOINT).write_bytes(epoch_1)  # as if it died before epoch 2's checkpoint
    metrics = out / "metrics.jsonl"
    metrics.write_text(metrics.read_text().replace('"epoch": 2', '"epoch": 2, "stale": true'))
    assert cli("--epochs", 2, "--out", out, "--resume")[0] == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and "stale" not in records[1]


def test_a_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(cli, tmp_path,
                                                                            monkeypatch):
    # its 51st update is NaN: the loss turns NaN in epoch 2 of 44 steps
    monkeypatch.setitem(T.OPTIMIZERS, "adam", _poisoned_adam_from(50))
    code, out, err = cli("--epochs", 3, "--out", tmp_path)
    assert code == 1 and "epoch   1/3" in out
    assert "loss is nan at step 52 (epoch 2)" in err and str(tmp_path / T.CHECKPOINT) in err
    saved = _params(tmp_path)
    assert int(saved["step"]) == 44
    assert all(np.isfinite(v).all() for k, v in saved.items() if k.startswith("params/"))


def _poisoned_adam_from(step):
    """adam whose update turns NaN from `step` on."""
    def make(lr):
        return optax.chain(optax.adam(lr), optax.scale_by_schedule(
            lambda n: jnp.where(n < step, 1.0, jnp.nan)))
    return make


def test_a_new_run_keeps_an_old_run_s_files_until_it_replaces_them(cli, tmp_path, monkeypatch):
    """A new run (no --resume) into a directory holding another run's metrics and checkpoint:
    if it fails before its first epoch is saved, the old pair is left whole, and its NaN
    message does not call the old run's checkpoint its own."""
    assert cli("--epochs", 1, "--out", tmp_path)[0] == 0
    metrics, checkpoint = ((tmp_path / n).read_bytes() for n in ("metrics.jsonl", T.CHECKPOINT))
    with pytest.raises(SystemExit, match="--batch-size 5000 is more than the 1437 training"):
        cli("--epochs", 1, "--out", tmp_path, "--batch-size", 5000)
    monkeypatch.setitem(T.OPTIMIZERS, "adam", _poisoned_adam_from(5))
    code, _, err = cli("--epochs", 1, "--out", tmp_path)
    assert code == 1 and "Last good checkpoint: none (no epoch finished)" in err
    assert (tmp_path / "metrics.jsonl").read_bytes() == metrics
    assert (tmp_path / T.CHECKPOINT).read_bytes() == checkpoint


@pytest.mark.parametrize("option, value, says", [
    ("--batch-size", "0", "must be > 0, got 0"),
    ("--batch-size", "-4", "must be > 0, got -4"),
    ("--epochs", "-1", "must be > 0, got -1"),
    ("--lr", "-0.1", "must be > 0, got -0.1"),
    ("--lr", "nan", "must be > 0, got nan"),
    ("--lr-decay", "0", "must be > 0, got 0"),
    ("--batch-size", "3.5", "not a number: '3.5'"),
])
def test_bad_numbers_are_usage_errors_naming_the_option(option, value, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", option, value])
    assert exit_.value.code == 2
    assert f"argument {option}: {says}" in capsys.readouterr().err


def test_resume_says_which_given_options_it_ignores(cli, tmp_path):
    """--resume takes the saved config; an option given with another value is named, not
    silently dropped (the cli fixture's own --lr 0.01 and --batch-size 32 match the run's)."""
    assert cli("--epochs", 1, "--out", tmp_path)[0] == 0
    code, _, err = cli("--epochs", 1, "--out", tmp_path, "--resume", "--optimizer", "sgd",
                       "--seed", 3)
    assert code == 0
    assert ("--resume keeps the saved run's --optimizer adam (not sgd), --seed 0 (not 3)"
            in err), err
    assert "--lr" not in err and "--batch-size" not in err


def test_resume_without_a_checkpoint_says_what_is_missing(cli, tmp_path):
    with pytest.raises(SystemExit, match="--resume needs --out DIR holding checkpoint.npz"):
        cli("--out", tmp_path, "--resume")


def _python(*args) -> subprocess.CompletedProcess:
    """`python ARGS` in a fresh process (stdout/stderr are pipes, not terminals)."""
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_the_command_line_writes_metrics_checkpoint_and_plots(tmp_path):
    out = tmp_path / "run"
    proc = _python("-m", "jcnn", "train", "--epochs", 1, "--out", out)
    assert "test accuracy" in proc.stdout.splitlines()[-1]
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"epoch", "train_loss", "test_loss", "test_accuracy", "seconds",
            "images_per_second"} <= record.keys() and record["epoch"] == 1
    assert 0 <= record["test_accuracy"] <= 1 and record["images_per_second"] > 0
    for png in ("curves.png", "filters.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_config(out / T.CHECKPOINT)["model"] == "lenet"
    assert "\r" not in proc.stderr  # no progress bar when stderr is not a terminal


def test_filters_plot_shows_the_change_on_one_scale_per_row(tmp_path, rng):
    """filters.png: before and after on ONE colour scale (equal colours, equal weights), the
    change (after - before) on its own, each row with a colour bar; one tile per filter."""
    from jcnn.train import plots

    before = rng.standard_normal((5, 5, 1, 3))
    after = before + 0.01 * rng.standard_normal(before.shape)  # a small change
    after[0, 0, 0, 1] = 4.0  # the largest weight: it sets the before/after scale
    fig = plots.filters_figure(before, after, title="t")
    rows = fig.subfigs
    assert [sub._suptitle.get_text() for sub in rows] == [
        "before training", "after training", "change = after - before"]
    images = [[im for ax in sub.axes for im in ax.get_images()] for sub in rows]
    assert [len(row) for row in images] == [3, 3, 3]
    weights = [im.get_clim() for row in images[:2] for im in row]
    assert set(weights) == {(-4.0, 4.0)}
    change = after - before
    limit = np.abs(change).max()
    for o, im in enumerate(images[2]):
        assert im.get_clim() == (-limit, limit)
        np.testing.assert_allclose(im.get_array(), change[:, :, 0, o])
    for o, im in enumerate(images[0]):
        np.testing.assert_allclose(im.get_array(), before[:, :, 0, o])
    # one colour bar per row: an extra axes in each subfigure
    assert [len(sub.axes) - 3 for sub in rows] == [1, 1, 1]
    plots.plot_filters(before, after, tmp_path / "filters.png")
    assert (tmp_path / "filters.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("script, argv, expect", [
    ("train_lenet.py", ["1"], "epoch 1: batch loss"),
    ("custom_layer.py", ["20"], "swish model: loss"),
])
def test_the_examples_run(script, argv, expect):
    assert expect in _python(ROOT / "examples" / script, *argv).stdout
