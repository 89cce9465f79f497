"""The comparisons `jcnn.check_vjp` makes, one function per kind of row: the forward, the
cotangents for random output cotangents, the full Jacobian, second order, and the finite
difference and Taylor rows of f's own forward. A per-layer check can call these directly."""
from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jcnn.check.compare import Comparison, compare, scale as _scale
from jcnn.check.report import Row
from jcnn.check.finite_differences import SMOOTH_ORDER, finite_difference, taylor

MAX_JACOBIAN_ENTRIES = 1 << 20  # jacobian=True refuses a Jacobian with more entries
INCONCLUSIVE = "inconclusive: round-off"  # an FD/Taylor row whose step drowns in round-off
INCONCLUSIVE_NOTE = ("inconclusive: f's round-off is as large as the change the finite-difference "
                     "or Taylor step makes (large outputs, small inputs), so that row checked "
                     "nothing; a reference, or float64 (jax_enable_x64), decides")
KINK = "kink"  # ends the note of an FD/Taylor row that the reference's gradient fails too
KINK_NOTE = ("kink: the reference's own gradient fails that finite-difference or Taylor test "
             "too, so f is not differentiable there (a tie in a max, a ReLU at 0): no verdict, "
             "the row passes")


class Precision(NamedTuple):
    """Per-dtype settings; steps are relative to the root-mean-square of the argument."""
    rtol: float  # comparisons with the reference (second order: 10 x rtol)
    fd_step: Optional[float]  # central-difference step; None: no finite differences
    fd_rtol: Optional[float]
    taylor_steps: tuple[float, ...]  # the h sweep, largest first; (): no Taylor test


class Stop(Exception):
    """Nothing further can be compared; `row` says why."""

    def __init__(self, row: Row):
        super().__init__(row.note)
        self.row = row


class Call(NamedTuple):
    f: Callable
    oracle: Optional[Callable]  # the reference (f itself in float64 for low precision)
    args: tuple  # f's arguments: arrays, and Python scalars held fixed
    oracle_args: tuple  # the oracle's: the same, cast up in low precision
    diff: tuple[int, ...]  # positions of the arguments differentiated
    labels: tuple[str, ...]  # "x (arg 0)" for each argument
    names: tuple[str, ...]  # "x" for each argument
    dtype: str  # the precision the comparisons run at
    upcast: bool  # low precision: the oracle runs on the arguments cast up


def _bind(fn: Callable, args: tuple, diff: Sequence[int]) -> Callable:
    """fn as a function of args[diff] only, the other arguments held fixed."""
    def bound(*values):
        given = dict(zip(diff, values))
        return fn(*(given.get(i, a) for i, a in enumerate(args)))
    return bound


def random_like(tree, rng):
    """Standard-normal arrays shaped and typed like the leaves of `tree`."""
    return jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(np.shape(a)), a.dtype), tree)


def _direction(x: np.ndarray, rng) -> np.ndarray:
    """A standard-normal direction scaled to x's root-mean-square (1 where x is all zero)."""
    rms = float(np.sqrt(np.mean(np.square(np.asarray(x, np.float64))))) if x.size else 0.0
    return rng.standard_normal(x.shape) * (rms if rms > 0 else 1.0)


def _describe(tree) -> str:
    return str(jax.tree.map(lambda a: f"{a.dtype}{list(np.shape(a))}", tree))


def _dot(left, right) -> tuple[float, float]:
    """sum_k <left_k, right_k> in float64, and the sum of the magnitudes of its terms."""
    terms = [np.asarray(a, np.float64) * np.asarray(b, np.float64) for a, b in zip(left, right)]
    return float(sum(t.sum() for t in terms)), float(sum(np.abs(t).sum() for t in terms))


def _guarded(thunk: Callable, check: str):
    """Run f's backward rule; an exception from it becomes a failing row, not a crash."""
    try:
        return thunk()
    except Stop:
        raise
    except Exception as error:  # the user's rule may raise anything: report it
        first = (str(error).splitlines() or [""])[0]
        raise Stop(Row(check, "(backward rule)", False, note=f"raised {type(error).__name__}",
                       where=f"f's backward rule raised {type(error).__name__}: {first}")
                   ) from error


def _row(check: str, label: str, c: Comparison, dtype_error: str = "") -> Row:
    where = "; ".join(w for w in (dtype_error, c.where) if w)
    return Row(check, label, c.ok and not dtype_error, c.max_abs, c.max_rel, c.tol,
               note=dtype_error and "wrong dtype", where=where, picture=c.picture)


def output_rows(call: Call, tol: dict) -> list[Row]:
    """f's forward against the oracle's, leaf by leaf; different structures stop the check."""
    out = call.f(*call.args)
    for leaf in jax.tree.leaves(out):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise TypeError(f"check_vjp: f returns {_describe(out)}; every output must be a "
                            f"floating array to carry a cotangent")
    if call.oracle is None:
        return []
    want = call.oracle(*call.oracle_args)
    same = jax.tree.structure(out) == jax.tree.structure(want) and all(
        np.shape(a) == np.shape(b) and (call.upcast or jnp.result_type(a) == jnp.result_type(b))
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(want)))
    if not same:
        raise Stop(Row("output", "output", False, note="f and reference outputs differ",
                       where=f"f and reference return different outputs: f returns "
                             f"{_describe(out)} but reference returns {_describe(want)}"))
    leaves = list(zip(jax.tree.leaves(out), jax.tree.leaves(want)))
    return [_row("output", "output" if len(leaves) == 1 else f"output[{k}]",
                 compare(a, b, **tol, name="output"))
            for k, (a, b) in enumerate(leaves)]


def _pullback(fn: Callable, args: tuple, diff: Sequence[int]):
    """(output, pullback) of fn with respect to args[diff]."""
    return jax.vjp(_bind(fn, args, diff), *[args[i] for i in diff])


def _out_shape(fn: Callable, args: tuple, diff: Sequence[int]):
    """fn's output shapes and dtypes, tracing only args[diff] (the rest may be static)."""
    return jax.eval_shape(_bind(fn, args, diff), *[args[i] for i in diff])


def _cast_like(tree, like):
    return jax.tree.map(lambda a, b: a.astype(jnp.result_type(b)), tree, like)


def stacked_vjps(call: Call, cts: list):
    """Cotangents of f and of the oracle for each output cotangent, stacked per argument."""
    _, pull = _pullback(call.f, call.args, call.diff)
    got = _guarded(lambda: [pull(c) for c in cts], "vjp")
    got = [np.stack([np.asarray(g[k]) for g in got]) for k in range(len(call.diff))]
    if call.oracle is None:
        return got, None
    out, pull_ref = _pullback(call.oracle, call.oracle_args, call.diff)
    want = [pull_ref(_cast_like(c, out)) for c in cts]
    return got, [np.stack([np.asarray(w[k]) for w in want]) for k in range(len(call.diff))]


def cotangent_rows(call: Call, check: str, got, want, tol: dict, leading: int = 0,
                   leading_label: str = "cotangent") -> list[Row]:
    """One row per differentiated argument: values against the oracle's, and the dtype."""
    if want is None:
        return []
    rows = []
    for k, i in enumerate(call.diff):
        primal = call.args[i]
        dtype_error = "" if got[k].dtype == primal.dtype else (
            f"the backward rule returns {got[k].dtype} for a {primal.dtype} argument "
            f"(gradients must come back in the primal's dtype)")
        c = compare(got[k], want[k], **tol, name=call.names[i], primal=np.asarray(primal),
                    leading=leading, leading_label=leading_label)
        rows.append(_row(check, call.labels[i], c, dtype_error))
    return rows


def refuse_large_jacobian(call: Call) -> None:
    """ValueError unless there is a reference and the Jacobian is small enough to compare."""
    if call.oracle is None:
        raise ValueError("check_vjp: jacobian=True compares with the reference's Jacobian; "
                         "pass a reference")
    out = _out_shape(call.f, call.args, call.diff)
    m = sum(int(np.prod(o.shape)) for o in jax.tree.leaves(out))
    n = sum(int(np.prod(call.args[i].shape)) for i in call.diff)
    if m * n > MAX_JACOBIAN_ENTRIES:
        raise ValueError(
            f"check_vjp(jacobian=True): the Jacobian has {m} outputs x {n} inputs = {m * n:,} "
            f"entries, more than MAX_JACOBIAN_ENTRIES = {MAX_JACOBIAN_ENTRIES:,}. Use smaller "
            f"inputs (a batch of 1 or 2, images of 4x4 to 8x8, few channels), or leave "
            f"jacobian=False to compare random cotangents")


def _jacobians(fn: Callable, args: tuple, diff: Sequence[int]) -> tuple[list, int]:
    """The Jacobian of fn w.r.t. each args[diff], one pullback per output element (vmapped):
    shape (*output.shape, *arg.shape) for one output array, (m, *arg.shape) for a pytree."""
    out, pull = _pullback(fn, args, diff)
    leaves, tree = jax.tree.flatten(out)
    m = sum(leaf.size for leaf in leaves)
    eye, start, basis = np.eye(m), 0, []
    for leaf in leaves:
        basis.append(jnp.asarray(eye[:, start:start + leaf.size].reshape(m, *leaf.shape),
                                 leaf.dtype))
        start += leaf.size
    rows = jax.vmap(pull)(jax.tree.unflatten(tree, basis))
    lead = leaves[0].shape if len(leaves) == 1 else (m,)
    return [np.asarray(r).reshape(*lead, *r.shape[1:]) for r in rows], len(lead)


def jacobian_rows(call: Call, tol: dict) -> list[Row]:
    """Every entry of f's Jacobian against the oracle's, one row per argument."""
    got, leading = _guarded(lambda: _jacobians(call.f, call.args, call.diff), "jacobian")
    want, _ = _jacobians(call.oracle, call.oracle_args, call.diff)
    return cotangent_rows(call, "jacobian", got, want, tol, leading, "output element")


def _replace(args: tuple, i: int, x: np.ndarray) -> tuple:
    return args[:i] + (jnp.asarray(x),) + args[i + 1:]


def output_scalar(call: Call, ct, i: int, x: np.ndarray) -> tuple[float, float]:
    """s(x) = <ct, f(..., x, ...)> with x in place of argument i."""
    return _dot(jax.tree.leaves(ct), jax.tree.leaves(call.f(*_replace(call.args, i, x))))


def _second_scalar(call: Call, ct, us: list, i: int, x: np.ndarray) -> tuple[float, float]:
    """q(x) = <f(x), ct> + sum_k <vjp(f)(ct)_k, u_k> with x in place of argument i."""
    out, pull = _pullback(call.f, _replace(call.args, i, x), call.diff)
    return _dot([*jax.tree.leaves(out), *pull(ct)], [*jax.tree.leaves(ct), *us])


def oracle_rows(call: Call, suffix: str, scalar: Callable, grads: list, grads_ref,
                prec: Precision, rng, with_taylor: bool) -> list[Row]:
    """Finite-difference and Taylor rows of f's gradient against f's own forward (`scalar`),
    with the oracle's gradient run through the same tests to recognise a kink."""
    rows = []
    eps = float(jnp.finfo(call.dtype).eps)
    for k, i in enumerate(call.diff):
        x = np.asarray(call.args[i])
        v = _direction(x, rng)
        tested = [grads[k]] + ([] if grads_ref is None else [grads_ref[k]])
        s = partial(scalar, i)
        fd = finite_difference(s, x, v, prec.fd_step, tested, prec.fd_rtol, eps)
        rows.append(_fd_row("fd" + suffix, call.labels[i], fd))
        if with_taylor:
            result = taylor(s, x, v, prec.taylor_steps, tested, eps)
            rows.append(_taylor_row("taylor" + suffix, call.labels[i], result))
    return rows


def _fd_row(check: str, label: str, results: list) -> Row:
    mine, *ref = results
    kink = bool(ref) and ref[0].error > ref[0].tol
    ok = mine.error <= mine.tol or (kink and np.isfinite(mine.error))
    scale = max(abs(mine.difference), abs(mine.linear))
    where = (f"along a random direction the central difference is {mine.difference:.6g} but "
             f"the rule gives <gradient, step> = {mine.linear:.6g}")
    note = f"reference fails too: {KINK}" if mine.error > mine.tol and kink else ""
    if ok and not note and mine.floor >= scale:
        note = INCONCLUSIVE
    return Row(check, label, ok, mine.error, mine.error / scale if scale else 0.0, mine.tol,
               note=note, where="" if ok else where)


def _taylor_row(check: str, label: str, result) -> Row:
    order, *ref = result.orders
    ref_order = ref[0] if ref else None
    if order is None:
        return Row(check, label, True, note=INCONCLUSIVE)
    if np.isnan(order):
        return Row(check, label, False, order=order, note="NaN or inf in f or its gradient",
                   where="a Taylor remainder is NaN or inf: f or its gradient is not finite")
    kink = order < SMOOTH_ORDER and ref_order is not None and ref_order < SMOOTH_ORDER
    ok = order >= SMOOTH_ORDER or kink
    note = (f"order {order:.2f}" + ("" if ref_order is None else f" (ref {ref_order:.2f})")
            + (f": {KINK}" if kink else ""))
    where = (f"the Taylor remainder shrinks like h^{order:.2f}, not h^2, for h from "
             f"{result.steps[0]:.0e} to {result.steps[-1]:.0e}: the gradient is wrong along a "
             f"random direction")
    return Row(check, label, ok, order=order, note=note, where="" if ok else where)


def _q(fn: Callable, args: tuple, diff: Sequence[int], ct, us: list) -> Callable:
    """q(values) = <fn(values), ct> + sum_k <vjp(fn)(ct)_k, u_k> as a function of args[diff].
    The first term is fn's output as the vjp returns it: an outer gradient differentiates it
    through the forward rule, as it does in jax.grad of jax.grad(lambda x, w: sum(fn(x) * w)),
    so a forward rule whose derivative disagrees with the backward rule (at a kink) shows."""
    def q(*values):
        out, pull = jax.vjp(_bind(fn, args, diff), *values)
        return sum(jnp.vdot(a, b) for a, b in zip([*jax.tree.leaves(out), *pull(ct)],
                                                   [*jax.tree.leaves(ct), *us]))
    return q


def _second_order_tol(tol: dict, got: list, want: Optional[list]) -> dict:
    """10 x rtol times the largest second-order magnitude over every argument: a gradient of a
    gradient mixes all arguments' terms, and one argument's can be small by cancellation."""
    scale = max(_scale(*got, *(want or [])), np.finfo(np.float64).tiny)
    return dict(rtol=0.0, atol=tol["atol"] + 10 * tol["rtol"] * scale)


def second_order_rows(call: Call, ct, tol: dict, prec: Precision, rng, oracles: bool,
                      with_taylor: bool, control: bool) -> list[Row]:
    """Gradients of q(x) = <f(x), ct> + sum_k <vjp(f)(ct)_k, u_k>, jointly in every
    differentiated argument (one vjp, differentiated again: reverse over reverse through the
    rule), against the oracle's, then finite differences and the Taylor test of f's q. The
    oracle's gradient serves as the kink control there only when `control` (f's first order
    agreed with the oracle's, so that both q are one function)."""
    us = [jnp.asarray(rng.standard_normal(call.args[i].shape), call.args[i].dtype)
          for i in call.diff]
    every = tuple(range(len(call.diff)))
    q = _q(call.f, call.args, call.diff, ct, us)
    got = _guarded(lambda: jax.grad(q, argnums=every)(*[call.args[i] for i in call.diff]), "vjp2")
    got, want = [np.asarray(g) for g in got], None
    if call.oracle is not None:
        ups = [call.oracle_args[i] for i in call.diff]
        out = _out_shape(call.oracle, call.oracle_args, call.diff)
        q_ref = _q(call.oracle, call.oracle_args, call.diff, _cast_like(ct, out),
                   [u.astype(a.dtype) for u, a in zip(us, ups)])
        want = [np.asarray(g) for g in jax.grad(q_ref, argnums=every)(*ups)]
    rows = cotangent_rows(call, "vjp2", got, want, _second_order_tol(tol, got, want))
    if oracles:
        rows += oracle_rows(call, "2", partial(_second_scalar, call, ct, us), got,
                            want if control else None, prec, rng, with_taylor)
    return rows
