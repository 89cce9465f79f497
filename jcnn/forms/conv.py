"""CPU forms of the convolution's three maps (`jcnn/conv.py`: `_conv2d` the forward, `_conv2d_dx`
the input gradient, `_conv2d_dw` the filter gradient).

Each chooser (`forward`, `input_gradient`, `filter_gradient`) returns the form that applies to
the given shapes, or None where the plain rule stays; `jcnn.forms.by_platform` uses it where the
computation is lowered for CPU. The forms are 2-D: for conv1d and conv3d (the same maps over
one or three spatial axes) every chooser returns None. The forms split or pad the batch, so
they take a static batch only (under a symbolic one the plain rule runs).
`benchmarks/conv_forms.py`, `dw_forms.py` and `cpu_forms.py` measure each against the plain
rule.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from jcnn._validate import out_size
from jcnn._windows import window_views
from jcnn.forms import static_batch

Array = jax.Array
_NHWC = ("NHWC", "HWIO", "NHWC")
_NHWOI = ("NHWC", "HWOI", "NHWC")


def forward(cfg, x: Array, w: Array, plain: Callable) -> Optional[Callable]:
    """The CPU form of y = conv2d(x, w) (HWIO w) for these shapes, or None."""
    if not _two_d_static(x):
        return None
    if _taps_pay(x, w):
        return partial(_tap_sum, cfg)
    if _rows_pay(cfg, x, w.shape):
        return lambda x, w: _by_kernel_rows(x, w, cfg.pads)
    if _eight_channels_pay(cfg, x, w):
        return partial(_eight_channels, plain)
    return None


def input_gradient(cfg, g: Array, hwoi: Array, pads) -> Optional[Callable]:
    """The CPU form of dx, the correlation of the cotangent g (spread out by the stride) with
    the flipped kernel `hwoi` (HWOI: its O axis is dx's channels) padded by `pads`, or None."""
    if not _two_d_static(g):
        return None
    kh, kw, c, o = hwoi.shape
    if _rows_pay(cfg, g, (kh, kw, o, c)):
        return lambda g, hwoi: _by_kernel_rows(g, jnp.swapaxes(hwoi, 2, 3), pads)
    if _phases_pay(cfg, g, hwoi):
        return partial(_by_phases, cfg.stride, pads)
    return None


def filter_gradient(cfg, x: Array, g: Array, kernel_hw) -> Optional[Callable]:
    """The CPU form of dw (a `kernel_hw` kernel) from x and the cotangent g, or None."""
    if not _two_d_static(x):
        return None
    if kernel_hw == (1, 1) and cfg.groups == 1:
        return partial(_one_by_one_dw, cfg)
    if x.shape[0] > _dw_chunk(x):
        return partial(_chunked_dw, cfg, kernel_hw)
    return None


def _two_d_static(x: Array) -> bool:
    """NHWC (the forms are written for two spatial axes) with a static batch (they split it)."""
    return x.ndim == 4 and static_batch(x)


def _taps_pay(x: Array, w: Array) -> bool:
    """One input channel, at most 1024 taps x outputs: XLA:CPU's convolution takes a slow generic
    path for C = 1, where the tap sum is one fused loop."""
    kh, kw, _, o = w.shape  # x's own channels: a depthwise w has 1 input channel too
    return x.shape[3] == 1 and kh * kw * o <= 1024


def _rows_pay(cfg, x: Array, hwio_shape) -> bool:
    """Ungrouped, stride and dilation 1, kh > 1, from >= 8 channels into 3 to 7, x of >= 196
    pixels: XLA:CPU extracts kh*kw*C values per output pixel whatever O is, kernel rows kw*C."""
    kh, _, c, o = hwio_shape
    return (cfg.groups == 1 and cfg.stride == cfg.dilation == (1, 1) and kh > 1 and c >= 8
            and 3 <= o <= 7 and x.shape[1] * x.shape[2] >= 196)


def _phases_pay(cfg, g: Array, hwoi: Array) -> bool:
    """Strided, ungrouped, undilated, kernel wider than 1x1, into 9 to 16 channels over >= 256
    pixels or into >= 2**22 values: XLA:CPU's convolution with input dilation (the stride's
    spread) slows down faster than its size grows, the phases' stride-1 ones do not."""
    (sh, sw), (kh, kw, c, _) = cfg.stride, hwoi.shape
    pixels = g.shape[1] * sh * g.shape[2] * sw
    return (cfg.groups == 1 and cfg.dilation == (1, 1) and (sh, sw) != (1, 1) and kh * kw > 1
            and (9 <= c <= 16 and pixels >= 256 or g.shape[0] * pixels * c >= 2 ** 22))


def _eight_channels_pay(cfg, x: Array, w: Array) -> bool:
    """Ungrouped, 3 to 7 input channels into at most 16: XLA:CPU's convolution runs faster on
    the input padded to 8 zero channels."""
    return cfg.groups == 1 and 3 <= x.shape[3] < 8 and w.shape[3] <= 16


def _dw_chunk(x: Array) -> int:
    """Images per filter-gradient convolution: 16 on images of at least 256 pixels (the
    convolution's window), else 32. XLA:CPU's filter-gradient convolution slows down faster
    than the batch it contracts grows; on smaller windows a chunk of 16 ran by Eigen's slower
    path (LeNet's conv2, 14x14: 1.5x the time of 32; `benchmarks/dw_forms.py`, RESULTS.md)."""
    return 16 if x.shape[1] * x.shape[2] >= 256 else 32


def _eight_channels(plain: Callable, x: Array, w: Array) -> Array:
    extra = ((0, 0), (0, 0), (0, 8 - x.shape[3]))  # zero channels add nothing to the sum
    return plain(jnp.pad(x, ((0, 0), *extra)), jnp.pad(w, (*extra, (0, 0))))


def _tap_sum(cfg, x: Array, w: Array, parts: int = 4) -> Array:
    """The forward with one input channel as a sum over the kernel's taps,
    Y = sum_{i,j} Xp_ij * W[i,j,0,:], Xp_ij the (N, OH, OW, 1) view tap (i, j) reads of x
    padded with zeros. A tap's product is kept only at the outputs whose read lies inside the
    input (`_reads_inside`): so a NaN or inf in W reaches the outputs it reaches in the plain
    convolution, never through the padding's zeros (0 * NaN). Accumulated in float32 at least,
    as the convolution does.

    Y is computed over at most `parts` slices of the batch and concatenated, so that it is one
    stored buffer (as a plain expression XLA fused it into each of its consumers and recomputed
    it there) that XLA splits across the cores; a half-precision x goes through a `fori_loop`
    over the slices, narrowed after it (fused into the concatenation, the narrowing slowed the
    tap sum down). The slices' sum is one jitted function, traced once per slice shape (XLA
    inlines the calls): traced per slice, it was 40% of a small LeNet's `jcnn train` start-up
    with a warm compilation cache."""
    acc = jnp.promote_types(x.dtype, jnp.float32)
    kh, kw, _, o = w.shape
    taps = w.astype(acc).reshape(kh * kw, 1, 1, 1, o)
    out_hw = tuple(out_size(n, k, s, d, lo, hi) for n, k, s, d, (lo, hi) in
                   zip(x.shape[1:3], (kh, kw), cfg.stride, cfg.dilation, cfg.pads))

    @jax.jit
    def tap_sum(xs, taps):
        views = window_views(xs, (kh, kw), cfg.stride, cfg.dilation, cfg.pads, 0)
        total = None
        for k, (view, tap) in enumerate(zip(views, taps)):
            product = view * tap
            inside = _reads_inside(cfg, x.shape[1:3], out_hw, divmod(k, kw))
            if inside is not None:
                product = jnp.where(inside, product, jnp.zeros((), acc))
            total = product if total is None else total + product
        return total

    n = x.shape[0]
    if n == 0:  # an empty batch: no slices to make
        return tap_sum(x.astype(acc), taps).astype(x.dtype)
    size = -(-n // min(parts, n))
    if x.dtype == acc:
        return jnp.concatenate([tap_sum(x[k:k + size], taps) for k in range(0, n, size)])
    return batch_loop(lambda xs: tap_sum(xs, taps), x.astype(acc), size).astype(x.dtype)


def _reads_inside(cfg, in_hw, out_hw, ij) -> Optional[Array]:
    """(1, OH, OW, 1) bool: the outputs whose tap (i, j) reads y*s + i*d - top inside the input,
    from iotas (XLA fuses them into the sum; as constants the sum ran ~10% slower at B=512);
    None where every output's does."""
    shape, inside = (1, *out_hw, 1), None
    for axis, (n, o, s, d, (lo, _), i) in enumerate(zip(in_hw, out_hw, cfg.stride, cfg.dilation,
                                                        cfg.pads, ij)):
        first = -(-(lo - i * d) // s)  # the first y with y*s + i*d - lo >= 0
        last = (n - 1 + lo - i * d) // s  # the last with it < n
        if first <= 0 and last >= o - 1:
            continue
        y = lax.broadcasted_iota(jnp.int32, shape, axis + 1)
        here = (y >= first) & (y <= last)
        inside = here if inside is None else inside & here
    return inside


def _by_kernel_rows(x: Array, w: Array, pads) -> Array:
    """The stride-1 undilated convolution of x with the HWIO kernel w as a 1 x kw convolution
    into kh*O channels, one group of O per kernel row i, over every padded row r:
        Z[n, r, x, i, o] = sum_{j,c} Xp[n, r, x + j, c] W[i, j, c, o],
    then Y[n, y, x, o] = sum_i Z[n, y + i, x, i, o]: kh shifted rows summed (in float32 at
    least, as the convolution accumulates). Z is kh times Y: above 128 images it is made 32
    images at a time in a loop, which keeps it under the allocator's mmap threshold."""
    kh, kw, c, o = w.shape
    acc = jnp.promote_types(x.dtype, jnp.float32)
    rows = jnp.transpose(w, (1, 2, 0, 3)).reshape(1, kw, c, kh * o)

    def rows_summed(xs):
        z = lax.conv_general_dilated(xs, rows, (1, 1), pads, dimension_numbers=_NHWC,
                                     preferred_element_type=acc)
        z = z.reshape(*z.shape[:3], kh, o)
        oh = z.shape[1] - kh + 1
        return sum(z[:, i:i + oh, :, i] for i in range(kh))
    y = rows_summed(x) if x.shape[0] <= 128 else batch_loop(rows_summed, x, 32)
    return y.astype(x.dtype)


def _by_phases(stride, pads, g: Array, hwoi: Array) -> Array:
    """The input gradient of a strided conv split by the phase of its rows and columns: the
    dx pixels p = s*a + r of one phase r read only the taps i = r + top - s*e (e = 0, 1, ...
    where 0 <= i < k), so each phase is a stride-1 correlation of g with those taps, no
    spread zeros multiplied (`_Phase`), and dx interleaves the s_h * s_w phase outputs.

    Where a phase's outer rows read past g's ends, the padding is the convolution's own (negative
    padding, cut off, is a slice): XLA's convolution multiplies no padding, so a NaN or inf tap
    reaches the outputs it reaches in the plain rule."""
    axes = [[_Phase.of(o, k, s, k - 1 - lo, k - 1 - hi, r) for r in range(s)]
            for o, k, s, (lo, hi) in zip(g.shape[1:3], hwoi.shape[:2], stride, pads)]
    rows = tuple(max(p.rows for p in phases) for phases in axes)
    n, c = g.shape[0], hwoi.shape[2]
    dx = jnp.stack([jnp.stack([_phase_correlate(g, hwoi, a, b, rows) for b in axes[1]], axis=3)
                    for a in axes[0]], axis=2)  # N, R, sh, R', sw, C
    dx = dx.reshape(n, rows[0] * stride[0], rows[1] * stride[1], c)
    return dx[:, :axes[0][0].length, :axes[1][0].length]


class _Phase(NamedTuple):
    """Phase r of one axis: dx rows p = s*a + r < `length` (`rows` of them) read g rows
    a + e, e from `first_e` on, through `taps` taps of the flipped kernel from index `first`
    on, s apart."""
    length: int
    g_rows: int
    s: int
    rows: int
    first_e: int
    taps: int
    first: int

    @classmethod
    def of(cls, g_rows: int, k: int, s: int, top: int, bottom: int, r: int) -> "_Phase":
        # dx row p = s*a + r reads g[y] W[i] where y*s + i - top = p: i = r + top - s*(y - a),
        # so e = y - a runs from ceil((r + top - k + 1) / s) to floor((r + top) / s); in the
        # flipped kernel, tap i is index k - 1 - i.
        length = (g_rows - 1) * s + k - top - bottom
        first_e, last_e = -(-(r + top - k + 1) // s), (r + top) // s
        return cls(length, g_rows, s, max(0, -(-(length - r) // s)), first_e,
                   last_e - first_e + 1, k - 1 - (r + top) + s * first_e)

    def pads(self, rows: int) -> tuple[int, int]:
        """g's padding (negative: cropping) for `rows` output rows of this phase."""
        return -self.first_e, rows - 1 + self.first_e + self.taps - 1 - (self.g_rows - 1)


def _phase_correlate(g: Array, hwoi: Array, a: _Phase, b: _Phase, rows) -> Array:
    """Phase (a, b)'s dx, (N, rows[0], rows[1], C): zero where the phase has no taps."""
    if a.taps <= 0 or b.taps <= 0:
        return jnp.zeros((g.shape[0], *rows, hwoi.shape[2]), g.dtype)
    taps = lax.slice(hwoi, (a.first, b.first, 0, 0),
                     (a.first + a.s * (a.taps - 1) + 1, b.first + b.s * (b.taps - 1) + 1,
                      *hwoi.shape[2:]), (a.s, b.s, 1, 1))
    pads = (a.pads(rows[0]), b.pads(rows[1]))
    cut = tuple(slice(max(0, -lo), n - max(0, -hi)) for (lo, hi), n in zip(pads, g.shape[1:3]))
    return lax.conv_general_dilated(g[:, cut[0], cut[1]], taps, (1, 1),
                                    [(max(0, lo), max(0, hi)) for lo, hi in pads],
                                    dimension_numbers=_NHWOI)


def batch_loop(f: Callable, x: Array, size: int) -> Array:
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


def _one_by_one_dw(cfg, x: Array, g: Array) -> Array:
    """A 1x1 kernel reads one strided view V of x: dW = V^T G, one matmul."""
    acc = jnp.promote_types(x.dtype, jnp.float32)
    (view,) = window_views(x, (1, 1), cfg.stride, cfg.dilation, cfg.pads, 0)
    dw = lax.dot_general(view.reshape(-1, x.shape[3]), g.reshape(-1, g.shape[3]),
                         (((0,), (0,)), ((), ())), preferred_element_type=acc)
    return dw.reshape(1, 1, *dw.shape).astype(x.dtype)


def _chunked_dw(cfg, kernel_hw, x: Array, g: Array) -> Array:
    """dW as the sum over chunks of `_dw_chunk(x)` images (the last chunk the rest) of the
    plain rule's convolution, in float32 at least, the chunks in a `fori_loop`: one
    convolution to compile whatever the batch. In the loop its operands are laid out as
    XLA:CPU's library kernels read them, x as CHWN (its channels the convolution's batch, its
    images the contracted feature), g as HWNO (the window); left to XLA's layout assignment
    (the plain rule's dimension numbers) a convolution inside a loop keeps the loop's NHWC
    layouts and runs by a generic path, 40-60x slower."""
    acc = jnp.promote_types(x.dtype, jnp.float32)
    size = _dw_chunk(x)
    full, rest = divmod(x.shape[0], size)

    def chunk(xs, gs):
        dw = lax.conv_general_dilated(jnp.transpose(xs, (3, 1, 2, 0)),
                                      jnp.transpose(gs, (1, 2, 0, 3)), cfg.dilation, cfg.pads,
                                      rhs_dilation=cfg.stride, dimension_numbers=_NHWC,
                                      batch_group_count=cfg.groups, preferred_element_type=acc)
        return jnp.transpose(dw, (1, 2, 0, 3))  # (C/G, kh, kw, O) -> HWIO

    def add(k, dw):
        return dw + chunk(*(lax.dynamic_slice_in_dim(a, k * size, size) for a in (x, g)))
    dw = jnp.zeros((*kernel_hw, x.shape[3] // cfg.groups, g.shape[3]), acc)
    dw = lax.fori_loop(0, full, add, dw)
    if rest:
        dw = dw + chunk(x[full * size:], g[full * size:])
    return dw.astype(x.dtype)
