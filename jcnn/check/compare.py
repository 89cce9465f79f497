"""Comparing an array with its oracle and saying where they differ: the localisation behind
`jcnn.check_vjp`, written so that any per-layer check can reuse it (nothing here knows JAX).

A comparison passes when the largest absolute error is within the tolerance

.. math::  \\max_k |a_k - b_k| \\le \\mathrm{atol} + \\mathrm{rtol} \\max_k \\max(|a_k|, |b_k|)

(errors are measured against the array's largest magnitude, so that elements near zero do not
inflate them). A failing one says which element is worst, the two values there, a one-line
classification of the elements beyond the tolerance (everywhere, the border, a few rows,
columns or channels, where the primal has ties or zeros, scattered) and, for small arrays,
an ASCII map of the 2-D slice through the worst element.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import numpy as np

MAP_MAX = 40  # the largest side of a 2-D slice drawn as a map
FEW = 4  # at most this many indices are listed by value

# Axis words for the layouts jcnn uses; "spatial" are the two axes a map is drawn over.
LAYOUTS = {
    "NHWC": (("batch", "row", "column", "channel"), (1, 2)),
    "HWIO": (("kernel row", "kernel column", "in channel", "out channel"), (0, 1)),
    "matrix": (("row", "column"), (0, 1)),
    "vector": (("element",), ()),
}


class Comparison(NamedTuple):
    """The outcome of comparing `got` with `want`: errors, the tolerance, and where they lie."""
    max_abs: float
    max_rel: float  # max_abs / the largest magnitude of either array
    tol: float
    ok: bool
    where: str = ""  # for a failure: worst element, values, classification
    picture: str = ""  # for a failure on a small array: an ASCII map of one 2-D slice


def default_layout(ndim: int, name: str = "") -> str:
    """Rank 4 reads as NHWC (HWIO for an argument called w, kernel or weight); rank 2 as a
    matrix; rank 1 as a vector; other ranks have numbered axes."""
    if ndim == 4:
        return "HWIO" if name.lower() in ("w", "kernel", "weight", "weights") else "NHWC"
    return {2: "matrix", 1: "vector"}.get(ndim, "")


def _axis_words(ndim: int, layout: str) -> tuple[Sequence[str], Sequence[int]]:
    words, spatial = LAYOUTS.get(layout, ((), ()))
    if len(words) != ndim:
        return tuple(f"axis {a}" for a in range(ndim)), tuple(range(max(ndim - 2, 0), ndim))
    return words, spatial


def abs_errors(got, want) -> np.ndarray:
    """|got - want| in float64; NaN or inf in the same place on both sides counts as equal,
    in one place only as an infinite error."""
    a, b = np.asarray(got, np.float64), np.asarray(want, np.float64)
    with np.errstate(invalid="ignore"):
        err = np.abs(a - b)
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    return np.where(same, 0.0, np.where(np.isnan(err), np.inf, err))


def scale(*arrays) -> float:
    """The largest finite magnitude over the arrays."""
    finite = [np.abs(np.asarray(a, np.float64)) for a in arrays]
    return max((float(np.max(f, where=np.isfinite(f), initial=0.0)) for f in finite), default=0.0)


def compare(got, want, *, rtol: float, atol: float = 0.0, layout: Optional[str] = None,
            name: str = "", primal=None, leading: int = 0, leading_label: str = "cotangent",
            labels: tuple[str, str] = ("f", "reference")) -> Comparison:
    """Compare `got` with the oracle `want` (same shape).

    `layout` names the axes ("NHWC", "HWIO", "matrix", "vector"; guessed from the rank and
    `name` when None). `primal`, when it has the compared shape, lets the classification say
    "only where the primal has ties / zeros". The first `leading` axes index something else
    (`leading_label`: the sample of a cotangent, the output element of a Jacobian row): they
    are reduced away before classifying and mapping.
    """
    err = abs_errors(got, want)
    largest = scale(got, want)
    tol = atol + rtol * largest
    max_abs = float(err.max(initial=0.0))
    max_rel = max_abs / largest if largest > 0 else (0.0 if max_abs == 0 else np.inf)
    if max_abs <= tol:
        return Comparison(max_abs, max_rel, tol, True)
    shape = err.shape[leading:]
    layout = default_layout(len(shape), name) if layout is None else layout
    worst = np.unravel_index(int(np.argmax(err)), err.shape)
    bad = (err > tol).reshape(-1, *shape).any(axis=0)
    words, spatial = _axis_words(len(shape), layout)
    a, b = (float(np.asarray(v, np.float64)[worst]) for v in (got, want))
    where = (f"worst at {_at(name, worst, leading, leading_label)}: {labels[0]} {a:.6g}, "
             f"{labels[1]} {b:.6g}; " + classify(bad, words, spatial, primal))
    return Comparison(max_abs, max_rel, tol, False, where,
                      draw_map(bad, spatial, worst[leading:], name))


def _at(name: str, index: tuple, leading: int, leading_label: str) -> str:
    inner = f"{name or 'a'}[{', '.join(str(int(i)) for i in index[leading:])}]"
    if not leading:
        return inner
    return f"{leading_label} {', '.join(str(int(i)) for i in index[:leading])} -> {inner}"


def classify(bad: np.ndarray, words: Sequence[str], spatial: Sequence[int], primal=None) -> str:
    """One line on where the True elements of `bad` lie: every element, a single element,
    only some rows/columns/channels, only the border of the spatial axes, only where the
    primal is tied or zero, or scattered."""
    n_bad, n = int(bad.sum()), bad.size
    head = f"{n_bad} of {n} elements beyond tolerance"
    if n_bad == n:
        return f"every element ({n}) beyond tolerance"
    if n_bad == 1:
        return f"{head}: a single element"
    confined = _confined_axes(bad)
    parts = _value_hints(bad, primal)
    parts += _border(bad, [a for a in spatial if a not in confined], words)
    parts += [f"only {_plural(words[a], len(idx))} {_indices(idx, bad.shape[a])}"
              for a, idx in confined.items()]
    if not parts:
        parts = ["almost everywhere" if n_bad >= 0.9 * n else
                 "scattered (no border, row, column or channel pattern)"]
    return f"{head}: " + "; ".join(parts)


def _confined_axes(bad: np.ndarray) -> dict[int, np.ndarray]:
    """Axes along which the bad elements use at most half of the indices, and share some (a
    few scattered elements trivially use few indices: that says nothing)."""
    out = {}
    for a, size in enumerate(bad.shape):
        others = tuple(i for i in range(bad.ndim) if i != a)
        idx = np.flatnonzero(bad.any(axis=others))
        if size > 1 and len(idx) <= size // 2 and len(idx) < bad.sum():
            out[a] = idx
    return out


def _plural(word: str, count: int = 2) -> str:
    """"row" -> "rows", "batch" -> "batches", "axis 2" -> "indices of axis 2" (count > 1)."""
    if word.startswith("axis"):
        return f"{'index' if count == 1 else 'indices'} of {word}"
    return word if count == 1 else word + ("es" if word.endswith("ch") else "s")


def _indices(idx: np.ndarray, size: int) -> str:
    """`{0, 7} (the first and last of 8)`, `3 (the last of 4)`, `{2, 3, 4, ...} (5 of 9)`."""
    listed = ", ".join(str(int(i)) for i in idx[:FEW]) + (", ..." if len(idx) > FEW else "")
    text = listed if len(idx) == 1 else f"{{{listed}}}"
    ends = {0: "first", size - 1: "last"}
    if set(idx.tolist()) <= set(ends):
        return f"{text} (the {' and '.join(ends[int(i)] for i in idx)} of {size})"
    return f"{text} ({len(idx)} of {size})"


def _border(bad: np.ndarray, axes: Sequence[int], words: Sequence[str]) -> list[str]:
    """["only at the border (rows 0, 7; columns 0, 7)"] when every bad element lies within
    one or two (for sides >= 8) indices of an edge of one of `axes` and the interior is clean;
    said only of sides >= 5 and of 4 bad elements or more, where it cannot be a coincidence."""
    if not axes or any(bad.shape[a] < 5 for a in axes) or bad.sum() < 4:
        return []
    band = np.zeros(bad.shape, bool)
    sides = []
    for a in axes:
        size = bad.shape[a]
        width = 1 if size < 8 else 2
        edge = (np.arange(size) < width) | (np.arange(size) >= size - width)
        along = edge.reshape([-1 if i == a else 1 for i in range(bad.ndim)])
        band |= along
        others = tuple(i for i in range(bad.ndim) if i != a)
        hit = np.flatnonzero(edge & (bad & along).any(axis=others))
        if len(hit):
            sides.append(f"{_plural(words[a], len(hit))} {', '.join(str(int(i)) for i in hit)}")
    if band.all() or (bad & ~band).any():
        return []
    return [f"only at the border ({'; '.join(sides)}), interior clean"]


def _value_hints(bad: np.ndarray, primal) -> list[str]:
    """Whether every bad element sits where the primal is tied with another element or is 0."""
    if primal is None or np.shape(primal) != bad.shape:
        return []
    p = np.asarray(primal, np.float64)
    _, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
    hints = []
    for mask, what in ((counts[inverse.reshape(p.shape)] > 1, "the primal has tied values"),
                       (p == 0, "the primal is exactly 0")):
        if mask.any() and not mask.all() and not (bad & ~mask).any():
            hints.append(f"only where {what} ({int(mask.sum())} such elements)")
    return hints[:1]


def draw_map(bad: np.ndarray, spatial: Sequence[int], at: tuple, name: str = "") -> str:
    """The 2-D slice of `bad` over the `spatial` axes through index `at` ('#' beyond
    tolerance, '.' within); a vector draws as one line; empty when too large to read."""
    if len(spatial) == 0 and bad.ndim == 1 and bad.size <= 2 * MAP_MAX:
        return f"map of {name or 'a'}[:] ('#' beyond tolerance): " + "".join(
            "#" if b else "." for b in bad)
    if len(spatial) != 2 or any(bad.shape[a] > MAP_MAX for a in spatial):
        return ""
    index = tuple(slice(None) if a in spatial else int(at[a]) for a in range(bad.ndim))
    plane = bad[index]
    label = ", ".join(":" if isinstance(i, slice) else str(i) for i in index)
    lines = ["".join("#" if b else "." for b in row) for row in plane]
    return (f"map of {name or 'a'}[{label}] ('#' beyond tolerance, '.' within):\n"
            + "\n".join("  " + line for line in lines))
