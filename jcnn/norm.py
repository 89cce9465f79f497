"""Batch normalisation (training mode) with the exact backward through the batch statistics.

Over the M = N*H*W elements of each channel (every axis but the last):
    mu = mean(x),  var = mean((x - mu)^2),  r = 1 / sqrt(var + eps),  xhat = (x - mu) r,
    y = xhat * scale + bias.
With G = dL/dy and Gh = G * scale = dL/dxhat, the chain rule through mu and var gives
    dbias  = sum G                dscale = sum G * xhat
    dx     = r * (Gh - mean(Gh) - xhat * mean(Gh * xhat))
(the mean(Gh) term is the path through mu, the xhat * mean(Gh xhat) term the path through var;
docs/backprop.md derives it step by step).
"""
from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jcnn._validate import batch_norm_check

Array = jax.Array


def batch_norm(x: Array, scale: Array, bias: Array, *, eps: float = 1e-5) -> Array:
    """x (N, ..., C), scale (C,), bias (C,) -> (N, ..., C), normalised with the batch mean and
    biased variance of each channel. eps = 0 with one element per channel (0 / 0) raises
    ValueError; a channel whose values are all equal gives NaN with eps = 0, as in autodiff."""
    return _batch_norm(batch_norm_check(x, scale, bias, eps), x, scale, bias)


def _axes(x):
    return tuple(range(x.ndim - 1))


def _channel(v, ndim):
    return v.reshape((1,) * (ndim - 1) + (-1,))


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _batch_norm(eps: float, x: Array, scale: Array, bias: Array) -> Array:
    return _batch_norm_fwd(eps, x, scale, bias)[0]


def _batch_norm_fwd(eps, x, scale, bias):
    mu = jnp.mean(x, axis=_axes(x), keepdims=True)
    centred = x - mu
    r = lax.rsqrt(jnp.mean(centred * centred, axis=_axes(x), keepdims=True) + eps)
    xhat = centred * r
    # residuals: xhat (what both dx and dscale read) and r, (1, .., C). Saving x instead is the
    # same size but needs mu too, and the backward would redo (x - mu) * r.
    return xhat * _channel(scale, x.ndim) + _channel(bias, x.ndim), (xhat, r, scale)


def _batch_norm_bwd(eps, res, g):
    xhat, r, scale = res
    dbias, dscale = _channel_sums(jax.default_backend() == "cpu", g, xhat)
    m = g.size // g.shape[-1]
    # mean(Gh) = scale * dbias / M and mean(Gh * xhat) = scale * dscale / M; the sums are
    # float32 at least and divided there: a float16 sum of 40,000 G of 2 is inf, its mean is 2
    mean_g, mean_gx = (_channel(s / m, g.ndim).astype(g.dtype) for s in (dbias, dscale))
    dx = (r * _channel(scale, g.ndim)) * (g - mean_g - xhat * mean_gx)
    return dx, dscale.astype(g.dtype), dbias.astype(g.dtype)


_batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _channel_sums(one_pass: bool, g: Array, xhat: Array) -> tuple[Array, Array]:
    """(sum G, sum G * xhat) per channel, accumulated and returned in float32 at least.

    `one_pass` (CPU) makes them one variadic reduction, which XLA:CPU emits as a single loop
    with xhat's recomputation from the forward's input fused in. As two sums, XLA:CPU hands
    each to YNNPACK's reduce, which needs its operands stored: G * scale, xhat and G * xhat
    were written out and read back (ResNet-8 step at B=32: 25 MB temp with one pass against
    35 MB, and 0-20% less time; benchmarks/bn_forms.py, benchmarks/RESULTS.md). The loop sums
    blocks of 16 rows (gcd(rows, 16)) into partial sums that a plain sum then adds up: the loop
    straight down all rows to C outputs was slow (3.3 ms for (128, 32, 32, 16) on 2 cores,
    against 0.6 ms in blocks and 0.9 ms as two YNNPACK sums; our reading: XLA:CPU splits a
    loop by its outputs, so each channel's loop strides through all of G; ResNet-8 step at
    B=128 0.82x -> 0.69x autodiff's time). Elsewhere the two sums stay, unmeasured: XLA:GPU's
    multi-output fusion can merge sibling reductions by itself, and benchmarks/gpu_rows.sh
    times both forms where a GPU is lent.
    The map is bilinear; its own rule below keeps second order off JAX's transpose of a
    variadic reduction, which fails on symbolic zeros (jax 0.10.2)."""
    axes, acc = _axes(g), jnp.promote_types(g.dtype, jnp.float32)
    g32, x32 = g.astype(acc), xhat.astype(acc)
    if one_pass:
        c = g.shape[-1]
        rows = math.gcd(g.size // c, 16)
        zero = jnp.zeros((), acc)
        blocks = lax.reduce((g32.reshape(-1, rows, c), (g32 * x32).reshape(-1, rows, c)),
                            (zero, zero), lambda a, b: (a[0] + b[0], a[1] + b[1]), (1,))
        sums = tuple(jnp.sum(b, axis=0) for b in blocks)
    else:
        sums = jnp.sum(g32, axis=axes), jnp.sum(g32 * x32, axis=axes)
    return sums


def _channel_sums_fwd(one_pass, g, xhat):
    return _channel_sums(one_pass, g, xhat), (g, xhat)


def _channel_sums_bwd(one_pass, res, cts):
    # d/dG of <a, sum G> + <b, sum G xhat> is a + b xhat; d/dxhat is b G
    g, xhat = res
    a, b = (_channel(c, g.ndim) for c in cts)
    return (a + b * xhat).astype(g.dtype), (b * g).astype(xhat.dtype)


_channel_sums.defvjp(_channel_sums_fwd, _channel_sums_bwd)
