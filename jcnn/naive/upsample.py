"""Upsampling by loops: every output pixel built from its input taps, every gradient sent back
along the same taps with the same weights."""
from __future__ import annotations

import numpy as np

from jcnn._validate import upsample_check


def _source(o, scale, n):
    """PyTorch's bilinear source of output row o (align_corners=False): the half-pixel position
    (o + 1/2) / scale - 1/2 clamped at 0, as (h0, h1, weight of h1), h1 clamped at n - 1."""
    s = max((o + 0.5) / scale - 0.5, 0.0)
    h0 = int(s)
    return h0, min(h0 + 1, n - 1), s - h0


def _upsample(x, g, scale, mode):
    """(y, dx): y[r, col] = sum over taps (p, q) of weight * x[p, q]; dx[p, q] gets
    weight * g[r, col] from every output pixel that reads it (g None: y only)."""
    x = np.asarray(x, np.float64)
    (sh, sw), mode = upsample_check(x, scale, mode)
    n, h, w, c = x.shape
    y, dx = np.zeros((n, h * sh, w * sw, c)), np.zeros_like(x)
    for r in range(h * sh):
        for col in range(w * sw):
            if mode == "nearest":
                taps = [(r // sh, col // sw, 1.0)]
            else:
                (p0, p1, a), (q0, q1, b) = _source(r, sh, h), _source(col, sw, w)
                taps = [(p0, q0, (1 - a) * (1 - b)), (p0, q1, (1 - a) * b),
                        (p1, q0, a * (1 - b)), (p1, q1, a * b)]
            for p, q, weight in taps:
                y[:, r, col, :] += weight * x[:, p, q, :]
                if g is not None:
                    dx[:, p, q, :] += weight * g[:, r, col, :]
    return y, dx


def upsample2d(x, scale, mode="nearest"):
    """Each pixel repeated as a block ("nearest"), or PyTorch's bilinear interpolation."""
    return _upsample(x, None, scale, mode)[0]


def upsample2d_backward(g, x, *, scale, mode="nearest"):
    """(dx,): each output pixel's cotangent goes back to its taps, times their weights."""
    return (_upsample(x, np.asarray(g, np.float64), scale, mode)[1],)
