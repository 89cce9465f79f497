"""The strided views a sliding window reads: what pooling and the one-channel convolution
forward are built from.

For window position (i, j) the view is `Xp[n, y*sh + i*dh, x*sw + j*dw, c]` over every output
(y, x): a `lax.pad` (padding may be negative: it then crops) and a strided `lax.slice`, which
XLA fuses into whatever consumes it, so the K views are never stored.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jcnn._args import IntPair, Pads, out_size


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
