"""Fully connected layer and flatten.

dense: Y[..., o] = sum_i X[..., i] W[i, o] + b[o]. With the leading axes folded into one
(X as (M, I), G as (M, O)), the backward is two matrix products and a sum:
    dX = G W^T        dW = X^T G        db = sum_m G[m, :]
"""
from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from jcnn._sharding import alike
from jcnn._validate import dense_check, flatten_check

Array = jax.Array


def dense(x: Array, w: Array, b: Optional[Array] = None) -> Array:
    """x (..., in_features), w (in_features, out_features), b (out_features,) ->
    (..., out_features)."""
    dense_check(x, w, b)
    x, w, b = alike(x, w, b)
    y = _matmul(x, w)
    return y if b is None else add_bias(y, b)


@jax.custom_vjp
def _matmul(x: Array, w: Array) -> Array:
    return jnp.matmul(x, w)


def _matmul_fwd(x, w):
    return _matmul(x, w), (x, w)


def _matmul_bwd(res, g):
    x, w = res
    dx = _matmul(g, w.T)  # through the rule again, so second order stays hand-derived
    rows = math.prod(x.shape[:-1])  # not -1: it cannot be resolved beside a 0-length axis
    dw = _matmul(x.reshape(rows, x.shape[-1]).T, g.reshape(rows, g.shape[-1]))
    return dx, dw


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


@jax.custom_vjp
def add_bias(y: Array, b: Array) -> Array:
    """y (..., C) + b (C,) along the last axis; dy = G, db[c] = sum of G[..., c]."""
    return y + b.reshape((1,) * (y.ndim - 1) + (-1,))


def _add_bias_fwd(y, b):
    return add_bias(y, b), None  # the backward needs nothing from the forward


def _add_bias_bwd(_, g):
    return g, jnp.sum(g, axis=tuple(range(g.ndim - 1)))


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


def flatten(x: Array) -> Array:
    """(N, ...) -> (N, prod(...)). A reshape: it does no arithmetic, so autodiff's own
    transpose (the inverse reshape) is its rule."""
    flatten_check(x)
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # -1 fails on an empty batch
