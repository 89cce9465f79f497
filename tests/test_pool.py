"""Pooling: each config three ways (autodiff of jcnn.reference, float64 finite differences,
the NumPy loops), both max-pool backward formulations, ties, -inf padding, second order, jit,
vmap, dtypes, and the compiled backward free of scatter; max-pool dilation and ceil_mode (and
avg-pool's, with PyTorch's divisor) also against PyTorch in float64."""
import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

import jcnn
from jcnn import naive, pool, reference
from jcnn.forms import pool as pool_forms
from jcnn._validate import pool_config
from gradcheck import (assert_finite_differences, assert_matches_reference,
                       assert_second_order_matches, pulled)

CONFIGS = [  # (id, x shape, kwargs)
    ("2x2", (2, 6, 6, 3), dict(window=2)),
    ("3x3-s2-p1-overlap", (2, 7, 7, 2), dict(window=3, stride=2, padding=1)),
    ("2x3-s(1,2)-SAME-odd", (1, 5, 7, 2), dict(window=(2, 3), stride=(1, 2), padding="SAME")),
    ("3x3-s3-rows-unreached", (2, 8, 7, 1), dict(window=3, stride=3)),
    ("2x3-asym-pads", (1, 5, 6, 2), dict(window=(2, 3), padding=((1, 0), (0, 2)))),
    ("window-as-padded-input", (1, 4, 4, 1), dict(window=6, stride=1, padding=1)),
    ("1x1-s2-VALID", (1, 5, 4, 2), dict(window=1, stride=2, padding="VALID")),
    ("batch1-channel1-s1", (1, 5, 5, 1), dict(window=2, stride=1)),
    ("6x6-tiles-too-wide-for-bits", (1, 12, 7, 1), dict(window=6, padding=(0, 2))),
]
IDS = [c[0] for c in CONFIGS]

OPTIONS = [  # dilation and ceil_mode; symmetric int/pair padding, as PyTorch takes
    ("ceil-last-window-in-right-pad-dropped", (2, 5, 5, 2),
     dict(window=2, stride=2, padding=1, ceil_mode=True)),
    ("ceil-partial-last-window", (1, 7, 6, 2), dict(window=3, stride=2, padding=1, ceil_mode=True)),
    ("ceil-s3-unpadded", (1, 7, 8, 1), dict(window=2, stride=3, ceil_mode=True)),
    ("ceil-s3-p1", (1, 6, 7, 2), dict(window=3, stride=3, padding=1, ceil_mode=True)),
    ("dil2", (2, 8, 7, 1), dict(window=3, stride=2, dilation=2)),
    ("dil(2,1)-ceil-asym", (1, 9, 8, 2),
     dict(window=(3, 2), stride=(2, 3), padding=(1, 1), dilation=(2, 1), ceil_mode=True)),
    ("dil2-tiling-stride", (1, 8, 8, 1), dict(window=2, dilation=2)),
]
OPTION_IDS = [c[0] for c in OPTIONS]
AVG_OPTIONS = [c for c in OPTIONS if "dilation" not in c[2]]


def distinct(shape, seed=0):
    """Values 1/size apart, so no ties and finite differences never cross a kink."""
    n = int(np.prod(shape))
    return jnp.asarray(np.random.default_rng(seed).permutation(n).reshape(shape) / n)


FORMS = ["plain", "cpu"]  # pool._max_pool, the mask rule; forms/pool.py's bits or index


def max_with(form, kwargs):
    def f(x):
        cfg = pool_config(x, kwargs["window"], kwargs.get("stride"), kwargs.get("padding", 0),
                          "t", kwargs.get("dilation", 1), kwargs.get("ceil_mode", False))
        return (pool._max_pool if form == "plain" else pool_forms._argmax_pool)(cfg, x)
    return f


@pytest.mark.parametrize("method", FORMS)
@pytest.mark.parametrize("_, shape, kwargs", CONFIGS + OPTIONS, ids=IDS + OPTION_IDS)
def test_max_pool_three_ways(method, _, shape, kwargs):
    x = distinct(shape)
    f, ref = max_with(method, kwargs), lambda x: reference.max_pool2d(x, **kwargs)
    assert_matches_reference(f, ref, (x,), (0,))
    assert_finite_differences(f, (x,), (0,))
    g = np.random.default_rng(1).standard_normal(jax.eval_shape(ref, x).shape)
    y_loops, (dx_loops,) = naive.max_pool2d(x, **kwargs), naive.max_pool2d_backward(g, x, **kwargs)
    y, (dx,) = pulled(f, jnp.asarray(g), x)
    np.testing.assert_allclose(y, y_loops, rtol=1e-12)
    np.testing.assert_allclose(dx, dx_loops, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", FORMS)
@pytest.mark.parametrize("_, shape, kwargs", CONFIGS[:3] + OPTIONS[1::2],
                         ids=IDS[:3] + OPTION_IDS[1::2])
def test_max_pool_second_order(method, _, shape, kwargs):
    f, ref = max_with(method, kwargs), lambda x: reference.max_pool2d(x, **kwargs)
    assert_second_order_matches(f, ref, (distinct(shape),), (0,))


@pytest.mark.parametrize("method", ["cpu", pytest.param("plain", marks=pytest.mark.slow)])
@pytest.mark.parametrize("_, shape, kwargs", CONFIGS[:5], ids=IDS[:5])
def test_max_pool_hessian_through_the_pooled_value(method, _, shape, kwargs):
    """grad of <grad(sum(cos(pool(x)))), u>: the inner gradient depends on the pooled value, so
    the outer one differentiates the forward rule too (the tiles' one-pass reduction has a JVP
    of its own), not only the backward as the fixed-cotangent test above does."""
    x, u = distinct(shape), jnp.asarray(np.random.default_rng(5).standard_normal(shape))

    def hvp(pool_fn):
        inner = jax.grad(lambda x: jnp.sum(jnp.cos(pool_fn(x))))
        return jax.grad(lambda x: jnp.vdot(inner(x), u))(x)
    np.testing.assert_allclose(hvp(max_with(method, kwargs)),
                               hvp(lambda x: reference.max_pool2d(x, **kwargs)),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", FORMS)
@pytest.mark.parametrize("kwargs", [dict(window=3, stride=2, padding=1), dict(window=2),
                                    dict(window=(2, 3), padding=((1, 0), (0, 2))),
                                    dict(window=3, stride=2, padding=1, dilation=2, ceil_mode=True),
                                    dict(window=2, dilation=(1, 2), ceil_mode=True)],
                         ids=["overlapping", "tiles", "tiles-padded", "dilated-ceil",
                              "dilated-tiles-ceil"])
@pytest.mark.parametrize("x", [
    jnp.zeros((1, 4, 4, 2)),  # all-equal windows: ReLU's zeros
    jnp.asarray(np.random.default_rng(0).integers(0, 2, (2, 6, 6, 1)), jnp.float64),
], ids=["all-equal", "0-1-ties"])
def test_ties_go_to_the_first_maximum_once(method, kwargs, x):
    f = max_with(method, kwargs)
    dx = jax.grad(lambda x: jnp.sum(f(x)))(x)
    (dx_loops,) = naive.max_pool2d_backward(np.ones(jax.eval_shape(f, x).shape), x, **kwargs)
    np.testing.assert_array_equal(dx, dx_loops)
    np.testing.assert_array_equal(
        dx, jax.grad(lambda x: jnp.sum(reference.max_pool2d(x, **kwargs)))(x))
    assert float(jnp.sum(dx)) == f(x).size  # each window's gradient lands exactly once


def test_windows_reaching_into_minus_inf_padding():
    x = -distinct((1, 3, 3, 1)) - 5.0  # all negative: padding must lose to every real value
    for method in FORMS:
        y = max_with(method, dict(window=2, stride=1, padding=1))(x)
        assert bool(jnp.all(jnp.isfinite(y)))
        assert_matches_reference(max_with(method, dict(window=2, stride=1, padding=1)),
                                 lambda x: reference.max_pool2d(x, 2, 1, 1), (x,), (0,))


def _with_nans(shape):
    """Distinct values with NaNs: two in the first window, one lone, one in the rows the 6x6
    tiles reach."""
    x = np.array(distinct(shape))
    for p, q in ((0, 1), (1, 0), (4, 2), (7, 5)):
        x[:, p, q, :] = np.nan
    return jnp.asarray(x)


@pytest.mark.parametrize("method", FORMS)
@pytest.mark.parametrize("kwargs", [dict(window=3, stride=2, padding=1), dict(window=2),
                                    dict(window=(2, 3), padding=((1, 0), (0, 2))),
                                    dict(window=6, padding=(0, 2)), dict(window=2, stride=1)],
                         ids=["overlapping", "tiles", "tiles-padded", "tiles-indexed", "stride1"])
@pytest.mark.parametrize("make", [
    _with_nans,
    lambda shape: jnp.full(shape, -jnp.inf),  # padding first in a window: its G is dropped
], ids=["nans", "all-minus-inf"])
def test_nan_and_minus_inf_inputs_route_as_the_loops_in_every_form(method, kwargs, make):
    """An all -inf window whose first position is padding sends G nowhere, in every form (the
    index, the tiles' bits, the mask), as the loops and autodiff do. A window holding a NaN
    pools to NaN; where its G goes is not defined (pool.py), so it is zero here, and the
    other windows, NaNs beside them, route as the loops do."""
    x = make((1, 8, 7, 2))
    f = max_with(method, kwargs)
    y_loops = naive.max_pool2d(np.asarray(x), **kwargs)
    g = np.where(np.isnan(y_loops), 0.0, np.random.default_rng(1).standard_normal(y_loops.shape))
    (dx_loops,) = naive.max_pool2d_backward(g, np.asarray(x), **kwargs)
    y, (dx,) = pulled(f, jnp.asarray(g), x)
    np.testing.assert_array_equal(y, y_loops)
    assert np.isnan(y_loops).any() == np.isnan(np.asarray(x)).any()
    np.testing.assert_allclose(dx, dx_loops, rtol=1e-12, atol=1e-12)  # overlaps: sum orders
    if not np.isnan(np.asarray(x)).any():
        np.testing.assert_allclose(dx, pulled(lambda x: reference.max_pool2d(x, **kwargs),
                                              jnp.asarray(g), x)[1][0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("window, stride, padding, saved", [
    (3, 2, 1, jnp.int8),                    # overlapping windows: the first maximum's index
    (2, None, 0, jnp.uint8),                # tiles: a bitmask of the maxima, one byte for 4
    ((2, 3), None, ((1, 0), (0, 2)), jnp.uint8),
    (3, None, 0, jnp.uint16),               # 9 positions
    (6, None, 0, jnp.int8),                 # 36 positions: more than 32 bits, the index again
], ids=["overlap-index", "2x2-bits", "2x3-padded-bits", "3x3-bits16", "6x6-index"])
def test_argmax_residual_is_small(window, stride, padding, saved):
    x = distinct((2, 12, 12, 3)).astype(jnp.float32)
    cfg = pool_config(x, window, stride, padding, "t")
    y, (res, in_hw) = pool_forms._argmax_pool_fwd(cfg, x)
    assert res.dtype == saved and res.shape == y.shape and in_hw == x.shape[1:3]
    assert pool_forms._index_dtype(128) == jnp.int16


def test_an_index_past_127_positions_is_int16_and_routes_as_the_loops():
    """12x12 windows, 144 positions, each window's maximum at its last (x grows along rows):
    an int8 index would wrap at 143."""
    x, kwargs = jnp.arange(169.0).reshape(1, 13, 13, 1), dict(window=12, stride=1)
    cfg = pool_config(x, 12, 1, 0, "t")
    saved = jax.eval_shape(lambda x: pool_forms._argmax_pool_fwd(cfg, x), x)[1]  # no compile
    assert saved[0].dtype == jnp.int16
    g = np.random.default_rng(1).standard_normal((1, 2, 2, 1))
    _, (dx,) = pulled(max_with("cpu", kwargs), jnp.asarray(g), x)
    np.testing.assert_array_equal(dx, naive.max_pool2d_backward(g, x, **kwargs)[0])


def test_tiles_bitmask_holds_every_maximum():
    x = jnp.asarray([[3., 1.], [3., 3.]]).reshape(1, 2, 2, 1)  # positions 0, 2 and 3 hold the max
    cfg = pool_config(x, 2, None, 0, "t")
    _, (bits, _) = pool_forms._argmax_pool_fwd(cfg, x)
    assert int(bits[0, 0, 0, 0]) == 0b1101
    np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(jcnn.max_pool2d(x, 2)))(x)[0, :, :, 0],
                                  [[1., 0.], [0., 0.]])  # its lowest bit: the first maximum


def test_tiles_bitmask_is_stored_not_recomputed():
    """XLA:CPU stores the reduction's bits (u8, one per window) and the backward reads them;
    the int8 index written element by element was instead re-derived from a stored f32 input."""
    x = distinct((2, 6, 6, 3)).astype(jnp.float32)
    g = jnp.ones((2, 3, 3, 3), jnp.float32)
    step = jax.jit(lambda x, g: jax.vjp(lambda x: jcnn.max_pool2d(jcnn.relu(x), 2), x)[1](g)[0])
    hlo = step.lower(x, g).compile().as_text()
    assert re.search(r"u8\[2,3,3,3\]\{[^}]*\}\)? fusion\(", hlo), \
        "the bitmask is not a stored buffer"


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_tiles_reduction_runs_in_float32_with_the_same_values(dtype):
    """A half-precision input is widened once, its windows reduced in float32 (XLA:CPU
    emulates each half-precision compare: 1.6x the time for LeNet's first pool), the maxima
    narrowed back, exact since each is one of the inputs; the bits are those of float32."""
    x = distinct((2, 6, 8, 3)).astype(dtype)
    cfg = pool_config(x, 2, None, 0, "t")
    y, bits = pool_forms._max_and_bits(cfg, x)
    y32, bits32 = pool_forms._max_and_bits(cfg, x.astype(jnp.float32))
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, y32.astype(dtype))
    np.testing.assert_array_equal(bits, bits32)
    reduce = [line for line in jax.jit(partial(pool_forms._max_and_bits, cfg)).lower(x).as_text()
              .splitlines() if "stablehlo.reduce" in line]
    assert len(reduce) == 1 and "xf32>" in reduce[0] and "bf16" not in reduce[0] \
        and "xf16" not in reduce[0], reduce


@pytest.mark.parametrize("method", FORMS)
def test_compiled_backward_has_no_scatter(method):
    f = max_with(method, dict(window=3, stride=2, padding=1))
    hlo = (jax.jit(jax.grad(lambda x: jnp.sum(f(x)))).lower(distinct((2, 7, 7, 2)))
           .compile().as_text())
    assert re.search(r" pad\(", hlo)  # the placement is strided pads
    assert not re.search(r"(select-and-)?scatter\(", hlo)  # an instruction, not a name


@pytest.mark.parametrize("include", [True, False], ids=["count-pad", "exclude-pad"])
@pytest.mark.parametrize("_, shape, kwargs",
                         [c for c in CONFIGS if c[0] != "window-as-padded-input"] + AVG_OPTIONS,
                         ids=[i for i in IDS if i != "window-as-padded-input"]
                         + [c[0] for c in AVG_OPTIONS])
def test_avg_pool_three_ways(include, _, shape, kwargs):
    x = distinct(shape)
    f = lambda x: jcnn.avg_pool2d(x, **kwargs, count_include_pad=include)
    ref = lambda x: reference.avg_pool2d(x, **kwargs, count_include_pad=include)
    assert_matches_reference(f, ref, (x,), (0,))
    assert_second_order_matches(f, ref, (x,), (0,))
    assert_finite_differences(f, (x,), (0,))
    g = np.random.default_rng(2).standard_normal(jax.eval_shape(ref, x).shape)
    y_loops = naive.avg_pool2d(x, **kwargs, count_include_pad=include)
    (dx_loops,) = naive.avg_pool2d_backward(g, x, **kwargs, count_include_pad=include)
    np.testing.assert_allclose(f(x), y_loops, rtol=1e-12)
    np.testing.assert_allclose(pulled(f, jnp.asarray(g), x)[1][0], dx_loops, rtol=1e-12, atol=1e-15)


def test_global_avg_pool():
    x = distinct((2, 3, 4, 5))
    assert_matches_reference(jcnn.global_avg_pool2d, reference.global_avg_pool2d, (x,), (0,))
    assert_second_order_matches(jcnn.global_avg_pool2d, reference.global_avg_pool2d, (x,), (0,))
    assert_finite_differences(jcnn.global_avg_pool2d, (x,), (0,))


def test_global_avg_pool_gradient_in_float16_past_65504_pixels():
    """256 x 256 = 65,536 pixels: g / HW had HW overflow float16 to inf, so dx was 0."""
    x = jnp.ones((1, 256, 256, 1), jnp.float16)
    dx = jax.grad(lambda x: jcnn.global_avg_pool2d(x).sum())(x)
    np.testing.assert_array_equal(dx, np.float16(1 / 65536))


def test_half_precision_average_pools_are_summed_in_float32(rng):
    """bfloat16 window sums were 2% off at 7x7 and 11% at 16x16 (a 17x17 window of ones even
    averaged to 0.89: the sum saturates at 256, 289 rounds to 288): the window sum and the
    division run in float32, rounded once, as global_avg_pool2d's mean already did. A 9x9
    window, jitted (its 81 views compile as one program; eagerly each on its own)."""
    pool = jax.jit(lambda x: jax.vjp(lambda x: jcnn.avg_pool2d(x, 9), x))
    x = jnp.asarray(np.abs(rng.standard_normal((8, 9, 9, 4))) + 1, jnp.bfloat16)
    y, pull = pool(x)
    want = np.asarray(x, np.float64).mean(axis=(1, 2))
    np.testing.assert_allclose(np.asarray(y[:, 0, 0], np.float64), want, rtol=2 ** -8)
    # two reductions of the same values in two orders: equal up to one rounding of the result
    np.testing.assert_allclose(np.asarray(y[:, 0, 0], np.float64),
                               np.asarray(jcnn.global_avg_pool2d(x), np.float64), rtol=2 ** -8)
    dx = pull(jnp.ones((8, 1, 1, 4), jnp.bfloat16))[0]
    np.testing.assert_array_equal(dx, jnp.asarray(1 / 81, jnp.bfloat16))


@pytest.mark.parametrize("op", [jcnn.avg_pool2d, reference.avg_pool2d])
@pytest.mark.parametrize("flag", ["False", None, 0])
def test_count_include_pad_must_be_a_bool(op, flag):
    """"False" is truthy: it silently counted the padding."""
    with pytest.raises(TypeError, match="avg_pool2d: count_include_pad must be True or False"):
        op(jnp.ones((1, 4, 4, 1)), 2, 1, 1, count_include_pad=flag)


@pytest.mark.parametrize("op", [
    lambda x: jcnn.max_pool2d(x, 2), lambda x: jcnn.avg_pool2d(x, 3, 1, 1), jcnn.global_avg_pool2d,
    lambda x: jcnn.max_pool2d(x, 2, 2, 1, dilation=2, ceil_mode=True),
    lambda x: jcnn.avg_pool2d(x, 3, 2, 1, ceil_mode=True)],
    ids=["max", "avg", "global", "max-dilated-ceil", "avg-ceil"])
def test_jit_vmap_and_vmap_of_grad(op):
    xs = distinct((3, 2, 4, 4, 2))
    loss = lambda x: jnp.sum(op(x) ** 2)
    np.testing.assert_allclose(jax.jit(op)(xs[0]), op(xs[0]))
    np.testing.assert_allclose(jax.vmap(op)(xs), jnp.stack([op(x) for x in xs]))
    np.testing.assert_allclose(jax.vmap(jax.grad(loss))(xs),
                               jnp.stack([jax.grad(loss)(x) for x in xs]))


@pytest.mark.parametrize("dtype, rtol",
                         [(jnp.float32, 1e-6), (jnp.bfloat16, 1e-2), (jnp.float16, 1e-3)])
@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
def test_low_precision_matches_float64(dtype, rtol, op):
    x = distinct((2, 6, 6, 2))
    g = jnp.asarray(np.random.default_rng(3).standard_normal((2, 3, 3, 2)))
    f = lambda x: getattr(jcnn, op)(x, 3, 2, 1)
    dx_low = pulled(f, g.astype(dtype), x.astype(dtype))[1][0]
    assert dx_low.dtype == dtype
    np.testing.assert_allclose(np.asarray(dx_low, np.float64), pulled(f, g, x)[1][0],
                               rtol=rtol, atol=4 * rtol * float(jnp.abs(g).max()))


@given(h=st.integers(1, 7), w=st.integers(1, 7), kh=st.integers(1, 3), kw=st.integers(1, 3),
       sh=st.integers(1, 3), sw=st.integers(1, 3), top=st.integers(0, 2), left=st.integers(0, 2),
       method=st.sampled_from(FORMS))
def test_random_configs_match_the_loops(h, w, kh, kw, sh, sw, top, left, method):
    kwargs = dict(window=(kh, kw), stride=(sh, sw), padding=((top, 0), (left, 1)))
    if kh > h + top or kw > w + left + 1:
        return  # an invalid config: the window does not fit (validation is tested elsewhere)
    x = distinct((1, h, w, 2))
    f = max_with(method, kwargs)
    g = np.random.default_rng(4).standard_normal(jax.eval_shape(f, x).shape)
    (dx_loops,) = naive.max_pool2d_backward(g, x, **kwargs)
    np.testing.assert_allclose(pulled(f, jnp.asarray(g), x)[1][0], dx_loops, atol=1e-12)


def _torch(op, x, g, **kwargs):
    """PyTorch's y and dx (NHWC in and out), float64."""
    torch = pytest.importorskip("torch")
    t = torch.tensor(np.transpose(np.asarray(x), (0, 3, 1, 2)), requires_grad=True)
    kwargs = dict(kwargs, kernel_size=kwargs.pop("window"))
    y = getattr(torch.nn.functional, op)(t, **kwargs)
    y.backward(torch.tensor(np.transpose(g, (0, 3, 1, 2))))
    return (np.transpose(y.detach().numpy(), (0, 2, 3, 1)),
            np.transpose(t.grad.numpy(), (0, 2, 3, 1)))


@pytest.mark.parametrize("_, shape, kwargs", OPTIONS, ids=OPTION_IDS)
def test_max_pool_matches_pytorch(_, shape, kwargs):
    """The op as lowered here (on CPU its form); test_max_pool_three_ways holds both forms to
    the reference and the loops."""
    x = distinct(shape)
    f = lambda x: jcnn.max_pool2d(x, **kwargs)
    g = np.random.default_rng(1).standard_normal(jax.eval_shape(f, x).shape)
    y_torch, dx_torch = _torch("max_pool2d", x, g, **kwargs)
    y, (dx,) = pulled(f, jnp.asarray(g), x)
    assert y.shape == y_torch.shape
    np.testing.assert_array_equal(y, y_torch)
    np.testing.assert_allclose(dx, dx_torch, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("include", [True, False], ids=["count-pad", "exclude-pad"])
@pytest.mark.parametrize("_, shape, kwargs", AVG_OPTIONS, ids=[c[0] for c in AVG_OPTIONS])
def test_avg_pool_matches_pytorch(include, _, shape, kwargs):
    """PyTorch's divisor: with count_include_pad the padding counts but not the part of a
    ceil_mode window past it; without, only the input's elements."""
    x = distinct(shape)
    f = lambda x: jcnn.avg_pool2d(x, **kwargs, count_include_pad=include)
    g = np.random.default_rng(2).standard_normal(jax.eval_shape(f, x).shape)
    y_torch, dx_torch = _torch("avg_pool2d", x, g, **kwargs, count_include_pad=include)
    y, (dx,) = pulled(f, jnp.asarray(g), x)
    np.testing.assert_allclose(y, y_torch, rtol=1e-12)
    np.testing.assert_allclose(dx, dx_torch, rtol=1e-12, atol=1e-15)


def test_the_cpu_form_keeps_bits_only_for_undilated_tiles():
    """A dilated 2x2/2 window does not tile: the form stores the index, not the bits."""
    x = distinct((1, 8, 8, 1))
    for dilation, saved in ((1, jnp.uint8), (2, jnp.int8)):
        cfg = pool_config(x, 2, None, 0, "t", dilation)
        assert jax.eval_shape(lambda x: pool_forms._argmax_pool_fwd(cfg, x), x)[1][0].dtype \
            == saved
