"""Max, average and global average pooling with hand-derived backward rules.

Notation: window (kh, kw), stride (sh, sw), dilation (dh, dw; max only), padding
((top, bottom), (left, right)); the padded input is Xp (padding -inf for max, 0 for average),
and window position k = (i, j) reads
    Xp[n, y*sh + i*dh, x*sw + j*dw, c]        for every output (y, x).
ceil_mode (PyTorch's) is more bottom/right padding, fixed at trace time from the static shapes
(`_validate.ceil_extra`): enough for a last, partial window that starts in the input or the
top/left padding; the rules below see only a padded input.
Every backward below puts the part of G that each window position k owns back where k reads
from: a strided `lax.pad` per position, summed, then cropped by the padding (`_place`; no
scatter). Input rows no window reaches receive zero.

max:  Y = max_k Xp_k;  dX gets G at the FIRST k (row-major) with Xp_k == Y, as autodiff's
      select_and_scatter and PyTorch do; ties (e.g. zeros after ReLU) are never double counted.
      The plain rule saves x and y and finds that k again in the backward; on CPU,
      `jcnn/forms/pool.py` stores it small instead (a bitmask or an index). A window holding a
      NaN has Y = NaN, and no Xp_k equals it: its G goes nowhere here (autodiff routes it by
      its scan order, PyTorch to the NaN); a NaN input has already made the loss NaN.
avg:  Y = sum_k Xp_k / D;  dX gets G / D from every k  (D = kh*kw, or the count of real
      elements in the window when count_include_pad=False; a ceil_mode window reaching past
      the given padding counts only what it holds of the padded input, as PyTorch does: D is
      then a static (OH, OW) table).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jcnn._validate import PoolConfig, avg_pool_counts, flag_check, global_pool_check, pool_config
from jcnn._windows import max_of, place_views, window_views
from jcnn.forms import by_platform
from jcnn.forms import pool as pool_forms

Array = jax.Array


def max_pool2d(x: Array, window, stride=None, padding=0, dilation=1,
               ceil_mode: bool = False) -> Array:
    """x (N, H, W, C) -> (N, OH, OW, C), the maximum of each (dilated) window; stride=None
    means stride=window; padding is -inf; ceil_mode as PyTorch's. dX gets each window's G at
    its first maximum."""
    cfg = pool_config(x, window, stride, padding, "max_pool2d", dilation, ceil_mode)
    return by_platform(partial(_max_pool, cfg), pool_forms.max_pool(cfg, x), x)


def _windows(x: Array, cfg: PoolConfig, fill) -> list[Array]:
    """The K strided views Xp_k, each (N, OH, OW, C), in row-major window order."""
    return window_views(x, cfg.window, cfg.stride, cfg.dilation, cfg.pads, fill)


def _place(parts: list[Array], cfg: PoolConfig, in_hw) -> Array:
    """The adjoint of `_windows`: part k goes back to where window position k reads."""
    return place_views(parts, cfg.window, cfg.stride, cfg.dilation, cfg.pads, in_hw)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _max_pool(cfg: PoolConfig, x: Array) -> Array:
    return max_of(_windows(x, cfg, -jnp.inf))


def _max_pool_fwd(cfg, x):
    # y through the rule itself, so that second order differentiates it by this rule, not by
    # autodiff of maximum (which splits a tie in half)
    y = _max_pool(cfg, x)
    return y, (x, y)  # the backward re-derives each window's first maximum from both


def _first_max(views: list[Array], y: Array) -> list[Array]:
    """Boolean per position: k is the first (row-major) position holding the window's max."""
    taken = jnp.zeros(y.shape, bool)
    firsts = []
    for v in views:
        hit = (v == y) & ~taken
        firsts.append(hit)
        taken = taken | hit
    return firsts


def _max_pool_bwd(cfg, res, g):
    x, y = res
    zero = jnp.zeros_like(g)
    owners = _first_max(_windows(x, cfg, -jnp.inf), y)
    return (_place([jnp.where(m, g, zero) for m in owners], cfg, x.shape[1:3]),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def avg_pool2d(x: Array, window, stride=None, padding=0, count_include_pad: bool = True,
               ceil_mode: bool = False) -> Array:
    """x (N, H, W, C) -> (N, OH, OW, C), the mean of each window; stride=None means
    stride=window; padding counts as zeros in the divisor unless count_include_pad=False;
    ceil_mode as PyTorch's."""
    cfg = pool_config(x, window, stride, padding, "avg_pool2d", 1, ceil_mode)
    table = avg_pool_counts(x.shape, cfg, include_pad=flag_check(
        count_include_pad, "count_include_pad", "avg_pool2d"))
    divisor = (float(table[0, 0]) if (table == table[0, 0]).all()
               else tuple(map(tuple, table.tolist())))  # hashable, static
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
    return _avg_pool(cfg, divisor, x), x.shape[1:3]  # linear: only the input's (H, W) is needed


def _avg_pool_bwd(cfg, divisor, in_hw, g):
    share = _divide(g, divisor, g.dtype)
    return (_place([share] * (cfg.window[0] * cfg.window[1]), cfg, in_hw),)


_avg_pool.defvjp(_avg_pool_fwd, _avg_pool_bwd)


def global_avg_pool2d(x: Array) -> Array:
    """x (N, H, W, C) -> (N, C), the mean over H and W; dX[n,h,w,c] = G[n,c] / (H W)."""
    global_pool_check(x)
    return _global_avg(x)


@jax.custom_vjp
def _global_avg(x: Array) -> Array:
    return jnp.mean(x, axis=(1, 2))


def _global_avg_fwd(x):
    return _global_avg(x), x.shape[1:3]


def _global_avg_bwd(in_hw, g):
    h, w = in_hw
    # g * (1/HW), not g / HW: HW itself overflows float16 from 65,504 pixels on (g / inf = 0)
    share = (g * (1 / (h * w)))[:, None, None, :]
    return (jnp.broadcast_to(share, (g.shape[0], h, w, g.shape[1])),)


_global_avg.defvjp(_global_avg_fwd, _global_avg_bwd)
