"""`check_vjp`: is a hand-written `jax.custom_vjp` rule the gradient of its forward?

Three oracles, each argument by argument:

* the reference: `jax.vjp` of an autodiff twin (e.g. the `jcnn.reference` op) on the same
  arguments, for random output cotangents, or (`jacobian=True`) for every basis cotangent;
* central finite differences of f's own forward along a random direction (float32, float64);
* the Taylor-remainder test of f's own forward: no step to tune, a measured convergence order.

Rows that fail say where: the argument, the worst element and the two values there, which
elements are off (the border, a row, a column, a channel, ties, zeros, scattered, everywhere)
and, for small arrays, an ASCII map of the 2-D slice through the worst element.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import replace
from functools import partial
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jcnn._validate import is_real
from jcnn.check.report import CheckFailed, Report, Row
from jcnn.check.rows import (INCONCLUSIVE, INCONCLUSIVE_NOTE, KINK, KINK_NOTE,
                              MAX_JACOBIAN_ENTRIES, Call, Precision, Stop,
                              cotangent_rows, jacobian_rows, oracle_rows, output_rows,
                              output_scalar, random_like, refuse_large_jacobian,
                              second_order_rows, stacked_vjps)

__all__ = ["check_vjp", "kinked", "CheckFailed", "Report", "Row", "PRECISION",
           "MAX_JACOBIAN_ENTRIES"]


def _sweep(top: float, bottom: float, per_decade: int) -> tuple[float, ...]:
    return tuple(float(h) for h in np.logspace(top, bottom, (top - bottom) * per_decade + 1))


KINK_GRID = 4  # kinks=True: grid steps of a power of two near the argument's RMS, / this

PRECISION = {
    "float64": Precision(1e-9, 1e-6, 1e-6, _sweep(-1, -6, 2)),
    "float32": Precision(2e-4, 1e-3, 1e-2, _sweep(-1, -3, 4)),
    "float16": Precision(1e-2, None, None, ()),
    "bfloat16": Precision(5e-2, None, None, ()),
}

FORWARD_MODE = """\
check_vjp: forward mode (jax.jvp, jax.jacfwd) cannot be checked: a jax.custom_vjp rule \
defines reverse mode only, and JAX refuses to differentiate it forwards. For curvature, use \
reverse over reverse, which the rule does support and order=2 checks:
    loss = lambda x: jnp.vdot(ct, f(x))                   # any scalar of f's output
    grad = jax.grad(loss)                                 # reverse: runs the custom rule
    hvp = lambda x, v: jax.grad(lambda x: jnp.vdot(grad(x), v))(x)   # Hessian times v"""


def check_vjp(f: Callable, reference: Optional[Callable], *args: Any, order: int = 1,
              rtol: Optional[float] = None, atol: Optional[float] = None,
              argnums: Optional[Sequence[int]] = None, samples: int = 2,
              jacobian: bool = False, taylor_test: bool = True, mode: str = "rev",
              seed: int = 0, kinks: bool = False, raise_on_failure: bool = True) -> Report:
    """Check f's custom backward rules against `reference`, finite differences and a Taylor test.

    Args:
      f: the function under test, usually a `jax.custom_vjp` (or calls one); returns an array
        or a pytree of floating arrays.
      reference: a function with f's signature whose gradient is trusted (autodiff of plain
        `jax.numpy`, e.g. the `jcnn.reference` twin); None skips the reference comparisons.
      *args: arrays (JAX or NumPy). Floating ones are differentiated; integer, bool and
        PRNG-key arrays (labels, masks, keys) are held fixed and listed as skipped, and so are
        Python scalars (static configuration, such as a dropout rate). Bind anything else
        (strings, None, tuples) with a lambda or `functools.partial`.
      order: 2 also checks the gradient of the gradient (reverse over reverse).
      rtol, atol: tolerance of the reference comparisons (default: rtol from the table, atol 0);
        finite and >= 0.
      argnums: the position or positions to differentiate (default: every floating argument).
      samples: how many random output cotangents to compare.
      jacobian: also compare the full Jacobian, one basis cotangent per output element; for
        small inputs (at most `MAX_JACOBIAN_ENTRIES` entries, else ValueError).
      taylor_test: run the Taylor-remainder test (float32/float64).
      mode: "rev". "fwd" raises ValueError: custom_vjp rules have no forward mode (the message
        gives the reverse-over-reverse recipe: loss -> grad -> jax.grad of <grad, v>).
      seed: seeds the cotangents and directions (NumPy), so a failure reproduces.
      kinks: also compare with the reference on a copy of the differentiated arguments rounded
        to a coarse grid (`kinked`: round(4x)/4 for arguments of root-mean-square 1), where a
        ReLU sees exact zeros and a max window tied maxima: the forward, the cotangents, the
        Jacobian (with `jacobian`) and, with order=2, second order, in rows marked "(kinks)".
        No finite differences or Taylor test there (f is not differentiable at a kink, so
        they tell nothing); needs a reference (else ValueError). The reference's gradient at
        a kink is the convention checked (jcnn.reference: the first maximum, 0 at relu(0)).
      raise_on_failure: raise `CheckFailed` (an AssertionError) when any row fails.

    Returns:
      A `Report`: `.ok`, `.rows` (check, argument, max_abs, max_rel, tol, order, note, where,
      picture), `.failures`, `.to_dict()`; `str(report)` is a table.

    What is compared, for output cotangents :math:`c` (random, or every basis vector) and
    :math:`\\bar{x}_i = \\mathrm{vjp}(f)(c)_i`, the hand-ruled cotangent of argument i:

    .. math::
        \\max |\\bar{x}_i^{f} - \\bar{x}_i^{ref}| \\le \\mathrm{atol} + \\mathrm{rtol}\\,
        \\max(|\\bar{x}_i^{f}|, |\\bar{x}_i^{ref}|)

    and :math:`\\bar{x}_i^{f}` must have argument i's dtype. The oracles of f's own forward, for
    :math:`s(x_i) = \\langle c, f(x) \\rangle` and a random direction v, see
    `jcnn.check.finite_differences`: the central difference of s must match :math:`\\langle
    \\bar{x}_i, \\delta \\rangle` to fd_rtol, and the Taylor remainder :math:`|s(x_i + h v) -
    s(x_i) - h \\langle \\bar{x}_i, v \\rangle|` must shrink like :math:`h^2` (measured order >=
    1.5). Where the reference's own gradient fails these two as well (a kink, a tie: f is not
    differentiable there), the row passes with the note "kink". Where f's round-off is as large
    as the change the step makes (large outputs in float32), the row passes with the note
    "inconclusive: round-off", and with no reference f's rule is then also checked in float64
    (x64 enabled). order=2 repeats all three for the scalar :math:`q(x) = \\langle f(x), c
    \\rangle + \\sum_i \\langle \\mathrm{vjp}(f)(c)_i, u_i \\rangle` (u random), differentiated
    in every argument at once (one vjp, then its gradient): reverse over reverse through the
    rule, and through the forward rule for the output that the vjp returns (the path of jax.grad
    of jax.grad(lambda x, w: sum(f(x) * w)), where a forward rule whose own derivative disagrees
    with the backward rule at a kink shows).

    Per-dtype settings (`PRECISION`; steps relative to the argument's root-mean-square):

    ========  ======  ==========  ===========  ===========================  ==================
    dtype     rtol    FD step     FD rtol      Taylor h sweep               oracle
    ========  ======  ==========  ===========  ===========================  ==================
    float64   1e-9    1e-6        1e-6         1e-1 .. 1e-6, 11 steps       reference, FD, h^2
    float32   2e-4    1e-3        1e-2         1e-1 .. 1e-3, 9 steps        reference, FD, h^2
    float16   1e-2    --          --           --                           float64 reference
    bfloat16  5e-2    --          --           --                           float64 reference
    ========  ======  ==========  ===========  ===========================  ==================

    float16/bfloat16: finite differences and remainders drown in round-off there, so f's
    results are compared with the reference run in float64 on the arguments cast up. When
    `reference` is None they are compared with f's own in float64, which checks precision only,
    so f's rule is then also checked in float64 by finite differences and the Taylor test
    (rows "fd (float64)", "taylor (float64)"). Second-order comparisons allow 10 x rtol times
    the largest second-order magnitude over all arguments (one argument's can be small by
    cancellation).
    """
    _check_options(mode, order, samples, rtol, atol)
    if kinks and reference is None:
        raise ValueError("check_vjp: kinks=True compares with the reference at the kinks (finite "
                         "differences tell nothing there); pass a reference")
    call = _setup(f, reference, args, _argnums(argnums))
    if jacobian:
        refuse_large_jacobian(call)
    rng = np.random.default_rng(seed)
    prec = PRECISION[call.dtype]
    tol = dict(rtol=prec.rtol if rtol is None else rtol, atol=0.0 if atol is None else atol)
    rows = [Row("skip", call.labels[i], True, note=f"{_kind(a)}: held fixed")
            for i, a in enumerate(call.args) if i not in call.diff]
    rows += _comparisons(call, tol, prec, rng, order, samples, jacobian,
                         prec.fd_step is not None, taylor_test)
    drowned = call.dtype == "float32" and jax.config.jax_enable_x64 and any(
        r.note == INCONCLUSIVE for r in rows)
    if reference is None and (call.upcast or drowned):
        rows += _own_oracles_cast_up(f, call, order=order, samples=samples,
                                     taylor_test=taylor_test, seed=seed)
    if kinks:
        rounded = tuple(kinked(a) if i in call.diff else a for i, a in enumerate(call.args))
        rows += [replace(row, check=f"{row.check} (kinks)") for row in _comparisons(
            _setup(f, reference, rounded, call.diff), tol, prec, rng, order, samples, jacobian,
            False, False)]
    report = Report(_name(f), _name(reference), call.dtype, order, tuple(rows),
                    _notes(call, rows))
    if raise_on_failure and not report.ok:
        raise CheckFailed(report)
    return report


def _comparisons(call: Call, tol: dict, prec: Precision, rng, order: int, samples: int,
                 jacobian: bool, oracles: bool, taylor_test: bool) -> list[Row]:
    """The rows of one set of arguments: the forward, the cotangents, the Jacobian, finite
    differences and the Taylor test (`oracles`), then second order."""
    rows = []
    try:
        rows += output_rows(call, tol)
        cts = [random_like(call.f(*call.args), rng) for _ in range(samples)]
        got, want = stacked_vjps(call, cts)
        rows += cotangent_rows(call, "vjp", got, want, tol, leading=1)
        if jacobian:
            rows += jacobian_rows(call, tol)
        if oracles:
            rows += oracle_rows(call, "", partial(output_scalar, call, cts[0]),
                                [g[0] for g in got], None if want is None else
                                [w[0] for w in want], prec, rng, taylor_test)
        if order == 2:
            control = all(r.ok for r in rows if r.check == "vjp")
            rows += second_order_rows(call, cts[0], tol, prec, rng, oracles, taylor_test, control)
    except Stop as stop:
        rows.append(stop.row)
    return rows


def kinked(x):
    """x rounded to a coarse grid, so that a ReLU sees exact zeros and a max window tied
    maxima: :math:`s \\, \\mathrm{round}(x / s)` with :math:`s = 2^{\\mathrm{round}(\\log_2
    \\mathrm{rms}(x))} / 4` (1/4 where x is all zero), in x's dtype; s is a power of two, so
    the grid points are exact there. For x of root-mean-square 1 that is round(4x)/4."""
    x64 = np.asarray(x, np.float64)
    rms = float(np.sqrt(np.mean(np.square(x64)))) if x64.size else 0.0
    s = (2.0 ** round(math.log2(rms)) if rms > 0 else 1.0) / KINK_GRID
    return jnp.asarray(s * np.round(x64 / s), jnp.asarray(x).dtype)


def _own_oracles_cast_up(f: Callable, call: Call, **options) -> list[Row]:
    """No reference, and in low precision (where f's results were compared with f's own in
    float64, which cannot catch a wrong rule) or in float32 where round-off drowned a finite
    difference or Taylor step: f's rule is also checked in float64 (float32 without x64) by
    finite differences and the Taylor test, the rows marked with that dtype."""
    high = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    args = [a.astype(high) if i in call.diff else a for i, a in enumerate(call.args)]
    high = check_vjp(f, None, *args, argnums=call.diff, raise_on_failure=False, **options)
    return [replace(row, check=f"{row.check} ({high.dtype})") for row in high.rows
            if row.check.startswith(("fd", "taylor"))]


def _check_options(mode: str, order: int, samples: int, rtol, atol) -> None:
    if mode == "fwd":
        raise ValueError(FORWARD_MODE)
    if mode != "rev":
        raise ValueError(f"check_vjp: mode must be 'rev' ('fwd' is refused), got {mode!r}")
    if isinstance(order, bool) or order not in (1, 2):
        raise ValueError(f"check_vjp: order must be 1 or 2, got {order!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"check_vjp: samples must be an int >= 1, got {samples!r}")
    for name, value in (("rtol", rtol), ("atol", atol)):
        if value is None:
            continue
        if not is_real(value):
            raise TypeError(f"check_vjp: {name} must be a float or None, got {value!r}")
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"check_vjp: {name} must be finite and >= 0, got {value!r}")


def _argnums(argnums) -> Optional[tuple[int, ...]]:
    """None, an int or a sequence of distinct ints, as jax.grad takes them."""
    if argnums is None:
        return None
    many = (argnums,) if isinstance(argnums, (int, np.integer)) else argnums
    try:
        many = tuple(many)
    except TypeError:
        raise TypeError(f"check_vjp: argnums must be an int or a sequence of ints, got "
                        f"{argnums!r}") from None
    if any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) for i in many):
        raise TypeError(f"check_vjp: argnums must hold ints, got {argnums!r}")
    if len(set(many)) != len(many):
        raise ValueError(f"check_vjp: argnums names a position twice: {argnums!r}")
    return tuple(int(i) for i in many)


def _name(fn) -> str:
    if fn is None:
        return "none"
    name = getattr(fn, "__name__", type(fn).__name__)
    return "lambda" if name == "<lambda>" else name


def _arg_names(f: Callable, n: int) -> tuple[str, ...]:
    """f's positional parameter names where its signature says them, else arg0, arg1, ..."""
    try:
        params = list(inspect.signature(f).parameters.values())
    except (TypeError, ValueError):
        params = []
    named = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return tuple(named[i] if i < len(named) else f"arg{i}" for i in range(n))


def _as_array(value, label: str):
    """Arrays (JAX, NumPy, NumPy scalars) as JAX arrays; Python scalars stay static. NumPy
    scalars first: np.float64 is a subclass of float."""
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        return jnp.asarray(value)
    if isinstance(value, (bool, int, float)):
        return value
    raise TypeError(f"check_vjp: {label} is a {type(value).__name__}, not an array. Pass arrays "
                    f"only and bind the rest, e.g. check_vjp(lambda x, w: f(x, w, stride=2), "
                    f"lambda x, w: ref(x, w, stride=2), x, w)")


def _is_float(a) -> bool:
    """A floating array (a Python float is static configuration, not differentiated)."""
    return isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jnp.floating)


def _kind(a) -> str:
    return f"Python {type(a).__name__}" if isinstance(a, (bool, int, float)) else str(a.dtype)


def _setup(f, reference, args, argnums) -> Call:
    names = _arg_names(f, len(args))
    labels = tuple(f"{n} (arg {i})" for i, n in enumerate(names))
    args = tuple(_as_array(a, label) for a, label in zip(args, labels))
    diff = _differentiated(args, argnums, labels)
    dtype = _least_precise([args[i].dtype for i in diff])
    low = PRECISION[dtype].fd_step is None
    high = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    up = tuple(a.astype(high) if low and i in diff else a for i, a in enumerate(args))
    oracle = (reference or f) if low else reference
    return Call(f, oracle, args, up, diff, labels, names, dtype, low)


def _differentiated(args: tuple, argnums, labels: tuple[str, ...]) -> tuple[int, ...]:
    """The positions to differentiate: argnums, checked, or every floating array."""
    if argnums is None:
        argnums = [i for i, a in enumerate(args) if _is_float(a)]
    for i in argnums:
        if not 0 <= i < len(args):
            raise ValueError(f"check_vjp: argnums holds {i} but there are {len(args)} arguments")
        if not _is_float(args[i]):
            raise TypeError(f"check_vjp: {labels[i]} is {_kind(args[i])}; only floating arrays "
                            f"can be differentiated (wrap a scalar as jnp.asarray(value))")
    if not argnums:
        raise TypeError("check_vjp: no floating array to differentiate; got "
                        + ", ".join(_kind(a) for a in args))
    return tuple(argnums)


def _least_precise(dtypes) -> str:
    """The name of the least precise dtype, which sets the tolerances."""
    name = max((jnp.dtype(d) for d in dtypes), key=lambda d: float(jnp.finfo(d).eps)).name
    if name not in PRECISION:
        raise TypeError(f"check_vjp: {name} arguments are not supported; use one of "
                        f"{', '.join(PRECISION)}")
    return name


def _notes(call: Call, rows: list[Row]) -> tuple[str, ...]:
    notes = [KINK_NOTE] if any(r.note.endswith(KINK) for r in rows) else []
    if any(r.note == INCONCLUSIVE for r in rows):
        notes.append(INCONCLUSIVE_NOTE)
    if call.upcast:
        high = call.oracle_args[call.diff[0]].dtype
        notes.append(f"{call.dtype}: compared with the {high} computation (arguments cast up); "
                     f"no finite differences or Taylor test in low precision"
                     + ("" if call.oracle is not call.f else
                        f", so with no reference they check f's rule in {high}"))
    return tuple(notes)


