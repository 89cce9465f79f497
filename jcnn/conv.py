"""Convolutions over 1, 2 and 3 spatial axes and their adjoints, with hand-derived backward rules.

Layouts: activations NWC / NHWC / NDHWC, kernels WIO / HWIO / DHWIO
`(*kernel, in_channels // groups, out_channels)`.

The op is the trilinear form <conv(x, w), g>; its three bilinear maps are the forward
(`_conv2d`: y from x, w), the input gradient (`_conv2d_dx`: dx from g, w, which is also the
public `conv_transpose*d`) and the filter gradient (`_conv2d_dw`: dw from x, g). Each is a
`custom_vjp` whose backward is written with the other two, so the family is closed under
differentiation: `jax.grad` of `jax.grad` runs through these rules too, never through JAX's
autodiff of a convolution. The maps take any number of spatial axes: their dimension numbers
are built from the rank (`_layouts`), so conv1d, conv2d and conv3d share them (the names keep
the 2-D case the derivation shows). Each map here is its plain rule, one
`lax.conv_general_dilated`; where a 2-D computation is lowered for CPU, `jcnn/forms/conv.py`
computes some shapes another way (a sum over the taps for one input channel, kernel rows, eight
padded channels, the filter gradient in batch chunks or as one matmul for a 1x1 kernel): the
same maps, faster there.

`padding_mode` ("reflect", "replicate", "circular") pads x by its own hand-ruled op
(`jcnn/padding.py`) and then runs the unpadded convolution.
"""
from __future__ import annotations

from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jcnn._sharding import alike
from jcnn._validate import (ConvConfig, IntPair, PaddingLike, axis_names, conv2d_config,
                            conv_transpose2d_config, conv_transpose_out_sizes, out_size)
from jcnn.dense import add_bias  # y + b[o] over the channel axis; db = sum of g
from jcnn.forms import by_platform
from jcnn.forms import conv as conv_forms
from jcnn.padding import pad

Array = jax.Array


def conv2d(x: Array, w: Array, b: Optional[Array] = None, *, stride: int | IntPair = 1,
           padding: PaddingLike = 0, dilation: int | IntPair = 1, groups: int = 1,
           padding_mode: str = "zeros") -> Array:
    """2-D cross-correlation (what every framework calls convolution).

    Args:
      x: input, NHWC `(N, H, W, C)`.
      w: kernel, HWIO `(kh, kw, C // groups, O)`.
      b: optional bias `(O,)`.
      stride, dilation: an int or a pair `(sh, sw)`.
      padding: an int, a pair `(ph, pw)`, a pair of pairs `((top, bottom), (left, right))`,
        "VALID" or "SAME".
      groups: output channel `o` sees only the `C // groups` input channels of its group.
      padding_mode: what fills the padding: "zeros", or "reflect", "replicate", "circular"
        (PyTorch's: x is padded so, then convolved without padding; "SAME" padding is filled
        the same way). Reflect pads must be smaller than the input, circular ones at most it.

    Returns:
      `(N, OH, OW, O)` with `OH = floor((H + top + bottom - dh*(kh-1) - 1) / sh) + 1`, and

      `Y[n,y,x,o] = b[o] + sum_{i,j,c}
          X[n, y*sh + i*dh - top, x*sw + j*dw - left, g(o)+c] W[i,j,c,o]`

      where `g(o) = (o // (O // groups)) * (C // groups)` is the first channel of o's group and
      X reads zero outside the input. The gradients, for the output cotangent G: each product
      in Y[n,y,x,o] sends G[n,y,x,o] back to both its factors,

      `dX[n, y*sh + i*dh - top, x*sw + j*dw - left, g(o) + c] += G[n,y,x,o] * W[i,j,c,o]`
      (over every n, y, x, o, i, j, c; what lands in the padding is dropped), and
      `dW[i,j,c,o] = sum_{n,y,x} X[n, y*sh + i*dh - top, x*sw + j*dw - left, g(o) + c] * G[n,y,x,o]`
      `db[o] = sum_{n,y,x} G[n,y,x,o]`

      Input rows that no window reaches get a zero gradient.
    """
    return _convolve("conv2d", 2, x, w, b, stride, padding, dilation, groups, padding_mode)


def conv1d(x: Array, w: Array, b: Optional[Array] = None, *, stride: int | tuple = 1,
           padding: PaddingLike = 0, dilation: int | tuple = 1, groups: int = 1,
           padding_mode: str = "zeros") -> Array:
    """1-D cross-correlation: `conv2d` over one spatial axis.

    Args:
      x: input `(N, W, C)`.
      w: kernel `(k, C // groups, O)`.
      b: optional bias `(O,)`.
      stride, dilation: an int or a 1-tuple.
      padding: an int, a 1-tuple `(p,)`, a 1-tuple of a pair `((left, right),)`, "VALID" or
        "SAME".
      groups, padding_mode: as in `conv2d`.

    Returns:
      `(N, OW, O)`, `Y[n,x,o] = b[o] + sum_{j,c} X[n, x*s + j*d - left, g(o)+c] W[j,c,o]`.
    """
    return _convolve("conv1d", 1, x, w, b, stride, padding, dilation, groups, padding_mode)


def conv3d(x: Array, w: Array, b: Optional[Array] = None, *, stride: int | tuple = 1,
           padding: PaddingLike = 0, dilation: int | tuple = 1, groups: int = 1,
           padding_mode: str = "zeros") -> Array:
    """3-D cross-correlation: `conv2d` over three spatial axes.

    Args:
      x: input `(N, D, H, W, C)`.
      w: kernel `(kd, kh, kw, C // groups, O)`.
      b: optional bias `(O,)`.
      stride, dilation: an int or a triple.
      padding: an int, a triple `(pd, ph, pw)`, a triple of (lo, hi) pairs, "VALID" or "SAME".
      groups, padding_mode: as in `conv2d`.

    Returns:
      `(N, OD, OH, OW, O)`, `Y[n,z,y,x,o] = b[o] + sum_{k,i,j,c}
          X[n, z*sd + k*dd - front, y*sh + i*dh - top, x*sw + j*dw - left, g(o)+c] W[k,i,j,c,o]`.
    """
    return _convolve("conv3d", 3, x, w, b, stride, padding, dilation, groups, padding_mode)


def _convolve(op, axes, x, w, b, stride, padding, dilation, groups, padding_mode) -> Array:
    """conv1d/2d/3d: validate, pad by the mode if not zeros, then the forward map."""
    cfg = conv2d_config(x, w, b, stride, padding, dilation, groups, op, axes, padding_mode)
    x, w, b = alike(x, w, b)
    if padding_mode != "zeros":
        x, cfg = pad(padding_mode, cfg.pads, x), cfg._replace(pads=((0, 0),) * axes)
    sizes, kernel = np.shape(x)[1:-1], np.shape(w)[:-2]
    out = tuple(out_size(n, k, s, d, lo, hi) for n, k, s, d, (lo, hi) in
                zip(sizes, kernel, cfg.stride, cfg.dilation, cfg.pads))
    y = _conv2d(_used_padding(cfg, sizes, out, kernel), x, w)
    return y if b is None else add_bias(y, b)


def conv_transpose2d(x: Array, w: Array, b: Optional[Array] = None, *,
                     stride: int | IntPair = 1, padding: int | tuple = 0,
                     output_padding: int | IntPair = 0, dilation: int | IntPair = 1,
                     groups: int = 1, padding_mode: str = "zeros") -> Array:
    """Transposed convolution: the adjoint of `conv2d` with respect to its input (PyTorch's
    ConvTranspose2d), i.e. the gradient conv2d sends back to its input.

    Args:
      x: input, NHWC `(N, H, W, C)`: it plays the conv2d's output.
      w: the HWIO kernel of that conv2d, `(kh, kw, O // groups, C)`: it maps the O channels of
        this op's output to the C channels of its input.
      b: optional bias `(O,)`.
      stride, padding, dilation, groups: those of that conv2d (padding: ints and pairs only).
      output_padding: extra rows/columns at the bottom/right of the output, each smaller than
        the stride or the dilation; they pick which of the conv2d input sizes that give H is meant.
      padding_mode: "zeros" only (as PyTorch's ConvTranspose2d): the padding crops the output.

    Returns:
      `(N, OH, OW, O)` with `OH = (H-1)*sh - top - bottom + dh*(kh-1) + output_padding + 1`, and

      `Y[n, h*sh + i*dh - top, x*sw + j*dw - left, g(c) + o] += X[n,h,x,c] * W[i,j,o,c]`

      over every n, h, x, c, i, j, o (what lands outside the output is dropped), plus `b`, with
      `g(c) = (c // (C // groups)) * (O // groups)`: each input pixel paints the kernel onto the
      output, `stride` apart. Its gradients are conv2d itself (for x) and the conv2d filter
      gradient with the roles of input and cotangent exchanged (for w):

      `dX[n,h,x,c] = sum_{i,j,o} G[n, h*sh + i*dh - top, x*sw + j*dw - left, g(c) + o] * W[i,j,o,c]`
      `dW[i,j,o,c] = sum_{n,h,x} G[n, h*sh + i*dh - top, x*sw + j*dw - left, g(c) + o] * X[n,h,x,c]`
    """
    return _transpose("conv_transpose2d", 2, x, w, b, stride, padding, output_padding, dilation,
                      groups, padding_mode)


def _transpose_op(op: str, axes: int, doc: str):
    """The public conv_transpose over `axes` spatial axes: `_transpose` with the signature of
    `conv_transpose2d`."""
    def transpose(x: Array, w: Array, b: Optional[Array] = None, *, stride: int | tuple = 1,
                  padding: int | tuple = 0, output_padding: int | tuple = 0,
                  dilation: int | tuple = 1, groups: int = 1,
                  padding_mode: str = "zeros") -> Array:
        return _transpose(op, axes, x, w, b, stride, padding, output_padding, dilation, groups,
                          padding_mode)
    transpose.__name__ = transpose.__qualname__ = op
    transpose.__doc__ = doc
    return transpose


conv_transpose1d = _transpose_op("conv_transpose1d", 1, """`conv_transpose2d` over one spatial
    axis: x `(N, W, C)`, w `(k, O // groups, C)` (the kernel of the conv1d from this op's output
    to x), b `(O,)`; output `(N, OW, O)`, `OW = (W-1)*s - left - right + d*(k-1) +
    output_padding + 1`.""")
conv_transpose3d = _transpose_op("conv_transpose3d", 3, """`conv_transpose2d` over three spatial
    axes: x `(N, D, H, W, C)`, w `(kd, kh, kw, O // groups, C)` (the kernel of the conv3d from
    this op's output to x), b `(O,)`; output `(N, OD, OH, OW, O)`, each axis as in
    `conv_transpose2d`.""")


def _transpose(op, axes, x, w, b, stride, padding, output_padding, dilation, groups,
               padding_mode) -> Array:
    """conv_transpose1d/2d/3d: the input-gradient map of the conv from the output to x."""
    cfg = conv_transpose2d_config(x, w, b, stride, padding, output_padding, dilation, groups, op,
                                  axes, padding_mode)
    x, w, b = alike(x, w, b)
    out = conv_transpose_out_sizes(np.shape(x), np.shape(w), cfg)
    fwd = ConvConfig(cfg.stride, cfg.pads, cfg.dilation, cfg.groups)
    y = _conv2d_dx(_used_padding(fwd, out, np.shape(x)[1:-1], np.shape(w)[:-2]), x, w)
    return y if b is None else add_bias(y, b)


def _used_padding(cfg: ConvConfig, in_hw, out_hw, k_hw) -> ConvConfig:
    """The conv from `in_hw` to `out_hw` (any number of axes) with its end padding set to what
    its last window uses: `(out-1)*s + d*(k-1) + 1 - in - top`, which may be negative. For a
    conv this cuts the input rows that the stride leaves unreached (they get no gradient, and the
    filter gradient must not read them); for a conv_transpose it is `bottom - output_padding`.
    With it, each map below produces exactly its target's shape and needs no shape passed in."""
    pads = tuple((lo, (o - 1) * s + d * (k - 1) + 1 - n - lo) for n, o, k, s, d, (lo, _) in
                 zip(in_hw, out_hw, k_hw, cfg.stride, cfg.dilation, cfg.pads))
    return cfg._replace(pads=pads)


# Derivation. One spatial axis is shown (every other is the same: the maps below run over 1, 2
# or 3 of them) and groups are left out:
# s = stride, d = dilation, k = kernel size, t/b = top/bottom padding (b as `_used_padding` sets
# it, so that H = (OH-1)*s + d*(k-1) + 1 - t - b exactly), X[p] = 0 outside 0 <= p < H.
#
#   Y[n,y,o]   = sum_{i,c} X[n, y*s + i*d - t, c] W[i,c,o]                    _conv2d(x, w)
#
# <Y, G> = sum_{n,y,i,c,o} X[n, y*s + i*d - t, c] W[i,c,o] G[n,y,o] is linear in each of X, W, G,
# and the gradient of <Y, G> w.r.t. each one is a map of the other two:
#
#   dX[n,p,c]  = sum_{y,i,o : y*s + i*d - t = p} G[n,y,o] W[i,c,o]               _conv2d_dx(g, w)
#      Spread G out: Gs[u] = G[u/s] where s divides u, else 0 (the forward stride becomes the
#      gradient's input dilation). Flipping the kernel, i' = k-1-i, turns y*s = p + t - i*d into
#      dX[p] = sum_{i',o} Gs[p + i'*d - (d*(k-1) - t)] W[k-1-i', c, o]: a stride-1 correlation
#      of Gs with the flipped kernel (in/out channels swapped), dilation d, padded by d*(k-1) - t
#      before and d*(k-1) - b after, which yields exactly H rows.
#
#   dW[i,c,o]  = sum_{n,y} X[n, y*s + i*d - t, c] G[n,y,o]                       _conv2d_dw(x, g)
#      A correlation of X (padded t, b) with G as the window: G's taps lie s apart (kernel
#      dilation s), the window moves d at a time (stride d), n is contracted like a channel and c
#      rides along like a batch index. b cuts the rows no window reaches, so they are not read.
#
# With groups, output channel o reads input channels (o // (O/G)) * C/G + c: in dX the group
# axis of W moves from its output to its input channels (feature groups); in dW X's channels
# split into G batch groups, one per group of G's channels.
#
# Each map is bilinear, so its backward is made of the other two (u, v: incoming cotangents;
# <dX(g, w), u> = <Y(u, w), g> and <dW(x, g), v> = <Y(x, v), g> say which):
#   _conv2d(x, w):     dx = _conv2d_dx(g, w)   dw = _conv2d_dw(x, g)
#   _conv2d_dx(g, w):  dg = _conv2d(u, w)      dw = _conv2d_dw(u, g)
#   _conv2d_dw(x, g):  dx = _conv2d_dx(g, v)   dg = _conv2d(x, v)

def _layouts(x: Array, *specs: str) -> tuple:
    """lax dimension numbers with "S" standing for the spatial axes, spelt for x's rank:
    ("NSC", "SIO", "NSC") is ("NHWC", "HWIO", "NHWC") in 2-D, ("NWC", "WIO", "NWC") in 1-D."""
    return tuple(spec.replace("S", axis_names(x.ndim - 2)) for spec in specs)


def _bilinear_fwd(f):
    """The forward rule of each map: its output, and as residuals its two inputs, the least
    the backward of a bilinear map needs."""
    def fwd(cfg, a, b):
        return f(cfg, a, b), (a, b)
    return fwd


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _conv2d(cfg: ConvConfig, x: Array, w: Array) -> Array:
    plain = partial(_correlate, cfg)
    return by_platform(plain, conv_forms.forward(cfg, x, w, plain), x, w)


def _correlate(cfg: ConvConfig, x: Array, w: Array) -> Array:
    return lax.conv_general_dilated(x, w, window_strides=cfg.stride, padding=cfg.pads,
                                    rhs_dilation=cfg.dilation,
                                    dimension_numbers=_layouts(x, "NSC", "SIO", "NSC"),
                                    feature_group_count=cfg.groups)


def _conv2d_bwd(cfg, res, g):
    x, w = res
    return _conv2d_dx(cfg, g, w), _conv2d_dw(cfg, x, g)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _conv2d_dx(cfg: ConvConfig, g: Array, w: Array) -> Array:
    w, pads = _flipped(cfg, w)
    plain = partial(_spread_correlate, cfg, pads)
    return by_platform(plain, conv_forms.input_gradient(cfg, g, w, pads), g, w)


def _flipped(cfg: ConvConfig, w: Array):
    """The input gradient's kernel and padding: w's window flipped on every spatial axis,
    (*k, C/G, O) -> (*k, C, O/G), read as SOI (C out, O/G in); padded d*(k-1) - lo before,
    d*(k-1) - hi after."""
    *kernel, c_g, o = w.shape
    axes = len(kernel)
    w = lax.rev(w, tuple(range(axes))).reshape(*kernel, c_g, cfg.groups, o // cfg.groups)
    w = jnp.moveaxis(w, axes + 1, axes).reshape(*kernel, cfg.groups * c_g, o // cfg.groups)
    pads = tuple((d * (k - 1) - lo, d * (k - 1) - hi) for k, d, (lo, hi) in
                 zip(kernel, cfg.dilation, cfg.pads))
    return w, pads


def _spread_correlate(cfg: ConvConfig, pads, g: Array, w: Array) -> Array:
    """The stride-1 correlation of G spread out by the stride with the flipped SOI kernel w."""
    # When XLA (jaxlib 0.10.2, CPU) swaps a convolution's operands it keeps in place any window
    # axis with no padding, size == input dilation and stride == size - 1, builds an invalid
    # convolution and aborts the process ("Window dimensions do not match RHS shape"). Here that
    # axis is k = s = 2, d = 1 with zero padding: one spare zero row at its end, cut off after,
    # makes XLA leave it alone.
    spare = [int(k == s == 2 and d == 1 and p == (0, 0)) for k, s, d, p in
             zip(w.shape[:-2], cfg.stride, cfg.dilation, pads)]
    dx = lax.conv_general_dilated(g, w, window_strides=(1,) * len(pads),
                                  padding=[(lo, hi + e) for (lo, hi), e in zip(pads, spare)],
                                  lhs_dilation=cfg.stride, rhs_dilation=cfg.dilation,
                                  dimension_numbers=_layouts(g, "NSC", "SOI", "NSC"),
                                  feature_group_count=cfg.groups)
    return dx[(slice(None),) + tuple(slice(0, n - e) for n, e in zip(dx.shape[1:-1], spare))]


def _conv2d_dx_bwd(cfg, res, u):
    g, w = res
    return _conv2d(cfg, u, w), _conv2d_dw(cfg, u, g)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _conv2d_dw(cfg: ConvConfig, x: Array, g: Array) -> Array:
    kernel_hw = _kernel_hw(cfg, x.shape[1:-1], g.shape[1:-1])
    return by_platform(partial(_filter_correlate, cfg),
                       conv_forms.filter_gradient(cfg, x, g, kernel_hw), x, g)


def _filter_correlate(cfg: ConvConfig, x: Array, g: Array) -> Array:
    """x as CSN (CHWN in 2-D): its channels are the batch, its batch the contracted feature; g
    is the window."""
    return lax.conv_general_dilated(x, g, window_strides=cfg.dilation, padding=cfg.pads,
                                    rhs_dilation=cfg.stride,
                                    dimension_numbers=_layouts(x, "CSN", "ISO", "SNC"),
                                    batch_group_count=cfg.groups)


def _kernel_hw(cfg: ConvConfig, in_hw, out_hw) -> tuple:
    """The kernel size, from H + top + bottom = (OH-1)*s + d*(k-1) + 1 (`_used_padding`)."""
    return tuple((n + lo + hi - (o - 1) * s - 1) // d + 1 for n, o, s, d, (lo, hi) in
                 zip(in_hw, out_hw, cfg.stride, cfg.dilation, cfg.pads))


def _conv2d_dw_bwd(cfg, res, v):
    x, g = res
    return _conv2d_dx(cfg, g, v), _conv2d(cfg, x, v)


_conv2d.defvjp(_bilinear_fwd(_conv2d), _conv2d_bwd)
_conv2d_dx.defvjp(_bilinear_fwd(_conv2d_dx), _conv2d_dx_bwd)
_conv2d_dw.defvjp(_bilinear_fwd(_conv2d_dw), _conv2d_dw_bwd)
