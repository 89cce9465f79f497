"""Forward mode through jcnn's hand rules: `jvp`, `linearize`, `jacfwd`, `hessian`.

A `jax.custom_vjp` function has a backward rule and no forward one, so `jax.jvp`, `jax.jacfwd`
and `jax.hessian` of anything built from jcnn ops fail ("can't apply forward-mode autodiff
(jvp) to a custom_vjp function"). These four take and return what the `jax` functions of the
same names do, and compute them through jcnn's backward rules.

How: the JVP is the transpose of the VJP. With `y, vjp_fn = jax.vjp(f, *primals)`,
`vjp_fn(u) = J^T u` is linear in the output cotangent u, so its own VJP at any u, applied to a
tangent t, is `(J^T)^T t = J t`:

    _, vjp_of_vjp = jax.vjp(vjp_fn, u0)      # u0 = zeros: the result does not depend on it
    (J t,) = vjp_of_vjp(t)

(the "double-vjp" trick). It needs only second-order reverse mode, which every jcnn rule
supports (each backward is written with differentiable ops or other jcnn rules).
`jax.linear_transpose(vjp_fn, ...)` would skip the differentiation of the backward, but it
cannot transpose a `custom_vjp` call that sits inside a backward rule: it fails for conv2d
(whose backward calls `_conv2d_dx` / `_conv2d_dw`), dense and batch_norm ("Transpose rule ...
for 'custom_vjp_call' not implemented", jax 0.10.2), so the double vjp is used everywhere.

Cost, against `jax.jvp` of the `jcnn.reference` twin (one forward pass carrying tangents):
the double vjp runs the forward, keeps its residuals, and runs the transpose of the backward
rules on t, which is about the work of one backward pass; the backward on u0 itself is dead
code that XLA removes under `jit` (benchmarks/RESULTS.md has a small CNN's timings).
`linearize` pays the forward once and each later `f_jvp` call only the transposed backward.

`hessian` is `jacrev(jacrev(f))` (reverse over reverse, second order, as every jcnn rule
supports); `jacfwd(jacrev(f))`, what `jax.hessian` does, would be a double vjp of a gradient:
third order. Both give the same nested layout.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["jvp", "linearize", "jacfwd", "hessian"]


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _float0_zeros(x: Any) -> np.ndarray:
    return np.zeros(np.shape(x), jax.dtypes.float0)


def _dtype_name(dtype) -> str:
    return "float0" if dtype == jax.dtypes.float0 else str(dtype)


def _check_tangents(name: str, primals: Sequence[Any], tangents: Sequence[Any]) -> None:
    """Raise as jax.jvp does: TypeError for a structure or dtype mismatch, ValueError for a
    shape mismatch, each in one line naming both sides."""
    p_tree, t_tree = jax.tree.structure(tuple(primals)), jax.tree.structure(tuple(tangents))
    if p_tree != t_tree:
        raise TypeError(f"{name}: primals and tangents must have the same tree structure, "
                        f"got {p_tree} and {t_tree}")
    for p, t in zip(jax.tree.leaves(tuple(primals)), jax.tree.leaves(tuple(tangents))):
        p_dtype, t_dtype = jnp.result_type(p), jnp.result_type(t)
        want = p_dtype if _is_float(p) else jax.dtypes.float0
        if t_dtype != want:
            raise TypeError(f"{name}: a primal of dtype {_dtype_name(p_dtype)} needs a "
                            f"tangent of dtype {_dtype_name(want)}, got {_dtype_name(t_dtype)}")
        if np.shape(p) != np.shape(t):
            raise ValueError(f"{name}: a primal of shape {np.shape(p)} got a tangent of "
                             f"shape {np.shape(t)}")


def _pushforward(fun: Callable, primals: Sequence[Any], has_aux: bool):
    """(y, push, aux): y = fun(*primals) and push(tangents) = J tangents, through the rules.

    Only the floating leaves are differentiated: the others (int labels, keys) are closed over,
    get float0 tangents in and give float0 tangents out."""
    flat, tree = jax.tree.flatten(tuple(primals))
    is_float = [_is_float(p) for p in flat]
    diff = [p for p, f in zip(flat, is_float) if f]

    def of_floats(*floats):
        it = iter(floats)
        return fun(*jax.tree.unflatten(tree, [next(it) if f else p
                                              for p, f in zip(flat, is_float)]))

    if has_aux:
        y, vjp_fn, aux = jax.vjp(of_floats, *diff, has_aux=True)
    else:
        (y, vjp_fn), aux = jax.vjp(of_floats, *diff), None
    y_flat, y_tree = jax.tree.flatten(y)
    y_float = [_is_float(v) for v in y_flat]

    def transposed(*u_floats):  # J^T u over the floating outputs: linear in u
        it = iter(u_floats)
        u = [next(it) if f else _float0_zeros(v) for v, f in zip(y_flat, y_float)]
        return vjp_fn(jax.tree.unflatten(y_tree, u))

    u0 = [jnp.zeros(np.shape(v), jnp.result_type(v)) for v, f in zip(y_flat, y_float) if f]
    _, vjp_of_vjp = jax.vjp(transposed, *u0)

    def push(tangents):
        t_flat = jax.tree.leaves(tuple(tangents))
        t_diff = tuple(t for t, f in zip(t_flat, is_float) if f)
        out = iter(vjp_of_vjp(t_diff) if u0 else ())
        return jax.tree.unflatten(y_tree, [next(out) if f else _float0_zeros(v)
                                           for v, f in zip(y_flat, y_float)])
    return y, push, aux


def _as_tuple(name: str, what: str, value: Any) -> tuple:
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"{name}: {what} must be a tuple or a list, got {type(value).__name__}")
    return tuple(value)


def jvp(fun: Callable, primals: Sequence[Any], tangents: Sequence[Any],
        has_aux: bool = False) -> tuple:
    """`(fun(*primals), J tangents)`, as `jax.jvp`, computed through jcnn's backward rules.

    Args:
      fun: a function of arrays (pytrees of arrays), built from jcnn ops and jax.numpy.
      primals: a tuple or list, one entry per positional argument of `fun`.
      tangents: the same structure, shapes and dtypes as `primals` (float0 for integer or
        boolean primals).
      has_aux: `fun` returns `(out, aux)`; aux is returned third, not differentiated.

    Returns:
      `(primals_out, tangents_out)`, or `(primals_out, tangents_out, aux)` with has_aux.
      Integer outputs get float0 tangents.
    """
    primals = _as_tuple("jvp", "primals", primals)
    tangents = _as_tuple("jvp", "tangents", tangents)
    _check_tangents("jvp", primals, tangents)
    y, push, aux = _pushforward(fun, primals, has_aux)
    return (y, push(tangents), aux) if has_aux else (y, push(tangents))


def linearize(fun: Callable, *primals: Any, has_aux: bool = False) -> tuple:
    """`(fun(*primals), f_jvp)`, as `jax.linearize`: `f_jvp(*tangents)` is the JVP at the
    primals, computed through jcnn's backward rules. The forward runs once, here; each call of
    f_jvp runs only the transpose of the backward on its tangents.

    With has_aux, returns `(primals_out, f_jvp, aux)`.
    """
    y, push, aux = _pushforward(fun, primals, has_aux)

    def f_jvp(*tangents: Any) -> Any:
        _check_tangents("linearize", primals, tangents)
        return push(tangents)
    return (y, f_jvp, aux) if has_aux else (y, f_jvp)


def _argnums(argnums: int | Sequence[int], n_args: int, name: str) -> tuple[int, ...]:
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    for a in nums:
        if not isinstance(a, int) or not -n_args <= a < n_args:
            raise ValueError(f"{name}: argnums {argnums!r} out of range for {n_args} "
                             "positional arguments")
    return tuple(a % n_args for a in nums)


def jacfwd(fun: Callable, argnums: int | Sequence[int] = 0,
           has_aux: bool = False) -> Callable:
    """The Jacobian of `fun` column by column, as `jax.jacfwd`: one JVP (through jcnn's rules)
    per input element, batched with `jax.vmap`.

    Returns a function of `fun`'s arguments whose result has `fun`'s output structure; each
    output leaf holds, for an int argnums, the structure of that argument, for a tuple, a tuple
    of them, with leaves of shape `out.shape + in.shape`. With has_aux: `(jacobian, aux)`.
    """
    def jacfun(*args: Any) -> Any:
        nums = _argnums(argnums, len(args), "jacfwd")
        dyn = tuple(args[a] for a in nums)
        leaves, in_tree = jax.tree.flatten(dyn)
        for leaf in leaves:
            if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
                raise TypeError("jacfwd requires real-valued inputs (a floating dtype), got "
                                f"{jnp.result_type(leaf)}; use jcnn.jvp for integer inputs")

        def of_dyn(*d):
            full = list(args)
            for a, v in zip(nums, d):
                full[a] = v
            return fun(*full)

        sizes = [int(np.size(leaf)) for leaf in leaves]
        eye = jnp.eye(sum(sizes), dtype=jnp.result_type(*leaves))
        offsets = np.cumsum([0] + sizes)
        basis = [eye[:, lo:hi].reshape(-1, *np.shape(leaf)).astype(jnp.result_type(leaf))
                 for leaf, lo, hi in zip(leaves, offsets[:-1], offsets[1:])]

        def push(*cols):
            return jvp(of_dyn, dyn, jax.tree.unflatten(in_tree, cols), has_aux=has_aux)
        outs = jax.vmap(push, out_axes=(None, 0, None) if has_aux else (None, 0))(*basis)
        y, cols, aux = outs if has_aux else (*outs, None)

        def unravel(out_leaf, col):  # col: (n_in, *out.shape) -> per input leaf out + in shape
            parts = [jnp.moveaxis(col[lo:hi], 0, -1).reshape(*np.shape(out_leaf),
                                                             *np.shape(leaf))
                     for leaf, lo, hi in zip(leaves, offsets[:-1], offsets[1:])]
            tree = jax.tree.unflatten(in_tree, parts)
            return tree[0] if isinstance(argnums, int) else tree
        jac = jax.tree.map(unravel, y, cols)
        return (jac, aux) if has_aux else jac
    return jacfun


def hessian(fun: Callable, argnums: int | Sequence[int] = 0,
            has_aux: bool = False) -> Callable:
    """The Hessian of a scalar `fun`, as `jax.hessian` (same nested layout: for a tuple
    argnums `H[i][j]` is d^2 f / d x_i d x_j, leaves of shape `x_i.shape + x_j.shape`),
    computed as `jax.jacrev(jax.jacrev(fun))`: reverse over reverse, second order through
    jcnn's rules (forward over reverse would be third order here)."""
    return jax.jacrev(jax.jacrev(fun, argnums, has_aux=has_aux), argnums, has_aux=has_aux)
