"""The CPU form of batch norm's channel sums: both in one variadic reduction.

The plain rule (`jcnn/norm.py`, `_channel_sums`) is two sums, (sum G, sum G * xhat) per channel.
XLA:CPU hands each to a library reduce that needs its operands stored, so G * scale, xhat and
G * xhat were written out and read back; as one variadic reduction XLA:CPU emits one loop with
xhat's recomputation fused in. The loop sums blocks of 16 rows (gcd(rows, 16)) into partial
sums that a plain sum then adds up: XLA:CPU splits a loop by its outputs, so a loop straight
down all rows to C outputs strode through all of G per channel. `benchmarks/bn_forms.py`
measures both.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

from jcnn.forms import static_batch

Array = jax.Array


def channel_sums(g: Array) -> Optional[Callable]:
    """The CPU form of (sum G, sum G * xhat) for G's shape: a static batch only (the blocks
    divide the row count)."""
    return _one_pass if static_batch(g) else None


def _one_pass(g: Array, xhat: Array) -> tuple[Array, Array]:
    acc = jnp.promote_types(g.dtype, jnp.float32)
    g32, x32 = g.astype(acc), xhat.astype(acc)
    c = g.shape[-1]
    rows = math.gcd(g.size // c, 16)
    zero = jnp.zeros((), acc)
    blocks = lax.reduce((g32.reshape(-1, rows, c), (g32 * x32).reshape(-1, rows, c)),
                        (zero, zero), lambda a, b: (a[0] + b[0], a[1] + b[1]), (1,))
    return tuple(jnp.sum(b, axis=0) for b in blocks)
