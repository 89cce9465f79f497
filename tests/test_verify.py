"""`jcnn verify`: the quick grid passes, a planted wrong rule fails it with exit code 1, and
the table fits a 100-column terminal."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import jcnn
from jcnn import verify


def _args(*argv):
    import argparse
    parser = argparse.ArgumentParser()
    verify.configure(parser)
    return parser.parse_args(list(argv))


def test_every_public_op_with_a_rule_is_in_the_grid():
    ops = {c.op for c in verify.CASES}
    assert ops >= {"conv2d", "conv_transpose2d", "dense", "relu", "sigmoid", "tanh", "leaky_relu",
                   "gelu", "max_pool2d", "avg_pool2d", "global_avg_pool2d", "batch_norm",
                   "dropout", "log_softmax", "softmax_cross_entropy", "flatten"}


@pytest.mark.parametrize("op", [  # conv2d's grid takes 20-27 s; tests/test_conv.py covers the op
    pytest.param("conv2d", marks=pytest.mark.slow), "max_pool2d", "batch_norm",
    "softmax_cross_entropy"])
def test_quick_grid_passes_per_op(op, capsys, tmp_path):
    out = tmp_path / "rows.json"
    assert verify.run(_args("--op", op, "--json", str(out))) == 0
    text = capsys.readouterr().out
    assert all(len(line) <= 100 for line in text.splitlines())
    rows = json.loads(out.read_text())
    assert rows and all(r["ok"] and r["op"] == op for r in rows)
    assert all(r["autodiff"] is not None and r["fd"] is not None for r in rows)


@jax.custom_vjp
def _relu_wrong(x):
    return jnp.where(x > 0, x, 0.0)


_relu_wrong.defvjp(lambda x: (_relu_wrong(x), x), lambda x, g: (g * (x >= -0.5),))


def test_a_planted_wrong_rule_fails_the_grid(monkeypatch, capsys):
    monkeypatch.setattr(jcnn, "relu", lambda x: _relu_wrong(x))
    assert verify.run(_args("--op", "relu", "--taylor")) == 1
    text = capsys.readouterr().out
    assert "FAIL" in text and "0 passed, 1 failed" in text


def test_unknown_op_is_refused(capsys):
    assert verify.run(_args("--op", "conv3d")) == 2
    assert "conv3d" in capsys.readouterr().err


def test_cli_exit_code_and_second_order():
    done = subprocess.run([sys.executable, "-m", "jcnn", "verify", "--op", "dense",
                           "--op", "tanh", "--order", "2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "order 2" in done.stdout


@pytest.mark.parametrize("command", ["verify", "bench"])
def test_a_json_path_that_cannot_be_written_is_refused_before_the_run(command, tmp_path, capsys):
    """The check is argparse's, at the start: a long run must not fail only when it writes."""
    from jcnn.cli import main
    for path, says in ((tmp_path / "missing" / "rows.json", "does not exist"),
                       (tmp_path, "is a directory, not a file")):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--json", str(path)])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert f"argument --json: {path}" in err and says in err
