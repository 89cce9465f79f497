"""`check_model`: which layer of a model has a wrong gradient?

Runs two builds of one model side by side, layer by layer: `model` (hand-derived rules, e.g.
built with `ops=jcnn`, or holding a user's own `custom_vjp` layer) and `reference` (the same
architecture whose gradients are trusted, e.g. `ops=jcnn.reference`). Each layer is checked
with `jcnn.check_vjp` on its own input, as a function of its params and that input; a
combinator (`serial`, `residual`) that fails is opened up, so the report names the innermost
layer at fault, e.g. `2_serial/0_residual/body/3_conv2d`.
"""
from __future__ import annotations

import inspect
import re
from typing import Any, NamedTuple, Optional

import jax

from jcnn.check.report import CheckFailed, Report
from jcnn.check.vjp import check_vjp
from jcnn.layers import Layer, split_key


class LayerResult(NamedTuple):
    path: str  # "3_hardtanh", or "2_serial/0_residual/body/0_conv2d" inside combinators
    ok: bool
    report: Report


class ModelReport(NamedTuple):
    layers: tuple[LayerResult, ...]  # every layer checked, in order, combinators opened on failure

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.layers)

    @property
    def culprit(self) -> Optional[LayerResult]:
        """The first failing layer that has no failing layer inside it."""
        failing = [r for r in self.layers if not r.ok]
        leaves = [r for r in failing if not any(o.path.startswith(r.path + "/") for o in failing)]
        return leaves[0] if leaves else None

    def __str__(self) -> str:
        lines = [f"{'layer':<44}result"]
        lines += [f"{r.path[:43]:<44}{'ok' if r.ok else 'FAIL'}" for r in self.layers]
        if self.culprit is not None:
            lines += ["", f"first wrong layer: {self.culprit.path}", str(self.culprit.report)]
        return "\n".join(lines)


def check_model(model: Layer, reference: Layer, params: Any, state: Any, x: jax.Array, *,
                train: bool = True, key: Optional[jax.Array] = None,
                raise_on_failure: bool = True, **options) -> ModelReport:
    """Check every layer of `model` against the same layer of `reference`.

    Args:
      model, reference: two builds of one architecture (same structure, same params).
      params, state: the model's, from `model.init`.
      x: a batch of inputs, e.g. `(N, H, W, C)`. Each layer's input is what `reference`
        computes up to it, so a wrong forward in one layer does not hide the next one.
      train: run the layers in training mode (batch statistics, dropout with `key`).
      options: passed to `check_vjp` (order, rtol, atol, samples, taylor_test, ...).

    Returns a `ModelReport`; raises `CheckFailed` (an AssertionError, as `check_vjp` does)
    naming the first wrong layer, with the `ModelReport` as `.report`, when `raise_on_failure`
    and any layer disagrees.
    """
    results: list[LayerResult] = []
    if model.layers:
        _children(model, reference, params, state, x, train, key, "", results, options)
    else:
        _check(model, reference, params, state, x, train, key, model.name, results, options)
    report = ModelReport(tuple(results))
    if raise_on_failure and not report.ok:
        raise CheckFailed(report, f"check_model: the gradients of layer {report.culprit.path} "
                                  f"disagree with the reference")
    return report


def _children(layer, ref, params, state, x, train, key, prefix, results, options) -> None:
    """Check each sub-layer of a combinator on the input it receives there."""
    if len(params) != len(layer.layers) or len(ref.layers) != len(layer.layers):
        raise ValueError(f"check_model: {prefix or 'the model'} has {len(layer.layers)} "
                         f"sub-layers but reference has {len(ref.layers)}: build both the same way")
    keys = split_key(key, len(layer.layers))
    for name, child, ref_child, k in zip(params, layer.layers, ref.layers, keys):
        _check(child, ref_child, params[name], state[name], x, train, k, prefix + name, results,
               options)
        if layer.name == "serial":  # residual branches all read the same x
            x = ref_child.apply(params[name], state[name], x, train=train, key=k)[0]


def _arg_names(paths: list[str]) -> list[str]:
    """Identifiers for check_vjp's rows: each param leaf's own key ("w", "b": the name also
    tells check_vjp a kernel's HWIO layout) where that is unique, else its whole path
    ("body_0_conv2d_w"); then "x" for the input."""
    last = [p.rsplit("/", 1)[-1] for p in paths]
    names = [n if last.count(n) == 1 else p for n, p in zip(last, paths)] + ["x"]
    names = [re.sub(r"\W", "_", n) for n in names]
    names = [n if n.isidentifier() else "p" + n for n in names]  # "0_conv2d_w" -> "p0_conv2d_w"
    return [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]


def _check(layer, ref, params, state, x, train, key, path, results, options) -> None:
    with_paths, tree = jax.tree_util.tree_flatten_with_path(params)
    leaves = [leaf for _, leaf in with_paths]
    names = _arg_names([jax.tree_util.keystr(k, simple=True, separator="/")
                        for k, _ in with_paths])

    def as_function(which: Layer):
        def f(*args):
            p = jax.tree_util.tree_unflatten(tree, args[:-1])
            return which.apply(p, state, args[-1], train=train, key=key)[0]
        f.__name__ = path
        f.__signature__ = inspect.Signature(  # check_vjp names its rows from the signature
            [inspect.Parameter(n, inspect.Parameter.POSITIONAL_ONLY) for n in names])
        return f

    report = check_vjp(as_function(layer), as_function(ref), *leaves, x,
                       raise_on_failure=False, **options)
    results.append(LayerResult(path, report.ok, report))
    if not report.ok and layer.layers:
        _children(layer, ref, params, state, x, train, key, path + "/", results, options)
