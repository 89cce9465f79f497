"""Pooling by loops: every window visited, every gradient routed by hand."""
from __future__ import annotations

import math

import numpy as np

from jcnn._validate import adaptive_pool_check, pool_config, pool_out_hw


def _setup(x, window, stride, padding, op, dilation=1, ceil_mode=False):
    """x in float64, the config (ceil_mode's extra bottom/right padding in its pads) and the
    output's (OH, OW)."""
    x = np.asarray(x, np.float64)
    cfg = pool_config(x, window, stride, padding, op, dilation, ceil_mode)
    return x, cfg, pool_out_hw(x.shape, cfg)


def _window(cfg, y, xo):
    """The input coordinates (p, q) of window (y, xo), row-major, padding included."""
    (top, _), (left, _) = cfg.pads
    for i in range(cfg.window[0]):
        for j in range(cfg.window[1]):
            yield (y * cfg.stride[0] + i * cfg.dilation[0] - top,
                   xo * cfg.stride[1] + j * cfg.dilation[1] - left)


def _max_pool(x, g, window, stride, padding, dilation, ceil_mode):
    """(y, dx): y the max of each window (padding -inf, NaN larger than any number); each
    window's cotangent in g goes to the first element, in row-major window order, that equals
    its max (the first NaN), and nowhere when that first element is padding (g None: y only)."""
    x, cfg, (oh, ow) = _setup(x, window, stride, padding, "max_pool2d", dilation, ceil_mode)
    n, h, w, c = x.shape
    y, dx = np.full((n, oh, ow, c), -np.inf), np.zeros_like(x)
    for b in range(n):
        for ch in range(c):
            for r in range(oh):
                for col in range(ow):
                    best = top = None  # the first maximum so far: position (None: padding), value
                    for p, q in _window(cfg, r, col):
                        inside = 0 <= p < h and 0 <= q < w
                        value = x[b, p, q, ch] if inside else -np.inf
                        if (top is None or value > top  # strictly greater: the first one wins
                                or (np.isnan(value) and not np.isnan(top))):
                            top, best = value, (p, q) if inside else None
                    y[b, r, col, ch] = top
                    if g is not None and best is not None:
                        dx[b, best[0], best[1], ch] += g[b, r, col, ch]
    return y, dx


def max_pool2d(x, window, stride=None, padding=0, dilation=1, ceil_mode=False):
    """The max of each window; padding is -inf, NaN larger than any number."""
    return _max_pool(x, None, window, stride, padding, dilation, ceil_mode)[0]


def max_pool2d_backward(g, x, *, window, stride=None, padding=0, dilation=1, ceil_mode=False):
    """(dx,): each window's cotangent goes to the first element, in row-major window order,
    that equals its max (the first NaN), and nowhere when that first element is padding."""
    return (_max_pool(x, np.asarray(g, np.float64), window, stride, padding, dilation,
                      ceil_mode)[1],)


def _avg_pool(x, g, window, stride, padding, count_include_pad, ceil_mode):
    """(y, dx): y the mean of each window; each element of a window receives g / divisor
    (g None: y only). The divisor counts the window's cells inside the input, or with
    count_include_pad those inside the input and its given padding (not ceil_mode's extra)."""
    x, cfg, (oh, ow) = _setup(x, window, stride, padding, "avg_pool2d", 1, ceil_mode)
    n, h, w, c = x.shape
    (top, bottom), (left, right) = cfg.pads
    bottom, right = bottom - cfg.ceil_extra[0], right - cfg.ceil_extra[1]
    y, dx = np.zeros((n, oh, ow, c)), np.zeros_like(x)
    for r in range(oh):
        for col in range(ow):
            window_cells = list(_window(cfg, r, col))
            cells = [(p, q) for p, q in window_cells if 0 <= p < h and 0 <= q < w]
            padded = [(p, q) for p, q in window_cells if p < h + bottom and q < w + right]
            divisor = len(padded) if count_include_pad else len(cells)
            for p, q in cells:
                y[:, r, col, :] += x[:, p, q, :] / divisor
                if g is not None:
                    dx[:, p, q, :] += g[:, r, col, :] / divisor
    return y, dx


def avg_pool2d(x, window, stride=None, padding=0, count_include_pad=True, ceil_mode=False):
    """The mean of each window, divided by the window's size (less what a ceil_mode window
    reaches past the padding; or, without count_include_pad, by the number of its elements
    inside the input)."""
    return _avg_pool(x, None, window, stride, padding, count_include_pad, ceil_mode)[0]


def avg_pool2d_backward(g, x, *, window, stride=None, padding=0, count_include_pad=True,
                        ceil_mode=False):
    """(dx,): each element of a window receives the window's cotangent / divisor."""
    return (_avg_pool(x, np.asarray(g, np.float64), window, stride, padding,
                      count_include_pad, ceil_mode)[1],)


def _adaptive_avg_pool(x, g, output_size):
    """(y, dx): y the mean of each of PyTorch's bins, rows floor(r H / OH) to
    ceil((r+1) H / OH) (exclusive), columns alike; each element of a bin receives g / its size
    (g None: y only)."""
    x = np.asarray(x, np.float64)
    oh, ow = adaptive_pool_check(x, output_size)
    n, h, w, c = x.shape
    y, dx = np.zeros((n, oh, ow, c)), np.zeros_like(x)
    for r in range(oh):
        rows = range(math.floor(r * h / oh), math.ceil((r + 1) * h / oh))
        for col in range(ow):
            cols = range(math.floor(col * w / ow), math.ceil((col + 1) * w / ow))
            size = len(rows) * len(cols)
            for p in rows:
                for q in cols:
                    y[:, r, col, :] += x[:, p, q, :] / size
                    if g is not None:
                        dx[:, p, q, :] += g[:, r, col, :] / size
    return y, dx


def adaptive_avg_pool2d(x, output_size):
    """The mean of each bin; bins may overlap by a row where OH does not divide H."""
    return _adaptive_avg_pool(x, None, output_size)[0]


def adaptive_avg_pool2d_backward(g, x, *, output_size):
    """(dx,): each element of a bin receives the bin's cotangent / the bin's size."""
    return (_adaptive_avg_pool(x, np.asarray(g, np.float64), output_size)[1],)
