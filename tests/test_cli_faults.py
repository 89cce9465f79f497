"""Every user-facing error of a `jcnn` command is one line on stderr naming the file or
option and the reason, exit 2 for usage and 1 for a runtime failure, with no traceback
(`--debug` raises it instead), and is found before anything is trained."""
import os
import sys

import numpy as np
import pytest

from jcnn.cli import UsageError, main
from jcnn.cli import train as T
from jcnn.train.checkpoint import save_checkpoint

CONFIG = {"data": "digits", "model": "lenet", "batch_size": 32, "optimizer": "adam",
          "lr": 0.003, "lr_decay": 0.85, "seed": 0, "dtype": "float32", "grad": "manual"}
RECORD = '{"epoch": 1, "step": 44, "train_loss": 1.0, "test_loss": 1.0, "test_accuracy": 0.5}\n'


def _run(tmp, config=CONFIG, metrics=RECORD):
    """A stand-in for a finished run in tmp/run: its config and step, and metrics.jsonl (each
    case below is refused before the checkpoint's arrays are read)."""
    run = tmp / "run"
    run.mkdir()
    save_checkpoint(run / T.CHECKPOINT, {"step": np.int32(44)}, config)
    if metrics is not None:
        (run / T.METRICS).write_text(metrics)


def _fifo(tmp, name):
    _run(tmp)
    (tmp / "run" / name).unlink()
    os.mkfifo(tmp / "run" / name)


def _jcnn(argv, capsys):
    """(exit code, stderr) of `jcnn ARGV` in this process."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    return code, capsys.readouterr().err


FAULTS = {  # name: (set-up of tmp, argv with {tmp}, exit code, words stderr must hold)
    "out holds another run": (_run, "train --out {tmp}/run", 2,
                              ["--out", "holds another run", "--resume", "--overwrite"]),
    "resume, no checkpoint": (None, "train --out {tmp} --resume", 2,
                              ["--resume", "checkpoint.npz", "does not exist"]),
    "resume, metrics only": (lambda t: _run(t) or (t / "run" / T.CHECKPOINT).unlink(),
                             "train --out {tmp}/run --resume", 2,
                             ["checkpoint.npz", "does not exist", "--overwrite"]),
    "resume and overwrite": (None, "train --out {tmp} --resume --overwrite", 2,
                             ["--resume", "--overwrite"]),
    "overwrite without out": (None, "train --overwrite", 2, ["--overwrite", "--out"]),
    "checkpoint is a fifo": (lambda t: _fifo(t, T.CHECKPOINT), "train --out {tmp}/run --resume",
                             2, ["checkpoint.npz", "not a regular file"]),
    "metrics is a fifo": (lambda t: _fifo(t, T.METRICS), "train --out {tmp}/run --resume", 1,
                          ["metrics.jsonl", "not a regular file"]),
    "torn metrics line": (lambda t: _run(t, metrics=RECORD + RECORD[:30]),
                          "train --out {tmp}/run --resume", 1,
                          ["metrics.jsonl", "line 2", "not a whole metrics record"]),
    "tampered lr": (lambda t: _run(t, {**CONFIG, "lr": -1}), "train --out {tmp}/run --resume",
                    1, ["checkpoint.npz", "lr = -1", "--lr"]),
    "tampered model": (lambda t: _run(t, {**CONFIG, "model": "vgg"}),
                       "train --out {tmp}/run --resume", 1, ["model = \"vgg\"", "--model"]),
    "tampered batch": (lambda t: _run(t, {**CONFIG, "batch_size": "32"}),
                       "train --out {tmp}/run --resume", 1, ["batch_size = \"32\""]),
    "out is /dev/null": (None, "train --out /dev/null", 2, ["--out /dev/null", "not a directory"]),
    "out under a file": (lambda t: (t / "f").write_text(""), "train --out {tmp}/f/run", 1,
                         ["--out", "f/run", "cannot write there", "Not a directory"]),
    "no data dir given": (None, "train --data mnist", 1, ["--data-dir", "mnist"]),
    "data dir missing": (None, "train --data mnist --data-dir {tmp}/nope", 1,
                         ["nope", "not a directory"]),
    "data files missing": (None, "train --data cifar10 --data-dir {tmp}", 1,
                           ["data_batch_1.bin", "not found"]),
    "digits with data dir": (None, "train --data-dir {tmp}", 1, ["digits", "data_dir"]),
    "batch over the data": (None, "train --batch-size 5000", 2, ["--batch-size 5000", "1437"]),
    "negative seed": (None, "train --seed -1", 2, ["--seed", "-1"]),
    "zero epochs": (None, "train --epochs 0", 2, ["--epochs", "> 0"]),
    "distributed, one host": (None, "train --distributed", 1, ["--distributed", "cluster"]),
    "early stop, no val": (None, "train --early-stop 3", 2, ["--early-stop", "--val-fraction"]),
    "val fraction 1": (None, "train --val-fraction 1", 2, ["--val-fraction", "< 1"]),
    "val fraction tiny": (None, "train --val-fraction 0.0001", 2, ["--val-fraction",
                                                                   "no validation images"]),
    "tampered fraction": (lambda t: _run(t, {**CONFIG, "val_fraction": 2}),
                          "train --out {tmp}/run --resume", 1, ["val_fraction = 2"]),
    "bench rounds 0": (None, "bench --rounds 0", 2, ["--rounds", "> 0"]),
    "bench repeats 0": (None, "bench --repeats 0", 2, ["--repeats", "> 0"]),
    "bench batch 0": (None, "bench --batch-sizes 8 0", 2, ["--batch-sizes", "> 0"]),
    "bench torch mode": (None, "bench --smoke --torch jit", 2, ["--torch", "jit"]),
    "bench json dir": (None, "bench --smoke --json {tmp}/no/x.json", 2, ["--json", "no"]),
    "verify json dir": (None, "verify --json {tmp}/no/x.json", 2, ["--json", "no"]),
    "unknown command": (None, "tran", 2, ["tran", "invalid choice"]),
}


@pytest.mark.parametrize("name", FAULTS)
def test_each_fault_is_one_line_naming_its_cause(name, tmp_path, capsys):
    setup, argv, code, words = FAULTS[name]
    if setup:
        setup(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    got, err = _jcnn(argv.format(tmp=tmp_path).split(), capsys)
    lines = err.strip().splitlines()
    assert (got, len(lines)) == (code, 1), err
    assert lines[0].startswith("jcnn") and "Traceback" not in err
    missing = [w for w in words if w not in lines[0]]
    assert not missing, f"{missing} not in: {lines[0]}"
    # nothing the user had is touched
    assert before == {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}


def test_debug_shows_the_traceback_instead(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        main(["train", "--debug", "--data", "mnist", "--data-dir", str(tmp_path / "nope")])
    with pytest.raises(UsageError, match="holds another run"):
        _run(tmp_path)
        main(["--debug", "train", "--out", str(tmp_path / "run")])


def test_a_missing_train_extra_says_what_to_install(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "jcnn.cli.train")
    monkeypatch.setitem(sys.modules, "optax", None)  # `import optax` fails as if not installed
    code, err = _jcnn(["train"], capsys)
    assert code == 1 and err == ("jcnn train: needs optax, which is not installed: "
                                 "pip install 'jcnn[train]'\n")


def test_version_is_the_package_s(capsys):
    from importlib.metadata import version
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"jcnn {version('jcnn')}\n"
