"""2-D convolution and its adjoint, with hand-derived backward rules.

Layouts: activations NHWC, kernels HWIO `(kh, kw, in_channels // groups, out_channels)`.

The op is the trilinear form <conv2d(x, w), g>; its three bilinear maps are the forward
(`_conv2d`: y from x, w), the input gradient (`_conv2d_dx`: dx from g, w, which is also the
public `conv_transpose2d`) and the filter gradient (`_conv2d_dw`: dw from x, g). Each is a
`custom_vjp` whose backward is written with the other two, so the family is closed under
differentiation: `jax.grad` of `jax.grad` runs through these rules too, never through JAX's
autodiff of a convolution. On CPU (each predicate says exactly where) the forward with one
input channel is a sum over the kernel's taps instead of XLA's convolution (`_taps_pay`,
`_tap_sum`), an ungrouped one from 3 to 7 input channels into at most 16 is padded to 8
(`_eight_channels_pay`), a forward or input gradient into 3 to 7 channels goes by kernel rows
(`_rows_pay`, `_by_kernel_rows`), and the filter gradient is one convolution per chunk of 16
images or more (`_dw_chunk`; an ungrouped 1x1 kernel's is one matmul): the same maps,
computed faster.
"""
from __future__ import annotations

from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jcnn._args import IntPair, PaddingLike, out_size
from jcnn._validate import (ConvConfig, conv2d_config, conv_transpose2d_config,
                            conv_transpose2d_out_hw)
from jcnn._windows import window_views
from jcnn.dense import add_bias  # y + b[o] over the channel axis; db = sum of g

Array = jax.Array


def conv2d(x: Array, w: Array, b: Optional[Array] = None, *, stride: int | IntPair = 1,
           padding: PaddingLike = 0, dilation: int | IntPair = 1, groups: int = 1) -> Array:
    """2-D cross-correlation (what every framework calls convolution).

    Args:
      x: input, NHWC `(N, H, W, C)`.
      w: kernel, HWIO `(kh, kw, C // groups, O)`.
      b: optional bias `(O,)`.
      stride, dilation: an int or a pair `(sh, sw)`.
      padding: an int, a pair `(ph, pw)`, a pair of pairs `((top, bottom), (left, right))`,
        "VALID" or "SAME".
      groups: output channel `o` sees only the `C // groups` input channels of its group.

    Returns:
      `(N, OH, OW, O)` with `OH = floor((H + top + bottom - dh*(kh-1) - 1) / sh) + 1`, and

      `Y[n,y,x,o] = b[o] + sum_{i,j,c} X[n, y*sh + i*dh - top, x*sw + j*dw - left, g(o)+c] W[i,j,c,o]`

      where `g(o) = (o // (O // groups)) * (C // groups)` is the first channel of o's group and
      X reads zero outside the input. The gradients, for the output cotangent G: each product
      in Y[n,y,x,o] sends G[n,y,x,o] back to both its factors,

      `dX[n, y*sh + i*dh - top, x*sw + j*dw - left, g(o) + c] += G[n,y,x,o] * W[i,j,c,o]`
      (over every n, y, x, o, i, j, c; what lands in the padding is dropped), and
      `dW[i,j,c,o] = sum_{n,y,x} X[n, y*sh + i*dh - top, x*sw + j*dw - left, g(o) + c] * G[n,y,x,o]`
      `db[o] = sum_{n,y,x} G[n,y,x,o]`

      Input rows that no window reaches get a zero gradient.
    """
    cfg = conv2d_config(x, w, b, stride, padding, dilation, groups)
    in_hw, k_hw = np.shape(x)[1:3], np.shape(w)[:2]
    out_hw = tuple(out_size(n, k, s, d, lo, hi) for n, k, s, d, (lo, hi) in
                   zip(in_hw, k_hw, cfg.stride, cfg.dilation, cfg.pads))
    y = _conv2d(_used_padding(cfg, in_hw, out_hw, k_hw), x, w)
    return y if b is None else add_bias(y, b)


def conv_transpose2d(x: Array, w: Array, b: Optional[Array] = None, *,
                     stride: int | IntPair = 1, padding: int | tuple = 0,
                     output_padding: int | IntPair = 0, dilation: int | IntPair = 1,
                     groups: int = 1) -> Array:
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
    cfg = conv_transpose2d_config(x, w, b, stride, padding, output_padding, dilation, groups)
    out_hw = conv_transpose2d_out_hw(np.shape(x), np.shape(w), cfg)
    fwd = ConvConfig(cfg.stride, cfg.pads, cfg.dilation, cfg.groups)
    y = _conv2d_dx(_used_padding(fwd, out_hw, np.shape(x)[1:3], np.shape(w)[:2]), x, w)
    return y if b is None else add_bias(y, b)


def _used_padding(cfg: ConvConfig, in_hw, out_hw, k_hw) -> ConvConfig:
    """The conv2d from `in_hw` to `out_hw` with its bottom/right padding set to what its last
    window uses: `(out-1)*s + d*(k-1) + 1 - in - top`, which may be negative. For conv2d this
    cuts the input rows that the stride leaves unreached (they get no gradient, and the filter
    gradient must not read them); for conv_transpose2d it is `bottom - output_padding`. With it,
    each map below produces exactly its target's shape and needs no shape passed in."""
    pads = tuple((lo, (o - 1) * s + d * (k - 1) + 1 - n - lo) for n, o, k, s, d, (lo, _) in
                 zip(in_hw, out_hw, k_hw, cfg.stride, cfg.dilation, cfg.pads))
    return cfg._replace(pads=pads)


# Derivation. One spatial axis is shown (the other is the same) and groups are left out:
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

_NHWC = ("NHWC", "HWIO", "NHWC")


def _bilinear_fwd(f):
    """The forward rule of each map: its output, and as residuals its two inputs, the least
    the backward of a bilinear map needs."""
    def fwd(cfg, a, b):
        return f(cfg, a, b), (a, b)
    return fwd


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _conv2d(cfg: ConvConfig, x: Array, w: Array) -> Array:
    if _taps_pay(x, w):
        return _tap_sum(cfg, x, w)
    if _rows_pay(cfg, x, w):
        return _by_kernel_rows(x, w, cfg.pads)
    if _eight_channels_pay(x, w, cfg.groups):  # zero channels add nothing to the sum
        extra = ((0, 0), (0, 0), (0, 8 - x.shape[3]))
        x, w = jnp.pad(x, ((0, 0), *extra)), jnp.pad(w, (*extra, (0, 0)))
    return lax.conv_general_dilated(x, w, window_strides=cfg.stride, padding=cfg.pads,
                                    rhs_dilation=cfg.dilation, dimension_numbers=_NHWC,
                                    feature_group_count=cfg.groups)


def _taps_pay(x: Array, w: Array) -> bool:
    """On CPU, a one-channel input with at most 1024 kernel taps x output channels. XLA:CPU's
    convolution with C = 1 takes a slow generic path; on 2 cores, B=128, the tap sum measured
    0.09x its time for 5x5 1->6 (LeNet's conv1), 0.17x for 1->16, 0.23x for 3x3 1->64,
    0.79x for 5x5 1->32, but 1.33x for 7x7 1->64 stride 2 (benchmarks/conv_forms.py)."""
    kh, kw, _, o = w.shape  # x's own channels: a depthwise w has 1 input channel too
    return x.shape[3] == 1 and kh * kw * o <= 1024 and jax.default_backend() == "cpu"


def _rows_pay(cfg: ConvConfig, x: Array, w: Array) -> bool:
    """On CPU, an ungrouped stride-1 undilated kh x kw convolution (kh > 1) from at least 8
    channels into 3 to 7, over an input x of at least 196 pixels (14x14; for the input
    gradient x is the output cotangent). XLA's (Eigen's) convolution extracts kh*kw*C values per
    output pixel whatever O is; `_by_kernel_rows` extracts kw*C. On 2 cores, B=128, every
    such shape measured 0.29-0.86x the convolution's time (3x3 and 5x5, 8 to 64 -> 3 and 6
    channels, 14x14 to 32x32; LeNet's conv2 input gradient, 16 -> 6 at 14x14: 0.51x, 0.45x
    at B=512); at 8x8, with 1 output channel or with 8 and more, it was up to 1.5x slower
    (benchmarks/RESULTS.md, sixth session)."""
    kh, _, c, o = w.shape
    return (cfg.groups == 1 and cfg.stride == cfg.dilation == (1, 1) and kh > 1 and c >= 8
            and 3 <= o <= 7 and x.shape[1] * x.shape[2] >= 196
            and jax.default_backend() == "cpu")


def _by_kernel_rows(x: Array, w: Array, pads) -> Array:
    """The stride-1 undilated convolution of x with the HWIO kernel w as a 1 x kw convolution
    into kh*O channels, one group of O per kernel row i, over every padded row r:
        Z[n, r, x, i, o] = sum_{j,c} Xp[n, r, x + j, c] W[i, j, c, o],
    then Y[n, y, x, o] = sum_i Z[n, y + i, x, i, o]: kh shifted rows summed (in float32 at
    least, as the convolution accumulates). Z is kh times Y: above 128 images it is made 32
    images at a time in a loop. LeNet's step at B=512 took 0.29x autodiff's time so, 0.38x with
    one Z (its temp memory crossed 32 MB, past which glibc maps and unmaps it every step, and
    every page faulted) and 0.37x with 128 at a time; at B=128 one Z: 0.45x (the loop: 0.47x)."""
    kh, kw, c, o = w.shape
    acc = jnp.promote_types(x.dtype, jnp.float32)
    rows = jnp.transpose(w, (1, 2, 0, 3)).reshape(1, kw, c, kh * o)

    def rows_summed(xs):
        z = lax.conv_general_dilated(xs, rows, (1, 1), pads, dimension_numbers=_NHWC,
                                     preferred_element_type=acc)
        z = z.reshape(*z.shape[:3], kh, o)
        oh = z.shape[1] - kh + 1
        return sum(z[:, i:i + oh, :, i] for i in range(kh))
    y = rows_summed(x) if x.shape[0] <= 128 else _batch_loop(rows_summed, x, 32)
    return y.astype(x.dtype)


def _batch_loop(f, x: Array, size: int) -> Array:
    """f of x computed `size` images at a time in a `fori_loop` (one slice's temporaries alive
    at once), into one buffer. The batch is padded with zero images to a multiple of `size`
    (the last slice computes up to size - 1 images of zeros) and the result cut back to n."""
    n = x.shape[0]
    parts = -(-n // size)
    xs = jnp.pad(x, ((0, parts * size - n),) + ((0, 0),) * (x.ndim - 1))
    out = jax.eval_shape(f, xs[:size])
    y = jnp.zeros((parts * size, *out.shape[1:]), out.dtype)

    def part(k, y):
        return lax.dynamic_update_slice_in_dim(
            y, f(lax.dynamic_slice_in_dim(xs, k * size, size)), k * size, 0)
    return lax.fori_loop(0, parts, part, y)[:n]


def _eight_channels_pay(x: Array, w: Array, groups: int) -> bool:
    """On CPU, 3 to 7 input channels into at most 16 outputs: XLA's (Eigen's) convolution is
    faster with the input padded to 8 zero channels. On 2 cores, B=128, 5x5 at 14x14, with the
    pad: 0.63-0.77x the time for 6 -> 4, 8, 12, 16 (LeNet's conv2; 0.75x at B=512), 0.74x for
    7 -> 16, 0.85-0.93x for 3, 4, 5 -> 16, 0.84-0.87x for 3x3 3 -> 16 at 32x32 (ResNet's stem);
    but 1.07x for 2 -> 16, 1.13-1.47x for 6 -> 24, 32, 64, 1.08-1.26x for 10 and 12 -> 16, and
    5-8x for 1 channel (benchmarks/RESULTS.md, sixth session)."""
    return (groups == 1 and 3 <= x.shape[3] < 8 and w.shape[3] <= 16
            and jax.default_backend() == "cpu")


def _tap_sum(cfg: ConvConfig, x: Array, w: Array, parts: int = 4) -> Array:
    """The forward with one input channel as a sum over the kernel's taps,
    Y = sum_{i,j} Xp_ij * W[i,j,0,:] (Xp_ij: the (N, OH, OW, 1) view tap (i, j) reads), which
    XLA fuses into one loop. Accumulates in float32 at least, as the convolution does.

    Y is computed over slices of ceil(N / parts) images (at most `parts` of them; 3 for N = 5)
    so that it is a stored buffer: as a plain expression XLA:CPU fused it into each of its
    consumers (the relu, the pool's windows, the backward's mask) and recomputed it there, three
    times over and slower than once (LeNet step at B=128 and 512: 0.83-0.85x autodiff's time).
    The slices' concatenation is one fusion that XLA splits across the cores (0.55x at B=128). A
    narrower x goes through a `fori_loop` over the slices instead (one thread per slice, 0.57x
    in float32), whose f32 buffer is narrowed after it: in the concatenation the narrowing fused
    into the tap sum and slowed it down 4x (LeNet bf16 step 0.56x with it, 0.48x with the loop),
    as converting per tap read did in the loop (benchmarks/RESULTS.md)."""
    acc = jnp.promote_types(x.dtype, jnp.float32)
    taps = w.astype(acc).reshape(-1, 1, 1, 1, w.shape[3])  # (kh*kw, 1, 1, 1, O)

    def tap_sum(xs):
        views = window_views(xs, w.shape[:2], cfg.stride, cfg.dilation, cfg.pads, 0)
        return jnp.sum(jnp.stack([v * t for v, t in zip(views, taps)]), axis=0)

    n = x.shape[0]
    if n == 0:  # an empty batch: no slices to make
        return tap_sum(x.astype(acc)).astype(x.dtype)
    size = -(-n // min(parts, n))
    if x.dtype == acc:
        return jnp.concatenate([tap_sum(x[k:k + size]) for k in range(0, n, size)])
    return _batch_loop(tap_sum, x.astype(acc), size).astype(x.dtype)


def _conv2d_bwd(cfg, res, g):
    x, w = res
    return _conv2d_dx(cfg, g, w), _conv2d_dw(cfg, x, g)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _conv2d_dx(cfg: ConvConfig, g: Array, w: Array) -> Array:
    kh, kw, c_g, o = w.shape
    # flip the window; (kh, kw, C/G, O) -> (kh, kw, C, O/G), read as HWOI: C out, O/G in
    w = w[::-1, ::-1].reshape(kh, kw, c_g, cfg.groups, o // cfg.groups)
    w = jnp.moveaxis(w, 3, 2).reshape(kh, kw, cfg.groups * c_g, o // cfg.groups)
    pads = [(d * (k - 1) - lo, d * (k - 1) - hi) for k, d, (lo, hi) in
            zip((kh, kw), cfg.dilation, cfg.pads)]
    hwio = jnp.swapaxes(w, 2, 3)  # O/G in, C out
    if _rows_pay(cfg, g, hwio):
        return _by_kernel_rows(g, hwio, pads)
    # When XLA (jaxlib 0.10.2, CPU) swaps a convolution's operands it keeps in place any window
    # axis with no padding, size == input dilation and stride == size - 1, builds an invalid
    # convolution and aborts the process ("Window dimensions do not match RHS shape"). Here that
    # axis is k = s = 2, d = 1 with zero padding: one spare zero row at its end, cut off after,
    # makes XLA leave it alone.
    spare = [int(k == s == 2 and d == 1 and p == (0, 0)) for k, s, d, p in
             zip((kh, kw), cfg.stride, cfg.dilation, pads)]
    dx = lax.conv_general_dilated(g, w, window_strides=(1, 1),
                                  padding=[(lo, hi + e) for (lo, hi), e in zip(pads, spare)],
                                  lhs_dilation=cfg.stride, rhs_dilation=cfg.dilation,
                                  dimension_numbers=("NHWC", "HWOI", "NHWC"),
                                  feature_group_count=cfg.groups)
    return dx[:, :dx.shape[1] - spare[0], :dx.shape[2] - spare[1]]


def _conv2d_dx_bwd(cfg, res, u):
    g, w = res
    return _conv2d(cfg, u, w), _conv2d_dw(cfg, u, g)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _conv2d_dw(cfg: ConvConfig, x: Array, g: Array) -> Array:
    n, acc = x.shape[0], jnp.promote_types(x.dtype, jnp.float32)
    one_by_one = _kernel_hw(cfg, x.shape[1:3], g.shape[1:3]) == (1, 1)
    if one_by_one and cfg.groups == 1 and jax.default_backend() == "cpu":
        # a 1x1 kernel reads one strided view of x: dW = view^T @ G, one matmul (0.13-0.14x
        # the convolution's time for ResNet's strided shortcuts at B=128 and 512)
        (view,) = window_views(x, (1, 1), cfg.stride, cfg.dilation, cfg.pads, 0)
        dw = lax.dot_general(view.reshape(-1, x.shape[3]), g.reshape(-1, g.shape[3]),
                             (((0,), (0,)), ((), ())), preferred_element_type=acc)
        return dw.reshape(1, 1, *dw.shape).astype(x.dtype)
    # x as CHWN: its channels are the batch, its batch the contracted feature; g is the window
    conv = partial(lax.conv_general_dilated, window_strides=cfg.dilation, padding=cfg.pads,
                   rhs_dilation=cfg.stride, dimension_numbers=("CHWN", "IHWO", "HWNC"),
                   batch_group_count=cfg.groups)
    size = _dw_chunk(n)
    if size >= n:
        return conv(x, g)
    # on CPU, one convolution per chunk of `size` images, summed in float32 at least
    return sum(conv(x[i:i + size], g[i:i + size], preferred_element_type=acc)
               for i in range(0, n, size)).astype(x.dtype)


def _dw_chunk(n: int) -> int:
    """Images per filter-gradient convolution. XLA:CPU's filter-gradient convolution (the one
    autodiff builds too) slows down faster than the batch it contracts grows: 3.8 ms for
    ResNet's 3x3 16->16 at 32x32 at B=32, 23.7 ms at B=128, 144 ms at B=512 on 2 cores. In
    chunks of 16 images it took 0.21-0.56x the one convolution's time at B=128 and 512 for
    the 3x3 and 5x5 convs of ResNet-8 and LeNet (0.80x for LeNet's 6->16 at B=128), and
    0.6-1.4x at B=32, where the step still gained (ResNet-8) or held (LeNet)
    (benchmarks/dw_forms.py, benchmarks/RESULTS.md). At most 32 chunks, so that a large batch
    does not unroll into hundreds of convolutions. Elsewhere one convolution."""
    return max(16, -(-n // 32)) if jax.default_backend() == "cpu" else n


def _kernel_hw(cfg: ConvConfig, in_hw, out_hw) -> tuple[int, int]:
    """The kernel size, from H + top + bottom = (OH-1)*s + d*(k-1) + 1 (`_used_padding`)."""
    return tuple((n + lo + hi - (o - 1) * s - 1) // d + 1 for n, o, s, d, (lo, hi) in
                 zip(in_hw, out_hw, cfg.stride, cfg.dilation, cfg.pads))


def _conv2d_dw_bwd(cfg, res, v):
    x, g = res
    return _conv2d_dx(cfg, g, v), _conv2d(cfg, x, v)


_conv2d.defvjp(_bilinear_fwd(_conv2d), _conv2d_bwd)
_conv2d_dx.defvjp(_bilinear_fwd(_conv2d_dx), _conv2d_dx_bwd)
_conv2d_dw.defvjp(_bilinear_fwd(_conv2d_dw), _conv2d_dw_bwd)
