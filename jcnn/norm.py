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

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jcnn._validate import batch_norm_check

Array = jax.Array


def batch_norm(x: Array, scale: Array, bias: Array, *, eps: float = 1e-5) -> Array:
    """x (N, ..., C), scale (C,), bias (C,) -> (N, ..., C), normalised with the batch mean and
    biased variance of each channel."""
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
    axes = _axes(g)
    gh = g * _channel(scale, g.ndim)
    dx = r * (gh - jnp.mean(gh, axis=axes, keepdims=True)
              - xhat * jnp.mean(gh * xhat, axis=axes, keepdims=True))
    return dx, jnp.sum(g * xhat, axis=axes), jnp.sum(g, axis=axes)


_batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)
