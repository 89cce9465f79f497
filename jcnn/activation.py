"""Element-wise activations with hand-derived backward rules.

Each rule saves the least its backward needs: ReLU and leaky ReLU a boolean mask (one byte an
element; lowered for CPU, packed eight to a byte: `jcnn/forms/activation.py`), sigmoid, tanh
and softplus their output (their derivatives are functions of it), GELU, SiLU and ELU their
input.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jcnn._validate import check_float, finite_real, flag_check
from jcnn.forms import activation as activation_forms
from jcnn.forms import by_platform

Array = jax.Array


def relu(x: Array) -> Array:
    """max(x, 0), any shape (NaN stays NaN, as in jax.nn.relu and PyTorch). dx = 0 where
    x <= 0 (0 at x == 0, as jax.nn.relu), else g."""
    check_float("relu", x=x)
    return _relu_like(0.0, x)


def leaky_relu(x: Array, negative_slope: float = 0.01) -> Array:
    """x where x > 0, else negative_slope * x. dx = negative_slope * g where x <= 0, else g."""
    check_float("leaky_relu", x=x)
    return _relu_like(finite_real(negative_slope, "negative_slope", "leaky_relu"), x)


def _relu_like(slope: float, x: Array) -> Array:
    return by_platform(partial(_leaky, slope), activation_forms.leaky(slope, x, _scale_nonpositive),
                       x)


def _scale_nonpositive(slope: float, nonpositive: Array, v: Array) -> Array:
    """v, times slope where nonpositive. A zero slope writes 0, not 0 * v: relu(-inf) = 0."""
    return jnp.where(nonpositive, slope * v if slope else jnp.zeros_like(v), v)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _leaky(slope: float, x: Array) -> Array:
    # on x <= 0, not on x > 0: NaN <= 0 is false, so a NaN stays NaN (a select on x > 0 wrote
    # 0 there, hiding a diverged run from the loss)
    return _scale_nonpositive(slope, x <= 0, x)


def _leaky_fwd(slope, x):
    # y through the rule itself, so that second order differentiates it by this rule, not by
    # autodiff of maximum (which splits the tie at x = 0 in half); a bool mask, 1 byte an element
    return _leaky(slope, x), x <= 0


def _leaky_bwd(slope, nonpositive, g):
    return (_scale_nonpositive(slope, nonpositive, g),)  # linear on each side of 0: the same map


_leaky.defvjp(_leaky_fwd, _leaky_bwd)


def _from_output(fn, derivative):
    """A custom_vjp for y = fn(x) whose derivative is a function of its output:
    dx = g * derivative(y). It saves y alone."""
    @jax.custom_vjp
    def op(x):
        return fn(x)

    def op_fwd(x):
        y = op(x)  # through op itself, so second order differentiates y by this same rule
        return y, y

    def op_bwd(y, g):
        return (g * derivative(y),)

    op.defvjp(op_fwd, op_bwd)
    return op


_sigmoid = _from_output(lax.logistic, lambda y: y * (1 - y))  # no overflow at large |x|
_tanh = _from_output(jnp.tanh, lambda y: 1 - y * y)


def sigmoid(x: Array) -> Array:
    """1 / (1 + exp(-x)). dx = g * y * (1 - y), y the output."""
    check_float("sigmoid", x=x)
    return _sigmoid(x)


def tanh(x: Array) -> Array:
    """tanh(x). dx = g * (1 - y^2), y the output."""
    check_float("tanh", x=x)
    return _tanh(x)


def gelu(x: Array, approximate: bool = True) -> Array:
    """x * Phi(x), Phi the standard normal CDF; approximate=True uses
    Phi(x) ~ (1 + tanh(c (x + a x^3))) / 2 with c = sqrt(2/pi), a = 0.044715.

    exact:       dx = g * (Phi(x) + x phi(x)),  phi(x) = exp(-x^2/2) / sqrt(2 pi)
    approximate: dx = g * (t' x + (1 + t) / 2) with t = tanh(u), u = c (x + a x^3),
                 t' = (1 - t^2) c (1 + 3 a x^2) / 2
    """
    check_float("gelu", x=x)
    # PyTorch's "none"/"tanh" would be truthy: only a bool is taken
    return _gelu(flag_check(approximate, "approximate", "gelu"), x)


_C, _A = 0.7978845608028654, 0.044715  # sqrt(2/pi), the cubic coefficient
_SQRT_HALF, _INV_SQRT_2PI = 0.7071067811865476, 0.3989422804014327


def _widened(x: Array) -> Array:
    """x in float32 at least: in bfloat16 the formulas below lost every digit (gelu(-3) came
    out -0.0059 for -0.0036, its erf-form gradient changed sign near -0.75), and in float16
    x^3 overflowed past |x| = 40 (a NaN gradient from 0 * inf at |x| = 700)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _phi(approximate: bool, v: Array) -> Array:
    """Phi(v), or its tanh form (1 + tanh(u)) / 2 = sigmoid(2u): neither form subtracts from
    1, which cancelled to 0 below x = -5 in float32 (as 1 + erf(x / sqrt 2) did)."""
    if approximate:
        return lax.logistic(2 * _C * (v + _A * v ** 3))
    return 0.5 * lax.erfc(-v * _SQRT_HALF)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gelu(approximate: bool, x: Array) -> Array:
    v = _widened(x)
    return (v * _phi(approximate, v)).astype(x.dtype)


def _gelu_fwd(approximate, x):
    return _gelu(approximate, x), x  # the derivative needs x itself, not just y


def _gelu_bwd(approximate, x, g):
    # d/dx x Phi = Phi + x Phi', with Phi' = phi(x) exactly, or for the tanh form, with
    # s = sigmoid(2u): d s / dx = 2 s (1 - s) u' = (1 - t^2) u' / 2 as in the docstring
    v = _widened(x)
    s = _phi(approximate, v)
    if approximate:
        slope = s + v * 2 * s * (1 - s) * _C * (1 + 3 * _A * v * v)
    else:
        slope = s + v * jnp.exp(-0.5 * v * v) * _INV_SQRT_2PI
    return ((g * slope).astype(g.dtype),)


_gelu.defvjp(_gelu_fwd, _gelu_bwd)


def silu(x: Array) -> Array:
    """x * sigmoid(x) (SiLU, swish). With s = sigmoid(x): dx = g * s * (1 + x (1 - s))."""
    check_float("silu", x=x)
    return _silu(x)


@jax.custom_vjp
def _silu(x: Array) -> Array:
    v = _widened(x)  # in float32 at least, as gelu: a bfloat16 x * s loses its low digits
    return (v * lax.logistic(v)).astype(x.dtype)


def _silu_fwd(x):
    return _silu(x), x  # the derivative needs x, not only y (y is not monotone below 0)


def _silu_bwd(x, g):
    v = _widened(x)
    s = lax.logistic(v)
    return ((g * (s * (1 + v * (1 - s)))).astype(g.dtype),)


_silu.defvjp(_silu_fwd, _silu_bwd)


def elu(x: Array, alpha: float = 1.0) -> Array:
    """x where x > 0, else alpha * (exp(x) - 1). dx = g where x > 0, else g * alpha * exp(x)
    (alpha at x == 0, as PyTorch and jax.nn.elu)."""
    check_float("elu", x=x)
    return _elu(finite_real(alpha, "alpha", "elu"), x)


def _nonpositive_part(x: Array) -> Array:
    """x where x <= 0 (or NaN), else 0: the exp of it never overflows in the branch not taken.
    A select, not minimum(x, 0), whose derivative at x == 0 autodiff splits in half: second
    order differentiates this backward."""
    return jnp.where(x > 0, jnp.zeros_like(x), x)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _elu(alpha: float, x: Array) -> Array:
    return jnp.where(x > 0, x, alpha * jnp.expm1(_nonpositive_part(x)))


def _elu_fwd(alpha, x):
    return _elu(alpha, x), x  # with any alpha's sign, x (not y) says which side of 0


def _elu_bwd(alpha, x, g):
    return (jnp.where(x > 0, g, g * (alpha * jnp.exp(_nonpositive_part(x)))),)


_elu.defvjp(_elu_fwd, _elu_bwd)


def _softplus_forward(x: Array) -> Array:
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)): no overflow at large |x|."""
    return jnp.maximum(x, jnp.zeros_like(x)) + jnp.log1p(jnp.exp(-jnp.abs(x)))


# dy/dx = sigmoid(x) = 1 - exp(-y), as -expm1(-y): no cancellation where y is small
_softplus = _from_output(_softplus_forward, lambda y: -jnp.expm1(-y))


def softplus(x: Array) -> Array:
    """log(1 + exp(x)). dx = g * sigmoid(x) = g * (1 - exp(-y)), y the output."""
    check_float("softplus", x=x)
    return _softplus(x)
