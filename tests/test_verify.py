"""`jcnn verify`: the quick grid passes, a planted wrong rule fails it with exit code 1, and
the table fits a 100-column terminal."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jcnn
from jcnn.check import grid
from jcnn.cli import verify


def _args(*argv):
    import argparse
    parser = argparse.ArgumentParser()
    verify.configure(parser)
    return parser.parse_args(list(argv))


def test_every_public_op_with_a_rule_is_in_the_grid():
    ops = {c.op for c in grid.CASES}
    assert ops >= {"conv2d", "conv_transpose2d", "dense", "relu", "sigmoid", "tanh", "leaky_relu",
                   "gelu", "max_pool2d", "avg_pool2d", "global_avg_pool2d", "batch_norm",
                   "dropout", "log_softmax", "softmax_cross_entropy", "flatten", "layer_norm",
                   "group_norm", "conv1d", "conv3d", "conv_transpose1d", "conv_transpose3d",
                   "adaptive_avg_pool2d", "upsample2d", "silu", "elu", "softplus"}


@pytest.mark.parametrize("op", [  # conv2d's grid takes 20-27 s, group_norm's 10: the op tests
    pytest.param("conv2d", marks=pytest.mark.slow), "max_pool2d", "batch_norm",  # cover them
    "softmax_cross_entropy", pytest.param("group_norm", marks=pytest.mark.slow)])
def test_quick_grid_passes_per_op(op, capsys, tmp_path):
    out = tmp_path / "rows.json"
    assert verify.run(_args("--op", op, "--json", str(out))) == 0
    text = capsys.readouterr().out
    assert all(len(line) <= 100 for line in text.splitlines())
    rows = json.loads(out.read_text())
    assert rows and all(r["ok"] and r["op"] == op for r in rows)
    assert all(r["autodiff"] is not None and r["fd"] is not None for r in rows)
    # every op here has loops: every row (however its op is called) is checked by them too
    assert all(r["naive"] is not None for r in rows)


@jax.custom_vjp
def _relu_wrong(x):
    return jnp.where(x > 0, x, 0.0)


_relu_wrong.defvjp(lambda x: (_relu_wrong(x), x), lambda x, g: (g * (x >= -0.5),))


def test_a_planted_wrong_rule_fails_the_grid(monkeypatch, capsys):
    monkeypatch.setattr(jcnn, "relu", lambda x: _relu_wrong(x))
    assert verify.run(_args("--op", "relu", "--taylor")) == 1
    text = capsys.readouterr().out
    assert "FAIL" in text and "0 passed, 2 failed" in text  # the random and the kinked inputs


def test_unknown_op_is_refused(capsys):
    assert verify.run(_args("--op", "conv4d")) == 2
    assert "conv4d" in capsys.readouterr().err


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


def test_the_grid_has_kinked_rows_with_exact_zeros_and_ties():
    kinked = {(c.op, c.config): c for c in grid.CASES if c.kinks}
    assert {op for op, _ in kinked} >= {"relu", "leaky_relu", "max_pool2d"}
    with jax.enable_x64(True):
        x = np.asarray(grid._args(kinked["relu", "kinks: zeros"], jnp.float64, 0)[0])
        assert (x == 0).any()
        pool = kinked["max_pool2d", "2x2 s2, kinks: ties"]
        pooled = np.asarray(grid._args(pool, jnp.float64, 0)[0])
    assert pooled.shape == (2, 6, 6, 3)
    windows = pooled.reshape(2, 3, 2, 3, 2, 3).transpose(0, 1, 3, 5, 2, 4).reshape(-1, 4)
    ties = (windows == windows.max(axis=1, keepdims=True)).sum(axis=1) > 1
    assert ties.any()


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("op", ["relu", "leaky_relu", "max_pool2d"])
def test_kinked_rows_pass_at_first_and_second_order(op, order):
    """Second order fails where an op's forward rule differentiates differently from its
    backward rule at a kink (relu at 0 until its forward rule is fixed)."""
    for case in (c for c in grid.CASES if c.kinks and c.op == op):
        result = grid.run_case(case, order=order)
        assert result.ok, result.detail


def test_the_library_leaves_the_global_x64_flag_as_it_was():
    case = next(c for c in grid.CASES if c.op == "tanh")
    with jax.enable_x64(False):
        result = grid.run_case(case, "float64", order=2)
        assert jax.config.jax_enable_x64 is False
    assert result.ok and result.fd is not None  # float64: finite differences ran
    assert jax.config.jax_enable_x64 is True  # conftest's


def test_import_jcnn_and_jcnn_verify_load_no_training_dependencies():
    code = ("import sys, jcnn; before = {m.split('.')[0] for m in sys.modules}; "
            "import jcnn.cli, jcnn.cli.verify; after = {m.split('.')[0] for m in sys.modules}; "
            "print(sorted(before & {'optax', 'matplotlib', 'tqdm'}), "
            "sorted(after & {'optax', 'matplotlib', 'tqdm'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "[]"]


def test_cases_say_how_their_op_is_called_and_the_loops_follow():
    """group_norm (an int between arrays), batch_norm's evaluation mode (mean and var as
    keywords) and dropout (rate between arrays) are rows like any other: the case's call binds
    the op, its reference twin and its loops alike, and group_norm's loops, which return None
    for `groups`, line up with the float arguments."""
    rows = {(c.op, c.config): c for c in grid.CASES}
    assert {"1 group (layer norm of HWC)", "groups = C (instance norm)"} <= {
        config for op, config in rows if op == "group_norm"}
    evals = [c for c in grid.CASES if c.op == "batch_norm" and len(c.shapes) == 5]
    assert evals and all(c.positive == (4,) for c in evals)
    result = grid.run_case(evals[0], order=2)  # all five arguments, loops included
    assert result.ok and result.naive is not None, result.detail
    drop = next(c for c in grid.CASES if c.op == "dropout")
    with jax.enable_x64(True):
        x, key = grid._args(drop, jnp.float64, 0)
        np.testing.assert_array_equal(grid._bound(jcnn, drop)(x, key),
                                      jcnn.dropout(x, drop.kwargs["rate"], key))
