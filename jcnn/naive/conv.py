"""Convolution forward and backward as plain loops over every index: the learner's view, and an
oracle that shares nothing with the JAX paths but the argument normalisation.

Arrays are (N, *spatial, C) with 1, 2 or 3 spatial axes (NWC, NHWC, NDHWC), kernels
`(*kernel, in_channels // groups, out_channels)`. Everything is computed and returned in float64
NumPy, whatever dtype comes in. Slow on purpose: meant for inputs of a few hundred elements.
"""
from __future__ import annotations

import itertools

import numpy as np

from jcnn._validate import conv2d_config, conv_transpose2d_config


def _source(p: int, size: int, mode: str):
    """The input row a padded position p (-lo <= p < size + hi) reads, or None for a zero:
    inside, p itself; in the padding, by the mode (PyTorch's: reflect mirrors about the edge
    row without repeating it, replicate repeats the edge row, circular wraps around)."""
    if 0 <= p < size:
        return p
    if mode == "reflect":
        return -p if p < 0 else 2 * (size - 1) - p
    if mode == "replicate":
        return min(max(p, 0), size - 1)
    if mode == "circular":
        return p % size
    return None


def _terms(x_shape, w_shape, out_sizes, cfg, mode="zeros"):
    """Every product a convolution from `x_shape` to `out_sizes` sums, as the indices
    `(n, out, o, tap, c)` (out, tap: tuples of one index per spatial axis) with the input
    position it reads, `(position, channel)`:

        Y[n, *out, o] += X[n, *position, channel] * W[*tap, c, o]
        position[a] = out[a]*stride[a] + tap[a]*dilation[a] - lo[a]  (in 2-D: y*sh + i*dh - top)
        channel = first channel of o's group + c

    A position in the padding reads what `_source` says: zero (its term left out) for "zeros".
    """
    batch, *sizes, _ = x_shape
    *kernel, c_per_group, out_channels = w_shape
    o_per_group = out_channels // cfg.groups
    for n, out, o, tap, c in itertools.product(
            range(batch), itertools.product(*map(range, out_sizes)), range(out_channels),
            itertools.product(*map(range, kernel)), range(c_per_group)):
        position = tuple(_source(y * s + i * d - lo, size, mode) for y, i, s, d, (lo, _), size in
                         zip(out, tap, cfg.stride, cfg.dilation, cfg.pads, sizes))
        if None not in position:
            yield n, out, o, tap, c, position, (o // o_per_group) * c_per_group + c


def _conv_out_sizes(x_shape, w_shape, cfg):
    """floor((H + top + bottom - dilation*(k-1) - 1) / stride) + 1 per axis."""
    return tuple((n + lo + hi - d * (k - 1) - 1) // s + 1 for n, k, s, d, (lo, hi) in
                 zip(x_shape[1:-1], w_shape[:-2], cfg.stride, cfg.dilation, cfg.pads))


def _conv_transpose_out_sizes(x_shape, w_shape, cfg):
    """(H-1)*stride - top - bottom + dilation*(k-1) + output_padding + 1 per axis."""
    return tuple((n - 1) * s - lo - hi + d * (k - 1) + p + 1 for n, k, s, d, (lo, hi), p in
                 zip(x_shape[1:-1], w_shape[:-2], cfg.stride, cfg.dilation, cfg.pads,
                     cfg.output_padding))


def _f64(*arrays):
    return [np.asarray(a, np.float64) for a in arrays]


# The three sums a convolution is made of, each a loop over the same terms: the output, and the
# gradients that each product X * W sends back to its two factors (with a padding mode, a
# padded position's gradient goes to the input element it read).

def _output_sum(x, w, out_sizes, cfg, mode="zeros"):
    """Y[n,*out,o] = sum of X[n,*position,ch] * W[*tap,c,o] over the terms of Y[n,*out,o]."""
    y = np.zeros((x.shape[0], *out_sizes, w.shape[-1]))
    for n, out, o, tap, c, position, ch in _terms(x.shape, w.shape, out_sizes, cfg, mode):
        y[(n, *out, o)] += x[(n, *position, ch)] * w[(*tap, c, o)]
    return y


def _input_sum(g, w, x_shape, cfg, mode="zeros"):
    """dX[n,*position,ch] = sum of G[n,*out,o] * W[*tap,c,o] over the terms that read it."""
    dx = np.zeros(x_shape)
    for n, out, o, tap, c, position, ch in _terms(x_shape, w.shape, g.shape[1:-1], cfg, mode):
        dx[(n, *position, ch)] += g[(n, *out, o)] * w[(*tap, c, o)]
    return dx


def _filter_sum(x, g, w_shape, cfg, mode="zeros"):
    """dW[*tap,c,o] = sum of X[n,*position,ch] * G[n,*out,o] over the terms that use it."""
    dw = np.zeros(w_shape)
    for n, out, o, tap, c, position, ch in _terms(x.shape, w_shape, g.shape[1:-1], cfg, mode):
        dw[(*tap, c, o)] += x[(n, *position, ch)] * g[(n, *out, o)]
    return dw


def _bias_sum(g, b):
    return None if b is None else g.sum(axis=tuple(range(g.ndim - 1)))


def _conv(op, axes, x, w, b, stride, padding, dilation, groups, padding_mode):
    cfg = conv2d_config(x, w, b, stride, padding, dilation, groups, op, axes, padding_mode)
    x, w = _f64(x, w)
    y = _output_sum(x, w, _conv_out_sizes(x.shape, w.shape, cfg), cfg, padding_mode)
    return y if b is None else y + np.asarray(b, np.float64)


def _conv_backward(op, axes, g, x, w, b, stride, padding, dilation, groups, padding_mode):
    cfg = conv2d_config(x, w, b, stride, padding, dilation, groups, op, axes, padding_mode)
    x, w, g = _f64(x, w, g)
    return (_input_sum(g, w, x.shape, cfg, padding_mode),
            _filter_sum(x, g, w.shape, cfg, padding_mode), _bias_sum(g, b))


def conv2d(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1,
           padding_mode="zeros") -> np.ndarray:
    """Y[n,y,x,o] = b[o] + sum_{i,j,c} X[n, y*sh + i*dh - top, x*sw + j*dw - left, ch] W[i,j,c,o],
    ch = c plus the first input channel of o's group; positions in the padding read zero, or
    with a `padding_mode` the input element it names (`_source`)."""
    return _conv("conv2d", 2, x, w, b, stride, padding, dilation, groups, padding_mode)


def conv2d_backward(g, x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1,
                    padding_mode="zeros"):
    """Cotangents `(dx, dw, db)` of conv2d(x, w, b) for the output cotangent `g` (db None
    without b): every product X[n,p,q,ch] * W[i,j,c,o] that went into Y[n,y,x,o] sends
    G[n,y,x,o] back to both factors."""
    return _conv_backward("conv2d", 2, g, x, w, b, stride, padding, dilation, groups,
                          padding_mode)


def _convolution(op: str, axes: int, layouts: str):
    """The loops' `op` and `op_backward` over `axes` spatial axes, as conv2d's."""
    def forward(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1,
                padding_mode="zeros") -> np.ndarray:
        return _conv(op, axes, x, w, b, stride, padding, dilation, groups, padding_mode)

    def backward(g, x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1,
                 padding_mode="zeros"):
        return _conv_backward(op, axes, g, x, w, b, stride, padding, dilation, groups,
                              padding_mode)
    forward.__name__, backward.__name__ = op, op + "_backward"
    forward.__doc__ = f"conv2d's sum over {axes} spatial axes: {layouts}."
    backward.__doc__ = f"Cotangents `(dx, dw, db)` of {op}(x, w, b), as conv2d_backward's."
    return forward, backward


conv1d, conv1d_backward = _convolution("conv1d", 1, "x (N, W, C), w (k, C // groups, O)")
conv3d, conv3d_backward = _convolution("conv3d", 3, "x (N, D, H, W, C), w (kd, kh, kw, "
                                       "C // groups, O)")


def _transpose(op, axes, x, w, b, stride, padding, output_padding, dilation, groups):
    cfg = conv_transpose2d_config(x, w, b, stride, padding, output_padding, dilation, groups, op,
                                  axes)
    x, w = _f64(x, w)
    out_shape = (x.shape[0], *_conv_transpose_out_sizes(x.shape, w.shape, cfg),
                 w.shape[-2] * cfg.groups)
    y = _input_sum(x, w, out_shape, cfg)
    return y if b is None else y + np.asarray(b, np.float64)


def _transpose_backward(op, axes, g, x, w, b, stride, padding, output_padding, dilation, groups):
    cfg = conv_transpose2d_config(x, w, b, stride, padding, output_padding, dilation, groups, op,
                                  axes)
    x, w, g = _f64(x, w, g)
    return (_output_sum(g, w, x.shape[1:-1], cfg), _filter_sum(g, x, w.shape, cfg),
            _bias_sum(g, b))


def conv_transpose2d(x, w, b=None, *, stride=1, padding=0, output_padding=0, dilation=1,
                     groups=1) -> np.ndarray:
    """The input gradient of the conv2d from this op's output back to x, with x as that conv2d's
    output cotangent: each input pixel X[n,h,x,c] paints the kernel W[:, :, :, c] onto the
    output, its top-left tap at (h*sh - top, x*sw - left), taps dilation apart; what lands
    outside is dropped."""
    return _transpose("conv_transpose2d", 2, x, w, b, stride, padding, output_padding, dilation,
                      groups)


def conv_transpose2d_backward(g, x, w, b=None, *, stride=1, padding=0, output_padding=0,
                              dilation=1, groups=1):
    """Cotangents `(dx, dw, db)` of conv_transpose2d(x, w, b) for the output cotangent `g` (db
    None without b). The same terms as the conv2d from the output back to x, so dx is that
    conv2d applied to g and dw its filter gradient with g as its input and x as its output
    cotangent."""
    return _transpose_backward("conv_transpose2d", 2, g, x, w, b, stride, padding,
                               output_padding, dilation, groups)


def _transposition(op: str, axes: int, layouts: str):
    """The loops' `op` and `op_backward` over `axes` spatial axes, as conv_transpose2d's."""
    def forward(x, w, b=None, *, stride=1, padding=0, output_padding=0, dilation=1,
                groups=1) -> np.ndarray:
        return _transpose(op, axes, x, w, b, stride, padding, output_padding, dilation, groups)

    def backward(g, x, w, b=None, *, stride=1, padding=0, output_padding=0, dilation=1,
                 groups=1):
        return _transpose_backward(op, axes, g, x, w, b, stride, padding, output_padding,
                                   dilation, groups)
    forward.__name__, backward.__name__ = op, op + "_backward"
    forward.__doc__ = f"conv_transpose2d's painting over {axes} spatial axes: {layouts}."
    backward.__doc__ = (f"Cotangents `(dx, dw, db)` of {op}(x, w, b), as "
                        f"conv_transpose2d_backward's.")
    return forward, backward


conv_transpose1d, conv_transpose1d_backward = _transposition(
    "conv_transpose1d", 1, "x (N, W, C), w (k, O // groups, C)")
conv_transpose3d, conv_transpose3d_backward = _transposition(
    "conv_transpose3d", 3, "x (N, D, H, W, C), w (kd, kh, kw, O // groups, C)")
