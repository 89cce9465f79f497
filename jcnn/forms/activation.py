"""The CPU form of relu and leaky_relu: the backward's mask packed eight to a byte.

The plain rule (`jcnn/activation.py`, `_leaky`) saves the mask `x <= 0` as one bool a byte.
XLA:CPU does not store a bool that only the backward reads: it fuses the compare into the
backward and keeps the float input alive for it instead (4 bytes an element). Packed with
`jnp.packbits` along the channel axis, the mask is a reduction's output, which XLA stores:
an eighth of a byte an element. `benchmarks/compile_memory.py` measures the stack it was
chosen on.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import jax
import jax.numpy as jnp

Array = jax.Array


def leaky(slope: float, x: Array, select: Callable) -> Optional[Callable]:
    """The CPU form of y = leaky_relu(x) for a static, non-empty x with a channel axis (packing
    reshapes every axis); `select(slope, mask, v)` is the plain rule's map, v times slope where
    the mask holds."""
    known = x.ndim >= 1 and all(isinstance(d, int) and d > 0 for d in x.shape)
    return partial(_packed, slope, select) if known else None


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _packed(slope: float, select: Callable, x: Array) -> Array:
    return select(slope, x <= 0, x)


def _packed_fwd(slope, select, x):
    # y through the rule itself, so that second order differentiates it by this rule
    return _packed(slope, select, x), jnp.packbits(x <= 0, axis=-1)


def _packed_bwd(slope, select, bits, g):
    nonpositive = jnp.unpackbits(bits, axis=-1, count=g.shape[-1]).astype(bool)
    return (select(slope, nonpositive, g),)


_packed.defvjp(_packed_fwd, _packed_bwd)
