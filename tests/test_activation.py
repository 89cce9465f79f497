"""Activations: each rule against autodiff of jcnn.reference (first and second order) and float64
finite differences; the convention at exactly 0 (relu's gradient there is 0, leaky relu's is the
slope); stability at large |x|; what each forward saves; low precision; jit and vmap."""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

import jcnn
from jcnn import activation, reference
from jcnn.forms import activation as activation_forms
from gradcheck import (assert_finite_differences, assert_matches_reference,
                       assert_second_order_matches, tol)

X = jnp.asarray(np.random.default_rng(0).standard_normal((3, 7)))
AT_ZERO = jnp.array([-2.0, 0.0, 0.0, 3.0])

ACTIVATIONS = [  # (op, kwargs, derivative at exactly 0, what the forward saves for the backward)
    pytest.param("relu", {}, 0.0, "bool[3,7] output of le", id="relu"),
    pytest.param("leaky_relu", {}, 0.01, "bool[3,7] output of le", id="leaky-default"),
    pytest.param("leaky_relu", {"negative_slope": 0.2}, 0.2, "bool[3,7] output of le",
                 id="leaky-0.2"),
    pytest.param("leaky_relu", {"negative_slope": -0.5}, -0.5, "bool[3,7] output of le",
                 id="leaky-negative-slope"),
    pytest.param("sigmoid", {}, 0.25, "f64[3,7] output of custom_vjp_call", id="sigmoid"),
    pytest.param("tanh", {}, 1.0, "f64[3,7] output of custom_vjp_call", id="tanh"),
    pytest.param("gelu", {"approximate": True}, 0.5, "f64[3,7] from the argument x",
                 id="gelu-tanh"),
    pytest.param("gelu", {"approximate": False}, 0.5, "f64[3,7] from the argument x",
                 id="gelu-erf"),
    pytest.param("silu", {}, 0.5, "f64[3,7] from the argument x", id="silu"),
    pytest.param("elu", {}, 1.0, "f64[3,7] from the argument x", id="elu"),
    pytest.param("elu", {"alpha": 0.3}, 0.3, "f64[3,7] from the argument x", id="elu-0.3"),
    pytest.param("elu", {"alpha": -0.5}, -0.5, "f64[3,7] from the argument x",
                 id="elu-negative-alpha"),
    pytest.param("softplus", {}, 0.5, "f64[3,7] output of custom_vjp_call", id="softplus"),
]


def ops(name, kwargs, jit=False):
    f, ref = (partial(getattr(m, name), **kwargs) for m in (jcnn, reference))
    return (jax.jit(f), jax.jit(ref)) if jit else (f, ref)


@pytest.mark.parametrize("name, kwargs, slope0, saved", ACTIVATIONS)
def test_rule_matches_autodiff_and_finite_differences(name, kwargs, slope0, saved):
    f, ref = ops(name, kwargs, jit=True)
    assert_matches_reference(f, ref, (X,), (0,))
    assert_second_order_matches(f, ref, (X,), (0,))
    assert_finite_differences(f, (X,), (0,), order=2)


@pytest.mark.parametrize("name, kwargs, slope0, saved", ACTIVATIONS)
def test_derivative_at_exactly_zero_follows_the_reference(name, kwargs, slope0, saved):
    f, ref = ops(name, kwargs)
    grad = jax.grad(lambda x: jnp.sum(f(x)))(AT_ZERO)
    # within rounding: softplus's 1 - exp(-log 2) is 0.5 to the last bit or two
    np.testing.assert_allclose(grad[1:3], [slope0, slope0], rtol=1e-15, atol=0)
    np.testing.assert_allclose(grad, jax.grad(lambda x: jnp.sum(ref(x)))(AT_ZERO), rtol=1e-12)
    assert_second_order_matches(f, ref, (AT_ZERO,), (0,))


@pytest.mark.parametrize("name, kwargs, slope0, saved", ACTIVATIONS)
def test_forward_saves_the_least_the_backward_needs(name, kwargs, slope0, saved, capsys):
    """The plain rule's residuals; relu and leaky relu's CPU form packs the mask 8 to a byte."""
    f = ops(name, kwargs)[0]
    if name in ("relu", "leaky_relu"):
        slope = 0.0 if name == "relu" else kwargs.get("negative_slope", 0.01)
        print_saved_residuals(lambda x: activation._leaky(slope, x), X)
        print_saved_residuals(activation_forms.leaky(slope, X, activation._scale_nonpositive), X)
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 2 and lines[0].startswith(saved), lines
        assert lines[1].startswith("u8[3,1]"), lines  # 7 channels: one byte a row
        return
    print_saved_residuals(f, X)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith(saved), lines


@pytest.mark.parametrize("slope", [0.0, 0.01, -0.5])
def test_packed_mask_form_computes_the_plain_rule(slope):
    """The CPU form against the plain rule, called directly (any host): values, gradients and
    second order on exact zeros, NaN and infinities, 13 channels (two bytes, the last partial)."""
    x = jnp.asarray(np.random.default_rng(4).standard_normal((3, 2, 13)))
    x = x.at[0, 0, :4].set(jnp.array([0.0, jnp.nan, jnp.inf, -jnp.inf]))
    plain = partial(activation._leaky, slope)
    form = activation_forms.leaky(slope, x, activation._scale_nonpositive)
    np.testing.assert_array_equal(form(x), plain(x))
    g = jnp.asarray(np.random.default_rng(5).standard_normal(x.shape))
    np.testing.assert_array_equal(jax.vjp(form, x)[1](g)[0], jax.vjp(plain, x)[1](g)[0])
    finite = jnp.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    assert_second_order_matches(form, partial(reference.leaky_relu, negative_slope=slope)
                                if slope else reference.relu, (finite,), (0,))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("name, kwargs, slope0, saved", ACTIVATIONS)
def test_no_overflow_or_nan_at_large_inputs(name, kwargs, slope0, saved, dtype):
    x = jnp.array([-100.0, -20.0, 0.0, 20.0, 100.0], dtype)
    f, ref = ops(name, kwargs)
    with jax.debug_nans(True):  # raises on the first NaN any primitive produces
        y, grad = f(x), jax.grad(lambda x: jnp.sum(f(x)))(x)
    assert bool(jnp.all(jnp.isfinite(y))) and bool(jnp.all(jnp.isfinite(grad))), (y, grad)
    # atol: below the smallest normal number only rounding differs (silu(-20) is a float16
    # subnormal computed in float32 and rounded, 0 when the twin multiplies in float16)
    np.testing.assert_allclose(np.asarray(y, np.float64), np.asarray(ref(x), np.float64),
                               rtol=tol(dtype), atol=float(jnp.finfo(dtype).tiny))


@pytest.mark.parametrize("name, kwargs, slope0, saved", ACTIVATIONS[:6])
def test_infinite_inputs_as_the_reference(name, kwargs, slope0, saved):
    """relu(-inf) is 0 (not 0 * -inf); sigmoid and tanh saturate with a zero gradient."""
    x = jnp.array([-jnp.inf, jnp.inf])
    f, ref = ops(name, kwargs)
    np.testing.assert_array_equal(f(x), ref(x))
    np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(f(x)))(x),
                                  jax.grad(lambda x: jnp.sum(ref(x)))(x))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name, kwargs, slope0, saved", ACTIVATIONS)
def test_low_precision_matches_float64(name, kwargs, slope0, saved, dtype):
    """The rule run in `dtype` against autodiff in float64 on the same rounded input."""
    f, ref = ops(name, kwargs, jit=True)
    in_f64 = lambda x: ref(x.astype(jnp.float64)).astype(dtype)
    assert_matches_reference(f, in_f64, (X.astype(dtype),), (0,), rtol=tol(dtype))


@pytest.mark.parametrize("name, kwargs, slope0, saved", ACTIVATIONS)
def test_under_jit_vmap_and_vmap_of_grad(name, kwargs, slope0, saved):
    f = ops(name, kwargs)[0]
    per_row = jax.grad(lambda x: jnp.sum(jnp.sin(f(x))))
    np.testing.assert_allclose(jax.jit(f)(X), f(X), rtol=1e-12)
    np.testing.assert_allclose(jax.jit(jax.vmap(per_row))(X), [per_row(x) for x in X], rtol=1e-12)


BAD = [  # (id, op, args, kwargs, exception, words the message must contain)
    ("relu-int", "relu", (jnp.arange(3),), {}, TypeError, ["x", "floating"]),
    ("sigmoid-bool", "sigmoid", (jnp.ones(3, bool),), {}, TypeError, ["x", "floating"]),
    ("tanh-int", "tanh", (jnp.arange(3),), {}, TypeError, ["x", "floating"]),
    ("gelu-int", "gelu", (jnp.arange(3),), {}, TypeError, ["x", "floating"]),
    ("gelu-string", "gelu", (X,), {"approximate": "none"}, TypeError, ["approximate"]),
    ("leaky-int", "leaky_relu", (jnp.arange(3),), {}, TypeError, ["x", "floating"]),
    ("leaky-slope-string", "leaky_relu", (X,), {"negative_slope": "0.1"}, TypeError,
     ["negative_slope"]),
    ("leaky-slope-array", "leaky_relu", (X,), {"negative_slope": jnp.ones(2)}, TypeError,
     ["negative_slope"]),
]


@pytest.mark.parametrize("op, args, kwargs, error, words", [c[1:] for c in BAD],
                         ids=[c[0] for c in BAD])
def test_bad_input_is_refused_naming_the_argument(op, args, kwargs, error, words):
    with pytest.raises(error, match=f"^{op}: ") as raised:
        getattr(jcnn, op)(*args, **kwargs)
    assert all(word in str(raised.value) for word in words), str(raised.value)


@pytest.mark.parametrize("name, minus_inf", [("relu", 0.0), ("leaky_relu", -np.inf)])
def test_nan_stays_nan_and_minus_inf_as_the_formula(name, minus_inf):
    """A select on x > 0 wrote 0 where x was NaN, hiding a diverged run from the loss; max(x, 0)
    keeps it, as jax.nn.relu and PyTorch do. Elsewhere the gradients equal autodiff's."""
    x = jnp.array([jnp.nan, -jnp.inf, -1.0, 0.0, 2.0])
    for op in (getattr(jcnn, name), getattr(reference, name)):
        y = np.asarray(op(x))
        assert np.isnan(y[0]) and y[1] == minus_inf and y[2] <= 0 and y[3] == 0 and y[4] == 2
    finite = lambda op: lambda x: jnp.sum(jnp.where(x == x, op(x), 0))  # noqa: E731
    np.testing.assert_array_equal(jax.grad(finite(getattr(jcnn, name)))(x),
                                  jax.grad(finite(getattr(reference, name)))(x))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("approximate", [True, False])
def test_half_precision_gelu_is_computed_in_float32_and_rounded_once(approximate, dtype):
    """In bfloat16 the formulas lost every digit (gelu(-3) came out -0.0059 for -0.0036, the
    erf form's gradient changed sign near -0.75); in float16 x^3 overflowed (a NaN gradient at
    |x| = 700). Computed in float32, forward and gradient are float64's, rounded once."""
    x = jnp.concatenate([jnp.linspace(-6, 6, 241), jnp.array([-700.0, 700.0])]).astype(dtype)
    x64 = x.astype(jnp.float64)
    y, pull = jax.vjp(lambda x: jcnn.gelu(x, approximate), x)
    y64, pull64 = jax.vjp(lambda x: reference.gelu(x, approximate), x64)
    assert y.dtype == pull(jnp.ones_like(y))[0].dtype == dtype
    eps = float(jnp.finfo(dtype).eps)  # one rounding: half an ulp, with float32's error beside
    np.testing.assert_allclose(np.asarray(y, np.float64), y64, rtol=eps, atol=1e-6)
    np.testing.assert_allclose(np.asarray(pull(jnp.ones_like(y))[0], np.float64),
                               pull64(jnp.ones_like(y64))[0], rtol=eps, atol=1e-6)
