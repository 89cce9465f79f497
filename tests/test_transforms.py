"""The transformation matrix: every public op x every JAX transformation x float32/float64,
each against the same transformation of its `jcnn.reference` twin (JAX's autodiff).

A case is one op with its configuration and tiny argument shapes ("n" marks the batch axis);
a transformation is a function `(case, dtype, rng) -> None` that builds the transformed jcnn
and reference functions, runs both and compares. Test ids read `op-transformation-dtype`.
Each runs under `jax.jit` (on these tiny shapes one compile is faster than eager dispatch of
each primitive; the op test files run the eager paths). The wrappers whose arithmetic is the
ops' own (checkpoint, scan, jcnn.jvp, jcnn.hessian) run in float64 alone.

Gradients are of `L(*args, ct) = <op(*args), ct>`, the output cotangent ct being an argument
too: grad of grad jointly in (args, ct) is where a forward rule's own derivative shows (the
derivative of `dct = op(x)` w.r.t. x is the op's forward differentiated by JAX, not its rule).
Grad of grad also runs on kinked inputs: exact zeros for relu / leaky_relu, tied maxima for
max_pool2d (post-ReLU zeros, values on a grid of 1).

shard_map needs 4 CPU devices, which XLA fixes at start-up: all its cases run in one
subprocess (the `shard_results` fixture, once per module) and each test reads its case's verdict.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import time
import zlib
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jcnn
from jcnn import models, reference

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"float32": np.float32, "float64": np.float64}
TOL = {np.float32: (1e-4, 1e-5), np.float64: (1e-9, 1e-11)}  # rtol, atol (x max(1, |want|))
LABELS = "labels"  # an integer argument: class ids in [0, 5)


class Case(NamedTuple):
    op: Callable  # ops module (jcnn or jcnn.reference) -> the function under test
    shapes: tuple  # one per positional argument; "n" is the batch axis, LABELS an int vector
    kinked: Optional[Callable] = None  # (rng, shape) -> values with kinks, for float args
    sharded: Optional[tuple] = None  # per-arg PartitionSpec axes for a sharded-params layout


def _relu_kinks(rng, shape):  # integers: many exact zeros
    return np.round(rng.standard_normal(shape) * 1.5)


def _pool_ties(rng, shape):  # post-ReLU zeros and values on a grid of 1: tied maxima
    return np.maximum(np.round(rng.standard_normal(shape)), 0)


def _dropout(m):
    # a fixed key; rbg: its generator compiles in a tenth of threefry's time
    return lambda x: m.dropout(x, 0.5, jax.random.key(7, impl="rbg"))


CASES = {
    "conv2d": Case(lambda m: lambda x, w, b: m.conv2d(x, w, b, padding=1),
                   (("n", 4, 4, 2), (3, 3, 2, 4), (4,)),
                   sharded=((), (None, None, None, "d"), ("d",))),
    "conv2d_1ch": Case(lambda m: lambda x, w: m.conv2d(x, w, stride=2, padding=1),
                       (("n", 5, 5, 1), (3, 3, 1, 4)),
                       sharded=((), (None, None, None, "d"))),
    "conv_transpose2d": Case(lambda m: lambda x, w: m.conv_transpose2d(
        x, w, stride=2, padding=1, output_padding=1), (("n", 3, 3, 3), (3, 3, 4, 3)),
        sharded=((), (None, None, "d", None))),
    "conv1d_reflect": Case(lambda m: lambda x, w, b: m.conv1d(x, w, b, padding=2,
                                                              padding_mode="reflect"),
                           (("n", 4, 2), (3, 2, 4), (4,)), sharded=((), (None, None, "d"), ("d",))),
    "conv3d_circular": Case(lambda m: lambda x, w: m.conv3d(x, w, stride=(1, 2, 1), padding=1,
                                                            padding_mode="circular"),
                            (("n", 2, 3, 3, 2), (2, 2, 2, 2, 4)),
                            sharded=((), (None, None, None, None, "d"))),
    "conv_transpose1d": Case(lambda m: lambda x, w: m.conv_transpose1d(
        x, w, stride=2, padding=1, output_padding=1), (("n", 3, 3), (3, 4, 3)),
        sharded=((), (None, "d", None))),
    "conv_transpose3d": Case(lambda m: lambda x, w: m.conv_transpose3d(
        x, w, stride=(2, 1, 1), padding=(1, 0, 1)), (("n", 2, 2, 3, 2), (3, 2, 2, 4, 2)),
        sharded=((), (None, None, None, "d", None))),
    "dense": Case(lambda m: m.dense, (("n", 3), (3, 4), (4,)),
                  sharded=((), (None, "d"), ("d",))),
    "flatten": Case(lambda m: m.flatten, (("n", 2, 2, 2),)),
    "relu": Case(lambda m: m.relu, (("n", 2, 3, 2),), kinked=_relu_kinks),
    "leaky_relu": Case(lambda m: lambda x: m.leaky_relu(x, 0.1), (("n", 2, 3, 2),),
                       kinked=_relu_kinks),
    "sigmoid": Case(lambda m: m.sigmoid, (("n", 2, 3, 2),)),
    "tanh": Case(lambda m: m.tanh, (("n", 2, 3, 2),)),
    "gelu_tanh": Case(lambda m: lambda x: m.gelu(x, approximate=True), (("n", 2, 3, 2),)),
    "gelu_erf": Case(lambda m: lambda x: m.gelu(x, approximate=False), (("n", 2, 3, 2),)),
    "silu": Case(lambda m: m.silu, (("n", 2, 3, 2),)),
    "elu": Case(lambda m: lambda x: m.elu(x, 0.3), (("n", 2, 3, 2),), kinked=_relu_kinks),
    "softplus": Case(lambda m: m.softplus, (("n", 2, 3, 2),)),
    "max_pool2d_2x2": Case(lambda m: lambda x: m.max_pool2d(x, 2), (("n", 4, 4, 2),),
                           kinked=_pool_ties),
    "max_pool2d_3x3s2p1": Case(lambda m: lambda x: m.max_pool2d(x, 3, 2, 1), (("n", 5, 5, 2),),
                               kinked=_pool_ties),
    "avg_pool2d": Case(lambda m: lambda x: m.avg_pool2d(x, 3, 2, 1), (("n", 5, 5, 2),)),
    "global_avg_pool2d": Case(lambda m: m.global_avg_pool2d, (("n", 3, 3, 2),)),
    "max_pool2d_dil2_ceil": Case(lambda m: lambda x: m.max_pool2d(x, 2, 2, 0, 2, True),
                                 (("n", 6, 5, 2),), kinked=_pool_ties),
    "adaptive_avg_pool2d": Case(lambda m: lambda x: m.adaptive_avg_pool2d(x, (2, 3)),
                                (("n", 5, 4, 2),)),
    "upsample2d_bilinear": Case(lambda m: lambda x: m.upsample2d(x, (2, 3), "bilinear"),
                                (("n", 2, 3, 2),)),
    "batch_norm": Case(lambda m: m.batch_norm, (("n", 2, 2, 4), (4,), (4,)),
                       sharded=((None, None, None, "d"), ("d",), ("d",))),
    "layer_norm": Case(lambda m: m.layer_norm, (("n", 2, 2, 4), (4,), (4,))),
    "group_norm": Case(lambda m: lambda x, s, b: m.group_norm(x, 2, s, b),
                       (("n", 2, 2, 4), (4,), (4,))),
    # evaluation mode: mean and var arguments; var = v^2 + 0.5 keeps the variance positive
    "batch_norm_eval": Case(lambda m: lambda x, s, b, mu, v: m.batch_norm(
        x, s, b, mean=mu, var=v * v + 0.5), (("n", 2, 2, 4), (4,), (4,), (4,), (4,)),
        kinked=_relu_kinks),
    "dropout": Case(_dropout, (("n", 3, 4),)),
    "log_softmax": Case(lambda m: m.log_softmax, (("n", 5),)),
    "softmax_cross_entropy": Case(lambda m: m.softmax_cross_entropy, (("n", 5), LABELS)),
}


# ---------------------------------------------------------------------------------- helpers

def _shape(spec, n):
    return (n,) if spec == LABELS else tuple(n if d == "n" else d for d in spec)


def _is_float_arg(spec) -> bool:
    return spec != LABELS


def make_args(case: Case, dtype, rng, n: int = 2, kinked: bool = False) -> tuple:
    """Positional arguments for the case, batch size n; kinked: through case.kinked."""
    out = []
    for spec in case.shapes:
        shape = _shape(spec, n)
        if spec == LABELS:
            out.append(jnp.asarray(rng.integers(0, 5, shape), jnp.int32))
        elif kinked and case.kinked is not None and spec[0] == "n":
            out.append(jnp.asarray(case.kinked(rng, shape), dtype))
        else:
            out.append(jnp.asarray(rng.standard_normal(shape), dtype))
    return tuple(out)


def cotangent(case: Case, args, rng):
    out = jax.eval_shape(case.op(reference), *args)
    return jnp.asarray(rng.standard_normal(out.shape), out.dtype)


def float_argnums(case: Case) -> tuple[int, ...]:
    """The float arguments of L(*args, ct): the op's float args, and ct (last)."""
    return tuple(i for i, s in enumerate(case.shapes) if _is_float_arg(s)) + (len(case.shapes),)


def loss(case: Case, m):
    f = case.op(m)
    return lambda *a: jnp.vdot(f(*a[:-1]), a[-1])


def assert_close(got, want, dtype, what: str = "") -> None:
    """Same tree, shapes and dtypes; values within the dtype's tolerance, never exact."""
    rtol, atol = TOL[dtype]
    assert jax.tree.structure(got) == jax.tree.structure(want), what
    for k, (g, w) in enumerate(zip(jax.tree.leaves(got), jax.tree.leaves(want))):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape, f"{what} leaf {k}: shape {g.shape} != {w.shape}"
        assert g.dtype == w.dtype, f"{what} leaf {k}: dtype {g.dtype} != {w.dtype}"
        if w.dtype == jax.dtypes.float0 or w.size == 0:
            continue
        scale = max(1.0, float(np.max(np.abs(w)))) if np.all(np.isfinite(w)) else 1.0
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol * scale,
                                   err_msg=f"{what} leaf {k}")


def _random_like(tree, rng):
    return jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape), a.dtype), tree)


# ------------------------------------------------------------------------ transformations
# Each runs the same transformation on the jcnn op and on its reference twin and compares.

def t_jit(case, dtype, rng):
    args = make_args(case, dtype, rng)
    assert_close(jax.jit(case.op(jcnn))(*args), jax.jit(case.op(reference))(*args), dtype)


def _stacked(case, dtype, rng, k):
    """k independent argument sets, stacked on a new leading axis."""
    sets = [make_args(case, dtype, rng) for _ in range(k)]
    ct = jnp.stack([cotangent(case, s, rng) for s in sets])
    return tuple(jnp.stack(a) for a in zip(*sets)), ct


def t_vmap(case, dtype, rng):
    args, _ = _stacked(case, dtype, rng, 3)
    got, want = (jax.jit(jax.vmap(case.op(m)))(*args) for m in (jcnn, reference))
    assert_close(got, want, dtype)


def t_vmap_grad(case, dtype, rng):
    args, ct = _stacked(case, dtype, rng, 3)
    nums = float_argnums(case)
    got, want = (jax.jit(jax.vmap(jax.grad(loss(case, m), nums)))(*args, ct)
                 for m in (jcnn, reference))
    assert_close(got, want, dtype)


def t_grad(case, dtype, rng):
    args = make_args(case, dtype, rng)
    ct, nums = cotangent(case, args, rng), float_argnums(case)
    got, want = (jax.jit(jax.grad(loss(case, m), nums))(*args, ct) for m in (jcnn, reference))
    assert_close(got, want, dtype)


def _grad_of_grad(case, dtype, rng, kinked, joint):
    """d/d(all float args) of <dL/d(args), v>: the first gradient jointly in one vjp, or
    argument by argument (one vjp each, all in one jitted program), each then differentiated
    again w.r.t. every float argument."""
    args = make_args(case, dtype, rng, kinked=kinked)
    ct, nums = cotangent(case, args, rng), float_argnums(case)
    full = (*args, ct)
    v = {i: _random_like(full[i], rng) for i in nums}
    groups = [nums] if joint else [(i,) for i in nums]

    def outer(m):
        def one(group):
            def h(*a):
                grads = jax.grad(loss(case, m), group)(*a)
                return sum(jnp.vdot(g, v[i]) for g, i in zip(grads, group))
            return jax.grad(h, nums)
        return jax.jit(lambda *a: {str(g): one(g)(*a) for g in groups})
    got, want = outer(jcnn)(*full), outer(reference)(*full)
    for g in want:
        assert_close(got[g], want[g], dtype, f"d/d(args) <dL/d(args {g}), v>")


def t_gradgrad(case, dtype, rng):
    _grad_of_grad(case, dtype, rng, kinked=False, joint=False)


def t_gradgrad_joint(case, dtype, rng):
    _grad_of_grad(case, dtype, rng, kinked=False, joint=True)


def t_gradgrad_kinked(case, dtype, rng):
    _grad_of_grad(case, dtype, rng, kinked=True, joint=False)


def t_gradgrad_joint_kinked(case, dtype, rng):
    _grad_of_grad(case, dtype, rng, kinked=True, joint=True)


def t_checkpoint(case, dtype, rng):
    args = make_args(case, dtype, rng)
    ct, nums = cotangent(case, args, rng), float_argnums(case)
    got, want = (jax.jit(jax.grad(jax.checkpoint(loss(case, m)), nums))(*args, ct)
                 for m in (jcnn, reference))
    assert_close(got, want, dtype)


def t_scan(case, dtype, rng):
    """L summed over a lax.scan across 3 argument sets: value and gradient."""
    args, ct = _stacked(case, dtype, rng, 3)
    nums = float_argnums(case)

    def total(m):
        def run(*stacked):
            def body(c, a):
                value = loss(case, m)(*a)
                return c + value, value
            return jax.lax.scan(body, jnp.zeros((), dtype), stacked)[0]
        return jax.jit(jax.value_and_grad(run, nums))
    assert_close(total(jcnn)(*args, ct), total(reference)(*args, ct), dtype)


def _value_and_grads(case, m):
    """(op(*args), dL/d(float args)): what the export tests carry across."""
    def f(*a):
        return case.op(m)(*a[:-1]), jax.grad(loss(case, m), float_argnums(case))(*a)
    return f


def t_export(case, dtype, rng):
    """jax.export at static shapes, then called."""
    args = make_args(case, dtype, rng)
    full = (*args, cotangent(case, args, rng))
    avals = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in full]
    exported = jax.export.export(jax.jit(_value_and_grads(case, jcnn)))(*avals)
    assert_close(exported.call(*full), jax.jit(_value_and_grads(case, reference))(*full), dtype)


def t_export_symbolic(case, dtype, rng, sizes=(2, 3)):
    """jax.export with a symbolic batch ("b, ..."), called at batch sizes 2 and 3 (3 alone by
    default: the models' export test calls theirs at two sizes)."""
    args = make_args(case, dtype, rng)
    full = (*args, cotangent(case, args, rng))
    specs = (*case.shapes, ("n", *full[-1].shape[1:]) if full[-1].ndim else ())
    scope = jax.export.SymbolicScope()
    avals = [jax.ShapeDtypeStruct(jax.export.symbolic_shape("b, ...", like=a.shape, scope=scope)
                                  if s == LABELS or (s and s[0] == "n") else a.shape, a.dtype)
             for a, s in zip(full, specs)]
    exported = jax.export.export(jax.jit(_value_and_grads(case, jcnn)))(*avals)
    for n in sizes:
        args = make_args(case, dtype, rng, n=n)
        full = (*args, cotangent(case, args, rng))
        assert_close(exported.call(*full), jax.jit(_value_and_grads(case, reference))(*full),
                     dtype, f"batch {n}")


def t_eval_shape(case, dtype, rng):
    args = make_args(case, dtype, rng)
    full = (*args, cotangent(case, args, rng))
    got, want = (jax.eval_shape(_value_and_grads(case, m), *full) for m in (jcnn, reference))
    as_pairs = lambda t: [(s.shape, s.dtype) for s in jax.tree.leaves(t)]  # noqa: E731
    assert jax.tree.structure(got) == jax.tree.structure(want)
    ran = jax.jit(_value_and_grads(case, reference))(*full)
    assert as_pairs(got) == as_pairs(want) == as_pairs(ran)


def t_jvp(case, dtype, rng):
    args = make_args(case, dtype, rng)
    tangents = tuple(np.zeros(a.shape, jax.dtypes.float0) if s == LABELS else
                     jnp.asarray(rng.standard_normal(a.shape), dtype)
                     for a, s in zip(args, case.shapes))
    got = jax.jit(lambda p, t: jcnn.jvp(case.op(jcnn), p, t))(args, tangents)
    assert_close(got, jax.jvp(case.op(reference), args, tangents), dtype)


def t_hessian(case, dtype, rng):
    """Hessian w.r.t. the op's float arguments of sum(sin(L)) at a fixed ct (the sin puts
    curvature into every op; <op, ct> alone is linear in most)."""
    args = make_args(case, dtype, rng)
    ct, nums = cotangent(case, args, rng), float_argnums(case)[:-1]
    curved = lambda m: lambda *a: jnp.sin(loss(case, m)(*a, ct))  # noqa: E731
    assert_close(jax.jit(jcnn.hessian(curved(jcnn), nums))(*args),
                 jax.jit(jax.hessian(curved(reference), nums))(*args), dtype)


TRANSFORMS = {
    "jit": t_jit,
    "vmap": t_vmap,
    "vmap_grad": t_vmap_grad,
    "grad": t_grad,
    "gradgrad_per_arg": t_gradgrad,
    "gradgrad_joint": t_gradgrad_joint,
    "gradgrad_per_arg_kinked": t_gradgrad_kinked,
    "gradgrad_joint_kinked": t_gradgrad_joint_kinked,
    "checkpoint": t_checkpoint,
    "scan": t_scan,
    "export": t_export,
    "export_symbolic": t_export_symbolic,
    "eval_shape": t_eval_shape,
    "jvp": t_jvp,
    "hessian": t_hessian,
}


FLOAT64_ONLY = {"checkpoint", "scan", "hessian", "jvp"}


def _meaningful(name: str, case: Case, transform: str, dtype: str) -> bool:
    if transform in FLOAT64_ONLY and dtype != "float64":
        return False
    if transform.endswith("_kinked"):
        return case.kinked is not None
    return True


# The default run (under 10 minutes on 2 cores) leaves to --runslow what the rest of it covers:
# the float32 column but for the symbolic export (where the CPU forms meet a symbolic batch),
# whose float64 run is left instead (the forms and the rules are the same code in both dtypes,
# and float64's tolerances are the tighter); and, for a second configuration of an op
# that another case has (VARIANTS), all but its derivatives, kinks and symbolic export.
VARIANTS = {"conv2d_1ch", "gelu_erf", "max_pool2d_3x3s2p1", "max_pool2d_dil2_ceil",
            "batch_norm_eval"}
VARIANT_DEFAULT = {"grad", "gradgrad_joint", "gradgrad_per_arg_kinked", "gradgrad_joint_kinked",
                   "export_symbolic"}


# jit and grad alone: the static export's check holds both (the jitted op's values and its
# gradient, exported and called), so they run with --runslow wherever the export runs.
IN_EXPORT = {"jit", "grad"}
# Every op takes the derivative columns (where an op's own rule can be wrong) by default; the
# rest, the transformations of the custom_vjp plumbing every op shares, one op of each family
# (a convolution, its transpose, dense, relu, each pooling, resizing, the norms, dropout, the
# loss) by default and every op with --runslow: conv1d/3d are conv2d's rule over other axes.
EVERY_OP = {"vmap_grad", "gradgrad_joint", "gradgrad_per_arg_kinked", "gradgrad_joint_kinked",
            "export_symbolic"}
FAMILIES = {"conv2d", "conv_transpose2d", "dense", "relu", "max_pool2d_2x2", "avg_pool2d",
            "upsample2d_bilinear", "batch_norm", "group_norm", "dropout",
            "softmax_cross_entropy"}


def _slow(op: str, transform: str, dtype: str) -> bool:
    return ((dtype == "float32") != (transform == "export_symbolic")
            or (op in VARIANTS and transform not in VARIANT_DEFAULT)
            or (op not in FAMILIES and op not in VARIANTS and transform not in EVERY_OP)
            or (transform in IN_EXPORT and not _slow(op, "export", dtype)))


MATRIX = [pytest.param(op, t, dt, id=f"{op}-{t}-{dt}",
                       marks=[pytest.mark.slow] if _slow(op, t, dt) else [])
          for op, case in CASES.items() for t in TRANSFORMS for dt in DTYPES
          if _meaningful(op, case, t, dt)]


@pytest.mark.parametrize("op, transform, dtype", MATRIX)
def test_matrix(op, transform, dtype, rng, pytestconfig):
    run = TRANSFORMS[transform]
    if transform == "export_symbolic" and not pytestconfig.getoption("--runslow"):
        run = partial(run, sizes=(3,))
    run(CASES[op], DTYPES[dtype], rng)


# ---------------------------------------------------------------------------- shard_map
# Batch sharded over 4 devices ("d"), params replicated (P()); and, for the ops with params,
# the params sharded over their output channels (or batch_norm's channels, x along them) with
# the other operands replicated. Inside jax.shard_map (check_vma=True): the value of L psum'd
# and its gradients, the replicated params' gradients coming out psum'd over the shards. Each
# against the reference run through the same shard_map.

SHARD_BATCH = 8  # 2 examples a device

SHARD_MATRIX = [(op, layout, dt) for op, case in CASES.items()
                for layout in ("batch",) + (("params",) if case.sharded else ()) for dt in DTYPES]
# float32 with --runslow, as in the matrix above: the same rules and plumbing as float64, whose
# tolerances are the tighter
SHARD_SLOW = {"float32"}


def shard_case(op: str, layout: str, dtype_name: str) -> None:
    """One shard_map case, run in the 4-device subprocess; raises on a mismatch."""
    from jax.sharding import Mesh, PartitionSpec as P
    case, dtype = CASES[op], DTYPES[dtype_name]
    mesh = Mesh(np.asarray(jax.devices()), ("d",))
    rng = np.random.default_rng(zlib.crc32(f"{op}-{layout}-{dtype_name}".encode()))
    args = make_args(case, dtype, rng, n=SHARD_BATCH)
    ct = cotangent(case, args, rng)
    full, nums = (*args, ct), float_argnums(case)
    if layout == "batch":  # every batched operand split, params (and a scalar ct) replicated
        specs = [P("d") if s == LABELS or s[0] == "n" else P() for s in case.shapes]
        specs.append(P("d") if ct.ndim else P())
    else:  # params split on their channels; x and ct as the op's output along them
        specs = [P(*axes) for axes in case.sharded]
        out_axes = tuple(case.sharded[0]) if case.sharded[0] else ()
        out_spec = P(*out_axes) if op == "batch_norm" else P(*((None,) * (ct.ndim - 1)), "d")
        specs.append(out_spec)

    def run(m):
        def body(*a):
            value, grads = jax.value_and_grad(loss(case, m), nums)(*a)
            return jax.lax.psum(value, "d"), grads
        return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=tuple(specs),
                                     out_specs=(P(), tuple(specs[i] for i in nums))))
    got = run(jcnn)(*full)
    assert_close(got, run(reference)(*full), dtype)
    if layout == "params" or op in ("batch_norm", "softmax_cross_entropy", "dropout"):
        return  # statistics, means and masks are per shard: no single-device twin
    assert_close(got, jax.jit(jax.value_and_grad(loss(case, reference), nums))(*full), dtype,
                 "against the unsharded reference")


SHARD_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import jax
jax.config.update("jax_numpy_rank_promotion", "raise")
import test_transforms as T
assert jax.device_count() == 4, jax.devices()
out = {}
for op, layout, dt in T.SHARD_MATRIX:
    if dt in T.SHARD_SLOW and sys.argv[2] != "--runslow":
        continue
    try:
        T.shard_case(op, layout, dt)
        out[f"{op}-{layout}-{dt}"] = "ok"
    except Exception as e:  # one line: the exception and the start of its message
        out[f"{op}-{layout}-{dt}"] = f"{type(e).__name__}: " + " ".join(str(e).split())[:300]
print(json.dumps(out))
"""


def _shared_dir(tmp_path_factory) -> Path:
    """A directory every xdist worker of this run sees (the base temp dir's parent)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="module", autouse=True)
def _shard_process(tmp_path_factory, pytestconfig):
    """The 4-device subprocess, started once per run by the first worker to get here, when the
    module's first test runs: it works beside the matrix, and the other workers read its
    verdicts from the shared directory instead of running it again."""
    shared = _shared_dir(tmp_path_factory)
    lock = open(shared / "shard_map.lock", "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        yield None
        return
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_ENABLE_X64": "1",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    runslow = "--runslow" if pytestconfig.getoption("--runslow") else ""
    proc = subprocess.Popen([sys.executable, "-c", SHARD_SCRIPT, str(Path(__file__).parent),
                             runslow],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=ROOT)
    yield proc
    _publish(proc, shared / "shard_map.json")  # for the other workers, if no test here read it
    lock.close()


def _publish(proc: subprocess.Popen, path: Path) -> None:
    """Wait for the subprocess and write its verdicts (or its error) to `path`, once."""
    if path.exists():
        return
    out, err = proc.communicate(timeout=600)
    text = out.splitlines()[-1] if proc.returncode == 0 and out else json.dumps(
        {"error": f"the shard_map subprocess failed: {err[-3000:]}"})
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


@pytest.fixture(scope="module")
def shard_results(_shard_process, tmp_path_factory):
    """{case id: "ok" or the error}, from this worker's subprocess or another worker's file."""
    path = _shared_dir(tmp_path_factory) / "shard_map.json"
    if _shard_process is not None:
        _publish(_shard_process, path)
    deadline = time.monotonic() + 600
    while not path.exists():
        assert time.monotonic() < deadline, "no shard_map verdicts after 600 s"
        time.sleep(0.5)
    results = json.loads(path.read_text())
    assert "error" not in results, results.get("error")
    return results


@pytest.mark.parametrize("op, layout, dtype", [
    pytest.param(*c, id=f"{c[0]}-shard_map_{c[1]}-{c[2]}",
                 marks=[pytest.mark.slow] if c[2] in SHARD_SLOW else []) for c in SHARD_MATRIX])
def test_shard_map(op, layout, dtype, shard_results):
    verdict = shard_results[f"{op}-{layout}-{dtype}"]
    assert verdict == "ok", verdict


# ------------------------------------------------------------- export for another platform

def _train_step(m):
    """One SGD step of a small CNN, returning the new params, the loss and the input's
    gradient (so that every convolution's input gradient is live). Its shapes hit every CPU
    form conv2d has: a 1-channel input (tap sum), a batch of 64 (the filter gradient in chunks),
    4 -> 6 channels (padded to 8), a 1x1 kernel (its filter gradient as a matmul) and
    8 -> 4 channels at 16x16 (by kernel rows)."""
    def loss_fn(params, x, labels):
        h = m.relu(m.conv2d(x, params["w1"], params["b1"], padding=2))
        h = m.relu(m.conv2d(h, params["w2"], padding=1))
        h = m.relu(m.conv2d(h, params["w3"]))
        h = m.relu(m.conv2d(h, params["w4"], padding=1))
        return m.softmax_cross_entropy(m.dense(m.global_avg_pool2d(h), params["wd"]), labels)

    def step(params, x, labels):
        value, (g, dx) = jax.value_and_grad(loss_fn, (0, 1))(params, x, labels)
        return jax.tree.map(lambda p, d: p - 0.1 * d, params, g), value, dx
    return step


_STEP_AVALS = ({"w1": (5, 5, 1, 4), "b1": (4,), "w2": (3, 3, 4, 6), "w3": (1, 1, 6, 8),
                "w4": (3, 3, 8, 4), "wd": (4, 3)}, (64, 16, 16, 1))


def _cuda_module(m, step=_train_step) -> str:
    params, x = _STEP_AVALS
    avals = (jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), params,
                          is_leaf=lambda s: isinstance(s, tuple)),
             jax.ShapeDtypeStruct(x, jnp.float32), jax.ShapeDtypeStruct((64,), jnp.int32))
    exported = jax.export.export(jax.jit(step(m)), platforms=("cuda",))(*avals)
    assert exported.platforms == ("cuda",)
    return exported.mlir_module()


def _count(text: str, op: str) -> int:
    return len(re.findall(rf"\b{re.escape(op)}\b", text))


def test_cuda_export_of_a_conv_train_step_has_no_cpu_form():
    """Made on this CPU host, the cuda module must hold the plain rules: per conv2d one
    convolution forward, one for the input gradient and one for the filter gradient (12 for
    4 convs, as autodiff's), and dense's 3 matmuls. A tap sum would drop a convolution, a
    chunked filter gradient add some, a 1x1 filter gradient's matmul add a dot_general."""
    got, want = _cuda_module(jcnn), _cuda_module(reference)
    assert _count(want, "stablehlo.convolution") == 12
    counts = {op: (_count(got, op), _count(want, op))
              for op in ("stablehlo.convolution", "stablehlo.dot_general")}
    assert all(g == w for g, w in counts.values()), counts


def _pool_bn_step(m):
    def loss_fn(params, x, labels):
        h = m.batch_norm(x, params["scale"], params["bias"])
        h = m.max_pool2d(m.relu(h), 2)
        h = m.max_pool2d(h, 3, 2, 1)
        return m.softmax_cross_entropy(m.dense(m.flatten(h), params["wd"]), labels)

    def step(params, x, labels):
        value, g = jax.value_and_grad(loss_fn)(params, x, labels)
        return jax.tree.map(lambda p, d: p - 0.1 * d, params, g), value, x
    return step


def test_cuda_export_of_pool_and_batch_norm_has_no_cpu_form():
    """max_pool2d's CPU backward keeps a bitmask (uint8) or an int8 index of each window's
    maximum, and batch_norm's CPU backward sums (G, G * xhat) in one variadic reduction; the
    GPU forms keep masks and plain sums: neither an 8-bit integer tensor nor a two-operand
    stablehlo.reduce may appear in a module exported for cuda."""
    params = {"scale": (1,), "bias": (1,), "wd": (4, 3)}
    avals = (jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), params,
                          is_leaf=lambda s: isinstance(s, tuple)),
             jax.ShapeDtypeStruct((64, 8, 8, 1), jnp.float32),
             jax.ShapeDtypeStruct((64,), jnp.int32))
    text = jax.export.export(jax.jit(_pool_bn_step(jcnn)), platforms=("cuda",))(*avals) \
        .mlir_module()
    # 8-bit integers computed from data (the index's selects, the bits' reduction); a constant
    # or its broadcast is not a computation
    computed = [m.group(1) for m in re.finditer(r'= "?stablehlo\.(\w+)"?[^\n]*xu?i8>', text)
                if m.group(1) not in ("constant", "broadcast_in_dim", "case")]
    assert not computed, computed[:5]
    variadic = re.findall(r"stablehlo\.reduce\([^)]*\), \(", text)
    assert not variadic, variadic[:3]


MODELS = {  # name -> (build(ops), image HWC)
    "lenet": (lambda ops: models.lenet(10, channels=(6, 16), hidden=(120,), ops=ops), (28, 28, 1)),
    "resnet8": (lambda ops: models.resnet(10, 8, ops=ops), (32, 32, 3)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_models_gradient_exports_with_a_symbolic_batch(name):
    """LeNet's and ResNet-8's loss and gradient (the train step's work) exported with the batch
    symbolic, then called at two batch sizes: equal to autodiff's of the reference model, so no
    rule or form computes with the batch size in Python."""
    build, image = MODELS[name]

    def value_and_grad(ops):
        model = build(ops)

        def loss(params, state, x, labels):
            return ops.softmax_cross_entropy(model.apply(params, state, x, train=True)[0], labels)
        return model, jax.jit(jax.value_and_grad(loss))
    model, f = value_and_grad(jcnn)
    _, f_ref = value_and_grad(reference)
    params, state = model.init(jax.random.key(0), (2, *image))
    (b,) = jax.export.symbolic_shape("b")
    exported = jax.export.export(f)(params, state, jax.ShapeDtypeStruct((b, *image), jnp.float32),
                                    jax.ShapeDtypeStruct((b,), jnp.int32))
    rng = np.random.default_rng(0)
    for n in (3, 8):
        x = jnp.asarray(rng.standard_normal((n, *image)), jnp.float32)
        labels = jnp.asarray(rng.integers(0, 10, n), jnp.int32)
        got, want = exported.call(params, state, x, labels), f_ref(params, state, x, labels)
        for a, e in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, e, rtol=2e-4, atol=2e-5)
