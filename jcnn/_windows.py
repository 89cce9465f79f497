"""The strided views a sliding window reads, and their adjoint: what pooling and the
one-channel convolution form are built from.

For window position (i, j) the view is `Xp[n, y*sh + i*dh, x*sw + j*dw, c]` over every output
(y, x): a `lax.pad` (padding may be negative: it then crops) and a strided `lax.slice`, which
XLA fuses into whatever consumes it, so the K views are never stored. The adjoint,
`place_views`, puts each view back where it reads from: a strided `lax.pad` per position, summed,
then cropped by the padding. No scatter: f32 scatter-add lowers to a slow compare-and-swap loop
on CPU (jaxlib 0.10.2, openxla/xla#46225).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jcnn._validate import IntPair, Pads, out_size


def window_views(x: jax.Array, window: IntPair, stride: IntPair, dilation: IntPair, pads: Pads,
                 fill) -> list[jax.Array]:
    """The kh*kw views of NHWC `x` padded by `pads` with `fill`, each (N, OH, OW, C), in
    row-major window order."""
    xp = lax.pad(x, jnp.array(fill, x.dtype),
                 ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
    oh, ow = (out_size(n, k, s, d, lo, hi) for n, k, s, d, (lo, hi) in
              zip(x.shape[1:3], window, stride, dilation, pads))
    (sh, sw), (dh, dw) = stride, dilation
    n, c = x.shape[0], x.shape[3]
    return [lax.slice(xp, (0, i * dh, j * dw, 0),
                      (n, i * dh + sh * (oh - 1) + 1, j * dw + sw * (ow - 1) + 1, c),
                      (1, sh, sw, 1))
            for i in range(window[0]) for j in range(window[1])]


def max_of(views: list[jax.Array]) -> jax.Array:
    """The elementwise maximum of the views (NaN if any is NaN): each window's max."""
    y = views[0]
    for v in views[1:]:
        y = jnp.maximum(y, v)
    return y


def place_views(parts: list[jax.Array], window: IntPair, stride: IntPair, dilation: IntPair,
                pads: Pads, in_hw: IntPair) -> jax.Array:
    """The adjoint of `window_views`: part k (N, OH, OW, C) goes back to the input positions
    that window position k = (i, j) reads, from (i*dh, j*dw) on; overlapping windows add up; the
    padding is cropped off, and input rows no window reaches get zeros."""
    (top, bottom), (left, right) = pads
    hp, wp = in_hw[0] + top + bottom, in_hw[1] + left + right
    (sh, sw), (dh, dw), kw = stride, dilation, window[1]
    total = None
    for k, part in enumerate(parts):
        i, j = divmod(k, kw)
        oh, ow = part.shape[1:3]
        placed = lax.pad(part, jnp.array(0, part.dtype),
                         ((0, 0, 0), (i * dh, hp - i * dh - sh * (oh - 1) - 1, sh - 1),
                          (j * dw, wp - j * dw - sw * (ow - 1) - 1, sw - 1), (0, 0, 0)))
        total = placed if total is None else total + placed
    return total[:, top:top + in_hw[0], left:left + in_hw[1]]
