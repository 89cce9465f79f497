"""dense and flatten: the matmul rule against autodiff of jcnn.reference (first and second
order), float64 finite differences and the NumPy loops, for x of rank 1 to 4; in low precision
against float64; under jit and vmap. flatten has no rule of its own: it is a reshape."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

import jcnn
from jcnn import naive, reference
from gradcheck import (assert_finite_differences, assert_matches_reference,
                       assert_second_order_matches, tol)


def arr(*shape, seed=0):
    return jnp.asarray(np.random.default_rng([seed, *shape]).standard_normal(shape))


def dense_args(x_shape, out=3, bias=True):
    w, b = arr(x_shape[-1], out, seed=1), arr(out, seed=2)
    return (arr(*x_shape), w, b) if bias else (arr(*x_shape), w)


DENSE, DENSE_REF = jax.jit(jcnn.dense), jax.jit(reference.dense)  # one compile per shape
CASES = [  # (x shape, bias)
    pytest.param((5,), True, id="rank1"),
    pytest.param((4, 5), True, id="rank2"),
    pytest.param((2, 3, 5), False, id="rank3-nobias"),
    pytest.param((2, 3, 2, 5), True, id="rank4"),
    pytest.param((2, 3, 2, 5), False, id="rank4-nobias"),
]


@pytest.mark.parametrize("x_shape, bias", CASES)
def test_dense_matches_autodiff_and_finite_differences(x_shape, bias):
    args = dense_args(x_shape, bias=bias)
    every = tuple(range(len(args)))
    assert_matches_reference(DENSE, DENSE_REF, args, every)
    assert_finite_differences(DENSE, args, every, order=2)


@pytest.mark.parametrize("x_shape, bias", CASES)
def test_dense_second_order_matches_autodiff(x_shape, bias):
    args = dense_args(x_shape, bias=bias)
    assert_second_order_matches(DENSE, DENSE_REF, args, tuple(range(len(args))))


@pytest.mark.parametrize("x_shape, bias", CASES)
def test_dense_matches_the_loops(x_shape, bias):
    x, w, *b = dense_args(x_shape, bias=bias)
    g = arr(*x_shape[:-1], 3, seed=9)
    y, pull = jax.vjp(jcnn.dense, x, w, *b)
    y_loops = naive.dense(x, w, b[0] if b else None)
    grads = naive.dense_backward(g, x, w, b[0] if b else None)
    np.testing.assert_allclose(y, y_loops, rtol=1e-12, atol=1e-12)
    for got, want in zip(pull(g), grads):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def as_dtype(args, dtype):
    return tuple(a.astype(dtype) for a in args)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("x_shape, bias", [c for c in CASES if c.id in ("rank2", "rank4")])
def test_dense_in_low_precision_matches_float64(x_shape, bias, dtype):
    """The rule run in `dtype` against autodiff in float64 on the very same (rounded) inputs;
    cotangents come back in `dtype`."""
    args = as_dtype(dense_args(x_shape, bias=bias), dtype)
    in_f64 = jax.jit(lambda *a: reference.dense(*as_dtype(a, jnp.float64)).astype(dtype))
    assert_matches_reference(DENSE, in_f64, args, tuple(range(len(args))), rtol=tol(dtype))


def test_dense_saves_only_x_and_w(capsys):
    """db needs nothing from the forward; dx and dw need w and x."""
    print_saved_residuals(jcnn.dense, *dense_args((4, 5)))
    assert capsys.readouterr().out.split("\n")[:-1] == [
        "f64[4,5] from the argument x", "f64[5,3] from the argument w"]


def test_dense_under_jit_vmap_and_vmap_of_grad():
    xs, w, b = arr(3, 4, 5), arr(5, 2, seed=1), arr(2, seed=2)
    loss = lambda x, w: jnp.sum(jnp.sin(jcnn.dense(x, w, b)))
    np.testing.assert_allclose(jax.jit(jcnn.dense)(xs, w, b), jcnn.dense(xs, w, b), rtol=1e-12)
    per_x = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(0, None)))(xs, w)
    for i, x in enumerate(xs):
        for got, want in zip(per_x, jax.grad(loss, argnums=(0, 1))(x, w)):
            np.testing.assert_allclose(got[i], want, rtol=1e-12)
    ws = jnp.stack([w, 2 * w])  # a batch of weights over one input
    per_w = jax.vmap(jax.grad(loss, argnums=1), in_axes=(None, 0))(xs[0], ws)
    np.testing.assert_allclose(per_w[1], jax.grad(loss, argnums=1)(xs[0], ws[1]), rtol=1e-12)


@pytest.mark.parametrize("shape, out", [
    pytest.param((3,), (3, 1), id="N"),
    pytest.param((2, 5), (2, 5), id="NC"),
    pytest.param((2, 3, 4, 5), (2, 60), id="NHWC"),
    pytest.param((0, 3, 4, 5), (0, 60), id="empty-batch"),  # reshape(0, -1) cannot infer 60
])
def test_flatten_is_a_reshape_with_autodiffs_rule(shape, out):
    x = arr(*shape)
    np.testing.assert_array_equal(jcnn.flatten(x), np.reshape(x, out))
    np.testing.assert_array_equal(reference.flatten(x), np.reshape(x, out))
    ops = [e.primitive.name for e in jax.make_jaxpr(jcnn.flatten)(x).jaxpr.eqns]
    assert set(ops) <= {"reshape"}, ops  # no arithmetic, so autodiff's transpose is exact
    g = arr(*out, seed=4)
    np.testing.assert_array_equal(jax.vjp(jcnn.flatten, x)[1](g)[0], np.reshape(g, shape))


F32 = jnp.zeros((3, 5), jnp.float32)
BAD = [  # (id, args, exception, words the message must contain); test_errors.py has the rest
    ("x-w-dtypes", (F32, jnp.zeros((5, 2), jnp.float64)), TypeError, ["dtype", "x", "w"]),
    ("b-dtype", (F32, jnp.zeros((5, 2), jnp.float32), jnp.zeros(2, jnp.float16)), TypeError, ["b"]),
    ("int-x", (F32.astype(jnp.int32), jnp.zeros((5, 2), jnp.int32)), TypeError, ["x", "floating"]),
    ("b-rank2", (F32, jnp.zeros((5, 2), jnp.float32), jnp.zeros((1, 2), jnp.float32)), ValueError,
     ["b", "(2,)"]),
    ("w-rank3", (F32, jnp.zeros((5, 2, 1), jnp.float32)), ValueError, ["w", "rank 2"]),
]


@pytest.mark.parametrize("args, error, words", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_dense_refuses_bad_input_naming_the_argument(args, error, words):
    with pytest.raises(error, match="^dense: ") as raised:
        jcnn.dense(*args)
    assert all(word in str(raised.value) for word in words), str(raised.value)


@pytest.mark.parametrize("x_shape, w_shape",
                         [((3, 0), (0, 4)), ((3, 2), (2, 0)), ((2, 3, 0), (0, 4))],
                         ids=["no-inputs", "no-outputs", "3d-no-inputs"])
def test_zero_features_give_autodiff_s_gradients(x_shape, w_shape):
    """An empty feature axis: the backward's reshape(-1, 0) could not be resolved."""
    x, w = jnp.ones(x_shape), jnp.ones(w_shape)
    loss = lambda dense: lambda x, w: jnp.sum(dense(x, w) ** 2)  # noqa: E731
    got = jax.grad(loss(jcnn.dense), (0, 1))(x, w)
    want = jax.grad(loss(reference.dense), (0, 1))(x, w)
    for g, r, a in zip(got, want, (x, w)):
        assert g.shape == a.shape
        np.testing.assert_array_equal(g, r)
