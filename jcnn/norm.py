"""Batch and layer normalisation with the exact backward through their statistics.

Over the M = N*H*W elements of each channel (every axis but the last):
    mu = mean(x),  var = mean((x - mu)^2),  r = 1 / sqrt(var + eps),  xhat = (x - mu) r,
    y = xhat * scale + bias.
With G = dL/dy and Gh = G * scale = dL/dxhat, the chain rule through mu and var gives
    dbias  = sum G                dscale = sum G * xhat
    dx     = r * (Gh - mean(Gh) - xhat * mean(Gh * xhat))
(the mean(Gh) term is the path through mu, the xhat * mean(Gh xhat) term the path through var;
docs/backprop.md derives it step by step).

Layer norm is the same maths with the roles of the axes exchanged: the statistics of each row
over its C channels (the last axis), scale and bias still per channel, so Gh = G * scale varies
along the row and the means in dx are over the row; dscale and dbias sum over the rows.
"""
from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jcnn._sharding import alike
from jcnn._validate import batch_norm_check, layer_norm_check
from jcnn.forms import by_platform
from jcnn.forms import norm as norm_forms

Array = jax.Array


def batch_norm(x: Array, scale: Array, bias: Array, *, eps: float = 1e-5) -> Array:
    """x (N, ..., C), scale (C,), bias (C,) -> (N, ..., C), normalised with the batch mean and
    biased variance of each channel. eps = 0 with one element per channel (0 / 0) raises
    ValueError; a channel whose values are all equal gives NaN with eps = 0, as in autodiff."""
    eps = batch_norm_check(x, scale, bias, eps)
    return _batch_norm(eps, *alike(x, scale, bias))


def _axes(x):
    return tuple(range(x.ndim - 1))


def _channel(v, ndim):
    return v.reshape((1,) * (ndim - 1) + (-1,))


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _batch_norm(eps: float, x: Array, scale: Array, bias: Array) -> Array:
    return _normalised(eps, x)[0] * _channel(scale, x.ndim) + _channel(bias, x.ndim)


def _normalised(eps, x):
    """xhat = (x - mu) r and r = 1 / sqrt(var + eps), (1, .., C)."""
    mu = jnp.mean(x, axis=_axes(x), keepdims=True)
    centred = x - mu
    r = lax.rsqrt(jnp.mean(centred * centred, axis=_axes(x), keepdims=True) + eps)
    return centred * r, r


def _batch_norm_fwd(eps, x, scale, bias):
    # y through the rule itself, so that second order differentiates it by this rule; XLA
    # computes the statistics once for both
    xhat, r = _normalised(eps, x)
    # residuals: xhat (what both dx and dscale read) and r, (1, .., C). Saving x instead is the
    # same size but needs mu too, and the backward would redo (x - mu) * r.
    return _batch_norm(eps, x, scale, bias), (xhat, r, scale)


def _batch_norm_bwd(eps, res, g):
    xhat, r, scale = res
    dbias, dscale = _channel_sums(g, xhat)
    # mean(Gh) = scale * dbias / M and mean(Gh * xhat) = scale * dscale / M, M = N*H*W as an
    # array (a symbolic batch makes it one); the sums are float32 at least and divided there: a
    # float16 sum of 40,000 G of 2 is inf, its mean is 2
    m = jnp.asarray(math.prod(g.shape[:-1]), dbias.dtype)
    mean_g, mean_gx = (_channel(s / m, g.ndim).astype(g.dtype) for s in (dbias, dscale))
    dx = (r * _channel(scale, g.ndim)) * (g - mean_g - xhat * mean_gx)
    return dx, dscale.astype(g.dtype), dbias.astype(g.dtype)


_batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)


@jax.custom_vjp
def _channel_sums(g: Array, xhat: Array) -> tuple[Array, Array]:
    """(sum G, sum G * xhat) per channel, accumulated and returned in float32 at least (on CPU
    as one reduction: `jcnn/forms/norm.py`). The map is bilinear; its own rule below keeps
    second order off JAX's transpose of the CPU form's variadic reduction, which fails on
    symbolic zeros (jax 0.10.2)."""
    return by_platform(_two_sums, norm_forms.channel_sums(g), g, xhat)


def _two_sums(g: Array, xhat: Array) -> tuple[Array, Array]:
    acc = jnp.promote_types(g.dtype, jnp.float32)
    g32 = g.astype(acc)
    return jnp.sum(g32, axis=_axes(g)), jnp.sum(g32 * xhat.astype(acc), axis=_axes(g))


def _channel_sums_fwd(g, xhat):
    return _channel_sums(g, xhat), (g, xhat)


def _channel_sums_bwd(res, cts):
    # d/dG of <a, sum G> + <b, sum G xhat> is a + b xhat; d/dxhat is b G
    g, xhat = res
    a, b = (_channel(c, g.ndim) for c in cts)
    return (a + b * xhat).astype(g.dtype), (b * g).astype(xhat.dtype)


_channel_sums.defvjp(_channel_sums_fwd, _channel_sums_bwd)


def layer_norm(x: Array, scale: Array, bias: Array, *, eps: float = 1e-5) -> Array:
    """x (..., C), scale (C,), bias (C,) -> (..., C), each row normalised with the mean and
    biased variance of its C channels (PyTorch's F.layer_norm(x, (C,), scale, bias))."""
    eps = layer_norm_check(x, scale, bias, eps)
    return _layer_norm(eps, *alike(x, scale, bias))


def _row_normalised(eps, x):
    """xhat = (x - mu) r and r = 1 / sqrt(var + eps), (..., 1), over the last axis."""
    mu = jnp.mean(x, axis=-1, keepdims=True)
    centred = x - mu
    r = lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)
    return centred * r, r


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _layer_norm(eps: float, x: Array, scale: Array, bias: Array) -> Array:
    return _row_normalised(eps, x)[0] * _channel(scale, x.ndim) + _channel(bias, x.ndim)


def _layer_norm_fwd(eps, x, scale, bias):
    # y through the rule itself, so that second order differentiates it by this rule
    xhat, r = _row_normalised(eps, x)
    return _layer_norm(eps, x, scale, bias), (xhat, r, scale)


def _layer_norm_bwd(eps, res, g):
    xhat, r, scale = res
    acc = jnp.promote_types(g.dtype, jnp.float32)
    gh = g * _channel(scale, g.ndim)
    # the row means in float32 at least, rounded once (as batch norm's channel sums)
    mean_gh, mean_ghx = (jnp.mean(v.astype(acc), axis=-1, keepdims=True).astype(g.dtype)
                         for v in (gh, gh * xhat))
    rows = tuple(range(g.ndim - 1))
    dscale, dbias = (jnp.sum(v.astype(acc), axis=rows).astype(g.dtype) for v in (g * xhat, g))
    return r * (gh - mean_gh - xhat * mean_ghx), dscale, dbias


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)
