"""Dense, batch-norm and softmax cross-entropy by loops: each derivative written out term by
term, in float64, sharing no code with the JAX rules."""
from __future__ import annotations

import math

import numpy as np


def _dense(x, w, b, g):
    """Y[m, o] = sum_i X[m, i] W[i, o] + b[o] (leading axes of x folded into m), and, for a
    cotangent g (None: y only), (dx, dw, db)."""
    x2 = np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1])
    g2 = None if g is None else np.asarray(g, np.float64).reshape(-1, np.shape(g)[-1])
    w = np.asarray(w, np.float64)
    m, n_in, n_out = x2.shape[0], w.shape[0], w.shape[1]
    y, dx, dw = np.zeros((m, n_out)), np.zeros_like(x2), np.zeros_like(w)
    for r in range(m):
        for o in range(n_out):
            y[r, o] = sum(x2[r, i] * w[i, o] for i in range(n_in)) + (0 if b is None else b[o])
            for i in range(n_in if g2 is not None else 0):
                dx[r, i] += g2[r, o] * w[i, o]  # dY[r,o]/dX[r,i] = W[i,o]
                dw[i, o] += g2[r, o] * x2[r, i]  # dY[r,o]/dW[i,o] = X[r,i], summed over rows
    db = None if b is None or g2 is None else g2.sum(axis=0)
    return y.reshape(*np.shape(x)[:-1], n_out), (dx.reshape(np.shape(x)), dw, db)


def dense(x, w, b=None):
    """Y[m, o] = sum_i X[m, i] W[i, o] + b[o] (leading axes of x folded into m)."""
    return _dense(x, w, b, None)[0]


def dense_backward(g, x, w, b=None):
    """(dx, dw, db) of dense(x, w, b) for the output cotangent g (db None without b)."""
    return _dense(x, w, b, g)[1]


def _normalised(v, d_xhat, eps):
    """One group of m values normalised, and the chain rule back through it: the forward as a
    chain of small steps, then each step in reverse, so every path through the mean and the
    variance is visible. `d_xhat` is dL/dxhat; returns (xhat, dL/dv)."""
    m = len(v)
    # forward
    mu = sum(v) / m                               # 1. mean
    d = [v[k] - mu for k in range(m)]             # 2. centred
    var = sum(dk * dk for dk in d) / m            # 3. biased variance
    r = 1 / math.sqrt(var + eps)                  # 4. inverse std
    xhat = [d[k] * r for k in range(m)]           # 5. normalised
    # backward, step 5 down to step 1
    d_r = sum(d_xhat[k] * d[k] for k in range(m))           # 5: xhat_k = d_k r
    d_d = [d_xhat[k] * r for k in range(m)]                 # 5: the direct path to d_k
    d_var = d_r * -0.5 * (var + eps) ** -1.5                # 4: r = (var + eps)^(-1/2)
    d_d = [d_d[k] + d_var * 2 * d[k] / m for k in range(m)]  # 3: var = sum d_k^2 / m
    d_mu = -sum(d_d)                                        # 2: d_k = x_k - mu
    return xhat, [d_d[k] + d_mu / m for k in range(m)]      # 2 and 1: mu = sum x_k / m


def _batch_norm(x, scale, bias, g, eps):
    """Training-mode batch norm of each channel over its M elements, and its exact backward.
    Returns (y, (dx, dscale, dbias))."""
    x = np.asarray(x, np.float64)
    c = x.shape[-1]
    xs, gs = x.reshape(-1, c), np.asarray(g, np.float64).reshape(-1, c)
    m = xs.shape[0]
    y, dx = np.zeros_like(xs), np.zeros_like(xs)
    dscale, dbias = np.zeros(c), np.zeros(c)
    for ch in range(c):
        gy = gs[:, ch]
        xhat, dv = _normalised(xs[:, ch], [gy[k] * scale[ch] for k in range(m)], eps)
        for k in range(m):
            y[k, ch] = xhat[k] * scale[ch] + bias[ch]  # 6. affine
            dbias[ch] += gy[k]
            dscale[ch] += gy[k] * xhat[k]
            dx[k, ch] = dv[k]
    return y.reshape(x.shape), (dx.reshape(x.shape), dscale, dbias)


def _group_norm(x, groups, scale, bias, g, eps):
    """Group norm of each sample's channel groups over their positions and C / groups
    channels, scale and bias per channel, and its exact backward. Returns
    (y, (dx, dscale, dbias))."""
    x = np.asarray(x, np.float64)
    n, c = x.shape[0], x.shape[-1]
    xs, gs = x.reshape(n, -1, c), np.asarray(g, np.float64).reshape(n, -1, c)
    y, dx = np.zeros_like(xs), np.zeros_like(xs)
    dscale, dbias = np.zeros(c), np.zeros(c)
    size = c // groups
    for b in range(n):
        for grp in range(groups):
            cells = [(p, ch) for p in range(xs.shape[1])
                     for ch in range(grp * size, (grp + 1) * size)]
            xhat, dv = _normalised([xs[b, p, ch] for p, ch in cells],
                                   [gs[b, p, ch] * scale[ch] for p, ch in cells], eps)
            for k, (p, ch) in enumerate(cells):
                y[b, p, ch] = xhat[k] * scale[ch] + bias[ch]
                dbias[ch] += gs[b, p, ch]
                dscale[ch] += gs[b, p, ch] * xhat[k]
                dx[b, p, ch] = dv[k]
    return y.reshape(x.shape), (dx.reshape(x.shape), dscale, dbias)


def _batch_norm_eval(x, scale, bias, mean, var, g, eps):
    """Evaluation-mode batch norm with the given per-channel mean and var, and its backward:
    y is affine in x, and mean and var get cotangents of their own. Returns
    (y, (dx, dscale, dbias, dmean, dvar))."""
    x = np.asarray(x, np.float64)
    c = x.shape[-1]
    xs, gs = x.reshape(-1, c), np.asarray(g, np.float64).reshape(-1, c)
    y, dx = np.zeros_like(xs), np.zeros_like(xs)
    dscale, dbias, dmean, dvar = np.zeros(c), np.zeros(c), np.zeros(c), np.zeros(c)
    for ch in range(c):
        r = 1 / math.sqrt(var[ch] + eps)                     # r = (var + eps)^(-1/2)
        d_r_d_var = -0.5 * (var[ch] + eps) ** -1.5
        for k in range(xs.shape[0]):
            d = xs[k, ch] - mean[ch]
            y[k, ch] = d * r * scale[ch] + bias[ch]
            gy = gs[k, ch]
            dx[k, ch] = gy * r * scale[ch]                   # dy/dx = r scale
            dbias[ch] += gy                                  # dy/dbias = 1
            dscale[ch] += gy * d * r                         # dy/dscale = xhat
            dmean[ch] -= gy * r * scale[ch]                  # dy/dmean = -r scale
            dvar[ch] += gy * d * scale[ch] * d_r_d_var       # dy/dvar = d scale dr/dvar
    return y.reshape(x.shape), (dx.reshape(x.shape), dscale, dbias, dmean, dvar)


def batch_norm(x, scale, bias, *, eps=1e-5, mean=None, var=None):
    """(x - mean) / sqrt(var + eps) * scale + bias per channel, over every axis but the last;
    the batch statistics, or the `mean` and `var` given (evaluation mode)."""
    return _batch_norm_mode(np.zeros(np.shape(x)), x, scale, bias, eps, mean, var)[0]


def batch_norm_backward(g, x, scale, bias, *, eps=1e-5, mean=None, var=None):
    """(dx, dscale, dbias) of batch_norm(x, scale, bias) for the output cotangent g, exact
    through the batch mean and variance; with `mean` and `var` given (evaluation mode),
    (dx, dscale, dbias, dmean, dvar)."""
    return _batch_norm_mode(g, x, scale, bias, eps, mean, var)[1]


def _batch_norm_mode(g, x, scale, bias, eps, mean, var):
    if mean is None:
        return _batch_norm(x, scale, bias, g, eps)
    return _batch_norm_eval(x, scale, bias, mean, var, g, eps)


def _layer_norm(x, scale, bias, g, eps):
    """Layer norm: group norm of each row as a sample of one position, in one group."""
    rows = (-1, 1, np.shape(x)[-1])
    y, (dx, dscale, dbias) = _group_norm(np.reshape(x, rows), 1, scale, bias,
                                         np.reshape(g, rows), eps)
    return y.reshape(np.shape(x)), (dx.reshape(np.shape(x)), dscale, dbias)


def layer_norm(x, scale, bias, *, eps=1e-5):
    """(x - mean) / sqrt(var + eps) * scale + bias per row, over the last axis."""
    return _layer_norm(x, scale, bias, np.zeros(np.shape(x)), eps)[0]


def group_norm(x, groups, scale, bias, *, eps=1e-5):
    """Per sample, each group of C / groups channels normalised over them and every position."""
    return _group_norm(x, groups, scale, bias, np.zeros(np.shape(x)), eps)[0]


def group_norm_backward(g, x, groups, scale, bias, *, eps=1e-5):
    """(dx, None, dscale, dbias) of group_norm(x, groups, scale, bias) for the output cotangent
    g (None for the int `groups`), exact through each group's mean and variance."""
    dx, dscale, dbias = _group_norm(x, groups, scale, bias, g, eps)[1]
    return dx, None, dscale, dbias


def layer_norm_backward(g, x, scale, bias, *, eps=1e-5):
    """(dx, dscale, dbias) of layer_norm(x, scale, bias) for the output cotangent g, exact
    through each row's mean and variance."""
    return _layer_norm(x, scale, bias, g, eps)[1]


def _softmax_cross_entropy(logits, labels, g, eps=0.0):
    """L = -(1/N) sum_n sum_k q[n, k] log softmax(logits[n])[k] over the N label positions,
    q[n, k] = (1 - eps) [k == labels[n]] + eps / K. Returns (loss, dlogits) with
    dlogits[n, k] = g (p[n, k] - q[n, k]) / N."""
    z = np.asarray(logits, np.float64)
    k = z.shape[-1]
    zs, ls = z.reshape(-1, k), np.asarray(labels).reshape(-1)
    n = zs.shape[0]
    loss, d = 0.0, np.zeros_like(zs)
    for r in range(n):
        top = max(zs[r])
        total = sum(math.exp(v - top) for v in zs[r])
        for j in range(k):
            q = (1 - eps) * (j == ls[r]) + eps / k
            loss -= q * (zs[r, j] - top - math.log(total)) / n
            d[r, j] = g * (math.exp(zs[r, j] - top) / total - q) / n
    return loss, d.reshape(z.shape)


def softmax_cross_entropy(logits, labels, *, label_smoothing=0.0):
    """-(1/N) sum_n sum_k q[n, k] log softmax(logits[n])[k], q the smoothed one-hot targets."""
    return _softmax_cross_entropy(logits, labels, 0.0, label_smoothing)[0]


def softmax_cross_entropy_backward(g, logits, labels, *, label_smoothing=0.0):
    """(dlogits, None) for the scalar cotangent g: dlogits[n, k] = g (p[n, k] - q[n, k]) / N;
    integer labels have no cotangent."""
    return _softmax_cross_entropy(logits, labels, float(g), label_smoothing)[1], None
