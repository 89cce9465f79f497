"""Normalising and validating the static arguments every op takes.

Each public op validates in Python, before tracing, and hands its `custom_vjp` only hashable
config: ints and tuples of ints. Every error names the op, the argument, what was expected and
what came, so a user can fix the call from the message alone.
"""
from __future__ import annotations

from typing import Union

import jax.numpy as jnp
import numpy as np

IntPair = tuple[int, int]
Pads = tuple[IntPair, IntPair]  # ((top, bottom), (left, right))
PaddingLike = Union[int, tuple, str]

FLOAT_DTYPES = (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64)


def pair(value, name: str, op: str, *, minimum: int = 1) -> IntPair:
    """`3` -> `(3, 3)`; `(2, 3)` stays; anything else, or an entry < `minimum`, raises."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, (int, np.integer)):
        value = (int(value), int(value))
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    if min(value) < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum} in each dimension, got {tuple(value)}")
    return int(value[0]), int(value[1])


def is_real(value) -> bool:
    """A Python or NumPy real scalar, not a bool (True would pass for 1) nor an array."""
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))


def out_size(size: int, window: int, stride: int, dilation: int, lo: int, hi: int) -> int:
    """Output length of a window sliding over `size` padded by (lo, hi):
    floor((size + lo + hi - dilation*(window-1) - 1) / stride) + 1."""
    return (size + lo + hi - dilation * (window - 1) - 1) // stride + 1


def padding_pairs(padding: PaddingLike, op: str, *, in_hw: IntPair, window: IntPair,
                  stride: IntPair, dilation: IntPair = (1, 1), strings: bool = True) -> Pads:
    """Resolve `padding` to ((top, bottom), (left, right)).

    Accepts an int, a symmetric pair (ph, pw), a pair of pairs, and (when `strings`) "VALID"
    or "SAME". "SAME" gives an output of ceil(in / stride), the odd extra pad at the
    bottom/right, as XLA does.
    """
    if isinstance(padding, str):
        if not strings:
            raise TypeError(f"{op}: padding takes ints and pairs here, got the string {padding!r}")
        mode = padding.upper()
        if mode == "VALID":
            return (0, 0), (0, 0)
        if mode != "SAME":
            raise ValueError(f"{op}: padding string must be 'VALID' or 'SAME', got {padding!r}")
        pads = []
        for size, k, s, d in zip(in_hw, window, stride, dilation):
            out = -(-size // s)
            total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        return pads[0], pads[1]
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
        padding = (int(padding), int(padding))
    if isinstance(padding, (tuple, list)) and len(padding) == 2:
        if all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in padding):
            pads = ((int(padding[0]),) * 2, (int(padding[1]),) * 2)
        elif all(isinstance(p, (tuple, list)) and len(p) == 2
                 and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in p)
                 for p in padding):
            pads = tuple((int(p[0]), int(p[1])) for p in padding)
        else:
            pads = None
        if pads is not None:
            if min(min(p) for p in pads) < 0:
                raise ValueError(f"{op}: padding must be >= 0, got {pads}")
            return pads[0], pads[1]
    raise TypeError(f"{op}: padding must be an int, a pair (ph, pw), a pair of pairs "
                    f"((top, bottom), (left, right)) or 'SAME'/'VALID', got {padding!r}")


def check_float(op: str, **arrays) -> None:
    """Every named array is a floating array (float16/bfloat16/float32/float64) of one dtype."""
    dtypes = {}
    for name, a in arrays.items():
        if a is None:
            continue
        dtype = jnp.result_type(a)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"{op}: {name} must be a floating array (float16, bfloat16, float32 "
                            f"or float64), got dtype {dtype}")
        dtypes[name] = dtype
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{n} {d}" for n, d in dtypes.items())
        raise TypeError(f"{op}: arrays must share one dtype, got {listed}")


def check_rank(op: str, name: str, a, rank: int, layout: str) -> None:
    if np.ndim(a) != rank:
        raise ValueError(f"{op}: {name} must have rank {rank} ({layout}), "
                         f"got shape {tuple(np.shape(a))}")


def check_window_fits(op: str, in_hw: IntPair, pads: Pads, window: IntPair,
                      dilation: IntPair, what: str = "window") -> None:
    """The (dilated) window fits in the padded input, so the output is not empty."""
    for axis, size, (lo, hi), k, d in zip("HW", in_hw, pads, window, dilation):
        span = d * (k - 1) + 1
        if span > size + lo + hi:
            raise ValueError(f"{op}: the {what} spans {span} in {axis} (size {k}, dilation {d}) "
                             f"but the padded input has only {size + lo + hi} "
                             f"(input {in_hw}, padding {pads}): the output would be empty")
