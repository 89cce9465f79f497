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
from jcnn.train import plots
from jcnn.train.checkpoint import read_config, save_checkpoint
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
    tiny_lenet, tiny_bn_net,
    pytest.param(lambda n, ops: models.resnet(n, 8, width=4, ops=ops), marks=pytest.mark.slow),
], ids=["lenet", "batch-norm", "resnet8"])  # resnet8's convs and norms: lenet's and batch-norm's
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
    (exit code, stdout, stderr). Its plots are placeholder files: drawing them took 0.7 s a run
    (40 runs here); the real ones are the command-line, kill and plot tests'."""
    monkeypatch.setitem(T.MODELS, "lenet", tiny_lenet)
    for name in ("plot_curves", "plot_filters"):
        monkeypatch.setattr(plots, name, lambda *args: Path(args[-1]).write_bytes(b"\x89PNG"))

    def run(*args):
        code = main(["train", "--batch-size", "32", "--lr", "0.01", *map(str, args)])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def _params(out_dir):
    with np.load(out_dir / T.CHECKPOINT, allow_pickle=False) as data:
        return {k: data[k] for k in data.files if not k.startswith("__")}


def _interrupt_at_step(monkeypatch, n, signum=signal.SIGINT):
    """Send this process a real `signum` when the n-th training batch is sharded."""
    calls = []

    def shard(tree, mesh):
        if len(tree) == 2:  # (images, labels): a training batch
            calls.append(1)
            if len(calls) == n:
                os.kill(os.getpid(), signum)
        return shard_batch(tree, mesh)
    monkeypatch.setattr(T, "shard_batch", shard)


def test_resume_continues_exactly_after_an_epoch_a_ctrl_c_or_a_sigterm(cli, tmp_path,
                                                                      monkeypatch):
    straight, split, interrupted = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    terminated = tmp_path / "d"
    assert cli("--epochs", 2, "--out", straight)[0] == 0
    assert cli("--epochs", 1, "--out", split)[0] == 0
    assert cli("--epochs", 2, "--out", split, "--resume")[0] == 0
    with monkeypatch.context() as m:
        _interrupt_at_step(m, 10)
        code, _, err = cli("--epochs", 2, "--out", interrupted)
    assert code == 130 and "interrupted (SIGINT) at step 10; saved" in err
    assert int(_params(interrupted)["step"]) == 10
    code, out, _ = cli("--epochs", 2, "--out", interrupted, "--resume")
    assert code == 0 and "step 10" in out
    with monkeypatch.context() as m:
        _interrupt_at_step(m, 50, signal.SIGTERM)
        code, _, err = cli("--epochs", 2, "--out", terminated)
    assert code == 143 and "terminated (SIGTERM) at step 50; saved" in err
    assert cli("--epochs", 2, "--out", terminated, "--resume")[0] == 0
    expected = _params(straight)
    for run in (split, interrupted, terminated):
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


def _signal_on_call(monkeypatch, owner, name, signum=signal.SIGINT):
    """`owner.name` sends this process `signum` when first called, then does its work."""
    real, calls = getattr(owner, name), []

    def send(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)
    monkeypatch.setattr(owner, name, send)


@pytest.mark.parametrize("phase, says, step", [
    ("compile", "interrupted (SIGINT) before training began; nothing was saved", None),
    pytest.param("evaluate", "interrupted (SIGINT) after the last epoch; ", 44,  # the last
                 marks=pytest.mark.slow),  # epoch; compile's is the default run's phase
    pytest.param("plot", "interrupted (SIGINT) after the last epoch; ", 44,
                 marks=pytest.mark.slow),
])
def test_a_signal_in_any_phase_ends_with_a_message_and_a_usable_checkpoint(
        phase, says, step, cli, tmp_path, monkeypatch):
    from jcnn.train import plots
    owner, name = {"compile": (jax.stages.Lowered, "compile"), "evaluate": (T, "evaluate"),
                   "plot": (plots, "plot_curves")}[phase]
    _signal_on_call(monkeypatch, owner, name)
    code, _, err = cli("--epochs", 1, "--out", tmp_path)
    assert code == 130 and says in err and err.strip().count("\n") == 0, err
    assert (int(_params(tmp_path)["step"]) if step else (tmp_path / T.CHECKPOINT).exists()) == (
        step or False)
    monkeypatch.undo()
    monkeypatch.setitem(T.MODELS, "lenet", tiny_lenet)
    again = "--resume" if step else "--overwrite"
    code, out, err = cli("--epochs", 1, "--out", tmp_path, again)
    assert code == 0 and (tmp_path / "curves.png").exists(), err


def test_a_full_disk_fails_in_one_line_and_loses_nothing(cli, tmp_path):
    """On a small tmpfs filled up after epoch 1: epoch 2's save fails with ENOSPC naming the
    file, epoch 1's checkpoint and metrics stay whole and no temporary file is left; with
    space again, --resume finishes the run."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs",
                                            str(disk)], capture_output=True).returncode:
        pytest.skip("needs root and mount to make a small tmpfs")
    try:
        out = disk / "run"
        assert cli("--epochs", 1, "--out", out)[0] == 0
        saved = {p.name: p.read_bytes() for p in out.iterdir()}
        with open(disk / "filler", "wb") as f:
            with pytest.raises(OSError):
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
        code, _, err = cli("--epochs", 2, "--out", out, "--resume")
        assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
        assert "No space left on device" in err and str(out) in err
        assert {p.name: p.read_bytes() for p in out.iterdir()} == saved
        (disk / "filler").unlink()
        assert cli("--epochs", 2, "--out", out, "--resume")[0] == 0
        assert int(_params(out)["step"]) == 88
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_read_only_out_is_refused_before_training(cli, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = os.geteuid() == 0 and not subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)],
        capture_output=True).returncode
    if not mounted:
        ro.chmod(0o555)
    try:
        compiled = []
        monkeypatch.setattr(T, "_setup", lambda *a: compiled.append(1))
        code, _, err = cli("--out", ro / "run")
        if not mounted and os.geteuid() == 0:
            pytest.skip("root writes into a 0o555 directory and mount failed")
        assert code == 1 and not compiled and err.count("\n") == 1, err
        assert f"--out {ro / 'run'}: cannot write there" in err
    finally:
        if mounted:
            subprocess.run(["umount", str(ro)], check=True)


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
    """A new run into a directory holding another run's metrics and checkpoint is refused
    without --overwrite; with it, if it fails before its first epoch is saved, the old pair is
    left whole, and its NaN message does not call the old run's checkpoint its own."""
    assert cli("--epochs", 1, "--out", tmp_path)[0] == 0
    metrics, checkpoint = ((tmp_path / n).read_bytes() for n in ("metrics.jsonl", T.CHECKPOINT))
    code, _, err = cli("--epochs", 1, "--out", tmp_path)
    assert code == 2 and "holds another run (checkpoint.npz, metrics.jsonl, metrics.csv)" in err
    code, _, err = cli("--epochs", 1, "--out", tmp_path, "--overwrite", "--batch-size", 5000)
    assert code == 2 and "--batch-size 5000 is more than the 1437 training" in err
    monkeypatch.setitem(T.OPTIMIZERS, "adam", _poisoned_adam_from(5))
    code, _, err = cli("--epochs", 1, "--out", tmp_path, "--overwrite")
    assert code == 1 and "Last good checkpoint: none (no epoch finished)" in err
    assert (tmp_path / "metrics.jsonl").read_bytes() == metrics
    assert (tmp_path / T.CHECKPOINT).read_bytes() == checkpoint


def test_overwrite_removes_the_old_run_when_it_saves_its_first_epoch(cli, tmp_path):
    """Stopped after its first checkpoint, an --overwrite run leaves its own files only: the
    old run's metrics went with its checkpoint, so a resume never mixes the two runs."""
    assert cli("--epochs", 2, "--out", tmp_path, "--seed", 1)[0] == 0
    code, _, _ = cli("--epochs", 1, "--out", tmp_path, "--overwrite")
    assert code == 0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text()
               .splitlines()]
    assert [r["epoch"] for r in records] == [1] and read_config(tmp_path / T.CHECKPOINT)[
        "seed"] == 0


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
    code, _, err = cli("--out", tmp_path, "--resume")
    assert code == 2 and "--resume needs --out DIR holding checkpoint.npz" in err


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
    *_, summary, written = proc.stdout.splitlines()
    assert "test accuracy" in summary and written == "jcnn train: wrote " + ", ".join(
        str(out / n) for n in ("checkpoint.npz", "metrics.jsonl", "metrics.csv", "curves.png",
                               "filters.png"))
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
    # 15 s of a 10-minute suite; `jcnn train`'s own path is the command-line test's above
    pytest.param("train_lenet.py", ["1"], "epoch 1: batch loss", marks=pytest.mark.slow),
    ("custom_layer.py", ["20"], "swish model: loss"),
])
def test_the_examples_run(script, argv, expect):
    assert expect in _python(ROOT / "examples" / script, *argv).stdout


# ---- kills: at any point, the run can be finished with --resume, bit-exactly ------------

# `jcnn train ARGS` with the tiny LeNet in a child process that sends itself a signal at the
# n-th call of a function: $JCNN_TEST_KILL = "WHERE N SIGNAL", WHERE one of fsync and replace
# (of a file in --out: inside an atomic write), step (a training batch), compile, plot.
CHILD = r'''
import functools, os, signal, sys
import jax
from jcnn import models
from jcnn.cli import main
from jcnn.cli import train as T
from jcnn.train import plots
T.MODELS["lenet"] = functools.partial(models.lenet, channels=(4, 8), hidden=(16,))
out = os.path.realpath(sys.argv[sys.argv.index("--out") + 1])
where, n, sig = (os.environ.get("JCNN_TEST_KILL") or "none 0 KILL").split()
calls = []

def at(fn, ours=lambda *a: True):
    def wrapped(*args, **kwargs):
        if ours(*args):
            calls.append(1)
            if len(calls) == int(n):
                os.kill(os.getpid(), getattr(signal, "SIG" + sig))
        return fn(*args, **kwargs)
    return wrapped

in_out = lambda path: os.path.realpath(path).startswith(out)
if where == "fsync":
    os.fsync = at(os.fsync, lambda fd: in_out(os.readlink(f"/proc/self/fd/{fd}")))
elif where == "replace":
    os.replace = at(os.replace, lambda src, dst: in_out(dst))
elif where == "step":
    T.shard_batch = at(T.shard_batch)
elif where == "compile":
    jax.stages.Lowered.compile = at(jax.stages.Lowered.compile)
elif where == "plot":
    plots.plot_curves = at(plots.plot_curves)
sys.exit(main(sys.argv[1:]))
'''
TINY = ("--batch-size", 32, "--lr", 0.01, "--epochs", 2)


def _child(out, *args, kill=""):
    env = {**os.environ, "JCNN_TEST_KILL": kill,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", CHILD, "train", *map(str, TINY), "--out",
                           str(out), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def _finish(out):
    """Run on to the end as a user would: --resume when there is a checkpoint, else start
    again (--overwrite when the killed run left metrics)."""
    again = ("--resume",) if (out / T.CHECKPOINT).exists() else (
        ("--overwrite",) if (out / T.METRICS).exists() else ())
    proc = _child(out, *again)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def _same_run(got, expected):
    """The same params, optimiser state, step and key bit for bit, and the same records."""
    a, b = _params(got), _params(expected)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    keep = ("epoch", "step", "train_loss", "test_loss", "test_accuracy")
    records = [[{k: r[k] for k in keep} for r in map(json.loads, (run / T.METRICS).read_text()
                                                    .splitlines())] for run in (got, expected)]
    assert records[0] == records[1]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The run the killed ones must end up as, uninterrupted, in a child process too (the
    test process's XLA settings round differently)."""
    out = tmp_path_factory.mktemp("straight")
    proc = _child(out)
    assert proc.returncode == 0, proc.stderr
    return out


# Each epoch writes metrics.jsonl, metrics.csv, then checkpoint.npz, each with an fsync of the
# file (before its rename) and one of the directory (after): epoch 1 makes fsyncs 1-6 and
# replaces 1-3, epoch 2 fsyncs 7-12 and replaces 4-6.
KILLS = {  # kill: (exit code, what stderr says, whether a temporary file is left)
    # inside the write of epoch 2's checkpoint (after its metrics): epoch 2 runs again
    "fsync 11 KILL": (-signal.SIGKILL, None, True),
}
SLOW_KILLS = {
    "step 50 TERM": (128 + signal.SIGTERM, "terminated (SIGTERM) at step 50; saved", False),
    "compile 1 INT": (128 + signal.SIGINT, "before training began; nothing was saved", False),
    "fsync 1 KILL": (-signal.SIGKILL, None, True),     # epoch 1's metrics
    "replace 1 KILL": (-signal.SIGKILL, None, True),
    "fsync 6 KILL": (-signal.SIGKILL, None, False),    # after epoch 1's checkpoint is in place
    "replace 3 KILL": (-signal.SIGKILL, None, True),   # metrics, no checkpoint: --overwrite
    "replace 4 KILL": (-signal.SIGKILL, None, True),
    "fsync 7 KILL": (-signal.SIGKILL, None, True),
    "step 1 KILL": (-signal.SIGKILL, None, False),
    "step 60 KILL": (-signal.SIGKILL, None, False),
    "step 44 INT": (128 + signal.SIGINT, "interrupted (SIGINT) after epoch 1; saved", False),
    "step 43 INT": (128 + signal.SIGINT, "interrupted (SIGINT) at step 43; saved", False),
    "fsync 3 TERM": (128 + signal.SIGTERM, "after epoch 1; saved", False),
    "compile 2 TERM": (128 + signal.SIGTERM, "before training began", False),
    "step 88 INT": (128 + signal.SIGINT, "after the last epoch; ", False),  # its last step
    "fsync 7 INT": (128 + signal.SIGINT, "after the last epoch;", False),
    "plot 1 INT": (128 + signal.SIGINT, "after the last epoch;", False),
}


@pytest.mark.parametrize("kill", [*KILLS, *(pytest.param(k, marks=pytest.mark.slow)
                                            for k in SLOW_KILLS)])
def test_a_run_killed_anywhere_finishes_as_if_it_never_was(kill, straight, tmp_path):
    code, says, tmp_left = {**KILLS, **SLOW_KILLS}[kill]
    out = tmp_path / "run"
    proc = _child(out, kill=kill)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    if says:
        (line,) = [s for s in proc.stderr.splitlines() if s]
        assert says in line, proc.stderr
    assert tmp_left == any(p.name.endswith(".tmp") for p in out.iterdir()), sorted(out.iterdir())
    _finish(out)
    _same_run(out, straight)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_random_kills_from_outside(seed, straight, tmp_path):
    """SIGKILL, SIGTERM or SIGINT at a random moment, over and over, until the run is done."""
    rng = np.random.default_rng(seed)
    out = tmp_path / "run"
    for _ in range(3):
        again = ("--resume",) if (out / T.CHECKPOINT).exists() else (
            ("--overwrite",) if (out / T.METRICS).exists() else ())
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.Popen([sys.executable, "-c", CHILD, "train", *map(str, TINY), "--out",
                                 str(out), *again], cwd=ROOT, env=env, stderr=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, text=True)
        try:
            proc.wait(timeout=rng.uniform(2, 12))
        except subprocess.TimeoutExpired:
            proc.send_signal(rng.choice([signal.SIGKILL, signal.SIGTERM, signal.SIGINT]))
        err = proc.communicate(timeout=300)[1]
        assert "Traceback" not in err and proc.returncode != -signal.SIGSEGV, err
    _finish(out)
    _same_run(out, straight)


# ---- training options --------------------------------------------------------------------

def test_random_crops_shift_each_image_with_zero_fill_and_flip(digits):
    from jcnn.train.step import random_crops
    images = jnp.asarray(digits.train_images[:64])
    for pad, flip in ((1, False), (2, True)):
        out = np.asarray(random_crops(pad, flip)(jax.random.key(3), images))
        shifts = set()
        for x, y in zip(np.asarray(images), out):
            padded = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
            found = [(dy, dx, f) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                     for f in ((False, True) if flip else (False,))
                     if np.array_equal((padded[:, ::-1] if f else padded)[dy:dy + 8, dx:dx + 8],
                                       y)]
            assert found, "an output that is no shift of its input"
            shifts.add(found[0])
        assert len(shifts) > (2 * pad + 1) ** 2 // 2  # the shifts (and flips) do vary
        np.testing.assert_array_equal(random_crops(pad, flip)(jax.random.key(3), images), out)


def test_decoupled_weight_decay_subtracts_lr_times_rate_times_each_kernel():
    from jcnn.train.step import decoupled_weight_decay
    schedule = optax.linear_schedule(0.1, 0.05, 10)
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
    grads = {"w": jnp.full((2, 3), 0.5), "b": jnp.full(3, 0.25)}
    optimizer = optax.chain(optax.sgd(schedule), decoupled_weight_decay(0.01, schedule))
    state = optimizer.init(params)
    for step in range(3):
        updates, state = optimizer.update(grads, state, params)
        lr = float(schedule(step))
        np.testing.assert_allclose(updates["w"], -lr * grads["w"] - lr * 0.01 * params["w"],
                                   rtol=1e-6)
        np.testing.assert_allclose(updates["b"], -lr * grads["b"], rtol=1e-6)


@pytest.mark.parametrize("kind", T.SCHEDULES)
def test_schedules_warm_up_linearly_then_follow_their_curve(kind):
    config = {"lr": 0.2, "lr_decay": 0.5, "schedule": kind, "warmup": 1.5, T.HORIZON: 4}
    lr = T._schedule(config, 10)  # 10 steps per epoch: warmup 15 steps, 40 in all
    np.testing.assert_allclose([lr(0), lr(5), lr(15)], [0.0, 0.2 / 3, 0.2], rtol=1e-6)
    after = {"exponential": [0.2, 0.1, 0.05], "constant": [0.2] * 3,
             "cosine": [0.2 * (1 + np.cos(np.pi * k / 25)) / 2 for k in (0, 10, 25)]}[kind]
    np.testing.assert_allclose([lr(15), lr(25), lr(40)], after, rtol=1e-5, atol=1e-7)
    no_warmup = T._schedule({**config, "warmup": 0.0}, 10)
    assert float(no_warmup(0)) == pytest.approx(0.2)


def test_the_validation_split_is_stratified_seeded_and_disjoint(digits):
    data, (images, labels) = T._split(digits, 0.2, seed=0)
    per_label = np.bincount(digits.train_labels, minlength=10)
    np.testing.assert_array_equal(np.bincount(labels, minlength=10),
                                  np.round(0.2 * per_label).astype(int))
    together = np.concatenate([data.train_images, images]).reshape(len(digits.train_labels), -1)
    assert len({r.tobytes() for r in together}) == len(
        {r.tobytes() for r in digits.train_images.reshape(len(together), -1)})
    again, other = T._split(digits, 0.2, seed=0)[1], T._split(digits, 0.2, seed=1)[1]
    np.testing.assert_array_equal(again[0], images)
    assert not np.array_equal(other[0], images)
    assert T._split(digits, None, seed=0) == (digits, None)


def test_options_resume_exactly_and_write_best_csv_and_the_test_once(cli, tmp_path,
                                                                    monkeypatch):
    options = ("--val-fraction", 0.2, "--augment", "--schedule", "cosine", "--warmup", 0.5,
               "--weight-decay", 1e-3, "--epochs", 2)
    straight, interrupted = tmp_path / "a", tmp_path / "b"
    used = []  # the options reach the step: what it was built with
    for name in ("random_crops", "decoupled_weight_decay"):
        real = getattr(T, name)
        monkeypatch.setattr(T, name, lambda *a, real=real, name=name: used.append((name, a))
                            or real(*a))
    code, out, _ = cli(*options, "--out", straight)
    assert sorted((n, a[0]) for n, a in used) == [("decoupled_weight_decay", 1e-3),
                                                   ("random_crops", 1)]
    assert code == 0 and "val_accuracy" in out and "best epoch" in out
    assert f"wrote {straight / T.CHECKPOINT}" in out and str(straight / "best.npz") in out
    with monkeypatch.context() as m:
        _interrupt_at_step(m, 40)
        assert cli(*options, "--out", interrupted)[0] == 130
    code, _, err = cli("--out", interrupted, "--resume", "--epochs", 2, "--schedule", "constant")
    assert code == 0 and "keeps the saved run's --schedule cosine (not constant)" in err
    expected = _params(straight)
    for k, v in _params(interrupted).items():
        np.testing.assert_array_equal(v, expected[k], err_msg=k)
    records = [json.loads(line) for line in (straight / T.METRICS).read_text().splitlines()]
    assert all({"val_loss", "val_accuracy"} <= r.keys() and "test_loss" not in r
               for r in records)
    rows = (straight / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",") == list(records[0]) and len(rows) == 3
    assert [float(x) for x in rows[2].split(",")] == pytest.approx(list(records[1].values()))
    best = max(records, key=lambda r: r["val_accuracy"])
    with np.load(straight / "best.npz") as saved:
        assert int(saved["step"]) == best["step"]
    result = json.loads((straight / "test.json").read_text())
    assert result["best"]["epoch"] == best["epoch"] and result["last"]["epoch"] == 2
    assert result == json.loads((interrupted / "test.json").read_text())
    assert read_config(straight / T.CHECKPOINT)["augment"] is True


def test_early_stop_ends_the_run_when_validation_stops_improving(cli, tmp_path, monkeypatch):
    accuracies = iter([0.5, 0.7, 0.6, 0.7] + [0.1] * 10)
    real = T.evaluate
    monkeypatch.setattr(T, "evaluate", lambda *a: (real(*a)[0], next(accuracies)))
    code, out, _ = cli("--val-fraction", 0.1, "--early-stop", 2, "--epochs", 8, "--out", tmp_path)
    assert code == 0 and ("early stop: val_accuracy has not improved for 2 epochs since epoch "
                          "2 (70.00%)") in out
    records = [json.loads(line) for line in (tmp_path / T.METRICS).read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    code, out, _ = cli("--out", tmp_path, "--resume", "--epochs", 8)
    assert code == 0 and "early stop" in out and "epoch   5" not in out


def test_an_overwrite_killed_before_its_first_checkpoint_leaves_no_mixed_run(tmp_path):
    """The data loss this guards against: a new run into another run's --out, killed between
    its first metrics and its first checkpoint, then resumed, continued the old checkpoint
    with the old metrics gone. Now the new run must say --overwrite, which removes the old
    checkpoint before it writes its metrics: --resume then finds none and says so."""
    old = tmp_path / "run"
    old.mkdir()
    save_checkpoint(old / T.CHECKPOINT, {"step": np.int32(440)}, {"seed": 7})
    (old / T.METRICS).write_text('{"epoch": 10, "step": 440}\n')
    assert _child(old).returncode == 2  # refused: it holds another run
    proc = _child(old, "--overwrite", kill="replace 3 KILL")  # metrics in, checkpoint not
    assert proc.returncode == -signal.SIGKILL
    assert not (old / T.CHECKPOINT).exists()
    assert [json.loads(line)["epoch"] for line in (old / T.METRICS).read_text()
            .splitlines()] == [1]
    proc = _child(old, "--resume")
    assert proc.returncode == 2 and "start it again with --overwrite" in proc.stderr
