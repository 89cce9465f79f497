"""Backend forms: faster ways, on one platform, to compute the maps the op modules define.

`jcnn/conv.py`, `pool.py` and `norm.py` hold each op's plain rule, the code a learner reads and
the one every platform but those named here runs. A form computes the same map (the same
values, the same NaN and inf, the same shapes, symbolic batch included) in another way that
measured faster on one platform; each sits in this package beside its predicate (for which
shapes it applies) and a one-line reason. The measurements that chose them are in
`benchmarks/RESULTS.md`, made by the scripts in `benchmarks/`.

`by_platform` below is the one place a form is chosen. It does not read the backend while
tracing: both the plain rule and the form are traced, and `lax.platform_dependent` lets the
lowering keep the branch of the platform it lowers for, so an export for `("cuda",)` made on a
CPU host carries no CPU form, and a jit placed on another device gets that device's forms.

`JCNN_FORMS=plain` in the environment (read once, at import) pins the plain rules everywhere:
for learners, tests and A/B benchmarks. It is an environment variable, not a function to call,
because jit caches a traced function by its arguments alone: a switch flipped between two calls
would be ignored by the second.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import jax
from jax import lax

PINNED_PLAIN = os.environ.get("JCNN_FORMS", "") == "plain"


def by_platform(plain: Callable, cpu: Optional[Callable], *args):
    """`plain(*args)`, or `cpu(*args)` where the computation is lowered for CPU. `cpu` is what a
    form's predicate returned for these shapes: None where no CPU form applies."""
    if cpu is None or PINNED_PLAIN:
        return plain(*args)
    return lax.platform_dependent(*args, cpu=cpu, default=plain)


def static_batch(x: jax.Array) -> bool:
    """The batch size is a Python int, not a symbolic dimension (`jax.export`): the forms that
    split the batch into slices apply only then; the plain rules take any batch."""
    return isinstance(x.shape[0], int)
