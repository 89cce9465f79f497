"""conv2d and conv_transpose2d: the hand rules against autodiff of `jcnn.reference`, float64
finite differences and the NumPy loops of `jcnn.naive`, over one table of configs per op; then
second order, the adjoint identity, jit, vmap, low precision, random configs and the HLO.

jaxlib 0.10.2 on CPU aborts the whole process on some input-dilated convolutions (XLA's operand
swapper, "Window dimensions do not match RHS shape"), which `jax.grad` of reference.conv2d and
reference.conv_transpose2d itself build for the configs marked `xla_aborts`. Those are checked
against the loops and finite differences only, and XLA itself is probed in a child process.
"""
import subprocess
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

import jcnn
from jcnn import naive, reference
from jcnn._validate import conv2d_config, conv_transpose2d_config
from gradcheck import (assert_finite_differences, assert_matches_reference,
                       assert_second_order_matches, cpu_text, pulled, tol)


class Case(NamedTuple):
    name: str
    x: tuple  # NHWC
    w: tuple  # HWIO: (kh, kw, C // groups, O) for conv2d, (kh, kw, O // groups, C) transposed
    kw: dict
    bias: bool = True
    # the reference (its jax.grad; for conv_transpose2d its forward) kills the process on
    # jaxlib 0.10.2, so it is compared with the loops and finite differences only
    xla_aborts: bool = False


CONV2D = [
    Case("3x3", (2, 5, 6, 3), (3, 3, 3, 4), {}),
    Case("stride2-unreached-rows", (1, 6, 7, 2), (3, 2, 2, 3), dict(stride=2)),
    Case("stride3-unreached-rows", (2, 9, 7, 1), (2, 3, 1, 2), dict(stride=3)),
    Case("pad-int", (2, 4, 5, 2), (3, 3, 2, 3), dict(padding=1)),
    Case("pad-pair", (1, 4, 5, 2), (3, 2, 2, 2), dict(padding=(2, 1))),
    Case("pad-asym", (1, 5, 4, 2), (2, 3, 2, 3), dict(padding=((0, 2), (1, 0)))),
    Case("pad-wider-than-kernel", (1, 3, 4, 1), (2, 2, 1, 2), dict(padding=3, stride=2)),
    Case("same-odd-stride2", (1, 7, 5, 2), (3, 3, 2, 2), dict(stride=2, padding="SAME")),
    Case("same-even-kernel", (1, 6, 5, 2), (2, 4, 2, 2), dict(padding="SAME")),
    Case("valid", (1, 5, 6, 2), (3, 2, 2, 3), dict(padding="VALID")),
    Case("dilation2", (1, 7, 6, 2), (3, 2, 2, 3), dict(dilation=2)),
    Case("dilation-pair-stride3", (2, 8, 7, 2), (2, 3, 2, 2), dict(dilation=(2, 1), stride=(3, 2),
                                                                   padding=1)),
    Case("groups2", (1, 5, 5, 4), (3, 3, 2, 6), dict(groups=2)),
    Case("depthwise", (2, 5, 4, 3), (3, 2, 1, 3), dict(groups=3, padding=1)),
    Case("depthwise-multiplier2-stride2", (1, 5, 6, 3), (2, 3, 1, 6), dict(groups=3, stride=2)),
    Case("1x1-stride2", (1, 5, 4, 2), (1, 1, 2, 3), dict(stride=2)),
    Case("kernel-fills-padded-input", (1, 3, 4, 2), (5, 4, 2, 3), dict(padding=((1, 1), (0, 0)))),
    Case("batch1-1channel", (1, 4, 5, 1), (2, 3, 1, 1), {}),
    Case("no-bias", (2, 4, 4, 2), (3, 3, 2, 2), dict(stride=2), bias=False),
    # autodiff's dx is the lax conv XLA aborts on: the cotangent (2, 4, 2, 3), this kernel,
    # lhs_dilation (2, 1), padding ((0, 0), (2, 2)); conv_transpose2d's case below is that conv
    Case("k2-s2-pad1-narrow", (2, 6, 4, 3), (2, 3, 3, 3),
         dict(stride=(2, 1), padding=((1, 1), (0, 0))), xla_aborts=True),
    Case("everything", (2, 7, 9, 4), (3, 2, 2, 6), dict(stride=(2, 3), padding=((1, 0), (2, 1)),
                                                        dilation=(2, 1), groups=2)),
    # on CPU: LeNet's conv2, its forward padded to 8 channels, its dx by kernel rows (16 -> 6)
    Case("lenet-conv2", (1, 14, 14, 6), (5, 5, 6, 16), dict(padding=2)),
    # by kernel rows on CPU; kernels not square, so that kh and kw mixed up would show
    Case("kernel-rows-forward", (1, 14, 15, 9), (5, 3, 9, 5), dict(padding=((2, 0), (1, 1)))),
    # its dx by kernel rows (9 -> 4) with padding past k - 1: the rows' pads are negative
    # (cropped at both ends)
    Case("kernel-rows-cropped-dx", (1, 14, 15, 4), (3, 5, 4, 9), dict(padding=((4, 3), (0, 3)))),
]

CONV_TRANSPOSE2D = [
    Case("3x3", (2, 3, 4, 3), (3, 3, 2, 3), {}),
    Case("stride2", (1, 3, 4, 2), (3, 3, 2, 2), dict(stride=2)),
    Case("stride2-output-padding", (2, 3, 3, 2), (3, 2, 3, 2), dict(stride=2, output_padding=1)),
    # one output channel: its input gradient is conv2d's one-channel forward, the CPU tap sum
    Case("one-channel-stride2-output-padding", (1, 3, 4, 2), (3, 3, 1, 2),
         dict(stride=2, output_padding=1)),
    Case("stride3-output-padding-pair", (1, 2, 3, 2), (2, 3, 2, 2), dict(stride=3,
                                                                         output_padding=(2, 1))),
    Case("pad-asym", (1, 4, 3, 2), (3, 3, 2, 2), dict(padding=((1, 0), (0, 2)))),
    Case("pad-pair-stride-pair", (2, 3, 4, 1), (3, 2, 2, 1), dict(stride=(2, 1), padding=(1, 0))),
    Case("dilation2-output-padding-past-stride", (1, 3, 3, 2), (3, 2, 2, 2),
         dict(dilation=2, output_padding=1)),
    Case("groups2", (1, 3, 3, 4), (3, 3, 1, 4), dict(groups=2, stride=2, padding=1)),
    Case("depthwise", (2, 3, 4, 3), (2, 2, 1, 3), dict(groups=3, stride=2)),
    Case("1x1-stride2", (1, 3, 2, 2), (1, 1, 3, 2), dict(stride=2)),
    Case("batch1-1channel", (1, 3, 4, 1), (2, 3, 1, 1), {}),
    Case("no-bias", (2, 3, 3, 2), (2, 2, 2, 2), dict(stride=2), bias=False),
    Case("k2-s2-pad1-narrow", (2, 4, 2, 3), (2, 3, 3, 3), dict(stride=(2, 1),
                                                               padding=((1, 1), (0, 0))),
         xla_aborts=True),
    Case("everything", (2, 4, 3, 4), (3, 2, 3, 4), dict(stride=(2, 3), padding=((1, 0), (0, 1)),
                                                        output_padding=(1, 2), dilation=(1, 2),
                                                        groups=2)),
    Case("kernel-rows", (1, 14, 14, 8), (4, 2, 4, 8), dict(padding=1)),  # CPU: 8 -> 4 by rows
]


def _allow_bias_broadcast(ref):
    """reference.py adds the bias as `y + b`, (N,H,W,O) + (O,), which conftest's
    rank-promotion='raise' refuses; allow it for the twin only."""
    def f(*args, **kw):
        with jax.numpy_rank_promotion("allow"):
            return ref(*args, **kw)
    return f


# op name -> (hand-ruled op, autodiff twin, loop forward, loop backward)
OPS = {
    "conv2d": (jcnn.conv2d, _allow_bias_broadcast(reference.conv2d), naive.conv2d,
               naive.conv2d_backward),
    "conv_transpose2d": (jcnn.conv_transpose2d, _allow_bias_broadcast(reference.conv_transpose2d),
                         naive.conv_transpose2d, naive.conv_transpose2d_backward),
}
TABLES = {"conv2d": CONV2D, "conv_transpose2d": CONV_TRANSPOSE2D}


def params(keep=lambda c: True, names=None):
    return [pytest.param(op, c, id=f"{op}-{c.name}") for op, table in TABLES.items()
            for c in table if keep(c) and (names is None or c.name in names)]


def build(op, c, rng, dtype=jnp.float64):
    """(f of (x, w, b), its twin, args, argnums) for case `c`."""
    fn, ref, _, _ = OPS[op]
    out_channels = c.w[3] if op == "conv2d" else c.w[2] * c.kw.get("groups", 1)
    x, w = (jnp.asarray(rng.standard_normal(s), dtype) for s in (c.x, c.w))
    b = jnp.asarray(rng.standard_normal(out_channels), dtype) if c.bias else None
    return (lambda x, w, b: fn(x, w, b, **c.kw), lambda x, w, b: ref(x, w, b, **c.kw),
            [x, w, b], (0, 1, 2) if c.bias else (0, 1))


@pytest.mark.parametrize("op, c", params(keep=lambda c: not c.xla_aborts))
def test_matches_autodiff_of_the_reference(op, c, rng):
    f, ref, args, argnums = build(op, c, rng)
    assert_matches_reference(f, ref, args, argnums)


@pytest.mark.parametrize("op, c", params())
def test_matches_finite_differences(op, c, rng):
    f, _, args, argnums = build(op, c, rng)
    assert_finite_differences(f, args, argnums)


def assert_matches_loops(op, x, w, b, kw, rng):
    fn, _, loop_fwd, loop_bwd = OPS[op]
    f = lambda x, w, b: fn(x, w, b, **kw)
    out = jax.eval_shape(f, x, w, b)
    g = jnp.asarray(rng.standard_normal(out.shape), out.dtype)
    y, grads = pulled(f, g, x, w, b)
    np.testing.assert_allclose(y, loop_fwd(x, w, b, **kw), rtol=1e-10, atol=1e-10)
    for name, got, want in zip(("dx", "dw", "db"), grads, loop_bwd(g, x, w, b, **kw)):
        if got is not None:
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10, err_msg=name)


@pytest.mark.parametrize("op, c", params())
def test_matches_naive_loops(op, c, rng):
    _, _, (x, w, b), _ = build(op, c, rng)
    assert_matches_loops(op, x, w, b, c.kw, rng)


# stride3-unreached-rows has one input channel: on CPU its forward is the tap sum
SECOND_ORDER = {"stride2-unreached-rows", "stride3-unreached-rows", "same-odd-stride2",
                "stride2-output-padding", "depthwise", "everything", "lenet-conv2",
                "kernel-rows-forward", "kernel-rows-cropped-dx", "kernel-rows"}


@pytest.mark.parametrize("op, c", params(names=SECOND_ORDER))
def test_second_order_matches_reference(op, c, rng):
    f, ref, args, argnums = build(op, c, rng)
    assert_second_order_matches(f, ref, args, argnums)


@pytest.mark.parametrize("op, c", params(keep=lambda c: c.xla_aborts))
def test_second_order_finite_differences_where_autodiff_aborts(op, c, rng):
    f, _, args, argnums = build(op, c, rng)
    assert_finite_differences(f, args, argnums, order=2)


ADJOINT = {"stride2-unreached-rows", "stride3-unreached-rows", "pad-asym", "pad-wider-than-kernel",
           "same-odd-stride2", "dilation-pair-stride3", "depthwise-multiplier2-stride2",
           "kernel-fills-padded-input", "k2-s2-pad1-narrow", "everything"}


@pytest.mark.parametrize("c", [pytest.param(c, id=c.name) for c in CONV2D if c.name in ADJOINT])
def test_conv_transpose2d_is_the_adjoint_of_conv2d(c, rng):
    """<conv2d(x, w), y> = <x, conv_transpose2d(y, w)>, with the output_padding that gives back
    x's shape: the rows the stride leaves unreached."""
    x, w = rng.standard_normal(c.x), rng.standard_normal(c.w)
    cfg = conv2d_config(x, w, None, c.kw.get("stride", 1), c.kw.get("padding", 0),
                        c.kw.get("dilation", 1), c.kw.get("groups", 1))
    y = rng.standard_normal(jcnn.conv2d(x, w, **c.kw).shape)
    unreached = [(n + lo + hi - d * (k - 1) - 1) % s for n, k, s, d, (lo, hi) in
                 zip(c.x[1:3], c.w[:2], cfg.stride, cfg.dilation, cfg.pads)]
    t = jcnn.conv_transpose2d(y, w, stride=cfg.stride, padding=cfg.pads, dilation=cfg.dilation,
                              groups=cfg.groups, output_padding=tuple(unreached))
    assert t.shape == x.shape
    np.testing.assert_allclose(jnp.vdot(jcnn.conv2d(x, w, **c.kw), y), jnp.vdot(x, t),
                               rtol=1e-12)


JIT_VMAP = {"stride2-unreached-rows", "stride3-unreached-rows", "k2-s2-pad1-narrow", "everything"}


@pytest.mark.parametrize("op, c", params(names=JIT_VMAP))
def test_jit_agrees_with_eager(op, c, rng):
    f, _, args, argnums = build(op, c, rng)
    loss = lambda *a: jnp.sum(jnp.sin(f(*a)))  # noqa: E731 (a non-linear loss: g varies)
    grad = jax.grad(loss, argnums=argnums)
    for got, want in zip(jax.jit(grad)(*args), grad(*args)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jax.jit(f)(*args), f(*args), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op, c", params(names=JIT_VMAP))
def test_vmap_and_vmap_of_grad_agree_with_a_loop(op, c, rng):
    f, _, (x, w, b), argnums = build(op, c, rng)
    xs, ws = jnp.stack([x, -2 * x, x ** 2]), jnp.stack([w, w[::-1], 3 * w])
    np.testing.assert_allclose(jax.vmap(f, (0, None, None))(xs, w, b),
                               jnp.stack([f(x_, w, b) for x_ in xs]), rtol=1e-12, atol=1e-12)
    # per-example gradients, both x and w batched
    grad = jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a))), argnums=argnums)
    batched = jax.jit(jax.vmap(grad, (0, 0, None)))(xs, ws, b)
    for i in range(len(xs)):
        for got, want in zip(batched, grad(xs[i], ws[i], b)):
            np.testing.assert_allclose(got[i], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("op, c", params(names={"everything", "stride3-unreached-rows",
                                                  "lenet-conv2", "kernel-rows-forward"}))
def test_low_precision_matches_float64(op, c, dtype, rng):
    """The same (rounded) inputs in float64 and in `dtype`: the result and cotangents come
    back in `dtype`, within that dtype's tolerance of the float64 ones."""
    f, _, args, argnums = build(op, c, rng, dtype)
    wide = [None if a is None else a.astype(jnp.float64) for a in args]
    g = jnp.asarray(rng.standard_normal(jax.eval_shape(f, *args).shape), dtype)
    y, grads = pulled(f, g, *args)
    y64, grads64 = pulled(f, g.astype(jnp.float64), *wide)
    assert y.dtype == dtype
    np.testing.assert_allclose(np.asarray(y, np.float64), y64,
                               atol=tol(dtype) * float(jnp.abs(y64).max()))
    for i, got, want in zip(argnums, grads, grads64):
        assert got.dtype == dtype, f"cotangent {i} is {got.dtype}"
        np.testing.assert_allclose(np.asarray(got, np.float64), want,
                                   atol=tol(dtype) * float(jnp.abs(want).max()), err_msg=str(i))


@st.composite
def random_configs(draw):
    """A valid conv2d or conv_transpose2d call: (op, x shape, w shape, kwargs)."""
    def pair(lo, hi):
        return draw(st.tuples(st.integers(lo, hi), st.integers(lo, hi)))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    k, s, d = pair(1, 3), pair(1, 3), pair(1, 2)
    pads = (pair(0, 2), pair(0, 2))
    kw = dict(stride=s, padding=pads, dilation=d, groups=groups)
    if draw(st.booleans()):
        # at least the dilated kernel, less the padding, so the output is not empty
        hw = tuple(max(1, dd * (kk - 1) + 1 - sum(p)) + draw(st.integers(0, 3))
                   for kk, dd, p in zip(k, d, pads))
        x, w = (draw(st.integers(1, 2)), *hw, c_in), (*k, c_in // groups, c_out)
        return "conv2d", x, w, kw
    kw["output_padding"] = tuple(draw(st.integers(0, max(ss, dd) - 1)) for ss, dd in zip(s, d))
    x, w = (draw(st.integers(1, 2)), *pair(1, 4), c_in), (*k, c_out // groups, c_in)
    try:
        conv_transpose2d_config(np.empty(x), np.empty(w), None, **kw)
    except ValueError:
        assume(False)
    return "conv_transpose2d", x, w, kw


@given(random_configs(), st.integers(0, 2 ** 32 - 1))
def test_random_configs_match_naive_loops(config, seed):
    op, x_shape, w_shape, kw = config
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[3] if op == "conv2d" else w_shape[2] * kw["groups"])
    assert_matches_loops(op, x, w, b, kw, rng)


PROBE = """
import sys
import jax, numpy as np
jax.config.update("jax_enable_x64", True)
from jcnn import reference
x, w = np.load(sys.argv[1]), np.load(sys.argv[2])
y, pull = jax.vjp(lambda x, w: reference.{op}(x, w, **{kw}), x, w)
dx, dw = pull(np.ones(y.shape))
np.save(sys.argv[3], np.concatenate([np.ravel(y), np.ravel(dx), np.ravel(dw)]))
"""


@pytest.mark.parametrize("op, c", params(keep=lambda c: c.xla_aborts))
def test_xla_autodiff_of_the_reference_is_probed_in_a_child_process(op, c, rng, tmp_path):
    """Documents the jaxlib bug the hand rules step round. If a jaxlib can compute it, the
    reference must agree with the hand rule; if it aborts, it must be that bug."""
    x, w = rng.standard_normal(c.x), rng.standard_normal(c.w)
    paths = [tmp_path / name for name in ("x.npy", "w.npy", "out.npy")]
    np.save(paths[0], x), np.save(paths[1], w)
    child = subprocess.run([sys.executable, "-c", PROBE.format(op=op, kw=c.kw), *map(str, paths)],
                           capture_output=True, text=True, timeout=300)
    if child.returncode != 0:
        assert "Window dimensions do not match RHS shape" in child.stderr, child.stderr[-2000:]
        return
    y, pull = jax.vjp(lambda x, w: OPS[op][0](x, w, **c.kw), x, w)
    want = np.concatenate([np.ravel(a) for a in (y, *pull(jnp.ones(y.shape)))])
    np.testing.assert_allclose(np.load(paths[2]), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("op, c", params(names={"everything"}))
def test_forward_and_backward_compile_to_three_convolutions_and_no_scatter(op, c, rng):
    """The compiled forward + backward: one convolution each for y, dx and dw, and no
    scatter, gather or select_and_scatter."""
    f, _, args, argnums = build(op, c, rng)
    hlo = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) ** 2), argnums=argnums)).lower(*args)
    text = hlo.as_text()
    assert text.count("stablehlo.convolution") == 3, text
    for word in ("scatter", "gather", "select_and_scatter"):
        assert word not in text


@pytest.mark.parametrize("op, x_shape, w_shape, kw, dtype", [
    ("conv2d", (0, 5, 6, 1), (3, 3, 1, 2), dict(padding=1), jnp.float64),  # CPU: the tap sum
    ("conv2d", (0, 5, 6, 1), (3, 3, 1, 2), dict(padding=1), jnp.bfloat16),  # its float32 loop
    ("conv2d", (0, 5, 6, 4), (3, 3, 4, 2), dict(stride=2), jnp.float64),  # CPU: padded to 8
    ("conv2d", (0, 14, 14, 9), (3, 3, 9, 5), dict(padding=1), jnp.float64),  # CPU: kernel rows
    ("conv2d", (0, 5, 6, 3), (1, 1, 3, 2), {}, jnp.float64),  # CPU: dW as a matmul
    ("conv_transpose2d", (0, 4, 3, 3), (3, 3, 1, 3), dict(stride=2), jnp.float64),  # dx: taps
], ids=["tap-sum", "tap-sum-bfloat16", "eight-channels", "kernel-rows", "1x1",
        "transpose-one-channel"])
def test_an_empty_batch_gives_an_empty_output_and_zero_gradients(op, x_shape, w_shape, kw,
                                                                  dtype):
    """N = 0, as XLA's convolution takes it: each form's slicing of the batch must cope."""
    fn, ref, _, _ = OPS[op]
    outs = w_shape[2] if op == "conv_transpose2d" else w_shape[3]
    x, w, b = jnp.ones(x_shape, dtype), jnp.ones(w_shape, dtype), jnp.ones(outs, dtype)
    want = ref(x, w, b, **kw).shape
    y, (dx, dw, db) = pulled(lambda x, w, b: fn(x, w, b, **kw), jnp.ones(want, dtype), x, w, b)
    assert y.shape == want and y.dtype == dtype
    assert dx.shape == x.shape and dx.dtype == dtype
    for grad, like in ((dw, w), (db, b)):
        assert grad.dtype == dtype
        np.testing.assert_array_equal(grad, jnp.zeros_like(like))


@pytest.mark.parametrize("x_shape, w_shape, pads", [
    ((130, 14, 15, 9), (5, 3, 9, 5), ((2, 0), (1, 1))),  # the forward by rows
    ((130, 14, 15, 4), (3, 5, 4, 9), ((4, 3), (0, 3))),  # dx by rows, cropped at both ends
], ids=["forward", "cropped-dx"])
def test_kernel_rows_gradients_through_the_batch_loop(x_shape, w_shape, pads, rng):
    """130 images go by rows 32 at a time, the last slice two images and zeros: the output and
    both cotangents, through the loop, are autodiff's of the reference."""
    x, w = (jnp.asarray(rng.standard_normal(s)) for s in (x_shape, w_shape))
    assert_matches_reference(lambda x, w: jcnn.conv2d(x, w, padding=pads),
                             lambda x, w: reference.conv2d(x, w, padding=pads), [x, w], (0, 1))


@pytest.mark.parametrize("x_shape, w_shape, kw", [
    ((3, 12, 12, 1), (5, 5, 1, 6), dict(padding=2)),  # LeNet's first conv
    ((5, 7, 6, 1), (3, 3, 1, 2), dict(padding=1)),  # 5 images: 3 slices of 2, 2 and 1
    ((2, 9, 8, 1), (3, 2, 1, 4), dict(stride=(2, 1), dilation=(1, 2), padding=((2, 0), (1, 3)))),
])
def test_one_channel_forward_on_cpu_is_a_tap_sum_with_the_same_values(x_shape, w_shape, kw, rng):
    """With C = 1 the forward is no convolution (the filter gradient still is one) but the
    concatenation of tap sums over slices of the batch (so that XLA stores its result instead
    of recomputing it in every consumer), and it equals XLA's convolution of the same
    operands."""
    x, w = (jnp.asarray(rng.standard_normal(s)) for s in (x_shape, w_shape))
    cfg = conv2d_config(x, w, None, kw.get("stride", 1), kw["padding"], kw.get("dilation", 1), 1)
    want = jax.lax.conv_general_dilated(x, w, cfg.stride, cfg.pads, rhs_dilation=cfg.dilation,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(jcnn.conv2d(x, w, **kw), want, rtol=1e-12, atol=1e-12)
    forward = cpu_text(lambda w: jcnn.conv2d(x, w, **kw), w)
    assert "convolution" not in forward and "stablehlo.concatenate" in forward
    filter_grad = cpu_text(jax.grad(lambda w: jnp.sum(jcnn.conv2d(x, w, **kw) ** 2)), w)
    assert filter_grad.count("stablehlo.convolution") == 1


@pytest.mark.parametrize("x_shape, w_shape, kw, padded", [
    ((3, 7, 6, 6), (5, 5, 6, 16), dict(padding=2), True),  # LeNet's conv2
    ((2, 9, 8, 3), (3, 3, 3, 5), dict(stride=2, dilation=(1, 2), padding=1), True),
    ((2, 6, 6, 7), (3, 2, 7, 4), dict(padding=((1, 0), (2, 1))), True),
    ((2, 6, 6, 2), (3, 3, 2, 16), dict(padding=1), False),  # 2 channels: slower padded
    ((2, 6, 6, 6), (3, 3, 6, 24), dict(padding=1), False),  # 24 outputs: slower padded
    ((2, 6, 6, 8), (3, 3, 8, 4), {}, False),
    ((2, 6, 6, 6), (3, 3, 3, 4), dict(groups=2), False),
], ids=["6->16", "3->5-strided-dilated", "7->4-asymmetric", "2->16", "6->24", "8->4", "groups2"])
def test_three_to_seven_channels_on_cpu_are_padded_to_eight_with_the_same_values(
        x_shape, w_shape, kw, padded, rng):
    """3 to 7 input channels into at most 16 outputs: the forward convolution reads x and w
    padded with zero channels to 8 (faster in XLA:CPU's convolution), and gives XLA's
    convolution of the unpadded operands."""
    x, w = (jnp.asarray(rng.standard_normal(s)) for s in (x_shape, w_shape))
    groups = kw.get("groups", 1)
    cfg = conv2d_config(x, w, None, kw.get("stride", 1), kw.get("padding", 0),
                        kw.get("dilation", 1), groups)
    want = jax.lax.conv_general_dilated(x, w, cfg.stride, cfg.pads, rhs_dilation=cfg.dilation,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=groups)
    np.testing.assert_allclose(jcnn.conv2d(x, w, **kw), want, rtol=1e-12, atol=1e-12)
    (conv,) = [line for line in cpu_text(lambda x: jcnn.conv2d(x, w, **kw), x)
               .splitlines() if "stablehlo.convolution" in line]
    lhs = f"tensor<{x_shape[0]}x{x_shape[1]}x{x_shape[2]}x{8 if padded else x_shape[3]}xf64>"
    assert conv.split(") -> ")[0].split("(")[-1].startswith(lhs), conv


def _convolutions(f, *args) -> list[str]:
    """The operand and result types of each convolution in f's lowering."""
    return [line.split("} : ")[-1] for line in cpu_text(f, *args).splitlines()
            if "stablehlo.convolution" in line]


@pytest.mark.parametrize("n, loops", [(3, 0), (130, 1)])
def test_few_output_channels_on_cpu_go_by_kernel_rows_with_the_same_values(n, loops, rng):
    """9 -> 5 channels at 14x15, 5x3: one 1x3 convolution into 5*5 channels over the padded
    rows, and its rows summed, in a loop of 32 images above 128 images; the values are XLA's
    convolution's. LeNet's conv2 input gradient (16 -> 6) goes the same way."""
    x = jnp.asarray(rng.standard_normal((n, 14, 15, 9)))
    w = jnp.asarray(rng.standard_normal((5, 3, 9, 5)))
    pads = ((2, 0), (1, 1))
    want = jax.lax.conv_general_dilated(x, w, (1, 1), pads,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(jcnn.conv2d(x, w, padding=pads), want, rtol=1e-12, atol=1e-12)
    size = n if n <= 128 else 32
    assert _convolutions(lambda x: jcnn.conv2d(x, w, padding=pads), x) == [
        f"(tensor<{size}x14x15x9xf64>, tensor<1x3x9x25xf64>) -> tensor<{size}x16x15x25xf64>"]
    text = cpu_text(lambda x: jcnn.conv2d(x, w, padding=pads), x)
    assert text.count("stablehlo.while") == loops
    g = jnp.asarray(rng.standard_normal((2, 14, 14, 16)))
    dx = jax.vjp(lambda x: jcnn.conv2d(x, jnp.ones((5, 5, 6, 16)), padding=2),
                 jnp.ones((2, 14, 14, 6)))[1]
    assert "tensor<1x5x16x30xf64>" in " ".join(_convolutions(dx, g))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_tap_sum_loops_in_float32_and_rounds_once(dtype, rng):
    """A narrower input goes through a loop over slices of the batch, widened before it, the
    sum stored in float32 and narrowed after it: the loop converts nothing (converting per tap
    read and per stored element made LeNet's bf16 forward 4x slower, as did the narrowing
    fused into the float32 form's concatenation). The values are the float32 tap sum's,
    rounded once."""
    x = jnp.asarray(rng.standard_normal((5, 10, 9, 1)), dtype)
    w = jnp.asarray(rng.standard_normal((5, 5, 1, 6)), dtype)
    y = jcnn.conv2d(x, w, padding=2)
    assert y.dtype == dtype
    want = jcnn.conv2d(x.astype(jnp.float32), w.astype(jnp.float32), padding=2)
    # the float32 sum rounded once: within half a unit of the narrow type (of its last bit)
    np.testing.assert_allclose(np.asarray(y, np.float64), np.asarray(want, np.float64),
                               rtol=float(jnp.finfo(dtype).eps) / 2, atol=1e-6)
    loops = [line for line in cpu_text(lambda x: jcnn.conv2d(x, w, padding=2), x)
             .splitlines() if "stablehlo.while" in line]
    assert len(loops) == 1 and "xf32>" in loops[0], loops
    assert "bf16" not in loops[0] and "xf16" not in loops[0], loops


@pytest.mark.parametrize("op, x_shape, w_shape, kw, convs", [
    ("conv2d", (37, 6, 5, 3), (3, 3, 3, 4), dict(padding=1), 2),  # a loop over 32, and 5
    ("conv2d", (33, 16, 16, 2), (2, 2, 2, 3), {}, 2),  # a loop over 2 x 16, and 1
    ("conv2d", (33, 9, 8, 2), (3, 2, 2, 3),
     dict(stride=(2, 1), dilation=(1, 2), padding=((2, 0), (1, 3))), 2),
    ("conv2d", (35, 5, 5, 4), (3, 3, 2, 6), dict(groups=2), 2),
    ("conv2d", (20, 7, 7, 4), (1, 1, 4, 5), dict(stride=2), 0),  # a strided 1x1: one matmul
    ("conv2d", (3, 7, 7, 4), (1, 1, 4, 5),  # the matmul's view of a padded, dilated input
     dict(stride=(2, 3), padding=((1, 0), (2, 1)), dilation=3), 0),
    ("conv2d", (513, 3, 3, 2), (2, 2, 2, 3), {}, 2),  # 16 x 32 in the loop, and 1
    ("conv2d", (16, 7, 7, 4), (1, 1, 2, 6), dict(groups=2), 1),  # grouped 1x1, one chunk
    ("conv_transpose2d", (33, 4, 3, 3), (3, 3, 2, 3), dict(stride=2, output_padding=1), 2),
    ("conv_transpose2d", (18, 3, 4, 3), (1, 1, 2, 3), dict(stride=2), 0),
], ids=["3x3", "3x3-chunks-of-16", "strided-dilated", "groups2", "1x1-stride2",
        "1x1-padded-dilated", "n513", "1x1-groups2", "transpose-3x3", "transpose-1x1"])
@pytest.mark.parametrize("dtype", [jnp.float64, jnp.bfloat16])
def test_cpu_filter_gradient_is_chunked_convolutions_or_a_matmul(op, x_shape, w_shape, kw, convs,
                                                                  dtype, rng):
    """Lowered for CPU, the filter gradient of a batch larger than a chunk (16 or 32 images)
    is one convolution in a loop over the chunks and one for the rest (summed in float32 at
    least), or for an ungrouped 1x1 kernel one matmul: the lowering holds that many
    convolutions and a loop where it has any, and its values equal the NumPy loops' in
    float64 and, accumulated in float32, to bfloat16's rounding; its second order equals
    autodiff's. conv_transpose2d's filter gradient is the same map with its output cotangent
    as the images."""
    fn, ref, _, loops = OPS[op]
    x, w = (jnp.asarray(rng.standard_normal(s), dtype) for s in (x_shape, w_shape))
    g = jnp.asarray(rng.standard_normal(jax.eval_shape(lambda x, w: fn(x, w, **kw), x, w).shape),
                    dtype)
    pull = jax.jit(lambda x, w: jax.vjp(lambda w: fn(x, w, **kw), w)[1](g)[0])
    text = cpu_text(pull, x, w)
    assert text.count("stablehlo.convolution") == convs, text
    assert ("stablehlo.while" in text) == (convs > 0 and x_shape[0] > 16), text
    assert convs or "stablehlo.dot_general" in text
    got = pull(x, w)
    assert got.dtype == dtype
    _, want, _ = loops(*(np.asarray(a, np.float64) for a in (g, x, w)), **kw)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol(dtype),
                               atol=tol(dtype) * np.abs(want).max())
    if dtype == jnp.float64:  # reverse over reverse through the chunked rule, against autodiff
        assert_second_order_matches(lambda x, w: fn(x, w, **kw), lambda x, w: ref(x, w, **kw),
                                    [x, w], (0, 1))


def test_float16_filter_gradient_chunks_past_its_range_still_sum_to_a_finite_result():
    """Images 0-15 and 16-31 (one chunk each) give filter gradients of +-72,000, past float16's
    65,504; the 5 images after them bring the sum back to 22,500 at the centre tap. The chunks
    are summed in float32, so only the result is rounded to float16: no inf - inf."""
    sign = np.repeat([1.0, -1.0, 1.0], [16, 16, 5])[:, None, None, None]
    x = jnp.asarray(np.ones((37, 6, 5, 3)) * sign, jnp.float16)
    g = jnp.full((37, 6, 5, 4), 150, jnp.float16)
    w = jnp.zeros((3, 3, 3, 4), jnp.float16)
    pull = jax.jit(lambda x: jax.vjp(lambda w: jcnn.conv2d(x, w, padding=1), w)[1](g)[0])
    _, want, _ = naive.conv2d_backward(*(np.asarray(a, np.float64) for a in (g, x, w)), padding=1)
    assert np.abs(want).max() == 22_500
    np.testing.assert_allclose(np.asarray(pull(x), np.float64), want, rtol=tol(jnp.float16))
