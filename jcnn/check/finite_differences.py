"""Reference-free oracles for a gradient: central finite differences and the Taylor-remainder
convergence test, both for a scalar function `s` of one array argument along a direction `v`.

Both work on the step actually taken: `x + h v` is rounded to x's dtype, so the step used is
`delta = fl(x + h v) - x`, computed exactly in float64, and the linear term is `<g, delta>`,
not `h <g, v>`. Values of `s` are sums accumulated in float64 from outputs of x's dtype.

Finite differences (one direction, step `h`), with :math:`\\Delta = s(x + \\delta_+) -
s(x + \\delta_-)` and :math:`L = \\langle g, \\delta_+ - \\delta_- \\rangle`:

.. math::  |\\Delta - L| \\le \\mathrm{rtol} \\max(|\\Delta|, |L|) + \\mathrm{floor}

Taylor remainder (eps-free: a sweep of h instead of one step), with
:math:`D(h) = s(x + \\delta_h) - s(x)`:

.. math::  r(h) = |D(h) - \\langle g, \\delta_h \\rangle| + \\frac{D(h)^2}{2 |D(h_0)|}

The first term is the remainder of `s`: O(h^2) when `g` is the gradient, ~ h |<error, v>|
when it is not. The second is a known positive O(h^2) term (h_0 is the largest step), so that
a function that is linear along v, whose remainder is pure round-off, still shows a clean h^2
slope for a right gradient.

The measured order is the least-squares slope of log r on log h over the (up to) four
smallest h of the run of steps, from the largest down, whose r clears the round-off floor.
The floor is measured: r at three probe steps far below the sweep (h_min / 30, / 100, / 300),
where a right gradient's remainder is pure round-off, times 4 (a wrong gradient's
h |<error, v>| is 30x smaller there than at h_min, so it still clears the floor); it is at
least :math:`\\varepsilon (|s(x)| + m(x)) / 4`, for where tiny steps leave s unchanged. A right
gradient gives ~2 (or more), a wrong one ~1.

The finite-difference floor is the round-off bound, m being the sum of the magnitudes of the
terms of `s`:

.. math::  16\\, \\varepsilon \\Big(m(x + \\delta_+) + m(x + \\delta_-)
           + \\sum_k |g_k (\\delta_+ - \\delta_-)_k|\\Big)
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np

# s(x) -> (value, magnitude): the float64 sum and the sum of the magnitudes of its terms
Scalar = Callable[[np.ndarray], tuple[float, float]]

FLOOR_SAFETY = 16  # how many round-offs a finite difference may be off by
PROBES = (30, 100, 300)  # the Taylor floor is measured at h_min / these
NOISE_MARGIN = 4  # a remainder counts when it is this many times the measured floor
MIN_FLOOR = 0.25  # ... and at least this many round-offs of |s(x)| + m(x)
FIT_POINTS = 4  # the smallest steps above the floor that the slope is fitted on
SMOOTH_ORDER = 1.5  # a measured order below this means "the gradient is wrong (or s has a kink)"


class TaylorResult(NamedTuple):
    """Measured convergence orders, one per gradient tested (None: every remainder sat in the
    round-off floor; NaN: a remainder was not finite), with the sweep they were measured on."""
    orders: tuple[Optional[float], ...]
    steps: tuple[float, ...]
    remainders: tuple[tuple[float, ...], ...]


def round_off(eps: float, *magnitudes: float, units: float = FLOOR_SAFETY) -> float:
    """A round-off floor: `units` units of round-off on the summed magnitudes."""
    return units * eps * sum(magnitudes)


def step(x: np.ndarray, v: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray]:
    """`fl(x + h v)` in x's dtype, and the step it really took, exactly, in float64."""
    moved = np.asarray(np.asarray(x, np.float64) + h * v, np.asarray(x).dtype)
    return moved, np.asarray(moved, np.float64) - np.asarray(x, np.float64)


class FDResult(NamedTuple):
    """A central difference against the rule's linear term for one gradient."""
    error: float  # |difference - linear|
    difference: float  # s(x + delta_+) - s(x + delta_-)
    linear: float  # <g, delta_+ - delta_->
    tol: float  # rtol * max(|difference|, |linear|) + the round-off floor
    floor: float  # the round-off floor alone: at or above both terms, the test tells nothing


def finite_difference(s: Scalar, x: np.ndarray, v: np.ndarray, h: float,
                      grads: Sequence[np.ndarray], rtol: float, eps: float) -> list[FDResult]:
    """The central difference of s along v against <g, delta> for each gradient g."""
    (plus, d_plus), (minus, d_minus) = step(x, v, h), step(x, v, -h)
    (s_plus, mag_plus), (s_minus, mag_minus) = s(plus), s(minus)
    difference, delta = s_plus - s_minus, d_plus - d_minus
    out = []
    for g in grads:
        terms = np.asarray(g, np.float64) * delta
        linear = float(terms.sum())
        floor = round_off(eps, mag_plus, mag_minus, float(np.abs(terms).sum()))
        out.append(FDResult(abs(difference - linear), difference, linear,
                            rtol * max(abs(difference), abs(linear)) + floor, floor))
    return out


def taylor(s: Scalar, x: np.ndarray, v: np.ndarray, hs: Sequence[float],
           grads: Sequence[np.ndarray], eps: float) -> TaylorResult:
    """The measured order of the Taylor remainder of `s` at `x` along `v`, for each gradient."""
    s0, mag0 = s(x)
    probes = [hs[-1] / k for k in PROBES]
    moved = [step(x, v, h) for h in (*hs, *probes)]
    changes = np.array([s(xh)[0] - s0 for xh, _ in moved])
    sigma = 2 * abs(changes[0])
    lift = changes ** 2 / sigma if sigma > 0 else np.zeros_like(changes)
    orders, rems = [], []
    for g in grads:
        g = np.asarray(g, np.float64)
        rem = np.abs(changes - [float((g * d).sum()) for _, d in moved]) + lift
        sweep, noise = rem[:len(hs)], float(rem[len(hs):].max())
        floor = max(NOISE_MARGIN * noise, round_off(eps, abs(s0), mag0, units=MIN_FLOOR))
        orders.append(_fit_order(np.asarray(hs), sweep, floor))
        rems.append(tuple(float(r) for r in sweep))
    return TaylorResult(tuple(orders), tuple(float(h) for h in hs), tuple(rems))


def _fit_order(hs: np.ndarray, rem: np.ndarray, floor: float) -> Optional[float]:
    """Slope of log r on log h over the smallest steps of the run, from the largest h down,
    whose r clears the floor (round-off below it is never fitted, even where a point of noise
    pokes above); NaN when a remainder is not finite, None when that run is under 3 steps."""
    if not np.isfinite(rem).all():
        return float("nan")
    below = np.flatnonzero(rem <= floor)
    run = len(rem) if len(below) == 0 else below[0]  # from the largest h down to the floor
    if run < 3:
        return None
    fit = slice(max(run - FIT_POINTS, 0), run)
    return float(np.polyfit(np.log(hs[fit]), np.log(rem[fit]), 1)[0])
