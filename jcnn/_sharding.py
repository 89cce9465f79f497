"""Operands made alike for `shard_map`'s type check.

Inside `jax.shard_map` (with its default `check_vma=True`) every value carries the set of mesh
axes it varies over, and a `custom_vjp` must return cotangents of the very types of its inputs.
A replicated w meeting a batch-sharded x is varying in the product, so its hand-derived dw
is varying too, which the check refuses. JAX's own rules insert `pcast(w, to="varying")` where
the two meet, whose transpose is the `psum` over the batch shards; `alike` does the same in
each op's wrapper, before its rule: every operand varying over the union of their axes.
Outside shard_map it returns the operands as they are.
"""
from __future__ import annotations

from typing import Optional

import jax
from jax import lax


def _varying(a) -> frozenset:
    aval = jax.typeof(a)
    mat = getattr(aval, "mat", None)  # the manual axis type (jax 0.10); older jax: .vma
    return frozenset(mat.varying if mat is not None else getattr(aval, "vma", ()))


def alike(*arrays: Optional[jax.Array]) -> tuple:
    """`arrays` (None entries kept) each made varying over every axis any of them varies over."""
    axes = frozenset().union(*(_varying(a) for a in arrays if a is not None))
    if not axes:
        return arrays
    return tuple(a if a is None or _varying(a) == axes
                 else lax.pcast(a, tuple(sorted(axes - _varying(a))), to="varying")
                 for a in arrays)
