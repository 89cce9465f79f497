"""The padding modes of conv1d/conv2d/conv3d ("reflect", "replicate", "circular", PyTorch's), as
one hand-ruled linear op: `pad` fills each spatial axis's (lo, hi) padding from the input, and
its backward, `fold`, adds the padding's cotangent back onto the input rows it copied.

On one axis of size n (p the position in the padded axis, i = p - lo the input row it shows):

    reflect    Xp[p] = X[|i|] for i < 0,  X[2(n-1) - i] for i >= n   (the edge row not repeated)
    replicate  Xp[p] = X[0] for i < 0,    X[n-1] for i >= n
    circular   Xp[p] = X[i mod n]

`pad` is linear, Xp = P X, so its cotangent is dX = P^T G: every padded position sends its G
back to the row it shows. With Gl = G[:lo], Gc = G[lo:lo+n], Gr = G[lo+n:] (the left padding,
the core and the right padding),

    reflect    dX = Gc + [0, rev(Gl), 0...] + [...0, rev(Gr), 0]   Gl[j] showed X[lo - j], so
               rev(Gl) lands on rows 1..lo; Gr[j] showed X[n-2-j]: rev(Gr) on rows n-1-hi..n-2
    replicate  dX = Gc + [sum(Gl), 0...] + [...0, sum(Gr)]        onto the edge rows
    circular   dX = Gc + [...0, Gl] + [Gr, 0...]                  Gl showed the last lo rows,
                                                                  Gr the first hi

written with static slices, flips, sums and zero pads only (no scatter). The axes are padded
one after the other, so the fold undoes them in the reverse order. `fold` is linear too, and its
own cotangent is `pad` again (P^T^T = P): the pair is closed under differentiation, so the
second order runs through these two rules.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def _zero_pad(a: Array, axis: int, lo: int, hi: int) -> Array:
    config = [(0, 0, 0)] * a.ndim
    config[axis] = (lo, hi, 0)
    return lax.pad(a, jnp.zeros((), a.dtype), config)


def _rows(a: Array, axis: int, start: int, stop: int) -> Array:
    return lax.slice_in_dim(a, start, stop, axis=axis)


def _pad_axis(mode: str, a: Array, axis: int, lo: int, hi: int) -> Array:
    """`a` padded by (lo, hi) on `axis` in `mode`."""
    n = a.shape[axis]
    if mode == "reflect":
        left = lax.rev(_rows(a, axis, 1, lo + 1), (axis,))
        right = lax.rev(_rows(a, axis, n - 1 - hi, n - 1), (axis,))
    elif mode == "replicate":
        edge = list(a.shape)
        left = jnp.broadcast_to(_rows(a, axis, 0, 1), edge[:axis] + [lo] + edge[axis + 1:])
        right = jnp.broadcast_to(_rows(a, axis, n - 1, n), edge[:axis] + [hi] + edge[axis + 1:])
    else:  # circular
        left, right = _rows(a, axis, n - lo, n), _rows(a, axis, 0, hi)
    return jnp.concatenate([left, a, right], axis=axis)


def _fold_axis(mode: str, g: Array, axis: int, lo: int, hi: int) -> Array:
    """The cotangent of `_pad_axis`: the core of g plus its padding added onto the rows it
    showed (the module docstring derives each line)."""
    n = g.shape[axis] - lo - hi
    left, right = _rows(g, axis, 0, lo), _rows(g, axis, lo + n, lo + n + hi)
    dx = _rows(g, axis, lo, lo + n)
    if mode == "reflect":
        if lo:
            dx = dx + _zero_pad(lax.rev(left, (axis,)), axis, 1, n - 1 - lo)
        if hi:
            dx = dx + _zero_pad(lax.rev(right, (axis,)), axis, n - 1 - hi, 1)
    elif mode == "replicate":
        if lo:
            dx = dx + _zero_pad(jnp.sum(left, axis, keepdims=True), axis, 0, n - 1)
        if hi:
            dx = dx + _zero_pad(jnp.sum(right, axis, keepdims=True), axis, n - 1, 0)
    else:  # circular
        if lo:
            dx = dx + _zero_pad(left, axis, n - lo, 0)
        if hi:
            dx = dx + _zero_pad(right, axis, 0, n - hi)
    return dx


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def pad(mode: str, pads: tuple, x: Array) -> Array:
    """x `(N, *spatial, C)` padded by `pads` (a (lo, hi) pair per spatial axis) in `mode`,
    "reflect", "replicate" or "circular" (validated by the caller: reflect pads < the size,
    circular pads <= it)."""
    for axis, (lo, hi) in enumerate(pads, start=1):
        if lo or hi:
            x = _pad_axis(mode, x, axis, lo, hi)
    return x


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def fold(mode: str, pads: tuple, g: Array) -> Array:
    """The adjoint of `pad`: g `(N, *padded, C)` -> `(N, *spatial, C)`, each padded position's
    value added onto the input row it copied."""
    for axis, (lo, hi) in reversed(list(enumerate(pads, start=1))):
        if lo or hi:
            g = _fold_axis(mode, g, axis, lo, hi)
    return g


def _pad_fwd(mode, pads, x):
    return pad(mode, pads, x), None  # linear: the backward needs nothing


def _pad_bwd(mode, pads, _, g):
    return (fold(mode, pads, g),)


def _fold_fwd(mode, pads, g):
    return fold(mode, pads, g), None


def _fold_bwd(mode, pads, _, u):
    return (pad(mode, pads, u),)


pad.defvjp(_pad_fwd, _pad_bwd)
fold.defvjp(_fold_fwd, _fold_bwd)
