"""Convolution forward and backward as plain loops over every index: the learner's view, and an
oracle that shares nothing with the JAX paths but the argument normalisation.

Arrays are NHWC, kernels HWIO `(kh, kw, in_channels // groups, out_channels)`. Everything is
computed and returned in float64 NumPy, whatever dtype comes in. Slow on purpose: meant for
inputs of a few hundred elements.
"""
from __future__ import annotations

import itertools

import numpy as np

from jcnn._validate import conv2d_config, conv_transpose2d_config


def _terms(x_shape, w_shape, y_hw, cfg):
    """Every product a conv2d from `x_shape` to `y_hw` sums, as the indices
    `(n, y, x, o, i, j, c)` with the input position it reads, `(p, q, channel)`:

        Y[n,y,x,o] += X[n, p, q, channel] * W[i,j,c,o]
        p = y*sh + i*dh - top,  q = x*sw + j*dw - left,  channel = first channel of o's group + c

    Positions in the padding read zero, so their terms are left out.
    """
    batch, h, wd, _ = x_shape
    kh, kw, c_per_group, out_channels = w_shape
    o_per_group = out_channels // cfg.groups
    (sh, sw), (dh, dw), ((top, _), (left, _)) = cfg.stride, cfg.dilation, cfg.pads
    for n, y, x, o, i, j, c in itertools.product(range(batch), range(y_hw[0]), range(y_hw[1]),
                                                 range(out_channels), range(kh), range(kw),
                                                 range(c_per_group)):
        p, q = y * sh + i * dh - top, x * sw + j * dw - left
        if 0 <= p < h and 0 <= q < wd:
            yield n, y, x, o, i, j, c, p, q, (o // o_per_group) * c_per_group + c


def _conv2d_out_hw(x_shape, w_shape, cfg):
    """floor((H + top + bottom - dilation*(k-1) - 1) / stride) + 1 per axis."""
    return tuple((n + lo + hi - d * (k - 1) - 1) // s + 1 for n, k, s, d, (lo, hi) in
                 zip(x_shape[1:3], w_shape[:2], cfg.stride, cfg.dilation, cfg.pads))


def _conv_transpose2d_out_hw(x_shape, w_shape, cfg):
    """(H-1)*stride - top - bottom + dilation*(k-1) + output_padding + 1 per axis."""
    return tuple((n - 1) * s - lo - hi + d * (k - 1) + p + 1 for n, k, s, d, (lo, hi), p in
                 zip(x_shape[1:3], w_shape[:2], cfg.stride, cfg.dilation, cfg.pads,
                     cfg.output_padding))


def _f64(*arrays):
    return [np.asarray(a, np.float64) for a in arrays]


# The three sums a convolution is made of, each a loop over the same terms: the output, and the
# gradients that each product X * W sends back to its two factors.

def _output_sum(x, w, y_hw, cfg):
    """Y[n,y,x,o] = sum of X[n,p,q,ch] * W[i,j,c,o] over the terms of Y[n,y,x,o]."""
    y = np.zeros((x.shape[0], *y_hw, w.shape[3]))
    for n, oy, ox, o, i, j, c, p, q, ch in _terms(x.shape, w.shape, y_hw, cfg):
        y[n, oy, ox, o] += x[n, p, q, ch] * w[i, j, c, o]
    return y


def _input_sum(g, w, x_shape, cfg):
    """dX[n,p,q,ch] = sum of G[n,y,x,o] * W[i,j,c,o] over the terms that read X[n,p,q,ch]."""
    dx = np.zeros(x_shape)
    for n, oy, ox, o, i, j, c, p, q, ch in _terms(x_shape, w.shape, g.shape[1:3], cfg):
        dx[n, p, q, ch] += g[n, oy, ox, o] * w[i, j, c, o]
    return dx


def _filter_sum(x, g, w_shape, cfg):
    """dW[i,j,c,o] = sum of X[n,p,q,ch] * G[n,y,x,o] over the terms that use W[i,j,c,o]."""
    dw = np.zeros(w_shape)
    for n, oy, ox, o, i, j, c, p, q, ch in _terms(x.shape, w_shape, g.shape[1:3], cfg):
        dw[i, j, c, o] += x[n, p, q, ch] * g[n, oy, ox, o]
    return dw


def conv2d(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1) -> np.ndarray:
    """Y[n,y,x,o] = b[o] + sum_{i,j,c} X[n, y*sh + i*dh - top, x*sw + j*dw - left, ch] W[i,j,c,o],
    ch = c plus the first input channel of o's group; positions in the padding read zero."""
    cfg = conv2d_config(x, w, b, stride, padding, dilation, groups)
    x, w = _f64(x, w)
    y = _output_sum(x, w, _conv2d_out_hw(x.shape, w.shape, cfg), cfg)
    return y if b is None else y + np.asarray(b, np.float64)


def conv2d_backward(g, x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1):
    """Cotangents `(dx, dw, db)` of conv2d(x, w, b) for the output cotangent `g` (db None
    without b): every product X[n,p,q,ch] * W[i,j,c,o] that went into Y[n,y,x,o] sends
    G[n,y,x,o] back to both factors."""
    cfg = conv2d_config(x, w, b, stride, padding, dilation, groups)
    x, w, g = _f64(x, w, g)
    return (_input_sum(g, w, x.shape, cfg), _filter_sum(x, g, w.shape, cfg),
            None if b is None else g.sum(axis=(0, 1, 2)))


def conv_transpose2d(x, w, b=None, *, stride=1, padding=0, output_padding=0, dilation=1,
                     groups=1) -> np.ndarray:
    """The input gradient of the conv2d from this op's output back to x, with x as that conv2d's
    output cotangent: each input pixel X[n,h,x,c] paints the kernel W[:, :, :, c] onto the
    output, its top-left tap at (h*sh - top, x*sw - left), taps dilation apart; what lands
    outside is dropped."""
    cfg = conv_transpose2d_config(x, w, b, stride, padding, output_padding, dilation, groups)
    x, w = _f64(x, w)
    out_shape = (x.shape[0], *_conv_transpose2d_out_hw(x.shape, w.shape, cfg),
                 w.shape[2] * cfg.groups)
    y = _input_sum(x, w, out_shape, cfg)
    return y if b is None else y + np.asarray(b, np.float64)


def conv_transpose2d_backward(g, x, w, b=None, *, stride=1, padding=0, output_padding=0,
                              dilation=1, groups=1):
    """Cotangents `(dx, dw, db)` of conv_transpose2d(x, w, b) for the output cotangent `g` (db
    None without b). The same terms as the conv2d from the output back to x, so dx is that
    conv2d applied to g and dw its filter gradient with g as its input and x as its output
    cotangent."""
    cfg = conv_transpose2d_config(x, w, b, stride, padding, output_padding, dilation, groups)
    x, w, g = _f64(x, w, g)
    return (_output_sum(g, w, x.shape[1:3], cfg), _filter_sum(g, x, w.shape, cfg),
            None if b is None else g.sum(axis=(0, 1, 2)))
