"""Dense, activations, batch-norm, dropout, log-softmax and cross-entropy: each rule against
autodiff of jcnn.reference (first and second order), float64 finite differences, and the NumPy
loops where they exist; plus the semantics the rules must keep (relu at 0, dropout's mask)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jcnn
from jcnn import naive, reference
from gradcheck import (assert_finite_differences, assert_matches_reference,
                       assert_second_order_matches)


def arr(*shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed + len(shape)).standard_normal(shape))


LABELS = jnp.array([0, 3, 1, 2, 3])
CASES = [  # (id, op name, args, argnums, kwargs)
    ("dense-rank1", "dense", (arr(5), arr(5, 3), arr(3)), (0, 1, 2), {}),
    ("dense-rank2", "dense", (arr(4, 5), arr(5, 3), arr(3)), (0, 1, 2), {}),
    ("dense-rank4-nobias", "dense", (arr(2, 3, 2, 5), arr(5, 3)), (0, 1), {}),
    ("relu", "relu", (arr(3, 7),), (0,), {}),
    ("leaky_relu", "leaky_relu", (arr(3, 7),), (0,), {"negative_slope": 0.2}),
    ("sigmoid", "sigmoid", (arr(3, 7),), (0,), {}),
    ("tanh", "tanh", (arr(3, 7),), (0,), {}),
    ("gelu-tanh", "gelu", (arr(3, 7),), (0,), {"approximate": True}),
    ("gelu-erf", "gelu", (arr(3, 7),), (0,), {"approximate": False}),
    ("batch_norm-NC", "batch_norm", (arr(8, 5), arr(5), arr(5)), (0, 1, 2), {}),
    ("batch_norm-NHWC", "batch_norm", (arr(3, 4, 4, 2), arr(2), arr(2)), (0, 1, 2), {}),
    ("batch_norm-N1-eps0", "batch_norm", (arr(1, 3, 3, 2), arr(2), arr(2)), (0, 1, 2), {"eps": 0.0}),
    ("log_softmax", "log_softmax", (arr(4, 6),), (0,), {}),
    ("xent-N", "softmax_cross_entropy", (arr(5, 4), LABELS), (0,), {}),
    ("xent-NT", "softmax_cross_entropy", (arr(2, 3, 4), jnp.array([[0, 1, 3], [2, 2, 0]])), (0,), {}),
    ("flatten", "flatten", (arr(2, 3, 2),), (0,), {}),
]


def bound(module, op, kwargs):
    return lambda *a: getattr(module, op)(*a, **kwargs)


@pytest.mark.parametrize("_, op, args, argnums, kwargs", CASES, ids=[c[0] for c in CASES])
def test_against_autodiff_and_finite_differences(_, op, args, argnums, kwargs):
    f, ref = bound(jcnn, op, kwargs), bound(reference, op, kwargs)
    assert_matches_reference(f, ref, args, argnums)
    assert_second_order_matches(f, ref, args, argnums)
    assert_finite_differences(f, args, argnums, order=2)


@pytest.mark.parametrize("bias", [True, False])
def test_dense_against_the_loops(bias):
    x, w, b = arr(2, 3, 5), arr(5, 4), arr(4) if bias else None
    g = np.asarray(arr(2, 3, 4, seed=9))
    y, pull = jax.vjp(lambda x, w: jcnn.dense(x, w, b), x, w)
    y_loops, dx, dw, db = naive.dense_backward(x, w, b, g)
    np.testing.assert_allclose(y, y_loops, rtol=1e-12)
    for got, want in zip(pull(jnp.asarray(g)), (dx, dw)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    if bias:
        np.testing.assert_allclose(jax.vjp(lambda b: jcnn.dense(x, w, b), b)[1](jnp.asarray(g))[0],
                                   db, rtol=1e-12)


@pytest.mark.parametrize("shape", [(8, 3), (2, 3, 3, 2)])
def test_batch_norm_against_the_loops(shape):
    x, scale, bias = arr(*shape), arr(shape[-1], seed=1), arr(shape[-1], seed=2)
    g = np.asarray(arr(*shape, seed=3))
    y, pull = jax.vjp(lambda *a: jcnn.batch_norm(*a), x, scale, bias)
    y_loops, *grads = naive.batch_norm_backward(x, scale, bias, g)
    np.testing.assert_allclose(y, y_loops, rtol=1e-10, atol=1e-12)
    for got, want in zip(pull(jnp.asarray(g)), grads):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)


def test_cross_entropy_against_the_loops():
    logits = arr(5, 4)
    loss, pull = jax.vjp(lambda z: jcnn.softmax_cross_entropy(z, LABELS), logits)
    loss_loops, d = naive.softmax_cross_entropy_backward(logits, LABELS, 0.7)
    np.testing.assert_allclose(loss, loss_loops, rtol=1e-12)
    np.testing.assert_allclose(pull(jnp.asarray(0.7))[0], d, rtol=1e-12, atol=1e-15)


def test_relu_and_leaky_relu_at_zero():
    x = jnp.array([-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(jcnn.relu(x)))(x), [0, 0, 1])
    np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(jcnn.leaky_relu(x, 0.1)))(x), [0.1, 0.1, 1])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16])
def test_sigmoid_and_cross_entropy_are_stable_at_large_inputs(dtype):
    x = jnp.array([-100.0, 0.0, 100.0], dtype)
    assert bool(jnp.all(jnp.isfinite(jcnn.sigmoid(x))))
    assert bool(jnp.all(jnp.isfinite(jax.grad(lambda x: jnp.sum(jcnn.sigmoid(x)))(x))))
    logits = jnp.array([[1000.0, -1000.0, 0.0]], dtype)
    g = jax.grad(jcnn.softmax_cross_entropy)(logits, jnp.array([1]))
    assert bool(jnp.all(jnp.isfinite(g))) and g.dtype == dtype


def test_dropout_semantics(key):
    x = arr(200, 50) + 3.0
    y = jcnn.dropout(x, 0.3, key)
    np.testing.assert_array_equal(y, reference.dropout(x, 0.3, key))  # the same mask
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / 0.7, rtol=1e-12)
    assert abs(float(jnp.mean(kept)) - 0.7) < 0.02
    assert abs(float(jnp.mean(y) / jnp.mean(x)) - 1) < 0.03  # the mean survives
    dx = jax.grad(lambda x: jnp.sum(jcnn.dropout(x, 0.3, key)))(x)
    np.testing.assert_array_equal(dx == 0, ~kept)
    assert jcnn.dropout(x, 0.0, key) is x
    assert_matches_reference(lambda x: jcnn.dropout(x, 0.3, key),
                             lambda x: reference.dropout(x, 0.3, key), (x[:4, :5],), (0,))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("_, op, args, argnums, kwargs", CASES, ids=[c[0] for c in CASES])
def test_low_precision_matches_float64(dtype, _, op, args, argnums, kwargs):
    low = tuple(a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a for a in args)
    f = bound(jcnn, op, kwargs)
    y, pull = jax.vjp(lambda *d: f(*[d[argnums.index(i)] if i in argnums else low[i]
                                     for i in range(len(low))]), *[low[i] for i in argnums])
    y64, pull64 = jax.vjp(lambda *d: f(*[d[argnums.index(i)] if i in argnums else args[i]
                                         for i in range(len(args))]), *[args[i] for i in argnums])
    ct = jnp.asarray(np.random.default_rng(5).standard_normal(np.shape(y)))
    tol = {jnp.float32: 1e-5, jnp.bfloat16: 5e-2, jnp.float16: 1e-2}[dtype]
    for got, want, i in zip(pull(ct.astype(dtype)), pull64(ct), argnums):
        assert got.dtype == dtype, f"cotangent of arg {i} is {got.dtype}"
        scale = float(jnp.abs(want).max()) + 1.0
        np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=tol * scale, rtol=0)


def test_jit_vmap_and_vmap_of_grad():
    xs, labels = arr(3, 5, 4), jnp.zeros((3, 5), jnp.int32)
    loss = lambda z, l: jcnn.softmax_cross_entropy(jcnn.dense(jcnn.tanh(z), arr(4, 4)), l)
    per = jax.vmap(jax.grad(loss))(xs, labels)
    np.testing.assert_allclose(per, jnp.stack([jax.grad(loss)(x, l) for x, l in zip(xs, labels)]),
                               rtol=1e-12)
    bn = lambda x: jnp.sum(jcnn.batch_norm(x, jnp.ones(4), jnp.zeros(4)) ** 3)
    np.testing.assert_allclose(jax.jit(jax.vmap(jax.grad(bn)))(xs), jax.vmap(jax.grad(bn))(xs),
                               rtol=1e-10)
