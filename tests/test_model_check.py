"""check_model: whole models pass layer by layer; a planted wrong rule is found and named,
also when it sits inside a combinator."""
import runpy
import subprocess
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

import jcnn
from jcnn import layers as L
from jcnn import models
from jcnn.check import CheckFailed, check_model

EXAMPLE = Path(__file__).parent.parent / "examples" / "find_the_bug.py"
bug = runpy.run_path(str(EXAMPLE))


def f64(tree):
    return jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), tree)


@pytest.mark.slow  # 20-26 s; the fixed LeNet-like model of find_the_bug passes in the default run
def test_lenet_passes_every_layer():
    m, r = models.lenet(10, ops=jcnn), models.lenet(10, ops=jcnn.reference)
    params, state = m.init(jax.random.key(0), (2, 8, 8, 1))
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1), jnp.float64)
    report = check_model(m, r, f64(params), state, x, taylor_test=False)
    assert report.ok and report.culprit is None
    assert [row.path for row in report.layers][:3] == ["0_conv2d", "1_relu", "2_max_pool2d"]


def test_the_fixed_rule_passes_and_raise_names_the_layer():
    assert bug["main"](fixed=True).ok
    suspect, trusted = bug["model"](bug["hard_tanh_rule"](False)), bug["model"](
        lambda x: jnp.clip(x, -1.0, 1.0), ops=jcnn.reference)
    params, state = suspect.init(jax.random.key(0), (2, 8, 8, 1))
    x = 2 * jax.random.normal(jax.random.key(1), (2, 8, 8, 1), jnp.float64)
    with pytest.raises(CheckFailed, match="1_hard_tanh") as info:
        check_model(suspect, trusted, f64(params), state, x, taylor_test=False)
    assert isinstance(info.value, AssertionError)  # check_vjp's error, an AssertionError
    assert info.value.report.culprit.path == "1_hard_tanh"
    assert str(info.value).startswith("check_model: the gradients of layer 1_hard_tanh")


def test_a_bug_inside_a_residual_block_is_localised():
    wrong = bug["activation"](bug["hard_tanh_rule"](False), "hard_tanh")
    right = bug["activation"](lambda x: jnp.clip(x, -1.0, 1.0), "hard_tanh")

    def net(act, ops):
        block = L.residual(L.serial(L.conv2d(2, 3, padding=1, ops=ops), act))
        return L.serial(L.conv2d(2, 1, ops=ops), block, L.flatten(ops=ops))

    m, r = net(wrong, jcnn), net(right, jcnn.reference)
    params, state = m.init(jax.random.key(0), (2, 5, 5, 1))
    x = 3 * jax.random.normal(jax.random.key(1), (2, 5, 5, 1), jnp.float64)
    report = check_model(m, r, f64(params), state, x, raise_on_failure=False, taylor_test=False)
    assert report.culprit.path == "1_residual/body/1_hard_tanh"


def test_the_example_run_as_a_script_names_the_planted_bug():
    """`python examples/find_the_bug.py`, as its docstring says to run it: the table marks the
    hard-tanh layer, and only it, as wrong, names it, and the culprit's own report follows."""
    done = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    table, _, culprit = done.stdout.partition("\n\n")
    rows = [line.split() for line in table.splitlines()[1:]]
    assert [path for path, result in rows] == ["0_conv2d", "1_hard_tanh", "2_max_pool2d",
                                              "3_flatten", "4_dense"], table
    assert [path for path, result in rows if result == "FAIL"] == ["1_hard_tanh"], table
    assert culprit.startswith("first wrong layer: 1_hard_tanh\ncheck_vjp(1_hard_tanh"), culprit
    assert "vjp      x (arg 0)" in culprit and "FAIL" in culprit, culprit


def test_rows_are_named_by_param_key_and_a_kernel_is_read_as_hwio():
    """A conv whose filter gradient comes back flipped in space, inside `serial`: its report
    names the rows b, w and x (not arg0, arg1, arg2) and maps the kernel over its (H, W) taps."""
    @jax.custom_vjp
    def flipped_dw(x, w, b):
        return jcnn.reference.conv2d(x, w, b, padding=1)

    def bwd(res, g):
        dx, dw, db = jax.vjp(lambda *a: jcnn.reference.conv2d(*a, padding=1), *res)[1](g)
        return dx, dw[::-1, ::-1], db
    flipped_dw.defvjp(lambda *a: (flipped_dw(*a), a), bwd)
    ops = types.SimpleNamespace(conv2d=lambda x, w, b=None, **kw: flipped_dw(x, w, b),
                                relu=jcnn.relu, flatten=jcnn.flatten)

    def net(ops):
        return L.serial(L.conv2d(3, 3, padding=1, ops=ops), L.relu(ops=ops), L.flatten(ops=ops))
    m, r = net(ops), net(jcnn.reference)
    params, state = m.init(jax.random.key(0), (2, 5, 5, 2))
    x = jax.random.normal(jax.random.key(1), (2, 5, 5, 2), jnp.float64)
    report = check_model(m, r, f64(params), state, x, raise_on_failure=False,
                         taylor_test=False).culprit.report
    assert not report.row("vjp", "w").ok and report.row("vjp", "b").ok and report.row("vjp", "x").ok
    assert "map of w[:, :, 0, 0]" in str(report)


def test_param_names_are_identifiers_unique_in_the_layer():
    from jcnn.check.model import _arg_names
    assert _arg_names(["0_conv2d/b", "0_conv2d/w"]) == ["b", "w", "x"]
    assert _arg_names(["body/0_conv2d/w", "body/1_conv2d/w", "x"]) == [
        "body_0_conv2d_w", "body_1_conv2d_w", "x_2", "x_3"]
    assert _arg_names(["0_dense/w", "1_dense/w"]) == ["p0_dense_w", "p1_dense_w", "x"]
