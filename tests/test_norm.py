"""batch_norm (training mode): the closed-form backward through the batch statistics against
autodiff of jcnn.reference (first and second order), float64 finite differences and the
step-by-step NumPy loops; the identities the gradient must keep; low precision; jit and vmap."""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

import jcnn
from jcnn import norm
from jcnn.forms import norm as norm_forms
from jcnn import naive, reference
from gradcheck import (assert_finite_differences, assert_matches_reference,
                       assert_second_order_matches, tol)


def bn_args(*shape, seed=0):
    """x with per-channel means and spreads far from 0 and 1, so normalising does something."""
    rng = np.random.default_rng([seed, *shape])
    c = shape[-1]
    x = rng.standard_normal(shape) * rng.uniform(0.5, 3, c) + rng.uniform(-2, 2, c)
    return tuple(jnp.asarray(a) for a in (x, rng.uniform(0.5, 2, c), rng.standard_normal(c)))


CASES = [  # (x shape, eps)
    pytest.param((8, 5), 1e-5, id="NC", marks=pytest.mark.slow),
    pytest.param((3, 4, 4, 2), 1e-5, id="NHWC"),
    pytest.param((1, 3, 3, 2), 1e-5, id="N1-spatial"),
    pytest.param((2, 5, 3), 0.5, id="NLC-large-eps", marks=pytest.mark.slow),
    pytest.param((1, 2, 3, 2), 0.0, id="N1-spatial-eps0"),
]


def bn(eps):
    return jax.jit(partial(jcnn.batch_norm, eps=eps))  # one compile per shape, not one per op


def bn_ref(eps):
    return jax.jit(partial(reference.batch_norm, eps=eps))


@pytest.mark.parametrize("shape, eps", CASES)
def test_matches_autodiff_and_finite_differences(shape, eps):
    assert_matches_reference(bn(eps), bn_ref(eps), bn_args(*shape), (0, 1, 2))
    assert_finite_differences(bn(eps), bn_args(*shape), (0, 1, 2), order=2)


@pytest.mark.parametrize("shape, eps", CASES)
def test_second_order_matches_autodiff(shape, eps):
    assert_second_order_matches(bn(eps), bn_ref(eps), bn_args(*shape), (0, 1, 2))


@pytest.mark.parametrize("shape, eps", CASES)
def test_matches_the_loops(shape, eps):
    args = bn_args(*shape)
    g = jnp.asarray(np.random.default_rng(7).standard_normal(shape))
    y, pull = jax.vjp(bn(eps), *args)
    y_loops, grads = naive.batch_norm(*args, eps=eps), naive.batch_norm_backward(g, *args, eps=eps)
    np.testing.assert_allclose(y, y_loops, rtol=1e-10, atol=1e-12)
    for got, want, name in zip(pull(g), grads, ("dx", "dscale", "dbias")):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11, err_msg=name)


@pytest.mark.parametrize("shape, eps", [((1, 3), 1e-5), ((4, 2, 2, 3), 1e-3)],
                         ids=["one-element-per-channel", "one-constant-channel"])
def test_zero_variance_with_eps_matches_autodiff_and_the_loops(shape, eps):
    """var = 0 (one element per channel, or a channel whose values are all equal): eps > 0
    keeps r = eps^(-1/2) finite, xhat is 0 there and y the bias, and the path through var
    drops out, leaving dx = r scale (G - mean G) (0 with one element) and dbias = sum G."""
    x, scale, bias = bn_args(*shape)
    x = x.at[..., 1].set(0.7)
    g = jnp.asarray(np.random.default_rng(5).standard_normal(shape))
    assert_matches_reference(bn(eps), bn_ref(eps), (x, scale, bias), (0, 1, 2))
    assert_second_order_matches(bn(eps), bn_ref(eps), (x, scale, bias), (0, 1, 2))
    assert_finite_differences(bn(eps), (x, scale, bias), (0, 1, 2), order=2)
    y, pull = jax.vjp(bn(eps), x, scale, bias)
    y_loops = naive.batch_norm(x, scale, bias, eps=eps)
    grads = naive.batch_norm_backward(g, x, scale, bias, eps=eps)
    np.testing.assert_allclose(y, y_loops, rtol=1e-10, atol=1e-12)
    # xhat is 0 up to the mean's rounding (6e-15 from 0 on one host): not exactly 0
    np.testing.assert_allclose(y[..., 1], bias[1], rtol=0, atol=1e-12)
    for got, want, name in zip(pull(g), grads, ("dx", "dscale", "dbias")):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11, err_msg=name)
    g1, axes = g[..., 1], tuple(range(len(shape) - 1))
    np.testing.assert_allclose(pull(g)[0][..., 1], scale[1] / np.sqrt(eps) * (g1 - np.mean(g1)),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pull(g)[2], np.sum(g, axis=axes), rtol=1e-12)


@pytest.mark.parametrize("shape, eps", CASES)
def test_output_is_normalised_and_dx_is_blind_to_shift_and_scale(shape, eps):
    """With scale 1, bias 0 each channel comes out with mean 0 and variance var / (var + eps).
    y does not change when a channel of x is shifted (nor, when eps = 0, scaled), so for any g
    dx summed over a channel is 0 (and, when eps = 0, dx is orthogonal to that channel of x)."""
    x, _, _ = bn_args(*shape)
    c, axes = shape[-1], tuple(range(len(shape) - 1))
    y = jcnn.batch_norm(x, jnp.ones(c), jnp.zeros(c), eps=eps)
    var = np.var(np.asarray(x), axis=axes)
    np.testing.assert_allclose(jnp.mean(y, axis=axes), 0, atol=1e-12)
    np.testing.assert_allclose(jnp.var(y, axis=axes), var / (var + eps), rtol=1e-12)
    g = jnp.asarray(np.random.default_rng(3).standard_normal(shape))
    dx = jax.vjp(bn(eps), *bn_args(*shape))[1](g)[0]
    np.testing.assert_allclose(jnp.sum(dx, axis=axes), 0, atol=1e-12)
    if eps == 0:
        np.testing.assert_allclose(jnp.sum(dx * x, axis=axes), 0, atol=1e-11)


def test_forward_saves_xhat_r_and_scale_only(capsys):
    print_saved_residuals(bn(1e-5), *bn_args(3, 4, 4, 2))
    saved = sorted(line.split(" ")[0] for line in capsys.readouterr().out.splitlines())
    assert saved == ["f64[1,1,1,2]", "f64[2]", "f64[3,4,4,2]"], saved  # r, scale, xhat


@pytest.mark.parametrize("form", ["cpu", "plain"], ids=["one-pass", "two-sums"])
@pytest.mark.parametrize("dtype", [jnp.float64, jnp.bfloat16])
@pytest.mark.parametrize("shape", [(3, 4, 5, 2), (2, 4, 4, 2), (3, 3, 3, 2)],
                         ids=["blocks-of-4", "blocks-of-16", "odd-rows"])
def test_channel_sums_both_forms(form, dtype, shape):
    """The backward's per-channel (sum G, sum G xhat), in either form (the plain two sums, or
    CPU's one pass, `jcnn/forms/norm.py`), on any host: equal to NumPy's float64 sums
    (bfloat16 inputs are accumulated, and returned, in float32). The one pass sums blocks of
    gcd(rows, 16) rows first: 60 rows make blocks of 4, 32 of 16, 27 of 1."""
    g, xhat = (bn_args(*shape, seed=s)[0].astype(dtype) for s in (1, 2))
    got = (norm_forms.channel_sums(g) if form == "cpu" else norm._two_sums)(g, xhat)
    g64, x64 = np.asarray(g, np.float64), np.asarray(xhat, np.float64)
    for got_s, want in zip(got, (g64.sum((0, 1, 2)), (g64 * x64).sum((0, 1, 2)))):
        assert got_s.dtype == jnp.promote_types(dtype, jnp.float32)
        np.testing.assert_allclose(np.asarray(got_s, np.float64), want, rtol=tol(dtype))


@pytest.mark.parametrize("shape", [(3, 4, 5, 2), (3, 3, 3, 2)], ids=["blocks-of-4", "odd-rows"])
def test_channel_sums_rule_first_and_second_order(shape):
    """The sums' own rule, on the CPU device (its one-pass form, whatever the host's default
    backend), against autodiff of the plain sums: the rule keeps the form's variadic reduction
    off JAX's transpose."""
    g, xhat = jax.device_put([bn_args(*shape, seed=s)[0] for s in (1, 2)], jax.devices("cpu")[0])
    plain = lambda g, x: jnp.stack([jnp.sum(g, axis=(0, 1, 2)), jnp.sum(g * x, axis=(0, 1, 2))])
    sums = lambda g, x: jnp.stack(norm._channel_sums(g, x))
    assert_matches_reference(sums, plain, (g, xhat), (0, 1))
    assert_second_order_matches(sums, plain, (g, xhat), (0, 1))


def test_cpu_backward_reduces_in_one_pass():
    """Lowered for CPU, the backward's two channel sums are one variadic reduction (one loop
    over G and xhat, into block sums); exported for CUDA, two plain sums, whatever the host."""
    x, scale, bias = as_dtype(bn_args(3, 4, 4, 2), jnp.float32)
    pull = jax.jit(lambda x, g: jax.vjp(lambda x: jcnn.batch_norm(x, scale, bias), x)[1](g)[0])
    cpu = jax.export.export(pull, platforms=("cpu",))(x, x).mlir_module()
    cuda = jax.export.export(pull, platforms=("cuda",))(x, x).mlir_module()
    assert cpu.count(":2 = stablehlo.reduce") == 1, cpu
    assert cuda.count(":2 = stablehlo.reduce") == 0 and cuda.count("stablehlo.reduce") >= 2, cuda


def as_dtype(args, dtype):
    return tuple(a.astype(dtype) for a in args)


def test_float16_sums_past_its_range_still_give_a_finite_input_gradient():
    """40,000 rows of G = 2: sum G is 80,000, past float16's largest 65,504, but mean G is 2.
    dx divides the sums by M before rounding to float16, so it stays finite and equals the
    float64 rule's dx (~0 here: G is constant) to float16's rounding; dbias overflows, as it
    must in float16."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((100, 20, 20, 1)) * 4)
    scale, bias, g = jnp.ones(1), jnp.zeros(1), jnp.full(x.shape, 2.0)

    def grads(dtype):
        pull = jax.vjp(lambda *a: jcnn.batch_norm(*a), *as_dtype((x, scale, bias), dtype))[1]
        return jax.jit(pull)(g.astype(dtype))
    (dx, _, dbias), (dx64, _, _) = grads(jnp.float16), grads(jnp.float64)
    assert dx.dtype == jnp.float16 and np.isfinite(np.asarray(dx)).all()
    # |G| float16 epsilons: mean(G xhat)'s rounding, carried by xhat * r (about 1 here)
    np.testing.assert_allclose(np.asarray(dx, np.float64), dx64, atol=2 * 2.0 ** -10)
    assert np.isinf(np.asarray(dbias)).all()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("shape, eps", [c for c in CASES if c.id == "NHWC"])
def test_low_precision_matches_float64(shape, eps, dtype):
    """The rule run in `dtype` against autodiff in float64 on the very same rounded inputs;
    cotangents come back in `dtype`."""
    in_f64 = lambda *a: bn_ref(eps)(*as_dtype(a, jnp.float64)).astype(dtype)
    assert_matches_reference(bn(eps), in_f64, as_dtype(bn_args(*shape), dtype), (0, 1, 2),
                             rtol=tol(dtype))


def test_under_jit_vmap_and_vmap_of_grad():
    """vmap over a leading axis: each slice is a batch of its own, with its own statistics."""
    xs = jnp.stack([bn_args(4, 3, seed=s)[0] for s in range(3)])
    _, scale, bias = bn_args(4, 3)
    loss = lambda x, scale: jnp.sum(jnp.sin(jcnn.batch_norm(x, scale, bias)))
    np.testing.assert_allclose(jax.vmap(lambda x: jcnn.batch_norm(x, scale, bias))(xs),
                               [reference.batch_norm(x, scale, bias) for x in xs], rtol=1e-12)
    per = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(0, None)))(xs, scale)
    for i, x in enumerate(xs):
        for got, want in zip(per, jax.grad(loss, argnums=(0, 1))(x, scale)):
            np.testing.assert_allclose(got[i], want, rtol=1e-11)


X = jnp.zeros((2, 3, 3, 4), jnp.float32)
ONE, ZERO = jnp.ones(4, jnp.float32), jnp.zeros(4, jnp.float32)
BAD = [  # (id, args, kwargs, exception, words the message must contain); more in test_errors.py
    ("x-int", (X.astype(jnp.int32), ONE, ZERO), {}, TypeError, ["x", "floating"]),
    ("bias-dtype", (X, ONE, ZERO.astype(jnp.float16)), {}, TypeError, ["dtype", "bias"]),
    ("scale-rank2", (X, ONE[None], ZERO), {}, ValueError, ["scale", "(4,)"]),
    ("x-scalar", (jnp.float32(1), ONE, ZERO), {}, ValueError, ["x", "rank"]),
    ("eps-negative", (X, ONE, ZERO), {"eps": -1.0}, ValueError, ["eps", ">= 0"]),
    ("eps-string", (X, ONE, ZERO), {"eps": "1e-5"}, TypeError, ["eps"]),
    ("eps-array", (X, ONE, ZERO), {"eps": jnp.ones(4)}, TypeError, ["eps"]),
    ("eps0-one-element", (X[:1, :1, :1], ONE, ZERO), {"eps": 0.0}, ValueError,
     ["eps = 0", "(1, 1, 1, 4)"]),
]


@pytest.mark.parametrize("args, kwargs, error, words", [c[1:] for c in BAD],
                         ids=[c[0] for c in BAD])
def test_bad_input_is_refused_naming_the_argument(args, kwargs, error, words):
    with pytest.raises(error, match="^batch_norm: ") as raised:
        jcnn.batch_norm(*args, **kwargs)
    assert all(word in str(raised.value) for word in words), str(raised.value)


LN_CASES = [  # (x shape, eps): statistics per row, over the last axis; --runslow runs all,
    # the default run the cases that the grid (jcnn verify) and the matrix do not
    pytest.param((5,), 1e-5, id="C", marks=pytest.mark.slow),
    pytest.param((8, 5), 1e-5, id="NC"),
    pytest.param((3, 4, 4, 2), 1e-5, id="NHWC"),
    pytest.param((2, 5, 3), 0.5, id="NLC-large-eps"),
    pytest.param((4, 3), 0.0, id="eps0", marks=pytest.mark.slow),
    pytest.param((4, 1), 1e-3, id="one-channel-zero-variance"),
]


def ln_args(*shape, seed=0):
    """x with per-row means and spreads far from 0 and 1, scale and bias per channel."""
    rng = np.random.default_rng([seed, *shape])
    rows = shape[:-1] + (1,)
    x = rng.standard_normal(shape) * rng.uniform(0.5, 3, rows) + rng.uniform(-2, 2, rows)
    c = shape[-1]
    return tuple(jnp.asarray(a) for a in (x, rng.uniform(0.5, 2, c), rng.standard_normal(c)))


@pytest.mark.parametrize("shape, eps", LN_CASES)
def test_layer_norm_three_ways_to_second_order(shape, eps):
    """Against autodiff of the reference (first and second order, jointly in x, scale, bias),
    float64 finite differences and the loops (`jcnn.naive.layer_norm_backward`)."""
    f = jax.jit(partial(jcnn.layer_norm, eps=eps))
    ref = jax.jit(partial(reference.layer_norm, eps=eps))
    args = ln_args(*shape)
    assert_matches_reference(f, ref, args, (0, 1, 2))
    assert_second_order_matches(f, ref, args, (0, 1, 2))
    if shape[-1] > 1:  # one channel: x is constant in x (xhat = 0), FD of 0 checks nothing new
        assert_finite_differences(f, args, (0, 1, 2), order=2)
    g = jnp.asarray(np.random.default_rng(7).standard_normal(shape))
    y, pull = jax.vjp(f, *args)
    np.testing.assert_allclose(y, naive.layer_norm(*args, eps=eps), rtol=1e-10, atol=1e-12)
    for got, want, name in zip(pull(g), naive.layer_norm_backward(g, *args, eps=eps),
                               ("dx", "dscale", "dbias")):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11, err_msg=name)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_layer_norm_low_precision_matches_float64(dtype):
    """The rule run in `dtype` against autodiff in float64 on the very same rounded inputs."""
    f = jax.jit(partial(jcnn.layer_norm, eps=1e-5))
    in_f64 = jax.jit(lambda *a: reference.layer_norm(*as_dtype(a, jnp.float64), eps=1e-5)
                     .astype(dtype))
    assert_matches_reference(f, in_f64, as_dtype(ln_args(6, 4, 8), dtype), (0, 1, 2),
                             rtol=tol(dtype))


def test_layer_norm_rows_are_independent_and_each_is_normalised():
    """Each row's mean is 0 and variance var/(var+eps) before the affine map; changing one row
    leaves the others' outputs as they were (statistics over the last axis only)."""
    x, _, _ = ln_args(5, 6)
    y = jcnn.layer_norm(x, jnp.ones(6), jnp.zeros(6), eps=0.0)
    np.testing.assert_allclose(jnp.mean(y, axis=-1), 0, atol=1e-12)
    np.testing.assert_allclose(jnp.var(y, axis=-1), 1, rtol=1e-12)
    y2 = jcnn.layer_norm(x.at[0].mul(3.0).at[0].add(7.0), jnp.ones(6), jnp.zeros(6), eps=0.0)
    np.testing.assert_allclose(y2[1:], y[1:], rtol=1e-12)


GN_CASES = [  # (x shape, groups, eps)
    pytest.param((2, 3, 3, 6), 3, 1e-5, id="NHWC-3-groups"),
    pytest.param((2, 3, 3, 6), 6, 1e-5, id="instance-norm"),
    pytest.param((2, 3, 3, 6), 1, 1e-5, id="one-group", marks=pytest.mark.slow),
    pytest.param((3, 4, 4), 2, 0.5, id="NLC-large-eps", marks=pytest.mark.slow),
    pytest.param((2, 5, 2), 2, 0.0, id="eps0", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("shape, groups, eps", GN_CASES)
def test_group_norm_three_ways_to_second_order(shape, groups, eps):
    """Against autodiff of the reference (first and second order, jointly in x, scale, bias),
    float64 finite differences and the loops (`jcnn.naive.group_norm_backward`)."""
    f = jax.jit(lambda x, s, b: jcnn.group_norm(x, groups, s, b, eps=eps))
    ref = jax.jit(lambda x, s, b: reference.group_norm(x, groups, s, b, eps=eps))
    args = bn_args(*shape)
    assert_matches_reference(f, ref, args, (0, 1, 2))
    assert_second_order_matches(f, ref, args, (0, 1, 2))
    assert_finite_differences(f, args, (0, 1, 2), order=2)
    g = jnp.asarray(np.random.default_rng(7).standard_normal(shape))
    y, pull = jax.vjp(f, *args)
    x, scale, bias = args
    np.testing.assert_allclose(y, naive.group_norm(x, groups, scale, bias, eps=eps), rtol=1e-10,
                               atol=1e-12)
    dx, _, dscale, dbias = naive.group_norm_backward(g, x, groups, scale, bias, eps=eps)
    for got, want, name in zip(pull(g), (dx, dscale, dbias), ("dx", "dscale", "dbias")):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11, err_msg=name)


def test_group_norm_with_one_group_per_channel_is_instance_norm_and_one_group_layer_norm():
    """groups = C normalises each channel of each sample over its positions; groups = 1 each
    sample over every position and channel."""
    x, scale, bias = (np.asarray(a) for a in bn_args(2, 3, 4, 5))
    per_channel = (x - x.mean(axis=(1, 2), keepdims=True)) / np.sqrt(
        x.var(axis=(1, 2), keepdims=True) + 1e-5)
    np.testing.assert_allclose(jcnn.group_norm(jnp.asarray(x), 5, scale, bias),
                               per_channel * scale + bias, rtol=1e-10, atol=1e-12)
    flat = x.reshape(2, -1)
    flat = ((flat - flat.mean(axis=1, keepdims=True))
            / np.sqrt(flat.var(axis=1, keepdims=True) + 1e-5)).reshape(x.shape)
    np.testing.assert_allclose(jcnn.group_norm(jnp.asarray(x), 1, scale, bias),
                               flat * scale + bias, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_group_norm_low_precision_matches_float64(dtype):
    """The rule run in `dtype` against autodiff in float64 on the very same rounded inputs."""
    f = jax.jit(lambda x, s, b: jcnn.group_norm(x, 2, s, b))
    in_f64 = jax.jit(lambda *a: reference.group_norm(*as_dtype(a[:1], jnp.float64), 2,
                                                     *as_dtype(a[1:], jnp.float64))
                     .astype(dtype))
    assert_matches_reference(f, in_f64, as_dtype(bn_args(3, 4, 4, 8), dtype), (0, 1, 2),
                             rtol=tol(dtype))


def test_group_norm_of_an_empty_batch_is_empty_with_zero_parameter_gradients():
    x, scale, bias = (jnp.zeros((0, 3, 3, 4)), jnp.ones(4), jnp.zeros(4))
    y, pull = jax.vjp(lambda *a: jcnn.group_norm(a[0], 2, *a[1:]), x, scale, bias)
    dx, dscale, dbias = pull(jnp.zeros(y.shape))
    assert y.shape == x.shape and dx.shape == x.shape
    np.testing.assert_array_equal(dscale, 0)
    np.testing.assert_array_equal(dbias, 0)


# ------------------------------------------------------------ batch_norm in evaluation mode

EVAL_CASES = [  # (x shape, eps, kinks): statistics given, not computed from x
    pytest.param((8, 5), 1e-5, False, id="NC", marks=pytest.mark.slow),
    pytest.param((3, 4, 4, 2), 0.1, False, id="NHWC-eps0.1"),
    pytest.param((1, 1, 1, 3), 0.0, False, id="one-element-eps0", marks=pytest.mark.slow),
    pytest.param((2, 3, 3, 2), 1e-3, True, id="kinks-x-on-mean-and-ties"),
]


def eval_args(shape, kinks=False, seed=0):
    """(x, scale, bias, mean, var): var in (0.5, 2.5); kinks: x and mean integers, so that
    some x equal their channel's mean exactly (xhat = 0) and many values tie."""
    rng = np.random.default_rng([seed, *shape])
    c = shape[-1]
    x, mean = rng.standard_normal(shape) * 2, rng.standard_normal(c)
    if kinks:
        x, mean = np.round(x), np.round(mean)
    return tuple(jnp.asarray(a) for a in (x, rng.uniform(0.5, 2, c), rng.standard_normal(c),
                                          mean, rng.uniform(0.5, 2.5, c)))


def bn_eval(module, eps):
    return jax.jit(lambda x, s, b, m, v: module.batch_norm(x, s, b, eps=eps, mean=m, var=v))


@pytest.mark.parametrize("shape, eps, kinks", EVAL_CASES)
def test_eval_mode_three_ways_to_second_order(shape, eps, kinks):
    """Jointly in x, scale, bias, mean and var: autodiff of the reference (first and second
    order), float64 finite differences (`jcnn.check_vjp`, orders 1 and 2) and the loops."""
    f, ref, args = bn_eval(jcnn, eps), bn_eval(reference, eps), eval_args(shape, kinks)
    assert_matches_reference(f, ref, args, range(5))
    assert_second_order_matches(f, ref, args, range(5))
    jcnn.check_vjp(f, ref, *args, order=2, samples=1)  # raises on a mismatch
    g = jnp.asarray(np.random.default_rng(7).standard_normal(shape))
    y, pull = jax.vjp(f, *args)
    x, scale, bias, mean, var = args
    np.testing.assert_allclose(y, naive.batch_norm(x, scale, bias, eps=eps, mean=mean, var=var),
                               rtol=1e-10, atol=1e-12)
    want = naive.batch_norm_backward(g, x, scale, bias, eps=eps, mean=mean, var=var)
    for got, want, name in zip(pull(g), want, ("dx", "dscale", "dbias", "dmean", "dvar")):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11, err_msg=name)


def test_eval_mode_is_the_training_mode_at_the_batch_statistics():
    """Given the batch's own mean and biased variance, evaluation mode gives training mode's y;
    its dx is then only the direct path, training's dx minus the paths through the statistics."""
    x, scale, bias = bn_args(3, 4, 4, 2)
    axes = (0, 1, 2)
    mean, var = jnp.mean(x, axis=axes), jnp.var(x, axis=axes)
    np.testing.assert_allclose(jcnn.batch_norm(x, scale, bias, mean=mean, var=var),
                               jcnn.batch_norm(x, scale, bias), rtol=1e-12, atol=1e-12)
    g = jnp.asarray(np.random.default_rng(2).standard_normal(x.shape))
    dx = jax.vjp(lambda x: jcnn.batch_norm(x, scale, bias, mean=mean, var=var), x)[1](g)[0]
    np.testing.assert_allclose(dx, g * (scale / jnp.sqrt(var + 1e-5)).reshape(1, 1, 1, 2),
                               rtol=1e-12)


def test_eval_mode_forward_saves_xhat_r_and_scale_only(capsys):
    print_saved_residuals(bn_eval(jcnn, 1e-5), *eval_args((3, 4, 4, 2)))
    saved = sorted(line.split(" ")[0] for line in capsys.readouterr().out.splitlines())
    assert saved == ["f64[2]", "f64[2]", "f64[3,4,4,2]"], saved  # r, scale, xhat


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_eval_mode_low_precision_matches_float64(dtype):
    in_f64 = jax.jit(lambda *a: bn_eval(reference, 1e-5)(*as_dtype(a, jnp.float64))
                     .astype(dtype))
    assert_matches_reference(bn_eval(jcnn, 1e-5), in_f64,
                             as_dtype(eval_args((3, 4, 4, 2)), dtype), range(5), rtol=tol(dtype))


def test_eval_mode_under_jit_vmap_and_vmap_of_grad():
    """vmap over a leading axis of x and mean (each slice its own statistics), var shared."""
    sets = [eval_args((4, 3), seed=s) for s in range(3)]
    xs, means = jnp.stack([a[0] for a in sets]), jnp.stack([a[3] for a in sets])
    _, scale, bias, _, var = sets[0]

    def loss(x, scale, mean, var):
        return jnp.sum(jnp.sin(jcnn.batch_norm(x, scale, bias, mean=mean, var=var)))

    def loss_ref(x, scale, mean, var):
        return jnp.sum(jnp.sin(reference.batch_norm(x, scale, bias, mean=mean, var=var)))
    per = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1, 2, 3)), in_axes=(0, None, 0, None)))(
        xs, scale, means, var)
    for i in range(3):
        want = jax.grad(loss_ref, argnums=(0, 1, 2, 3))(xs[i], scale, means[i], var)
        for got, w in zip(per, want):
            np.testing.assert_allclose(got[i], w, rtol=1e-11)


def test_the_layer_evaluates_through_the_op(key):
    """`jcnn.layers.batch_norm` in evaluation calls `ops.batch_norm(..., mean=, var=)` with
    its running statistics, and its gradient w.r.t. params and state is the op's."""
    from types import SimpleNamespace

    from jcnn import layers
    calls = []

    def recording(*args, **kwargs):
        calls.append(sorted(kwargs))
        return jcnn.batch_norm(*args, **kwargs)
    layer = layers.batch_norm(eps=1e-3, ops=SimpleNamespace(batch_norm=recording))
    x, scale, bias, mean, var = eval_args((2, 3, 3, 2))
    params, state = {"scale": scale, "bias": bias}, {"mean": mean, "var": var}
    y, new_state = layer.apply(params, state, x, train=False)
    assert calls == [["eps", "mean", "var"]] and new_state is state
    np.testing.assert_allclose(y, reference.batch_norm(x, scale, bias, eps=1e-3, mean=mean,
                                                       var=var), rtol=1e-12)
    got = jax.grad(lambda p, s: jnp.sum(jnp.sin(layer.apply(p, s, x, train=False)[0])),
                   argnums=(0, 1))(params, state)
    want = jax.grad(lambda s, b, m, v: jnp.sum(jnp.sin(bn_eval(reference, 1e-3)(x, s, b, m, v))),
                    argnums=(0, 1, 2, 3))(scale, bias, mean, var)
    for g, w in zip((got[0]["scale"], got[0]["bias"], got[1]["mean"], got[1]["var"]), want):
        np.testing.assert_allclose(g, w, rtol=1e-11)
