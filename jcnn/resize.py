"""Resampling H and W: adaptive average pooling and upsampling, with hand-derived backward rules.

Each of these maps is linear in x and acts on H and W separately, so the backward is its
transpose, and the transpose's backward is the map again: the one rule below, `_resample`, takes
a `transpose` flag and its backward calls it with the flag flipped, so gradients of gradients
go through the rule at every order. No scatter anywhere.

adaptive_avg_pool2d and bilinear upsample2d: Y = Ah X Aw^T per image and channel,
    Y[n,o,p,c] = sum_{h,w} Ah[o,h] X[n,h,w,c] Aw[p,w]
    dX[n,h,w,c] = sum_{o,p} Ah[o,h] G[n,o,p,c] Aw[p,w]          (dX = Ah^T G Aw)
with Ah (OH, H) and Aw (OW, W) built in NumPy at trace time from the static shapes (`_matrix`):
    adaptive:  bin o covers [floor(o H / OH), ceil((o+1) H / OH)), Ah[o, h] = 1 / its length
               (PyTorch's bins: neighbouring bins overlap by a row where OH does not divide H);
    bilinear:  output row o reads the input at s = max((o + 1/2) / scale - 1/2, 0) (half-pixel
               centres, align_corners=False, clamped at the top); h0 = floor(s), h1 =
               min(h0 + 1, H - 1) (clamped at the bottom), Ah[o, h0] += 1 - (s - h0),
               Ah[o, h1] += s - h0, as PyTorch's F.interpolate.
nearest upsample2d: Y[n, h*sh + a, w*sw + b, c] = X[n,h,w,c] (each pixel repeated as an
    sh x sw block), so dX[n,h,w,c] = sum_{a,b} G[n, h*sh + a, w*sw + b, c]: a reshape of G to
    (N, H, sh, W, sw, C) summed over the block axes.
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jcnn._validate import IntPair, adaptive_pool_check, upsample_check

Array = jax.Array


def adaptive_avg_pool2d(x: Array, output_size) -> Array:
    """x (N, H, W, C) -> (N, OH, OW, C), output_size an int or (OH, OW), each at most the input's:
    the mean of bin [floor(o H/OH), ceil((o+1) H/OH)) x [floor(p W/OW), ceil((p+1) W/OW))."""
    out_hw = adaptive_pool_check(x, output_size)
    return _resample(Resample("adaptive", x.shape[1:3], out_hw), False, x)


def upsample2d(x: Array, scale, mode: str = "nearest") -> Array:
    """x (N, H, W, C) -> (N, H*sh, W*sw, C), scale an int or (sh, sw) >= 1; mode "nearest"
    (each pixel an sh x sw block) or "bilinear" (PyTorch's align_corners=False)."""
    (sh, sw), mode = upsample_check(x, scale, mode)
    (h, w) = x.shape[1:3]
    return _resample(Resample(mode, (h, w), (h * sh, w * sw)), False, x)


class Resample(NamedTuple):
    kind: str  # "adaptive", "bilinear" or "nearest"
    in_hw: IntPair  # the (H, W) of the map's input, the output's for its transpose
    out_hw: IntPair


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _resample(spec: Resample, transpose: bool, x: Array) -> Array:
    """The map `spec` (with `transpose`, its transpose), in float32 at least."""
    acc = jnp.promote_types(x.dtype, jnp.float32)
    if spec.kind == "nearest":
        y = _blocks(spec, transpose, x.astype(acc))
    else:
        ah, aw = (jnp.asarray(_matrix(spec.kind, n, m), acc)
                  for n, m in zip(spec.in_hw, spec.out_hw))
        if transpose:
            ah, aw = ah.T, aw.T
        # full precision: the weights are exact fractions, which TF32 would round
        y = jnp.einsum("oh,nhwc,pw->nopc", ah, x.astype(acc), aw,
                       precision=lax.Precision.HIGHEST)
    return y.astype(x.dtype)


def _resample_fwd(spec, transpose, x):
    return _resample(spec, transpose, x), None  # linear: nothing to keep


def _resample_bwd(spec, transpose, _, g):
    return (_resample(spec, not transpose, g),)  # dX = Ah^T G Aw; nearest: block sums


_resample.defvjp(_resample_fwd, _resample_bwd)


def _matrix(kind: str, n: int, m: int) -> np.ndarray:
    """The (m, n) float64 matrix that maps an axis of length n to length m (module docstring)."""
    a = np.zeros((m, n))
    o = np.arange(m)
    if kind == "adaptive":
        start, end = (o * n) // m, -((-(o + 1) * n) // m)
        for row, (s, e) in enumerate(zip(start, end)):
            a[row, s:e] = 1 / (e - s)
        return a
    src = np.maximum((o + 0.5) * (n / m) - 0.5, 0)
    h0 = np.floor(src).astype(int)
    h1 = np.minimum(h0 + 1, n - 1)
    np.add.at(a, (o, h0), 1 - (src - h0))  # NumPy, at trace time: no scatter in the program
    np.add.at(a, (o, h1), src - h0)
    return a


def _blocks(spec: Resample, transpose: bool, x: Array) -> Array:
    """Each pixel repeated as an sh x sw block; `transpose`: each block summed."""
    (h, w), (oh, ow), (n, c) = spec.in_hw, spec.out_hw, (x.shape[0], x.shape[3])
    sh, sw = oh // h, ow // w
    if transpose:
        return x.reshape(n, h, sh, w, sw, c).sum(axis=(2, 4))
    return jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, sh, w, sw, c)).reshape(n, oh, ow, c)
