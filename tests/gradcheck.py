"""Gradient comparisons shared by the op tests: hand rule vs `jcnn.reference` autodiff (first
and second order, random cotangents) and central finite differences in float64.

Kept independent of `jcnn.check_vjp` on purpose: the op tests must not trust the verifier they
are also used to validate.
"""
import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

TOL = {jnp.float64: 1e-9, jnp.float32: 2e-4, jnp.bfloat16: 5e-2, jnp.float16: 1e-2}


def tol(dtype):
    return TOL[jnp.dtype(dtype).type]


def restrict(fn, args, argnums):
    """`fn` as a function of args[argnums] only, the other arguments held fixed."""
    def g(*diff):
        full = list(args)
        for i, a in zip(argnums, diff):
            full[i] = a
        return fn(*full)
    return g


def pulled(f, ct, *args):
    """f(*args) and its cotangents for the output cotangent ct, jit-compiled whole: one compile,
    not one per primitive (the suite is compile-bound)."""
    def y_and_cotangents(ct, *args):
        y, pull = jax.vjp(f, *args)
        return y, pull(ct)
    return jax.jit(y_and_cotangents)(ct, *args)


def vjp_both(f, ref, args, argnums, seed=0):
    """Outputs and cotangents of f and ref w.r.t. args[argnums] for one random output cotangent."""
    diff = [args[i] for i in argnums]
    out = jax.eval_shape(restrict(f, args, argnums), *diff)
    ct = jnp.asarray(np.random.default_rng(seed).standard_normal(out.shape), out.dtype)
    (y, d), (y_ref, d_ref) = (pulled(restrict(fn, args, argnums), ct, *diff) for fn in (f, ref))
    return y, y_ref, d, d_ref


def assert_matches_reference(f, ref, args, argnums, *, rtol=None, seed=0):
    """Forward and first-order cotangents of `f` equal those of the autodiff twin `ref`;
    cotangents come back in the primal's dtype."""
    y, y_ref, d, d_ref = vjp_both(f, ref, args, argnums, seed)
    rtol = tol(jnp.result_type(y)) if rtol is None else rtol
    np.testing.assert_allclose(np.asarray(y, np.float64), np.asarray(y_ref, np.float64),
                               rtol=rtol, atol=rtol)
    for i, a, b in zip(argnums, d, d_ref):
        assert a.dtype == args[i].dtype, (f"cotangent of arg {i} is {a.dtype}, "
                                          f"primal {args[i].dtype}")
        _close(a, b, rtol, f"argument {i}")


def _close(a, b, rtol, what):
    scale = max(1.0, float(np.abs(np.asarray(b, np.float64)).max(initial=0)))
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               rtol=rtol, atol=rtol * scale, err_msg=what)


def assert_second_order_matches(f, ref, args, argnums, *, rtol=None, seed=1):
    """The gradient of <y, c> + <vjp(f)(ct), u>, y = f(x) as the vjp computes it, w.r.t. all
    the inputs jointly equals the same for `ref`: reverse over reverse through the hand rule,
    the forward rule's output included (a rule whose forward computes y by autodiff-able ops
    of its own, e.g. `jnp.maximum`, is differentiated by those at a tie, not by the rule),
    agrees with autodiff of the pure forward (JAX #21220)."""
    rng = np.random.default_rng(seed)
    diff = [args[i] for i in argnums]
    out = jax.eval_shape(restrict(ref, args, argnums), *diff)
    ct, c = (jnp.asarray(rng.standard_normal(out.shape), out.dtype) for _ in range(2))
    us = [jnp.asarray(rng.standard_normal(np.shape(a)), a.dtype) for a in diff]

    def scalar(fn):
        def s(*d):
            y, pull = jax.vjp(restrict(fn, args, argnums), *d)
            return jnp.vdot(y, c) + sum(jnp.vdot(g, u) for g, u in zip(pull(ct), us))
        return s

    every = tuple(range(len(diff)))
    got = jax.jit(jax.grad(scalar(f), argnums=every))(*diff)
    want = jax.jit(jax.grad(scalar(ref), argnums=every))(*diff)
    rtol = tol(out.dtype) * 10 if rtol is None else rtol
    for i, a, b in zip(argnums, got, want):
        _close(a, b, rtol, f"second order, argument {i}")


def assert_finite_differences(f, args, argnums, order=1):
    """Central finite differences in float64 on random directions (reverse mode only:
    custom_vjp has no forward mode)."""
    check_grads(jax.jit(restrict(f, args, argnums)), [args[i] for i in argnums], order=order,
                modes=["rev"], atol=1e-5, rtol=1e-5, eps=1e-6)


def lowered(f, platform: str, *args) -> str:
    """f's StableHLO as lowered for `platform`, whatever this host's default backend: the
    platform `jcnn/forms/` chooses its forms by."""
    return jax.jit(f).trace(*args).lower(lowering_platforms=(platform,)).as_text()


def cpu_text(f, *args) -> str:
    return lowered(f, "cpu", *args)
