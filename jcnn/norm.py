"""Batch and layer normalisation with the exact backward through their statistics.

Over the M = N*H*W elements of each channel (every axis but the last):
    mu = mean(x),  var = mean((x - mu)^2),  r = 1 / sqrt(var + eps),  xhat = (x - mu) r,
    y = xhat * scale + bias.
With G = dL/dy and Gh = G * scale = dL/dxhat, the chain rule through mu and var gives
    dbias  = sum G                dscale = sum G * xhat
    dx     = r * (Gh - mean(Gh) - xhat * mean(Gh * xhat))
(the mean(Gh) term is the path through mu, the xhat * mean(Gh xhat) term the path through var;
docs/backprop.md derives it step by step).

In evaluation mode mu and var are given (running statistics, arguments of their own), so y is
affine in x and nothing flows back through statistics of x: dx = Gh * r, and mu and var get
gradients of their own (`_batch_norm_eval_bwd`).

Layer norm is the same maths with the roles of the axes exchanged: the statistics of each row
over its C channels (the last axis), scale and bias still per channel, so Gh = G * scale varies
along the row and the means in dx are over the row; dscale and dbias sum over the rows.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from jcnn._sharding import alike
from jcnn._validate import batch_norm_check, group_norm_check, layer_norm_check
from jcnn.forms import by_platform
from jcnn.forms import norm as norm_forms

Array = jax.Array


def batch_norm(x: Array, scale: Array, bias: Array, *, eps: float = 1e-5,
               mean: Optional[Array] = None, var: Optional[Array] = None) -> Array:
    """x (N, ..., C), scale (C,), bias (C,) -> (N, ..., C), normalised with the batch mean and
    biased variance of each channel. eps = 0 with one element per channel (0 / 0) raises
    ValueError; a channel whose values are all equal gives NaN with eps = 0, as in autodiff.

    With `mean` and `var` (C,) (evaluation mode, e.g. running statistics) it normalises with
    those instead, `(x - mean) / sqrt(var + eps) * scale + bias`, differentiable in all five."""
    eps = batch_norm_check(x, scale, bias, eps, mean=mean, var=var)
    if mean is None:
        return _batch_norm(eps, *alike(x, scale, bias))
    return _batch_norm_eval(eps, *alike(x, scale, bias, mean, var))


def _axes(x):
    return tuple(range(x.ndim - 1))


def _channel(v, ndim):
    return v.reshape((1,) * (ndim - 1) + (-1,))


def _normalised(eps, v, axes):
    """xhat = (v - mu) r and r = 1 / sqrt(var + eps), the statistics over `axes` of v."""
    mu = jnp.mean(v, axis=axes, keepdims=True)
    centred = v - mu
    r = lax.rsqrt(jnp.mean(centred * centred, axis=axes, keepdims=True) + eps)
    return centred * r, r


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _batch_norm(eps: float, x: Array, scale: Array, bias: Array) -> Array:
    return _normalised(eps, x, _axes(x))[0] * _channel(scale, x.ndim) + _channel(bias, x.ndim)


def _batch_norm_fwd(eps, x, scale, bias):
    # y through the rule itself, so that second order differentiates it by this rule; XLA
    # computes the statistics once for both
    xhat, r = _normalised(eps, x, _axes(x))
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


def _eval_normalised(eps, x, mean, var):
    """xhat = (x - mean) r and r = 1 / sqrt(var + eps) (C,), with the given statistics."""
    r = lax.rsqrt(var + eps)
    return (x - _channel(mean, x.ndim)) * _channel(r, x.ndim), r


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _batch_norm_eval(eps: float, x: Array, scale: Array, bias: Array, mean: Array,
                     var: Array) -> Array:
    xhat = _eval_normalised(eps, x, mean, var)[0]
    return xhat * _channel(scale, x.ndim) + _channel(bias, x.ndim)


def _batch_norm_eval_fwd(eps, x, scale, bias, mean, var):
    # y through the rule itself, so that second order differentiates it by this rule
    xhat, r = _eval_normalised(eps, x, mean, var)
    return _batch_norm_eval(eps, x, scale, bias, mean, var), (xhat, r, scale)


# Evaluation mode: y = (x - mean) r scale + bias per channel, r = (var + eps)^(-1/2), mean and
# var constants of the batch (no path through them back to x). Per element, with G = dL/dy:
#     dy/dx = r scale,  dy/dbias = 1,  dy/dscale = xhat,  dy/dmean = -r scale,
#     dy/dvar = scale (x - mean) * dr/dvar = scale (x - mean) * (-1/2) (var + eps)^(-3/2)
#             = -1/2 scale xhat r^2.
# Summed over the M elements of each channel, with dbias = sum G and dscale = sum G xhat:
#     dx = G r scale,  dmean = -r scale dbias,  dvar = -1/2 r^2 scale dscale.
def _batch_norm_eval_bwd(eps, res, g):
    xhat, r, scale = res
    dbias, dscale = _channel_sums(g, xhat)
    dmean = -(r * scale) * dbias.astype(g.dtype)
    dvar = -0.5 * (r * r * scale) * dscale.astype(g.dtype)
    dx = g * _channel(r * scale, g.ndim)
    return dx, dscale.astype(g.dtype), dbias.astype(g.dtype), dmean, dvar


_batch_norm_eval.defvjp(_batch_norm_eval_fwd, _batch_norm_eval_bwd)


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


def group_norm(x: Array, groups: int, scale: Array, bias: Array, *, eps: float = 1e-5) -> Array:
    """x (N, ..., C), scale (C,), bias (C,) -> (N, ..., C), each sample's channels split into
    `groups` groups of C // groups, each normalised over its channels and every position
    (NHWC: over H, W and C / groups; PyTorch's F.group_norm). groups = C is instance norm,
    groups = 1 layer norm over (H, W, C)."""
    eps, groups = group_norm_check(x, groups, scale, bias, eps)
    return _group_norm(eps, groups, *alike(x, scale, bias))


# Both are one normalisation of a view of x: the view's `axes` hold each group's elements, and
# scale broadcasts over the view as `scale_view` (layer norm: x itself, its last axis; group
# norm: x as (N, ..., G, C/G), the positions and the last axis). With the view's G, xhat, r:
#     dx = r * (Gh - mean(Gh) - xhat * mean(Gh * xhat)),  Gh = G * scale,  means over `axes`,
# and dscale, dbias sum G * xhat and G over every axis of x but its channels.

def _affine_norm_bwd(axes, xhat, r, scale_view, g, x_ndim: int):
    """(dx, dscale, dbias) of a view of an x of rank `x_ndim`: dx in the view's shape, dscale
    and dbias (C,), summed over x's axes but its channels (the view's first x_ndim - 1)."""
    acc = jnp.promote_types(g.dtype, jnp.float32)
    gh = g * scale_view
    # the group means in float32 at least, rounded once (as batch norm's channel sums)
    mean_gh, mean_ghx = (jnp.mean(v.astype(acc), axis=axes, keepdims=True).astype(g.dtype)
                         for v in (gh, gh * xhat))
    over = tuple(range(x_ndim - 1))
    dscale, dbias = (jnp.sum(v.astype(acc), axis=over).reshape(-1).astype(g.dtype)
                     for v in (g * xhat, g))
    return r * (gh - mean_gh - xhat * mean_ghx), dscale, dbias


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _layer_norm(eps: float, x: Array, scale: Array, bias: Array) -> Array:
    return _normalised(eps, x, (-1,))[0] * _channel(scale, x.ndim) + _channel(bias, x.ndim)


def _layer_norm_fwd(eps, x, scale, bias):
    # y through the rule itself, so that second order differentiates it by this rule
    xhat, r = _normalised(eps, x, (-1,))
    return _layer_norm(eps, x, scale, bias), (xhat, r, scale)


def _layer_norm_bwd(eps, res, g):
    xhat, r, scale = res
    return _affine_norm_bwd((-1,), xhat, r, _channel(scale, g.ndim), g, g.ndim)


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def _groups_view(groups: int, v: Array) -> Array:
    """(N, ..., C) as (N, ..., G, C / G)."""
    return v.reshape(*v.shape[:-1], groups, v.shape[-1] // groups)


def _group_axes(ndim: int) -> tuple:
    """The view's axes of one group: every position (1 .. ndim-2) and the last."""
    return tuple(range(1, ndim - 1)) + (ndim,)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _group_norm(eps: float, groups: int, x: Array, scale: Array, bias: Array) -> Array:
    xhat = _normalised(eps, _groups_view(groups, x), _group_axes(x.ndim))[0].reshape(x.shape)
    return xhat * _channel(scale, x.ndim) + _channel(bias, x.ndim)


def _group_norm_fwd(eps, groups, x, scale, bias):
    # y through the rule itself, so that second order differentiates it by this rule
    xhat, r = _normalised(eps, _groups_view(groups, x), _group_axes(x.ndim))
    return _group_norm(eps, groups, x, scale, bias), (xhat, r, scale)


def _group_norm_bwd(eps, groups, res, g):
    xhat, r, scale = res
    scale_view = _groups_view(groups, _channel(scale, g.ndim))
    dx, dscale, dbias = _affine_norm_bwd(_group_axes(g.ndim), xhat, r, scale_view,
                                         _groups_view(groups, g), g.ndim)
    return dx.reshape(g.shape), dscale, dbias


_group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)
