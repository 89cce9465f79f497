"""The CPU form of max pooling: the backward's routing stored small.

The plain rule (`jcnn/pool.py`, `_max_pool`) saves x and y and re-derives each window's first
maximum in the backward. Here the forward stores what the backward needs instead: where the
windows tile the input (stride == window, the usual 2x2/2) with at most 32 positions, a bitmask
of each window's maxima from one variadic reduction (`_max_and_bits`), the backward an inverse
reshape (`_untile`); otherwise an int8 index of the first maximum (int16 past 127 positions).
Neither keeps x alive for the backward. `benchmarks/pool_forms.py` and `lenet_forms.py`
measure them against the plain rule.

NaN windows: no position equals a NaN maximum, so the index sends G to position 0 and the bits
nowhere, as the plain rule's masks do (nowhere); a NaN input has already made the loss NaN.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jcnn._validate import pool_out_hw
from jcnn._windows import max_of, place_views, window_views
from jcnn.forms import static_batch

Array = jax.Array


def max_pool(cfg, x: Array) -> Optional[Callable]:
    """The CPU form of y = max_pool2d(x), for every window; a static batch only (the bits'
    float0 tangent is made with NumPy)."""
    return partial(_argmax_pool, cfg) if static_batch(x) else None


def _views(x: Array, cfg) -> list[Array]:
    return window_views(x, cfg.window, cfg.stride, cfg.dilation, cfg.pads, -jnp.inf)


def _index_dtype(k: int):
    """int8 index: the window has at most 127 positions here; wider only when it must be."""
    return jnp.int8 if k <= 127 else jnp.int16 if k <= 32767 else jnp.int32


def _tiled(cfg) -> bool:
    """The windows tile the input (stride == window, undilated) and their positions fit in 32
    bits."""
    return (cfg.stride == cfg.window and cfg.dilation == (1, 1)
            and cfg.window[0] * cfg.window[1] <= 32)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _argmax_pool(cfg, x: Array) -> Array:
    return _max_and_bits(cfg, x)[0] if _tiled(cfg) else max_of(_views(x, cfg))


def _argmax_pool_fwd(cfg, x):
    in_hw = x.shape[1:3]
    if _tiled(cfg):
        y, bits = _max_and_bits(cfg, x)  # its JVP is the hand rule: second order stays on it
        return y, (bits, in_hw)
    y = _argmax_pool(cfg, x)  # through the rule itself, so second order differentiates by it
    views = _views(x, cfg)
    index = jnp.zeros(y.shape, _index_dtype(len(views)))
    for k in reversed(range(len(views))):  # the lowest k holding the max wins
        index = jnp.where(views[k] == y, jnp.asarray(k, index.dtype), index)
    return y, (index, in_hw)


def _argmax_pool_bwd(cfg, res, g):
    route, in_hw = res
    if _tiled(cfg):
        return (_untile(jnp.where(_first_owned(route, cfg), g[:, :, None, :, None, :],
                                  jnp.zeros((), g.dtype)), cfg, in_hw),)
    zero = jnp.zeros_like(g)
    parts = [jnp.where(route == jnp.asarray(k, route.dtype), g, zero)
             for k in range(cfg.window[0] * cfg.window[1])]
    return (place_views(parts, cfg.window, cfg.stride, cfg.dilation, cfg.pads, in_hw),)


_argmax_pool.defvjp(_argmax_pool_fwd, _argmax_pool_bwd)


def _tiles(x: Array, cfg, fill) -> Array:
    """Tiling windows as a reshape: x padded with `fill` (negative padding crops the rows no
    window reaches) to (N, OH*kh, OW*kw, C), read as (N, OH, kh, OW, kw, C), so that window
    (y, x) position (i, j) is [:, y, i, x, j]."""
    (kh, kw), ((top, _), (left, _)) = cfg.window, cfg.pads
    n, h, w, c = x.shape
    oh, ow = pool_out_hw(x.shape, cfg)
    xp = lax.pad(x, jnp.array(fill, x.dtype), ((0, 0, 0), (top, oh * kh - h - top, 0),
                                               (left, ow * kw - w - left, 0), (0, 0, 0)))
    return xp.reshape(n, oh, kh, ow, kw, c)


def _untile(t: Array, cfg, in_hw) -> Array:
    """The adjoint of `_tiles`: (N, OH, kh, OW, kw, C) back to the input's (H, W); what lands in
    the padding is cut off, the rows no window reaches get zeros."""
    n, oh, kh, ow, kw, c = t.shape
    (top, _), (left, _) = cfg.pads
    return lax.pad(t.reshape(n, oh * kh, ow * kw, c), jnp.zeros((), t.dtype),
                   ((0, 0, 0), (-top, in_hw[0] + top - oh * kh, 0),
                    (-left, in_hw[1] + left - ow * kw, 0), (0, 0, 0)))


def _position_bits(cfg, dtype) -> Array:
    """1 << k for window position k = i*kw + j, shaped (1, 1, kh, 1, kw, 1) like `_tiles`."""
    kh, kw = cfg.window
    k = jnp.arange(kh * kw, dtype=dtype).reshape(1, 1, kh, 1, kw, 1)
    return jnp.left_shift(jnp.ones((), dtype), k)


def _bits_dtype(k: int):
    return jnp.uint8 if k <= 8 else jnp.uint16 if k <= 16 else jnp.uint32


@partial(jax.custom_jvp, nondiff_argnums=(0,))
def _max_and_bits(cfg, x: Array) -> tuple[Array, Array]:
    """Each window's maximum and the set of its positions holding it, as bits (bit k:
    position k), in one reduction over the window axes: combining (m, b) and (m', b') keeps
    the larger m with its bits, or, on a tie, m with b | b'.

    XLA:CPU runs this variadic reduction as one loop of its own and stores both outputs, the
    bits one byte per 2x2 window: the backward reads them, where an index written element by
    element was fused into the backward, which then kept the input alive to redo the compares.
    A half-precision x is reduced in float32 (exact: max only picks): XLA:CPU emulates each
    half-precision compare."""
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


def _first_owned(bits: Array, cfg) -> Array:
    """(N, OH, kh, OW, kw, C) bool: the position of each window's first maximum, its lowest
    set bit (`bits & -bits`)."""
    first = bits & (jnp.zeros((), bits.dtype) - bits)
    return first[:, :, None, :, None, :] == _position_bits(cfg, bits.dtype)


@_max_and_bits.defjvp
def _max_and_bits_jvp(cfg, primals, tangents):
    # A window's maximum moves with its first maximal element: the tangent picked there. (JAX
    # differentiates the forward rule itself for second order; its variadic reduction has no
    # JVP of JAX's own.) Linear in dx: its transpose is the backward above.
    (x,), (dx,) = primals, tangents
    y, bits = _max_and_bits(cfg, x)
    dy = jnp.sum(jnp.where(_first_owned(bits, cfg), _tiles(dx, cfg, 0), jnp.zeros((), dx.dtype)),
                 axis=(2, 4))
    return (y, bits), (dy, np.zeros(bits.shape, jax.dtypes.float0))
