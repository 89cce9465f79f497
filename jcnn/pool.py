"""Max, average and global average pooling with hand-derived backward rules.

Notation: window (kh, kw), stride (sh, sw), padding ((top, bottom), (left, right)); the padded
input is Xp (padding -inf for max, 0 for average), and window position k = (i, j) reads
    Xp[n, y*sh + i, x*sw + j, c]        for every output (y, x).
Every backward below puts the part of G that each window position k owns back where k reads
from: in general a strided `lax.pad` per position, summed, then cropped by the padding
(`_place`); for tiling windows an inverse reshape (`_untile`, below). No scatter: f32
scatter-add lowers to a slow compare-and-swap loop on CPU (jaxlib 0.10.2, openxla/xla#46225).
Input rows no window reaches receive zero.

max:  Y = max_k Xp_k;  dX gets G at the FIRST k (row-major) with Xp_k == Y, as autodiff's
      select_and_scatter and PyTorch do; ties (e.g. zeros after ReLU) are never double counted.
      A window holding a NaN has Y = NaN, and where its G goes is not defined: no Xp_k equals
      NaN, so the index sends it to position 0, the bits and the mask nowhere (autodiff by its
      scan order, PyTorch to the NaN). Testing for NaN in each compare cost 4-14% of LeNet's CPU
      step (B=128 and 512); a NaN input has already made the loss NaN.
      When the windows tile the input (stride == window, the usual 2x2/2), each input element
      sits in one window, the views are a reshape (`_tiles`) and the backward is its inverse
      (`_untile`) instead of K pads.
avg:  Y = sum_k Xp_k / D;  dX gets G / D from every k  (D = kh*kw, or the count of real
      elements in the window when count_include_pad=False).
"""
from __future__ import annotations

from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jcnn._validate import (PoolConfig, avg_pool_counts, flag_check, global_pool_check,
                            pool_config, pool_out_hw)
from jcnn._windows import window_views

Array = jax.Array
Method = Literal["argmax", "mask"]


def max_pool2d(x: Array, window, stride=None, padding=0) -> Array:
    """x (N, H, W, C) -> (N, OH, OW, C), the maximum of each window; stride=None means
    stride=window; padding is -inf. Backward: per backend, see `_max_pool`."""
    cfg = pool_config(x, window, stride, padding, "max_pool2d")
    return _max_pool(cfg, default_method(), x)


def default_method() -> Method:
    """argmax on CPU (what the backward needs, stored small: a bitmask of each window's maxima
    when the windows tile the input with at most 32 positions, else an int8 index, int16 past
    127 positions; 0.53-0.68x autodiff's LeNet step and 0.25x its temp memory on 2 cores with
    the index alone); mask on GPU, where the index form measured 1.4-2x slower than autodiff
    on an H100 and the mask form 0.60-0.66x."""
    return "argmax" if jax.default_backend() == "cpu" else "mask"


def _windows(x: Array, cfg: PoolConfig, fill) -> list[Array]:
    """The K strided views Xp_k, each (N, OH, OW, C), in row-major window order."""
    return window_views(x, cfg.window, cfg.stride, (1, 1), cfg.pads, fill)


def _place(parts: list[Array], cfg: PoolConfig, x_shape) -> Array:
    """The adjoint of `_windows`: part k (N, OH, OW, C) goes back to the input positions that
    window position k reads; overlapping windows add up; the padding is cropped off."""
    (top, bottom), (left, right) = cfg.pads
    hp, wp = x_shape[1] + top + bottom, x_shape[2] + left + right
    (sh, sw), kw = cfg.stride, cfg.window[1]
    total = None
    for k, part in enumerate(parts):
        i, j = divmod(k, kw)
        oh, ow = part.shape[1:3]
        placed = lax.pad(part, jnp.array(0, part.dtype),
                         ((0, 0, 0), (i, hp - i - sh * (oh - 1) - 1, sh - 1),
                          (j, wp - j - sw * (ow - 1) - 1, sw - 1), (0, 0, 0)))
        total = placed if total is None else total + placed
    return total[:, top:top + x_shape[1], left:left + x_shape[2]]


def _first_max(views: list[Array], y: Array) -> list[Array]:
    """Boolean per position: k is the first (row-major) position holding the window's max."""
    taken = jnp.zeros(y.shape, bool)
    firsts = []
    for v in views:
        hit = (v == y) & ~taken
        firsts.append(hit)
        taken = taken | hit
    return firsts


def _index_dtype(k: int):
    """int8 index: the window has at most 127 positions here; wider only when it must be."""
    return jnp.int8 if k <= 127 else jnp.int16 if k <= 32767 else jnp.int32


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _max_pool(cfg: PoolConfig, method: Method, x: Array) -> Array:
    return _max_of(_windows(x, cfg, -jnp.inf))


def _max_of(views: list[Array]) -> Array:
    y = views[0]
    for v in views[1:]:
        y = jnp.maximum(y, v)
    return y


def _tiled(cfg: PoolConfig) -> bool:
    """The windows tile the input (stride == window) and their positions fit in 32 bits."""
    return cfg.stride == cfg.window and cfg.window[0] * cfg.window[1] <= 32


def _tiles(x: Array, cfg: PoolConfig, fill) -> Array:
    """Tiling windows as a reshape: x padded with `fill` (negative padding crops the rows no
    window reaches) to (N, OH*kh, OW*kw, C), read as (N, OH, kh, OW, kw, C), so that window
    (y, x) position (i, j) is [:, y, i, x, j]."""
    (kh, kw), ((top, _), (left, _)) = cfg.window, cfg.pads
    n, h, w, c = x.shape
    oh, ow = pool_out_hw(x.shape, cfg)
    xp = lax.pad(x, jnp.array(fill, x.dtype), ((0, 0, 0), (top, oh * kh - h - top, 0),
                                               (left, ow * kw - w - left, 0), (0, 0, 0)))
    return xp.reshape(n, oh, kh, ow, kw, c)


def _untile(t: Array, cfg: PoolConfig, x_shape) -> Array:
    """The adjoint of `_tiles`: (N, OH, kh, OW, kw, C) back to x's shape; what lands in the
    padding is cut off, the rows no window reaches get zeros."""
    n, oh, kh, ow, kw, c = t.shape
    (top, _), (left, _) = cfg.pads
    return lax.pad(t.reshape(n, oh * kh, ow * kw, c), jnp.zeros((), t.dtype),
                   ((0, 0, 0), (-top, x_shape[1] + top - oh * kh, 0),
                    (-left, x_shape[2] + left - ow * kw, 0), (0, 0, 0)))


def _position_bits(cfg: PoolConfig, dtype) -> Array:
    """1 << k for window position k = i*kw + j, shaped (1, 1, kh, 1, kw, 1) like `_tiles`."""
    kh, kw = cfg.window
    k = jnp.arange(kh * kw, dtype=dtype).reshape(1, 1, kh, 1, kw, 1)
    return jnp.left_shift(jnp.ones((), dtype), k)


def _bits_dtype(k: int):
    return jnp.uint8 if k <= 8 else jnp.uint16 if k <= 16 else jnp.uint32


@partial(jax.custom_jvp, nondiff_argnums=(0,))
def _max_and_bits(cfg: PoolConfig, x: Array) -> tuple[Array, Array]:
    """Each window's maximum and the set of its positions holding it, as bits (bit k:
    position k), in one reduction over the window axes: combining (m, b) and (m', b') keeps
    the larger m with its bits, or, on a tie, m with b | b'.

    XLA:CPU runs this variadic reduction as one loop of its own and stores both outputs, the
    bits one byte per 2x2 window: the backward reads them. The int8 index below, written
    element by element, was never stored: XLA fused its comparisons into the backward and
    kept the f32 input alive to redo them there (LeNet step temp memory 44.2 -> 32.7 MB at
    B=512; benchmarks/RESULTS.md). A half-precision x is reduced in float32 (exact: max only
    picks): XLA:CPU emulates each bf16 compare, 1.6x the time for LeNet's first pool."""
    dtype = _bits_dtype(cfg.window[0] * cfg.window[1])
    tiles = _tiles(x.astype(jnp.promote_types(x.dtype, jnp.float32)), cfg, -jnp.inf)

    def combine(a, b):
        (ma, ba), (mb, bb) = a, b
        m = jnp.maximum(ma, mb)
        return m, (jnp.where(ma == m, ba, jnp.zeros_like(ba))
                   | jnp.where(mb == m, bb, jnp.zeros_like(bb)))
    y, bits = lax.reduce((tiles, jnp.broadcast_to(_position_bits(cfg, dtype), tiles.shape)),
                         (jnp.array(-jnp.inf, tiles.dtype), jnp.zeros((), dtype)), combine, (2, 4))
    return y.astype(x.dtype), bits


def _first_owned(bits: Array, cfg: PoolConfig) -> Array:
    """(N, OH, kh, OW, kw, C) bool: the position of each window's first maximum, its lowest
    set bit (`bits & -bits`)."""
    first = bits & (jnp.zeros((), bits.dtype) - bits)
    return first[:, :, None, :, None, :] == _position_bits(cfg, bits.dtype)


@_max_and_bits.defjvp
def _max_and_bits_jvp(cfg, primals, tangents):
    # A window's maximum moves with its first maximal element: the tangent picked there. (JAX
    # differentiates the forward rule itself for second order; its variadic reduction has no
    # JVP of JAX's own.) Linear in dx: its transpose is the backward below.
    (x,), (dx,) = primals, tangents
    y, bits = _max_and_bits(cfg, x)
    dy = jnp.sum(jnp.where(_first_owned(bits, cfg), _tiles(dx, cfg, 0), jnp.zeros((), dx.dtype)),
                 axis=(2, 4))
    return (y, bits), (dy, np.zeros(bits.shape, jax.dtypes.float0))


def _max_pool_fwd(cfg, method, x):
    if method == "argmax" and _tiled(cfg):
        y, bits = _max_and_bits(cfg, x)
        return y, (bits, x.shape)
    views = _windows(x, cfg, -jnp.inf)
    y = _max_of(views)
    if method == "mask":  # save x and y; the backward re-derives the first-max masks
        return y, (x, y)
    index = jnp.zeros(y.shape, _index_dtype(len(views)))
    for k in reversed(range(len(views))):  # the lowest k holding the max wins
        index = jnp.where(views[k] == y, jnp.asarray(k, index.dtype), index)
    return y, (index, x.shape)


def _max_pool_bwd(cfg, method, res, g):
    zero = jnp.zeros_like(g)
    if method == "mask":
        x, y = res
        owners = _first_max(_windows(x, cfg, -jnp.inf), y)
        return (_place([jnp.where(m, g, zero) for m in owners], cfg, x.shape),)
    if _tiled(cfg):
        bits, x_shape = res
        return (_untile(jnp.where(_first_owned(bits, cfg), g[:, :, None, :, None, :],
                                  jnp.zeros((), g.dtype)), cfg, x_shape),)
    index, x_shape = res
    k_all = cfg.window[0] * cfg.window[1]
    parts = [jnp.where(index == jnp.asarray(k, index.dtype), g, zero) for k in range(k_all)]
    return (_place(parts, cfg, x_shape),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def avg_pool2d(x: Array, window, stride=None, padding=0, count_include_pad: bool = True) -> Array:
    """x (N, H, W, C) -> (N, OH, OW, C), the mean of each window; stride=None means
    stride=window; padding counts as zeros in the divisor unless count_include_pad=False."""
    cfg = pool_config(x, window, stride, padding, "avg_pool2d")
    if flag_check(count_include_pad, "count_include_pad", "avg_pool2d"):
        divisor = float(cfg.window[0] * cfg.window[1])
    else:
        divisor = tuple(map(tuple, avg_pool_counts(x.shape, cfg).tolist()))  # hashable, static
    return _avg_pool(cfg, divisor, x)


def _divide(v: Array, divisor, dtype) -> Array:
    """v / divisor in float32 at least, rounded to `dtype` (bfloat16 has 289 as 288)."""
    acc = jnp.promote_types(v.dtype, jnp.float32)
    d = divisor if isinstance(divisor, float) else np.array(divisor)[None, :, :, None]
    return (v.astype(acc) / jnp.asarray(d, acc)).astype(dtype)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _avg_pool(cfg: PoolConfig, divisor, x: Array) -> Array:
    # summed in float32 at least: a bfloat16 sum of a 16x16 window of values near 1.5 was 11%
    # off (its spacing at 256 is 2), and a 17x17 window of ones averaged to 0.89
    acc = jnp.promote_types(x.dtype, jnp.float32)
    return _divide(sum(v.astype(acc) for v in _windows(x, cfg, 0)), divisor, x.dtype)


def _avg_pool_fwd(cfg, divisor, x):
    return _avg_pool(cfg, divisor, x), x.shape  # linear: only the shape is needed


def _avg_pool_bwd(cfg, divisor, x_shape, g):
    share = _divide(g, divisor, g.dtype)
    return (_place([share] * (cfg.window[0] * cfg.window[1]), cfg, x_shape),)


_avg_pool.defvjp(_avg_pool_fwd, _avg_pool_bwd)


def global_avg_pool2d(x: Array) -> Array:
    """x (N, H, W, C) -> (N, C), the mean over H and W; dX[n,h,w,c] = G[n,c] / (H W)."""
    global_pool_check(x)
    return _global_avg(x)


@jax.custom_vjp
def _global_avg(x: Array) -> Array:
    return jnp.mean(x, axis=(1, 2))


def _global_avg_fwd(x):
    return _global_avg(x), x.shape


def _global_avg_bwd(x_shape, g):
    n, h, w, c = x_shape
    # g * (1/HW), not g / HW: HW itself overflows float16 from 65,504 pixels on (g / inf = 0)
    return (jnp.broadcast_to((g * (1 / (h * w)))[:, None, None, :], x_shape),)


_global_avg.defvjp(_global_avg_fwd, _global_avg_bwd)
