"""Autodiff twins of every jcnn op: same names, same signatures, same validation, built only
from `jax.lax` / `jax.numpy` with no custom rule, so `jax.grad` of these is JAX's own autodiff.

Tests and benchmarks compare jcnn's hand-derived rules against these. Nothing here is tuned.
"""
from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jcnn import _validate as v
from jcnn._validate import PaddingLike

Array = jax.Array


def _per_channel(v: Array, ndim: int) -> Array:
    """(C,) -> (1, ..., 1, C): explicit, so strict rank promotion has nothing to complain of."""
    return v.reshape((1,) * (ndim - 1) + (-1,))


def _plus_bias(y: Array, b: Optional[Array]) -> Array:
    return y if b is None else y + _per_channel(b, y.ndim)


def conv2d(x: Array, w: Array, b: Optional[Array] = None, *, stride=1, padding: PaddingLike = 0,
           dilation=1, groups: int = 1, padding_mode: str = "zeros") -> Array:
    return _convolve("conv2d", 2, x, w, b, stride, padding, dilation, groups, padding_mode)


def conv1d(x: Array, w: Array, b: Optional[Array] = None, *, stride=1, padding: PaddingLike = 0,
           dilation=1, groups: int = 1, padding_mode: str = "zeros") -> Array:
    return _convolve("conv1d", 1, x, w, b, stride, padding, dilation, groups, padding_mode)


def conv3d(x: Array, w: Array, b: Optional[Array] = None, *, stride=1, padding: PaddingLike = 0,
           dilation=1, groups: int = 1, padding_mode: str = "zeros") -> Array:
    return _convolve("conv3d", 3, x, w, b, stride, padding, dilation, groups, padding_mode)


# PyTorch's padding modes as jnp.pad's: its "reflect" mirrors about the edge row without
# repeating it, as PyTorch's does; "edge" repeats the edge row; "wrap" is periodic.
_JNP_PAD_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _convolve(op, axes, x, w, b, stride, padding, dilation, groups, padding_mode) -> Array:
    cfg = v.conv2d_config(x, w, b, stride, padding, dilation, groups, op, axes, padding_mode)
    pads = cfg.pads
    if padding_mode != "zeros":
        x = jnp.pad(x, ((0, 0), *pads, (0, 0)), mode=_JNP_PAD_MODES[padding_mode])
        pads = ((0, 0),) * axes
    spatial = v.axis_names(axes)
    y = lax.conv_general_dilated(x, w, cfg.stride, pads, rhs_dilation=cfg.dilation,
                                 dimension_numbers=(f"N{spatial}C", f"{spatial}IO",
                                                    f"N{spatial}C"),
                                 feature_group_count=cfg.groups)
    return _plus_bias(y, b)


def conv_transpose2d(x: Array, w: Array, b: Optional[Array] = None, *, stride=1, padding=0,
                     output_padding=0, dilation=1, groups: int = 1,
                     padding_mode: str = "zeros") -> Array:
    """The adjoint of conv2d w.r.t. its input: the forward stride becomes an input dilation,
    the kernel is flipped and its group axis moved from the output to the input channels."""
    return _transpose("conv_transpose2d", 2, x, w, b, stride, padding, output_padding, dilation,
                      groups, padding_mode)


def conv_transpose1d(x: Array, w: Array, b: Optional[Array] = None, *, stride=1, padding=0,
                     output_padding=0, dilation=1, groups: int = 1,
                     padding_mode: str = "zeros") -> Array:
    return _transpose("conv_transpose1d", 1, x, w, b, stride, padding, output_padding, dilation,
                      groups, padding_mode)


def conv_transpose3d(x: Array, w: Array, b: Optional[Array] = None, *, stride=1, padding=0,
                     output_padding=0, dilation=1, groups: int = 1,
                     padding_mode: str = "zeros") -> Array:
    return _transpose("conv_transpose3d", 3, x, w, b, stride, padding, output_padding, dilation,
                      groups, padding_mode)


def _transpose(op, axes, x, w, b, stride, padding, output_padding, dilation, groups,
               padding_mode) -> Array:
    cfg = v.conv_transpose2d_config(x, w, b, stride, padding, output_padding, dilation, groups,
                                    op, axes, padding_mode)
    *kernel, co_g, ci = w.shape
    g = cfg.groups
    wt = jnp.flip(w, tuple(range(axes))).reshape(*kernel, co_g, g, ci // g)
    wt = jnp.moveaxis(wt, (axes + 2, axes + 1, axes), (axes, axes + 1, axes + 2))
    wt = wt.reshape(*kernel, ci // g, g * co_g)
    pads = [(d * (k - 1) - lo, d * (k - 1) - hi + p) for k, d, (lo, hi), p in
            zip(kernel, cfg.dilation, cfg.pads, cfg.output_padding)]
    spatial = v.axis_names(axes)
    y = lax.conv_general_dilated(x, wt, (1,) * axes, pads, lhs_dilation=cfg.stride,
                                 rhs_dilation=cfg.dilation,
                                 dimension_numbers=(f"N{spatial}C", f"{spatial}IO",
                                                    f"N{spatial}C"),
                                 feature_group_count=g)
    return _plus_bias(y, b)


def dense(x: Array, w: Array, b: Optional[Array] = None) -> Array:
    v.dense_check(x, w, b)
    y = jnp.matmul(x, w)
    return _plus_bias(y, b)


def relu(x: Array) -> Array:
    v.check_float("relu", x=x)
    # gradient 0 at x == 0, as jax.nn.relu; NaN stays NaN
    return jnp.where((x > 0) | jnp.isnan(x), x, jnp.zeros_like(x))


def leaky_relu(x: Array, negative_slope: float = 0.01) -> Array:
    v.check_float("leaky_relu", x=x)
    return jnp.where(x > 0, x, v.finite_real(negative_slope, "negative_slope", "leaky_relu") * x)


def sigmoid(x: Array) -> Array:
    v.check_float("sigmoid", x=x)
    return lax.logistic(x)  # a primitive with its own derivative: 1/(1+exp(-x)) overflows


def tanh(x: Array) -> Array:
    v.check_float("tanh", x=x)
    return jnp.tanh(x)


def gelu(x: Array, approximate: bool = True) -> Array:
    v.check_float("gelu", x=x)
    if approximate:
        c = jnp.sqrt(2 / jnp.pi).astype(x.dtype)
        return 0.5 * x * (1 + jnp.tanh(c * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + lax.erf(x / jnp.sqrt(2).astype(x.dtype)))


def silu(x: Array) -> Array:
    v.check_float("silu", x=x)
    return x * jax.nn.sigmoid(x)


def elu(x: Array, alpha: float = 1.0) -> Array:
    v.check_float("elu", x=x)
    alpha = v.finite_real(alpha, "alpha", "elu")
    return jnp.where(x > 0, x, alpha * jnp.expm1(jnp.where(x > 0, jnp.zeros_like(x), x)))


def softplus(x: Array) -> Array:
    v.check_float("softplus", x=x)
    return jnp.logaddexp(x, jnp.zeros_like(x))


def _window_args(cfg: v.PoolConfig):
    return ((1, *cfg.window, 1), (1, *cfg.stride, 1), ((0, 0), *cfg.pads, (0, 0)), None,
            (1, *cfg.dilation, 1))


def max_pool2d(x: Array, window, stride=None, padding: PaddingLike = 0, dilation=1,
               ceil_mode: bool = False) -> Array:
    cfg = v.pool_config(x, window, stride, padding, "max_pool2d", dilation, ceil_mode)
    if cfg.dilation != (1, 1):
        return _dilated_max_pool(x, cfg)
    # A Python scalar init, not a jnp array: only then does lax recognise the max monoid (and
    # its autodiff rule, select_and_scatter_add) when traced under jit.
    return lax.reduce_window(x, -jnp.inf, lax.max, *_window_args(cfg))


def _dilated_max_pool(x: Array, cfg: v.PoolConfig) -> Array:
    """JAX has no VJP of a dilated max reduce_window: gather every window, (N, OH, OW, K, C),
    and take its first maximum (argmax), whose autodiff sends G there alone."""
    (oh, ow), (kh, kw) = v.pool_out_hw(x.shape, cfg), cfg.window
    xp = jnp.pad(x, ((0, 0), *cfg.pads, (0, 0)), constant_values=-jnp.inf)
    i, j = np.divmod(np.arange(kh * kw), kw)
    rows = np.arange(oh)[:, None, None] * cfg.stride[0] + i * cfg.dilation[0]  # (OH, 1, K)
    cols = np.arange(ow)[None, :, None] * cfg.stride[1] + j * cfg.dilation[1]  # (1, OW, K)
    windows = xp[:, rows, cols]
    first = jnp.argmax(windows, axis=3, keepdims=True)
    return jnp.take_along_axis(windows, first, axis=3)[:, :, :, 0]


def avg_pool2d(x: Array, window, stride=None, padding: PaddingLike = 0,
               count_include_pad: bool = True, ceil_mode: bool = False) -> Array:
    cfg = v.pool_config(x, window, stride, padding, "avg_pool2d", 1, ceil_mode)
    count_include_pad = v.flag_check(count_include_pad, "count_include_pad", "avg_pool2d")
    sums = lax.reduce_window(x, 0.0, lax.add, *_window_args(cfg))
    counts = v.avg_pool_counts(x.shape, cfg, include_pad=count_include_pad)
    return sums / jnp.asarray(counts, x.dtype)[None, :, :, None]


def global_avg_pool2d(x: Array) -> Array:
    v.global_pool_check(x)
    return jnp.mean(x, axis=(1, 2))


def adaptive_avg_pool2d(x: Array, output_size) -> Array:
    oh, ow = v.adaptive_pool_check(x, output_size)

    def bins(x: Array, axis: int, out: int) -> Array:  # PyTorch's bins, one static slice each
        n = x.shape[axis]
        return jnp.stack([jnp.mean(lax.slice_in_dim(x, o * n // out, -(-(o + 1) * n // out),
                                                    axis=axis), axis=axis)
                          for o in range(out)], axis=axis)
    return bins(bins(x, 1, oh), 2, ow)


def upsample2d(x: Array, scale, mode: str = "nearest") -> Array:
    scale, mode = v.upsample_check(x, scale, mode)
    for axis, s in zip((1, 2), scale):
        n = x.shape[axis]
        if mode == "nearest":
            x = jnp.repeat(x, s, axis=axis)
            continue
        # PyTorch's half-pixel source, clamped at 0; the next row clamped at the last one
        src = np.maximum((np.arange(n * s) + 0.5) / s - 0.5, 0)
        h0 = np.floor(src).astype(int)
        frac = jnp.asarray(src - h0, x.dtype).reshape((1, -1, 1, 1) if axis == 1 else (1, 1, -1, 1))
        x = (jnp.take(x, h0, axis=axis) * (1 - frac)
             + jnp.take(x, np.minimum(h0 + 1, n - 1), axis=axis) * frac)
    return x


def batch_norm(x: Array, scale: Array, bias: Array, *, eps: float = 1e-5,
               mean: Optional[Array] = None, var: Optional[Array] = None) -> Array:
    eps = v.batch_norm_check(x, scale, bias, eps, mean=mean, var=var)
    if mean is not None:
        xhat = (x - _per_channel(mean, x.ndim)) * _per_channel(lax.rsqrt(var + eps), x.ndim)
        return _affine(xhat, scale, bias)
    return _affine(_standardised(x, tuple(range(x.ndim - 1)), eps), scale, bias)


def _standardised(x: Array, axes: tuple, eps: float) -> Array:
    """(x - mean) / sqrt(var + eps), the biased statistics over `axes`."""
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    return (x - mean) * lax.rsqrt(var + eps)


def _affine(xhat: Array, scale: Array, bias: Array) -> Array:
    return xhat * _per_channel(scale, xhat.ndim) + _per_channel(bias, xhat.ndim)


def layer_norm(x: Array, scale: Array, bias: Array, *, eps: float = 1e-5) -> Array:
    eps = v.layer_norm_check(x, scale, bias, eps)
    return _affine(_standardised(x, (-1,), eps), scale, bias)


def group_norm(x: Array, groups: int, scale: Array, bias: Array, *, eps: float = 1e-5) -> Array:
    eps, groups = v.group_norm_check(x, groups, scale, bias, eps)
    xg = x.reshape(*x.shape[:-1], groups, x.shape[-1] // groups)
    xhat = _standardised(xg, tuple(range(1, x.ndim - 1)) + (x.ndim,), eps)
    return _affine(xhat.reshape(x.shape), scale, bias)


def dropout(x: Array, rate: float, key: Array) -> Array:
    rate = v.dropout_check(x, rate, key)
    if rate == 0:
        return x
    x = jnp.asarray(x)
    keep = jax.random.bernoulli(key, 1 - rate, x.shape)
    return jnp.where(keep, x / jnp.asarray(1 - rate, x.dtype), jnp.zeros_like(x))


def log_softmax(x: Array) -> Array:
    v.check_float("log_softmax", x=x)
    v.classes_check(x, "log_softmax")
    shifted = x - lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))


def softmax_cross_entropy(logits: Array, labels: Array, *, label_smoothing: float = 0.0
                          ) -> Array:
    v.labels_check(logits, labels)
    eps = v.smoothing_check(label_smoothing)
    y = log_softmax(logits)
    onehot = jax.nn.one_hot(jnp.asarray(labels), logits.shape[-1], dtype=y.dtype)
    return -jnp.mean(jnp.sum(((1 - eps) * onehot + eps / logits.shape[-1]) * y, axis=-1))


def flatten(x: Array) -> Array:
    v.flatten_check(x)
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # -1 fails on an empty batch
