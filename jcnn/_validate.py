"""Call-time validation: the static arguments every op takes, normalised and checked.

Each public op (and its `jcnn.reference` twin) validates in Python, before tracing, and hands
its `custom_vjp` only hashable config: ints and tuples of ints, from one `*_config` function
per op (shapes are static, so this runs before tracing). Every error names the op, the
argument, what was expected and what came, so a user can fix the call from the message alone.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np

IntPair = tuple[int, int]
Pads = tuple[IntPair, IntPair]  # ((top, bottom), (left, right))
PaddingLike = Union[int, tuple, str]

FLOAT_DTYPES = (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64)
XLA_MAX = 2 ** 31 - 1  # XLA's window and padding sizes: larger aborts the process or hangs it


def _representable(op: str, name: str, values) -> None:
    if max(abs(v) for v in values) > XLA_MAX:
        raise ValueError(f"{op}: {name} must be below 2**31, the largest size XLA represents, "
                         f"got {tuple(values)}")


def pair(value, name: str, op: str, *, minimum: int = 1) -> IntPair:
    """`3` -> `(3, 3)`; `(2, 3)` stays; anything else, or an entry < `minimum`, raises."""
    return per_axis(value, name, op, 2, minimum=minimum)


_TUPLE = {1: "a 1-tuple", 2: "a pair", 3: "a triple"}


def per_axis(value, name: str, op: str, axes: int, *, minimum: int = 1) -> tuple[int, ...]:
    """One int per spatial axis: `3` -> `(3,) * axes`; a tuple of `axes` ints stays; anything
    else, or an entry < `minimum`, raises."""
    what = f"an int or {_TUPLE.get(axes, f'a tuple of {axes}')} of ints"
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be {what}, got {value!r}")
    if isinstance(value, (int, np.integer)):
        value = (int(value),) * axes
    if (not isinstance(value, (tuple, list)) or len(value) != axes
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                       for v in value)):
        raise TypeError(f"{op}: {name} must be {what}, got {value!r}")
    if min(value) < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum} in each dimension, got {tuple(value)}")
    _representable(op, name, value)
    return tuple(int(v) for v in value)


def axis_names(axes: int) -> str:
    """The letters of the spatial axes, as the layouts name them: W, HW, DHW."""
    return "DHW"[3 - axes:]


def is_real(value) -> bool:
    """A Python or NumPy real scalar, not a bool (True would pass for 1) nor an array."""
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))


def finite_real(value, name: str, op: str) -> float:
    """`value` as a float: a real scalar that is not NaN or infinite, else TypeError/ValueError."""
    if not is_real(value):
        raise TypeError(f"{op}: {name} must be a Python float, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{op}: {name} must be finite, got {value}")
    return float(value)


def out_size(size: int, window: int, stride: int, dilation: int, lo: int, hi: int) -> int:
    """Output length of a window sliding over `size` padded by (lo, hi):
    floor((size + lo + hi - dilation*(window-1) - 1) / stride) + 1."""
    return (size + lo + hi - dilation * (window - 1) - 1) // stride + 1


def padding_pairs(padding: PaddingLike, op: str, *, in_hw: tuple, window: tuple,
                  stride: tuple, dilation: tuple = (1, 1), strings: bool = True) -> tuple:
    """Resolve `padding` to one (lo, hi) pair per spatial axis, ((top, bottom), (left, right))
    in 2-D; the number of axes is len(in_hw).

    Accepts an int, one symmetric int per axis ((ph, pw) in 2-D), a (lo, hi) pair per axis,
    and (when `strings`) "VALID" or "SAME". "SAME" gives an output of ceil(in / stride), the
    odd extra pad at the end (bottom/right), as XLA does.
    """
    axes = len(in_hw)
    if isinstance(padding, str):
        if not strings:
            raise TypeError(f"{op}: padding takes ints and pairs here, got the string {padding!r}")
        mode = padding.upper()
        if mode == "VALID":
            return ((0, 0),) * axes
        if mode != "SAME":
            raise ValueError(f"{op}: padding string must be 'VALID' or 'SAME', got {padding!r}")
        pads = []
        for size, k, s, d in zip(in_hw, window, stride, dilation):
            out = -(-size // s)
            total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
        padding = (int(padding),) * axes
    if isinstance(padding, (tuple, list)) and len(padding) == axes:
        if all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in padding):
            pads = tuple((int(p),) * 2 for p in padding)
        elif all(isinstance(p, (tuple, list)) and len(p) == 2
                 and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in p)
                 for p in padding):
            pads = tuple((int(p[0]), int(p[1])) for p in padding)
        else:
            pads = None
        if pads is not None:
            if min(min(p) for p in pads) < 0:
                raise ValueError(f"{op}: padding must be >= 0, got {pads}")
            _representable(op, "padding", [v for p in pads for v in p])
            return pads
    if axes == 2:
        forms = "a pair (ph, pw), a pair of pairs ((top, bottom), (left, right))"
    else:
        forms = (f"{_TUPLE.get(axes, f'a tuple of {axes}')} of ints (one per axis "
                 f"{axis_names(axes)}), {_TUPLE.get(axes, f'a tuple of {axes}')} of (lo, hi) "
                 f"pairs")
    raise TypeError(f"{op}: padding must be an int, {forms} or 'SAME'/'VALID', got {padding!r}")


PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def padding_mode_check(mode, op: str, in_sizes: tuple, pads: tuple) -> str:
    """One of `PADDING_MODES`, with PyTorch's limits: a reflection repeats no edge, so each of
    its pads must be smaller than the input on that axis; a circular pad wraps at most once."""
    if not isinstance(mode, str):
        raise TypeError(f"{op}: padding_mode must be a string, one of {PADDING_MODES}, "
                        f"got {mode!r}")
    if mode not in PADDING_MODES:
        raise ValueError(f"{op}: padding_mode must be one of {PADDING_MODES}, got {mode!r}")
    for axis, size, (lo, hi) in zip(axis_names(len(in_sizes)), in_sizes, pads):
        if mode == "reflect" and max(lo, hi) >= size:
            raise ValueError(f"{op}: padding_mode='reflect' needs each padding smaller than the "
                             f"input, got padding {(lo, hi)} in {axis} of size {size}")
        if mode == "circular" and max(lo, hi) > size:
            raise ValueError(f"{op}: padding_mode='circular' needs each padding at most the "
                             f"input's size, got padding {(lo, hi)} in {axis} of size {size}")
    return mode


def check_float(op: str, **arrays) -> None:
    """Every named array is a floating array (float16/bfloat16/float32/float64) of one dtype."""
    dtypes = {}
    for name, a in arrays.items():
        if a is None:
            continue
        check_array(op, name, a)
        dtype = jnp.result_type(a)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"{op}: {name} must be a floating array (float16, bfloat16, float32 "
                            f"or float64), got dtype {dtype}")
        dtypes[name] = dtype
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{n} {d}" for n, d in dtypes.items())
        raise TypeError(f"{op}: arrays must share one dtype, got {listed}")


def check_array(op: str, name: str, a) -> None:
    """An array or scalar, not a list or tuple: jnp refuses those too, with a message that
    prints them whole."""
    if isinstance(a, (list, tuple)):
        raise TypeError(f"{op}: {name} must be an array, got a {type(a).__name__}; "
                        f"convert it with jnp.asarray")


def check_rank(op: str, name: str, a, rank: int, layout: str) -> None:
    check_array(op, name, a)
    if np.ndim(a) != rank:
        raise ValueError(f"{op}: {name} must have rank {rank} ({layout}), "
                         f"got shape {tuple(np.shape(a))}")


def check_window_fits(op: str, in_hw: tuple, pads: tuple, window: tuple,
                      dilation: tuple, what: str = "window") -> None:
    """The (dilated) window fits in the padded input, so the output is not empty, and the
    padded input and the window's span are sizes XLA represents (any number of axes)."""
    for axis, size, (lo, hi), k, d in zip(axis_names(len(in_hw)), in_hw, pads, window,
                                          dilation):
        if k < 1:
            raise ValueError(f"{op}: the {what} is empty in {axis} (size {k}); every axis "
                             f"needs at least one tap")
        span = d * (k - 1) + 1
        _representable(op, f"the padded input and the {what}'s span in {axis}",
                       (size + lo + hi, span))
        if span > size + lo + hi:
            raise ValueError(f"{op}: the {what} spans {span} in {axis} (size {k}, dilation {d}) "
                             f"but the padded input has only {size + lo + hi} "
                             f"(input {in_hw}, padding {pads}): the output would be empty")


class ConvConfig(NamedTuple):
    """One entry per spatial axis (two in 2-D: (sh, sw), ((top, bottom), (left, right)), ...)."""
    stride: tuple
    pads: tuple  # a (lo, hi) pair per axis
    dilation: tuple
    groups: int


class ConvTransposeConfig(NamedTuple):
    stride: tuple
    pads: tuple  # the padding of the conv this one is the adjoint of
    dilation: tuple
    groups: int
    output_padding: tuple


class PoolConfig(NamedTuple):
    window: IntPair
    stride: IntPair
    pads: Pads  # what the windows read: ceil_mode's extra bottom/right padding included
    dilation: IntPair = (1, 1)
    ceil_extra: IntPair = (0, 0)  # ceil_mode's padding past the given bottom / right padding


def _groups(op: str, groups) -> int:
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)):
        raise TypeError(f"{op}: groups must be an int, got {groups!r}")
    if groups < 1:
        raise ValueError(f"{op}: groups must be >= 1, got {groups}")
    return int(groups)


def _bias(op: str, b, channels: int) -> None:
    if b is not None and tuple(np.shape(b)) != (channels,):
        raise ValueError(f"{op}: b must have shape ({channels},) (one per output channel), "
                         f"got {tuple(np.shape(b))}")


def _conv_operands(op: str, x, w, b, w_layout: str, groups, axes: int) -> int:
    """Ranks and dtypes of a conv's x (N, *spatial, C), w and b; returns `groups` checked."""
    check_rank(op, "x", x, axes + 2, f"N{axis_names(axes)}C")
    check_rank(op, "w", w, axes + 2, w_layout)
    check_float(op, x=x, w=w, b=b)
    return _groups(op, groups)


def conv2d_config(x, w, b, stride, padding: PaddingLike, dilation, groups,
                  op: str = "conv2d", axes: int = 2, padding_mode: str = "zeros") -> ConvConfig:
    """The config of a convolution over `axes` spatial axes (conv1d, conv2d, conv3d), x
    `(N, *spatial, C)`, w `(*kernel, C // groups, O)`; `padding_mode` checked against it."""
    groups = _conv_operands(op, x, w, b, f"{axis_names(axes)}IO", groups, axes)
    sizes, c, kernel, (ci, co) = np.shape(x)[1:-1], np.shape(x)[-1], np.shape(w)[:-2], \
        np.shape(w)[-2:]
    if c % groups:
        raise ValueError(f"{op}: groups={groups} must divide x's {c} channels "
                         f"(x shape {np.shape(x)})")
    if co % groups:
        raise ValueError(f"{op}: groups={groups} must divide w's {co} output channels "
                         f"(w shape {np.shape(w)})")
    if ci * groups != c:
        raise ValueError(f"{op}: x has {c} channels but w expects {ci * groups} "
                         f"(w.shape[{axes}] * groups = {ci} * {groups}); "
                         f"x {np.shape(x)}, w {np.shape(w)}")
    _bias(op, b, co)
    stride = per_axis(stride, "stride", op, axes)
    dilation = per_axis(dilation, "dilation", op, axes)
    pads = padding_pairs(padding, op, in_hw=sizes, window=kernel, stride=stride,
                         dilation=dilation)
    padding_mode_check(padding_mode, op, sizes, pads)
    check_window_fits(op, sizes, pads, kernel, dilation, "kernel")
    return ConvConfig(stride, pads, dilation, groups)


def conv_transpose2d_config(x, w, b, stride, padding, output_padding, dilation, groups,
                            op: str = "conv_transpose2d", axes: int = 2,
                            padding_mode: str = "zeros") -> ConvTransposeConfig:
    """The config of a transposed convolution over `axes` spatial axes, w the kernel of the
    forward conv, `(*kernel, out_channels // groups, in_channels)`. Its padding crops the
    output, so only "zeros" is a `padding_mode` here (as in PyTorch's ConvTranspose)."""
    if not isinstance(padding_mode, str) or padding_mode != "zeros":
        raise ValueError(f"{op}: padding_mode must be 'zeros' (the padding of a transposed "
                         f"convolution crops its output; nothing fills it), got {padding_mode!r}")
    groups = _conv_operands(op, x, w, b, f"{axis_names(axes)}IO of the forward conv: "
                            f"(*kernel, out_channels // groups, in_channels)", groups, axes)
    sizes, c, kernel, (co_g, ci) = np.shape(x)[1:-1], np.shape(x)[-1], np.shape(w)[:-2], \
        np.shape(w)[-2:]
    if ci != c:
        raise ValueError(f"{op}: x has {c} channels but w.shape[{axes + 1}] is {ci}; w is the "
                         f"{axis_names(axes)}IO kernel (*kernel, out_channels // groups, "
                         f"in_channels); x {np.shape(x)}, w {np.shape(w)}")
    if c % groups:
        raise ValueError(f"{op}: groups={groups} must divide x's {c} channels "
                         f"(x shape {np.shape(x)})")
    _bias(op, b, co_g * groups)
    stride = per_axis(stride, "stride", op, axes)
    dilation = per_axis(dilation, "dilation", op, axes)
    pads = padding_pairs(padding, op, in_hw=sizes, window=kernel, stride=stride,
                         dilation=dilation, strings=False)
    output_padding = per_axis(output_padding, "output_padding", op, axes, minimum=0)
    names = axis_names(axes)
    for axis, p, s, d in zip(names, output_padding, stride, dilation):
        if p >= max(s, d):
            raise ValueError(f"{op}: output_padding must be smaller than the stride or the "
                             f"dilation, got {p} in {axis} with stride {s}, dilation {d}")
    for axis, size, k, s, d, (lo, hi), p in zip(names, sizes, kernel, stride, dilation, pads,
                                               output_padding):
        if (size - 1) * s - lo - hi + d * (k - 1) + p + 1 < 1:
            raise ValueError(f"{op}: the output would be empty in {axis}: "
                             f"(H-1)*stride - top - bottom"
                             f" + dilation*(kh-1) + output_padding + 1 < 1 for input {size}, "
                             f"kernel {k}, stride {s}, padding {(lo, hi)}, dilation {d}")
    return ConvTransposeConfig(stride, pads, dilation, groups, output_padding)


def conv_transpose_out_sizes(x_shape, w_shape, cfg: ConvTransposeConfig) -> tuple:
    """(H-1)*stride - top - bottom + dilation*(kh-1) + output_padding + 1, per spatial axis."""
    return tuple((size - 1) * s - lo - hi + d * (k - 1) + p + 1 for size, k, s, (lo, hi), d, p in
                 zip(x_shape[1:-1], w_shape[:-2], cfg.stride, cfg.pads, cfg.dilation,
                     cfg.output_padding))


def pool_config(x, window, stride, padding: PaddingLike, op: str, dilation=1,
                ceil_mode: bool = False) -> PoolConfig:
    check_rank(op, "x", x, 4, "NHWC")
    check_float(op, x=x)
    window = pair(window, "window", op)
    stride = window if stride is None else pair(stride, "stride", op)
    dilation = pair(dilation, "dilation", op)
    ceil_mode = flag_check(ceil_mode, "ceil_mode", op)
    h, wd = np.shape(x)[1:3]
    pads = padding_pairs(padding, op, in_hw=(h, wd), window=window, stride=stride,
                         dilation=dilation)
    check_window_fits(op, (h, wd), pads, window, dilation)
    extra = tuple(ceil_extra(n, k, s, d, lo, hi) if ceil_mode else 0 for n, k, s, d, (lo, hi)
                  in zip((h, wd), window, stride, dilation, pads))
    pads = tuple((lo, hi + e) for (lo, hi), e in zip(pads, extra))
    return PoolConfig(window, stride, pads, dilation, extra)


def ceil_extra(size: int, window: int, stride: int, dilation: int, lo: int, hi: int) -> int:
    """ceil_mode as PyTorch's `pooling_output_shape`: the output length rounds
    (size + lo + hi - span) / stride up, but a last window that would start in the bottom/right
    padding is dropped (one starting in the input or the top/left padding is kept). Returned:
    the padding to add at the bottom/right so that the floor formula over it gives that length."""
    span = dilation * (window - 1) + 1
    out = -(-(size + lo + hi - span) // stride) + 1
    if (out - 1) * stride >= size + lo:
        out -= 1
    return max((out - 1) * stride + span - (size + lo + hi), 0)


def pool_out_hw(x_shape, cfg: PoolConfig) -> IntPair:
    return tuple(out_size(n, k, s, d, lo, hi) for n, k, s, d, (lo, hi) in
                 zip(x_shape[1:3], cfg.window, cfg.stride, cfg.dilation, cfg.pads))


def avg_pool_counts(x_shape, cfg: PoolConfig, op: str = "avg_pool2d", *,
                    include_pad: bool = False) -> np.ndarray:
    """The divisor of each window, shape (OH, OW), as PyTorch counts it: the number of real
    (unpadded) input elements in it, or with `include_pad` its elements inside the padded input
    (the window's size, less what a ceil_mode window reaches past the given padding). A window
    made only of padding is an error when the padding is not counted."""
    counts = []
    for n, k, s, (lo, hi), extra, o in zip(x_shape[1:3], cfg.window, cfg.stride, cfg.pads,
                                           cfg.ceil_extra, pool_out_hw(x_shape, cfg)):
        start = np.arange(o) * s - lo
        first, end = (-lo, n + hi - extra) if include_pad else (0, n)
        counts.append(np.minimum(start + k, end) - np.maximum(start, first))
    table = np.outer(counts[0], counts[1])
    if table.min() <= 0:
        raise ValueError(f"{op}: with count_include_pad=False some windows hold only padding "
                         f"(input {tuple(x_shape)}, window {cfg.window}, padding {cfg.pads}); "
                         f"use less padding")
    return table


def adaptive_pool_check(x, output_size, op: str = "adaptive_avg_pool2d") -> IntPair:
    """output_size as (OH, OW), each between 1 and the input's size (a larger output would
    repeat input elements across bins: refused)."""
    check_rank(op, "x", x, 4, "NHWC")
    check_float(op, x=x)
    out = pair(output_size, "output_size", op)
    in_hw = tuple(np.shape(x)[1:3])
    if out[0] > in_hw[0] or out[1] > in_hw[1]:
        raise ValueError(f"{op}: output_size must be at most the input's (H, W) = {in_hw}, "
                         f"got {out}")
    return out


UPSAMPLE_MODES = ("nearest", "bilinear")


def upsample_check(x, scale, mode, op: str = "upsample2d") -> tuple[IntPair, str]:
    """scale as an int pair (sh, sw), each >= 1, and mode one of UPSAMPLE_MODES."""
    check_rank(op, "x", x, 4, "NHWC")
    check_float(op, x=x)
    scale = pair(scale, "scale", op)
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"{op}: mode must be one of {UPSAMPLE_MODES}, got {mode!r}")
    _representable(op, "the output's (H, W)",
                   [n * s for n, s in zip(np.shape(x)[1:3], scale)])
    return scale, mode


def dense_check(x, w, b, op: str = "dense") -> None:
    if np.ndim(x) < 1:
        raise ValueError(f"{op}: x must have at least one axis (..., in_features), got a scalar")
    check_rank(op, "w", w, 2, "(in_features, out_features)")
    check_float(op, x=x, w=w, b=b)
    if np.shape(x)[-1] != np.shape(w)[0]:
        raise ValueError(f"{op}: x has {np.shape(x)[-1]} features (x shape {np.shape(x)}) but w "
                         f"expects {np.shape(w)[0]} (w shape {np.shape(w)})")
    _bias(op, b, np.shape(w)[1])


def batch_norm_check(x, scale, bias, eps, op: str = "batch_norm", *, mean=None,
                     var=None) -> float:
    """Training mode, or evaluation mode with `mean` and `var` both given, checked as scale."""
    if np.ndim(x) < 2:
        raise ValueError(f"{op}: x must have rank >= 2 (batch, ..., channels), "
                         f"got shape {np.shape(x)}")
    if (mean is None) != (var is None):
        given, missing = ("mean", "var") if var is None else ("var", "mean")
        raise ValueError(f"{op}: {given} given without {missing}; evaluation mode needs both, "
                         f"training mode neither")
    eps = _affine_norm_check(x, scale, bias, eps, op, mean=mean, var=var)
    if mean is not None:
        return eps
    if eps == 0 and np.size(x) == np.shape(x)[-1]:  # var = 0 for sure: xhat = 0 / 0
        raise ValueError(f"{op}: eps = 0 needs more than one element per channel to divide by "
                         f"a nonzero variance; x shape {np.shape(x)} has one")
    return eps


def layer_norm_check(x, scale, bias, eps, op: str = "layer_norm") -> float:
    if np.ndim(x) < 1:
        raise ValueError(f"{op}: x must have a channel axis (..., C), got a scalar")
    eps = _affine_norm_check(x, scale, bias, eps, op)
    if eps == 0 and np.shape(x)[-1] == 1:  # var = 0 for sure: xhat = 0 / 0
        raise ValueError(f"{op}: eps = 0 needs more than one channel to divide by a nonzero "
                         f"variance; x shape {np.shape(x)} has one")
    return eps


def group_norm_check(x, groups, scale, bias, eps, op: str = "group_norm") -> tuple[float, int]:
    if np.ndim(x) < 2:
        raise ValueError(f"{op}: x must have rank >= 2 (batch, ..., channels), "
                         f"got shape {np.shape(x)}")
    groups = _groups(op, groups)
    c = np.shape(x)[-1]
    if c % groups:
        raise ValueError(f"{op}: groups={groups} must divide x's {c} channels "
                         f"(x shape {np.shape(x)})")
    eps = _affine_norm_check(x, scale, bias, eps, op)
    if eps == 0 and math.prod(np.shape(x)[1:-1]) * (c // groups) == 1:  # var = 0 for sure
        raise ValueError(f"{op}: eps = 0 needs more than one element per group to divide by "
                         f"a nonzero variance; x shape {np.shape(x)}, groups={groups}")
    return eps, groups


def _affine_norm_check(x, scale, bias, eps, op: str, **stats) -> float:
    """Float x, scale and bias (and the `stats` given) of x's last axis, and eps finite and
    >= 0."""
    check_float(op, x=x, scale=scale, bias=bias, **stats)
    c = np.shape(x)[-1]
    for name, a in (("scale", scale), ("bias", bias), *stats.items()):
        if a is None:
            continue
        if tuple(np.shape(a)) != (c,):
            raise ValueError(f"{op}: {name} must have shape ({c},) (x's last axis), got "
                             f"{tuple(np.shape(a))}; x shape {np.shape(x)}")
    eps = finite_real(eps, "eps", op)
    if eps < 0:
        raise ValueError(f"{op}: eps must be >= 0, got {eps}")
    return eps


def rate_check(rate, op: str = "dropout") -> float:
    if not is_real(rate):
        raise TypeError(f"{op}: rate must be a Python float in [0, 1), got {rate!r}")
    if not 0 <= rate < 1:
        raise ValueError(f"{op}: rate must be in [0, 1), got {rate}")
    return float(rate)


def dropout_check(x, rate, key, op: str = "dropout") -> float:
    check_float(op, x=x)
    rate = rate_check(rate, op)
    is_typed_key = jnp.issubdtype(jnp.result_type(key), jax.dtypes.prng_key)
    if is_typed_key and np.shape(key) != ():
        raise TypeError(f"{op}: key must be one PRNG key, got a batch of shape {np.shape(key)}; "
                        f"vmap over the keys instead")
    if not is_typed_key and (jnp.result_type(key) != jnp.uint32 or np.shape(key) != (2,)):
        raise TypeError(f"{op}: key must be a PRNG key from jax.random.key or jax.random.PRNGKey, "
                        f"got dtype {jnp.result_type(key)} shape {np.shape(key)}")
    return rate


def global_pool_check(x, op: str = "global_avg_pool2d") -> None:
    check_rank(op, "x", x, 4, "NHWC")
    if 0 in np.shape(x)[1:3]:
        raise ValueError(f"{op}: x has no pixels to average (H or W is 0), shape {np.shape(x)}")
    check_float(op, x=x)


def flag_check(value, name: str, op: str) -> bool:
    """A bool option: a string such as "False" would be truthy and silently mean True."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be True or False, got {value!r}")
    return bool(value)


def classes_check(x, op: str, name: str = "x") -> None:
    if np.ndim(x) < 1:
        raise ValueError(f"{op}: {name} must have a class axis (..., classes), got a scalar")
    if np.shape(x)[-1] == 0:
        raise ValueError(f"{op}: {name} has no classes: its last axis is empty, shape "
                         f"{np.shape(x)}")


def labels_check(logits, labels, op: str = "softmax_cross_entropy") -> None:
    classes_check(logits, op, "logits")
    check_float(op, logits=logits)
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise TypeError(f"{op}: labels must be integer class ids, "
                        f"got dtype {jnp.result_type(labels)}")
    if tuple(np.shape(labels)) != tuple(np.shape(logits)[:-1]):
        raise ValueError(f"{op}: labels must have shape logits.shape[:-1] = "
                         f"{tuple(np.shape(logits)[:-1])}, got {tuple(np.shape(labels))}")
    if not isinstance(labels, jax.core.Tracer) and np.size(labels):
        values = np.asarray(labels)  # numpy's min: jnp's would be staged under a jit trace
        lo, hi, classes = int(values.min()), int(values.max()), np.shape(logits)[-1]
        if lo < 0 or hi >= classes:
            raise ValueError(f"{op}: labels must lie in [0, {classes}) for {classes} classes, "
                             f"got values in [{lo}, {hi}]")



def smoothing_check(value, op: str = "softmax_cross_entropy") -> float:
    eps = finite_real(value, "label_smoothing", op)
    if not 0 <= eps <= 1:
        raise ValueError(f"{op}: label_smoothing must be in [0, 1], got {eps}")
    return eps


def flatten_check(x, op: str = "flatten") -> None:
    if np.ndim(x) < 1:
        raise ValueError(f"{op}: x must have a batch axis (N, ...), got a scalar")
