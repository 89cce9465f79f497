"""jcnn.jvp / linearize / jacfwd / hessian against jax's own on the `jcnn.reference` twins.

`jax.jvp` cannot run through a `custom_vjp`, so each case builds the same function twice, from
jcnn's ops and from their autodiff twins, and compares jcnn's forward mode on the first with
jax's on the second (float64, eagerly and under jit)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jcnn
from jcnn import reference

RTOL, ATOL = 1e-10, 1e-12


def _model(m):
    """conv2d -> relu -> max_pool2d -> flatten -> dense -> softmax_cross_entropy, in ops `m`."""
    def loss(x, params, labels):
        h = m.conv2d(x, params["w"], params["b"], padding=1)
        h = m.max_pool2d(m.relu(h), 2)
        return m.softmax_cross_entropy(m.dense(m.flatten(h), params["wd"]), labels)
    return loss


# name: (function of the ops module m, argument shapes; "labels" is an int argument)
CASES = {
    "conv2d": (lambda m: lambda x, w, b: m.conv2d(x, w, b, stride=2, padding=1),
               [(2, 5, 5, 2), (3, 3, 2, 3), (3,)]),
    "conv_transpose2d": (lambda m: lambda x, w: m.conv_transpose2d(x, w, stride=2, padding=1,
                                                                   output_padding=1),
                         [(1, 3, 3, 3), (3, 3, 2, 3)]),
    "dense": (lambda m: m.dense, [(3, 4), (4, 2), (2,)]),
    "relu": (lambda m: m.relu, [(2, 3, 3, 1)]),
    "tanh": (lambda m: m.tanh, [(3, 4)]),
    "gelu": (lambda m: lambda x: m.gelu(x, approximate=False), [(3, 4)]),
    "max_pool2d": (lambda m: lambda x: m.max_pool2d(x, 3, 2, 1), [(1, 5, 5, 2)]),
    "avg_pool2d": (lambda m: lambda x: m.avg_pool2d(x, 2, 1), [(1, 4, 4, 2)]),
    "batch_norm": (lambda m: m.batch_norm, [(4, 2, 2, 2), (2,), (2,)]),
    "log_softmax": (lambda m: m.log_softmax, [(3, 5)]),
    "softmax_cross_entropy": (lambda m: m.softmax_cross_entropy, [(3, 5), "labels"]),
    "model": (_model, [(2, 4, 4, 1), {"w": (3, 3, 1, 2), "b": (2,), "wd": (8, 3)}, "labels"]),
}


def _random(shapes, rng, dtype=np.float64):
    def make(shape):
        if shape == "labels":
            return None
        return jnp.asarray(rng.standard_normal(shape), dtype)
    args = jax.tree.map(make, shapes, is_leaf=lambda s: isinstance(s, (tuple, str)))
    return args


def _args(name, rng, dtype=np.float64):
    """Primals and tangents for CASES[name] (labels: one per row of the first argument)."""
    build, shapes = CASES[name]
    primals, tangents = list(_random(shapes, rng, dtype)), list(_random(shapes, rng, dtype))
    for i, s in enumerate(shapes):
        if s == "labels":
            n = primals[0].shape[0]
            primals[i] = jnp.asarray(rng.integers(0, 3, n), jnp.int32)
            tangents[i] = np.zeros((n,), jax.dtypes.float0)
    return build(jcnn), build(reference), tuple(primals), tuple(tangents)


def _close(got, want, rtol=RTOL, atol=ATOL):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert np.shape(g) == np.shape(w)
        assert jnp.result_type(g) == jnp.result_type(w)
        if jnp.result_type(w) != jax.dtypes.float0:
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol)


def _float_argnums(primals):
    return tuple(i for i, p in enumerate(primals)
                 if not hasattr(p, "dtype") or p.dtype != jnp.int32)


def _maybe_jit(f, jit, **kw):
    return jax.jit(f, **kw) if jit else f


def _jit_or_slow_eager(names, eager_model: bool = True) -> list:
    """(name, jit) pairs: every name jitted; eagerly only the model by default (the per-op
    eager runs, the same rules dispatched op by op, with --runslow)."""
    return [pytest.param(n, j, id=f"{n}-{'jit' if j else 'eager'}",
                         marks=[pytest.mark.slow] if not (j or n == "model" and eager_model)
                         else [])
            for n in names for j in (False, True)]


@pytest.mark.parametrize("name, jit", _jit_or_slow_eager(list(CASES)))
def test_jvp_matches_jax_jvp_of_the_reference(name, jit, rng):
    f, ref, primals, tangents = _args(name, rng)
    got = _maybe_jit(lambda p, t: jcnn.jvp(f, p, t), jit)(primals, tangents)
    _close(got, jax.jit(lambda p, t: jax.jvp(ref, p, t))(primals, tangents))


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", ["conv2d", "max_pool2d", "batch_norm", "model"])
def test_linearize_matches_jax_linearize(name, jit, rng):
    f, ref, primals, tangents = _args(name, rng)
    y, f_jvp = jcnn.linearize(f, *primals)
    y_ref, ref_jvp = jax.linearize(ref, *primals)
    _close(y, y_ref)
    # the same linear map at two tangents, and at their sum
    _, other = _args(name, np.random.default_rng(1))[2:]
    for t in (tangents, other):
        _close(_maybe_jit(f_jvp, jit)(*t), ref_jvp(*t))
    both = jax.tree.map(lambda a, b: a if a.dtype == jax.dtypes.float0 else a + b, tangents, other)
    _close(f_jvp(*both), ref_jvp(*both))


@pytest.mark.parametrize("argnums", ["first", "all"])
@pytest.mark.parametrize("name, jit", _jit_or_slow_eager(  # the eager model: jvp's test
    ["conv2d", "dense", "relu", "max_pool2d", "batch_norm", "softmax_cross_entropy", "model"],
    eager_model=False))
def test_jacfwd_matches_jax_jacfwd(name, jit, argnums, rng):
    f, ref, primals, _ = _args(name, rng)
    nums = 0 if argnums == "first" else _float_argnums(primals)
    got = _maybe_jit(jcnn.jacfwd(f, nums), jit)(*primals)
    _close(got, jax.jit(jax.jacfwd(ref, nums))(*primals))


@pytest.mark.parametrize("name, jit", [("softmax_cross_entropy", False),
                                       ("softmax_cross_entropy", True), ("model", True)],
                         ids=["softmax_cross_entropy-eager", "softmax_cross_entropy-jit",
                              "model-jit"])
def test_hessian_matches_jax_hessian(name, jit, rng):
    f, ref, primals, _ = _args(name, rng)
    nums = _float_argnums(primals)
    _close(_maybe_jit(jcnn.hessian(f, nums), jit)(*primals),
           jax.jit(jax.hessian(ref, nums))(*primals))
    _close(_maybe_jit(jcnn.hessian(f), jit)(*primals), jax.jit(jax.hessian(ref))(*primals))


@pytest.mark.parametrize("name", ["conv2d", "batch_norm", "relu"])
def test_hessian_of_a_scalar_of_an_op(name, rng):
    f, ref, primals, _ = _args(name, rng)
    nums = _float_argnums(primals)
    ct = jnp.asarray(rng.standard_normal(np.shape(ref(*primals))))
    loss = lambda g: lambda *a: jnp.vdot(jnp.sin(g(*a)), ct)  # noqa: E731  (nonzero curvature)
    _close(jax.jit(jcnn.hessian(loss(f), nums))(*primals),
           jax.jit(jax.hessian(loss(ref), nums))(*primals))


def test_float32_stays_float32(rng):
    f, ref, primals, tangents = _args("model", rng, np.float32)
    y, t = jcnn.jvp(f, primals, tangents)
    y_ref, t_ref = jax.jvp(ref, primals, tangents)
    assert y.dtype == t.dtype == jnp.float32
    _close((y, t), (y_ref, t_ref), rtol=1e-5, atol=1e-6)
    jac = jax.jit(jcnn.jacfwd(f, 1))(*primals)
    assert all(j.dtype == jnp.float32 for j in jax.tree.leaves(jac))
    _close(jac, jax.jit(jax.jacfwd(ref, 1))(*primals), rtol=1e-4, atol=1e-6)


def test_integer_outputs_get_float0_tangents(rng):
    x, t = (jnp.asarray(rng.standard_normal((2, 4, 4, 1))) for _ in range(2))
    f = lambda x: (jcnn.max_pool2d(x, 2), jnp.argmax(x.reshape(2, -1), axis=1))  # noqa: E731
    (y, idx), (ty, tidx) = jcnn.jvp(f, (x,), (t,))
    (_, idx_ref), (ty_ref, tidx_ref) = jax.jvp(
        lambda x: (reference.max_pool2d(x, 2), jnp.argmax(x.reshape(2, -1), axis=1)), (x,), (t,))
    _close((idx, ty, tidx), (idx_ref, ty_ref, tidx_ref))


def test_has_aux(rng):
    f, ref, primals, tangents = _args("dense", rng)
    aux_f = lambda *a: (f(*a), {"n": a[0].shape[0]})  # noqa: E731
    aux_ref = lambda *a: (ref(*a), {"n": a[0].shape[0]})  # noqa: E731
    y, t, aux = jcnn.jvp(aux_f, primals, tangents, has_aux=True)
    _close((y, t), jax.jvp(ref, primals, tangents))
    assert aux == {"n": 3}
    y, f_jvp, aux = jcnn.linearize(aux_f, *primals, has_aux=True)
    _close(f_jvp(*tangents), jax.jvp(ref, primals, tangents)[1])
    jac, aux = jcnn.jacfwd(aux_f, (0, 1), has_aux=True)(*primals)
    _close(jac, jax.jacfwd(aux_ref, (0, 1), has_aux=True)(*primals)[0])
    assert aux == {"n": 3}


def test_jit_and_vmap_of_jvp(rng):
    f, ref, primals, tangents = _args("conv2d", rng)
    xs = jnp.stack([primals[0], 2 * primals[0]])
    got = jax.jit(jax.vmap(lambda x: jcnn.jvp(f, (x, *primals[1:]), tangents)))(xs)
    want = jax.vmap(lambda x: jax.jvp(ref, (x, *primals[1:]), tangents))(xs)
    _close(got, want)


@pytest.mark.parametrize("primals, tangents, error, match", [
    ((jnp.ones(3),), (jnp.ones(4),), ValueError, r"shape \(3,\) got a tangent of shape \(4,\)"),
    ((jnp.ones(3),), (jnp.ones(3, jnp.float32),), TypeError, "dtype float64 needs a tangent of "
     "dtype float64, got float32"),
    ((jnp.ones(3),), (jnp.ones(3), jnp.ones(3)), TypeError, "same tree structure"),
    ((jnp.ones(3), jnp.ones(3, jnp.int32)), (jnp.ones(3), jnp.ones(3)), TypeError,
     "dtype int32 needs a tangent of dtype float0"),
    (jnp.ones(3), (jnp.ones(3),), TypeError, "primals must be a tuple or a list"),
], ids=["shape", "dtype", "structure", "int-primal", "not-a-tuple"])
def test_mismatched_tangents_raise_one_line(primals, tangents, error, match):
    f = lambda *a: jcnn.relu(a[0])  # noqa: E731
    with pytest.raises(error, match=match) as info:
        jcnn.jvp(f, primals, tangents)
    assert "\n" not in str(info.value)
    if isinstance(primals, tuple):
        _, f_jvp = jcnn.linearize(f, *primals)
        with pytest.raises(error, match=match):
            f_jvp(*tangents)


def test_jacfwd_rejects_integer_inputs():
    with pytest.raises(TypeError, match="jacfwd requires real-valued inputs"):
        jcnn.jacfwd(lambda x: x * 2)(jnp.ones(3, jnp.int32))


def test_jax_jvp_itself_cannot_run_through_the_rules():
    """What this module is for: without it, forward mode of a jcnn op fails."""
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(jcnn.relu, (jnp.ones(3),), (jnp.ones(3),))
