"""The backend forms (`jcnn/forms/`): each computes its plain rule's values, chosen by the
platform the computation is lowered for (not the host's default backend), pinned off by
JCNN_FORMS=plain, and safe under a symbolic batch, NaN and a growing batch.

Values are compared form against plain rule by calling both directly, so they hold on any
host; the lowering tests lower for CPU and for CUDA explicitly, whatever the host. The
gradients through each form (first and second order) are the op tests' (test_conv, test_pool,
test_norm), whose shapes reach every CPU form."""
import collections
import json
import os
import re
import subprocess
import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import jcnn
from jcnn import conv, pool, reference
from jcnn._validate import conv2d_config, pool_config
from jcnn.forms import conv as conv_forms
from jcnn.forms import pool as pool_forms
from gradcheck import assert_matches_reference, assert_second_order_matches, lowered


def conv_case(x_shape, w_shape, kw, seed=0):
    rng = np.random.default_rng(seed)
    x, w = (jnp.asarray(rng.standard_normal(s)) for s in (x_shape, w_shape))
    cfg = conv2d_config(x, w, None, kw.get("stride", 1), kw.get("padding", 0),
                        kw.get("dilation", 1), kw.get("groups", 1))
    y_shape = jax.eval_shape(lambda x, w: reference.conv2d(x, w, **kw), x, w).shape
    cfg = conv._used_padding(cfg, x_shape[1:3], y_shape[1:3], w_shape[:2])
    return x, w, cfg, jnp.asarray(rng.standard_normal(y_shape))


# (id, x, w, kwargs, the form each map takes on CPU: forward, input gradient, filter gradient)
FORM_CASES = [
    ("tap-sum", (5, 9, 8, 1), (3, 3, 1, 4), dict(padding=1), ("taps", None, None)),
    ("tap-sum-strided-dilated", (3, 9, 8, 1), (3, 2, 1, 4),
     dict(stride=(2, 1), dilation=(1, 2), padding=((2, 0), (1, 3))), ("taps", None, None)),
    ("kernel-rows", (3, 14, 15, 9), (5, 3, 9, 5), dict(padding=((2, 0), (1, 1))),
     ("rows", None, None)),
    ("kernel-rows-dx", (2, 14, 14, 6), (5, 5, 6, 16), dict(padding=2), ("eight", "rows", None)),
    ("eight-channels", (2, 9, 8, 3), (3, 3, 3, 5), dict(stride=2, padding=1),
     ("eight", None, None)),
    ("1x1-matmul-dw", (3, 7, 7, 4), (1, 1, 4, 5), dict(stride=(2, 3), padding=1, dilation=3),
     ("eight", None, "matmul")),
    ("chunked-dw", (37, 6, 5, 2), (3, 3, 2, 4), dict(padding=1), (None, None, "chunks")),
    ("chunked-dw-16", (33, 16, 16, 8), (3, 3, 8, 4), dict(stride=2, padding=1),
     (None, None, "chunks")),
    ("phases-dx", (2, 16, 16, 12), (3, 3, 12, 20), dict(stride=2, padding=1),
     (None, "phases", None)),
    ("phases-dx-uneven", (2, 17, 16, 10), (3, 2, 10, 6),
     dict(stride=(2, 3), padding=((1, 2), (0, 1))), (None, "phases", None)),
]


@pytest.mark.parametrize("_, x_shape, w_shape, kw, forms", FORM_CASES,
                         ids=[c[0] for c in FORM_CASES])
def test_each_conv_form_computes_the_plain_rule(_, x_shape, w_shape, kw, forms):
    """Called directly, each CPU form the chooser returns gives the plain map's values, and
    the choosers return a form exactly where the table says."""
    x, w, cfg, g = conv_case(x_shape, w_shape, kw)
    plain_y = partial(conv._correlate, cfg)
    form = conv_forms.forward(cfg, x, w, plain_y)
    assert (form is not None) == (forms[0] is not None)
    if form is not None:
        np.testing.assert_allclose(form(x, w), plain_y(x, w), rtol=1e-12, atol=1e-12)
    w_t, pads = conv._flipped(cfg, w)
    plain_dx = partial(conv._spread_correlate, cfg, pads)
    form = conv_forms.input_gradient(cfg, g, w_t, pads)
    assert (form is not None) == (forms[1] is not None)
    if form is not None:
        np.testing.assert_allclose(form(g, w_t), plain_dx(g, w_t), rtol=1e-12, atol=1e-12)
    plain_dw = partial(conv._filter_correlate, cfg)
    form = conv_forms.filter_gradient(cfg, x, g, w.shape[:2])
    assert (form is not None) == (forms[2] is not None)
    if form is not None:
        np.testing.assert_allclose(form(x, g), plain_dw(x, g), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kwargs", [dict(window=2), dict(window=3, stride=2, padding=1),
                                    dict(window=(2, 3), padding=((1, 0), (0, 2)))],
                         ids=["tiles-bits", "overlap-index", "tiles-padded-bits"])
def test_the_max_pool_form_computes_the_plain_rule_with_ties(kwargs):
    """The CPU form (bits or index) against the plain mask rule: values, the gradient and the
    gradient's gradient, on post-ReLU zeros (every window tied) and distinct values."""
    rng = np.random.default_rng(3)
    x = jnp.maximum(jnp.asarray(rng.standard_normal((2, 6, 7, 3))), 0)
    x = x.at[:, :2].set(0.0)
    cfg = pool_config(x, kwargs["window"], kwargs.get("stride"), kwargs.get("padding", 0), "t")
    plain, form = partial(pool._max_pool, cfg), pool_forms.max_pool(cfg, x)
    u = jnp.asarray(rng.standard_normal(x.shape))
    v = jnp.asarray(rng.standard_normal(jax.eval_shape(plain, x).shape))

    def joint(f):
        """d/dx and d/dv of <d/dv L, v> + <d/dx L, u>, L(x, v) = sum(cos(f(x)) * v): the
        gradient w.r.t. x and v in one vjp, differentiated again."""
        def inner(x, v):
            dx, dv = jax.grad(lambda x, v: jnp.sum(jnp.cos(f(x)) * v), argnums=(0, 1))(x, v)
            return jnp.vdot(dv, v) + jnp.vdot(dx, u)
        return jax.grad(inner, argnums=(0, 1))(x, v)
    ref = lambda x: reference.max_pool2d(x, **kwargs)
    np.testing.assert_array_equal(form(x), plain(x))
    np.testing.assert_array_equal(jax.grad(lambda x: jnp.vdot(form(x), form(x)))(x),
                                  jax.grad(lambda x: jnp.vdot(plain(x), plain(x)))(x))
    for f in (form, plain):
        for got, want in zip(joint(f), joint(ref)):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def conv_grads(x, w, **kw):
    """The output and both cotangents of sum(conv2d(x, w) ** 2) / 2, for lowering."""
    return jax.value_and_grad(lambda x, w: jnp.sum(jcnn.conv2d(x, w, **kw) ** 2) / 2,
                              argnums=(0, 1))(x, w)


def test_forms_are_chosen_by_the_lowering_platform_not_the_host():
    """The same function lowered for CPU and for CUDA on this host: CPU gets the tap sum (no
    convolution in the forward) and the filter gradient over chunks of the batch (one
    convolution in a loop), CUDA one convolution per map, and the max-pool's bits only on
    CPU."""
    x, w = jnp.ones((64, 12, 12, 1), jnp.float32), jnp.ones((5, 5, 1, 6), jnp.float32)
    cpu, cuda = (lowered(partial(conv_grads, padding=2), p, x, w) for p in ("cpu", "cuda"))
    assert cuda.count("stablehlo.convolution") == 3 and "stablehlo.while" not in cuda, cuda
    # tap sum: no forward convolution; dx of a one-channel input by XLA; dw in a loop over 2
    # chunks of 32
    assert cpu.count("stablehlo.convolution") == 2 and "stablehlo.while" in cpu, cpu
    assert "stablehlo.concatenate" in cpu and "stablehlo.concatenate" not in cuda
    pool_grad = jax.grad(lambda x: jnp.sum(jcnn.max_pool2d(x, 2) ** 2))
    bits = [sum("stablehlo.reduce" in line and "ui8" in line  # the (max, bits) reduction
                for line in lowered(pool_grad, p, x).splitlines()) for p in ("cpu", "cuda")]
    assert bits[0] == 1 and bits[1] == 0, bits


PINNED = r"""
import json, jax, jax.numpy as jnp, jcnn
from jcnn import forms
x, w = jnp.ones((64, 12, 12, 1)), jnp.ones((5, 5, 1, 6))
f = jax.grad(lambda x, w: jnp.sum(jcnn.max_pool2d(jcnn.conv2d(x, w, padding=2), 2) ** 2),
             argnums=(0, 1))
text = jax.jit(f).trace(x, w).lower(lowering_platforms=("cpu",)).as_text()
print(json.dumps([forms.PINNED_PLAIN, text.count("stablehlo.convolution"), "ui8" in text,
                  "stablehlo.while" in text]))
"""


@pytest.mark.parametrize("pinned", [False, True], ids=["forms", "JCNN_FORMS=plain"])
def test_jcnn_forms_plain_pins_the_plain_rules(pinned):
    """JCNN_FORMS=plain, read at import: the CPU lowering is the plain rules' (three
    convolutions, no bits); without it, the forms (the tap sum, dw's loop, the bits)."""
    env = {k: v for k, v in os.environ.items() if k != "JCNN_FORMS"}
    if pinned:
        env["JCNN_FORMS"] = "plain"
    out = subprocess.run([sys.executable, "-c", PINNED], capture_output=True, text=True,
                         env=env, timeout=300, check=True).stdout
    flag, convs, bits, loop = json.loads(out.splitlines()[-1])
    assert flag == pinned
    assert (convs, bits, loop) == ((3, False, False) if pinned else (2, True, True))


@pytest.mark.parametrize("_, x_shape, w_shape, kw, forms", FORM_CASES,
                         ids=[c[0] for c in FORM_CASES])
def test_a_symbolic_batch_exports_and_runs_at_two_sizes(_, x_shape, w_shape, kw, forms):
    """Exported for CPU with the batch symbolic, each case (whose static batch takes a CPU
    form) falls back to the plain rules, and the exported gradient called at two batch sizes
    equals autodiff's of the reference."""
    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.standard_normal(w_shape))
    spec = jax.ShapeDtypeStruct(export.symbolic_shape("b, " + ", ".join(map(str, x_shape[1:]))),
                                w.dtype)
    exported = export.export(jax.jit(partial(conv_grads, **kw)), platforms=("cpu",))(spec, w)
    for n in (x_shape[0], 2):
        x = jnp.asarray(rng.standard_normal((n, *x_shape[1:])))
        want = jax.value_and_grad(lambda x, w: jnp.sum(reference.conv2d(x, w, **kw) ** 2) / 2,
                                  argnums=(0, 1))(x, w)
        for got, ref in zip(jax.tree.leaves(exported.call(x, w)), jax.tree.leaves(want)):
            np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sizes", [(64, 512, 2048), (65, 513, 2049)],
                         ids=["whole-chunks", "with-a-rest"])
def test_the_lowering_does_not_grow_with_the_batch(sizes):
    """The CPU lowering of a conv + batch-norm + pool gradient holds the same operations at
    B=2048 as at B=64: no form unrolls per slice of the batch, so compile time stays flat."""
    def ops(n):
        x, w = jnp.ones((n, 8, 8, 3), jnp.float32), jnp.ones((3, 3, 3, 8), jnp.float32)
        s = jnp.ones((8,), jnp.float32)

        def loss(x, w, s):
            y = jcnn.batch_norm(jcnn.conv2d(x, w, padding=1), s, s)
            return jnp.sum(jcnn.max_pool2d(jcnn.relu(y), 2))
        text = lowered(jax.grad(loss, argnums=(0, 1, 2)), "cpu", x, w, s)
        return collections.Counter(re.findall(r"stablehlo\.(\w+)", text))
    counts = [ops(n) for n in sizes]
    # y, dx, dw's loop over chunks of 32 images (and one for the rest)
    assert counts[0]["convolution"] == 3 + (sizes[0] % 32 > 0), counts[0]
    assert counts[1] == counts[0] == counts[2], counts


@pytest.mark.parametrize("x_shape, w_shape, kw, poison", [
    ((2, 4, 6, 1), (3, 3, 1, 2), dict(padding=1), "w"),  # tap sum
    ((2, 4, 6, 1), (3, 3, 1, 2), dict(padding=2, dilation=2), "w"),
    ((2, 14, 14, 9), (3, 3, 9, 5), dict(padding=1), "w"),  # kernel rows
    ((2, 6, 6, 4), (3, 3, 4, 6), dict(padding=1), "w"),  # eight channels
    ((2, 14, 14, 9), (3, 3, 9, 5), dict(padding=1), "x"),
], ids=["taps", "taps-dilated", "rows", "eight", "rows-x"])
def test_nan_reaches_the_outputs_it_reaches_in_the_plain_convolution(x_shape, w_shape, kw,
                                                                       poison):
    """A NaN in one corner tap of w (or one pixel of x) makes exactly the outputs NaN that
    XLA's convolution makes NaN: a form may not multiply the padding's zeros by it."""
    rng = np.random.default_rng(2)
    x, w = (np.asarray(rng.standard_normal(s)) for s in (x_shape, w_shape))
    (w if poison == "w" else x)[(0,) * 4] = np.nan
    y = jcnn.conv2d(jnp.asarray(x), jnp.asarray(w), **kw)
    want = reference.conv2d(jnp.asarray(x), jnp.asarray(w), **kw)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
    assert 0 < np.isnan(want).sum() < want.size


@pytest.mark.parametrize("x_hw, k_hw, stride, padding", [
    ((8, 8), (3, 3), (2, 2), ((1, 1), (1, 1))), ((7, 9), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ((9, 8), (5, 4), (3, 2), ((2, 0), (1, 3))), ((6, 7), (1, 1), (2, 2), ((0, 0), (0, 0))),
    ((5, 10), (2, 3), (3, 4), ((1, 1), (2, 0))), ((8, 6), (4, 1), (2, 1), ((3, 0), (0, 0))),
])
@pytest.mark.parametrize("poison", [None, "corner", pytest.param("centre", marks=pytest.mark.slow)])
def test_the_phase_form_gives_the_plain_input_gradient_and_its_nan(x_hw, k_hw, stride, padding,
                                                                    poison):
    """The strided input gradient by phases (called directly, so whatever its predicate says):
    the plain rule's values, and with a NaN tap exactly the plain rule's NaN outputs (a phase's
    reads past g's ends must not multiply the NaN by padding zeros)."""
    _, w, cfg, g = conv_case((2, *x_hw, 3), (*k_hw, 3, 4), dict(stride=stride, padding=padding))
    if poison:
        w = w.at[(0, 0) if poison == "corner" else (k_hw[0] // 2, k_hw[1] // 2)].set(jnp.nan)
    w_t, pads = conv._flipped(cfg, w)
    want = conv._spread_correlate(cfg, pads, g, w_t)
    got = conv_forms._by_phases(cfg.stride, pads, g, w_t)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    if poison:
        assert 0 < np.isnan(want).sum() < want.size


@pytest.mark.parametrize("_, x_shape, w_shape, kw, forms", FORM_CASES,
                         ids=[c[0] for c in FORM_CASES])
def test_gradients_through_each_conv_form_match_autodiff_to_second_order(_, x_shape, w_shape,
                                                                         kw, forms):
    """On the CPU device, where every form in the table is taken whatever the host's default
    backend: first and second order (jointly in x and w) against autodiff of the reference."""
    cpu = jax.devices("cpu")[0]
    x, w, _, _ = conv_case(x_shape, w_shape, kw)
    x, w = jax.device_put((x, w), cpu)
    assert_matches_reference(lambda x, w: jcnn.conv2d(x, w, **kw),
                             lambda x, w: reference.conv2d(x, w, **kw), (x, w), (0, 1))
    assert_second_order_matches(lambda x, w: jcnn.conv2d(x, w, **kw),
                                lambda x, w: reference.conv2d(x, w, **kw), (x, w), (0, 1))
