"""log_softmax and softmax_cross_entropy: the rules against autodiff of jcnn.reference (first and
second order), float64 finite differences and the NumPy loops; integer labels get a float0
cotangent; stability at huge logits; low precision; jit, vmap and vmap of grad."""
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
    return jnp.asarray(np.random.default_rng([seed, *shape]).standard_normal(shape) * 2)


def labels(*shape, classes):
    return jnp.asarray(np.random.default_rng([9, *shape]).integers(0, classes, shape))


XENT = [  # (logits shape): labels of shape logits.shape[:-1]
    pytest.param((5, 4), id="N"),
    pytest.param((2, 3, 4), id="NT"),
    pytest.param((4,), id="one-example"),
    pytest.param((3, 1), id="one-class"),
]
LOG_SOFTMAX = [pytest.param(s, id="x".join(map(str, s))) for s in [(6,), (4, 6), (2, 3, 5)]]


# jitted: one compile per shape rather than one per op (the eager path is tested below)
LOG_SOFTMAX_JIT, LOG_SOFTMAX_REF = jax.jit(jcnn.log_softmax), jax.jit(reference.log_softmax)
XENT_JIT, XENT_REF = jax.jit(jcnn.softmax_cross_entropy), jax.jit(reference.softmax_cross_entropy)


def xent_args(shape):
    return arr(*shape), labels(*shape[:-1], classes=shape[-1])


@pytest.mark.parametrize("shape", LOG_SOFTMAX)
def test_log_softmax_matches_autodiff_and_finite_differences(shape):
    x = (arr(*shape),)
    assert_matches_reference(LOG_SOFTMAX_JIT, LOG_SOFTMAX_REF, x, (0,))
    assert_second_order_matches(LOG_SOFTMAX_JIT, LOG_SOFTMAX_REF, x, (0,))
    assert_finite_differences(LOG_SOFTMAX_JIT, x, (0,), order=2)


@pytest.mark.parametrize("shape", XENT)
def test_cross_entropy_matches_autodiff_and_finite_differences(shape):
    args, f, ref = xent_args(shape), XENT_JIT, XENT_REF
    assert_matches_reference(f, ref, args, (0,))
    assert_second_order_matches(f, ref, args, (0,))
    assert_finite_differences(f, args, (0,), order=2)


@pytest.mark.parametrize("shape", XENT)
def test_cross_entropy_matches_the_loops(shape):
    logits, ids = xent_args(shape)
    loss, pull = jax.vjp(lambda z: jcnn.softmax_cross_entropy(z, ids), logits)
    loss_loops = naive.softmax_cross_entropy(logits, ids)
    d, _ = naive.softmax_cross_entropy_backward(0.7, logits, ids)
    np.testing.assert_allclose(loss, loss_loops, rtol=1e-12)
    np.testing.assert_allclose(pull(jnp.asarray(0.7))[0], d, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("eps", [0.1, pytest.param(0.5, marks=pytest.mark.slow), 1.0])
@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 4)], ids=["5x4", "2x3x4"])
def test_label_smoothing_matches_autodiff_the_loops_and_pytorchs_definition(shape, eps):
    """Targets (1 - eps) onehot + eps / C: against autodiff of the reference (first and second
    order), float64 finite differences, the loops, and PyTorch's definition of
    F.cross_entropy(label_smoothing=eps), (1 - eps) nll + eps mean_k(-log p_k)."""
    logits, ids = xent_args(shape)

    def f(z):
        return jcnn.softmax_cross_entropy(z, ids, label_smoothing=eps)

    def ref(z):
        return reference.softmax_cross_entropy(z, ids, label_smoothing=eps)
    assert_matches_reference(f, ref, (logits,), (0,))
    assert_second_order_matches(f, ref, (logits,), (0,))
    assert_finite_differences(f, (logits,), (0,), order=2)
    loss, pull = jax.vjp(f, logits)
    np.testing.assert_allclose(loss, naive.softmax_cross_entropy(logits, ids, label_smoothing=eps),
                               rtol=1e-12)
    d, _ = naive.softmax_cross_entropy_backward(0.7, logits, ids, label_smoothing=eps)
    np.testing.assert_allclose(pull(jnp.asarray(0.7))[0], d, rtol=1e-12, atol=1e-15)
    y = np.asarray(jax.nn.log_softmax(logits))
    nll = -np.take_along_axis(y, np.asarray(ids)[..., None], axis=-1).mean()
    np.testing.assert_allclose(loss, (1 - eps) * nll + eps * (-y.mean(axis=-1)).mean(), rtol=1e-12)


@pytest.mark.parametrize("shape", XENT)
def test_gradients_sum_to_zero_over_the_classes(shape):
    """Adding a constant to a row of logits changes neither loss: each gradient row sums to 0."""
    logits, ids = xent_args(shape)
    d = jax.grad(jcnn.softmax_cross_entropy)(logits, ids)
    np.testing.assert_allclose(jnp.sum(d, axis=-1), 0, atol=1e-15)
    d = jax.vjp(jcnn.log_softmax, logits)[1](arr(*shape, seed=1))[0]
    np.testing.assert_allclose(jnp.sum(d, axis=-1), 0, atol=1e-14)


def test_integer_labels_get_a_float0_cotangent():
    logits, ids = xent_args((5, 4))
    loss, pull = jax.vjp(jcnn.softmax_cross_entropy, logits, ids)
    dlogits, dlabels = pull(jnp.ones_like(loss))
    assert dlogits.dtype == logits.dtype
    assert dlabels.dtype == jax.dtypes.float0 and dlabels.shape == ids.shape
    both = jax.grad(jcnn.softmax_cross_entropy, argnums=(0, 1), allow_int=True)(logits, ids)
    assert both[1].dtype == jax.dtypes.float0
    np.testing.assert_allclose(both[0], dlogits, rtol=1e-15)


def test_forward_saves_only_log_probabilities_and_labels(capsys):
    logits, ids = xent_args((5, 4))
    print_saved_residuals(jcnn.log_softmax, logits)
    print_saved_residuals(jcnn.softmax_cross_entropy, logits, ids)
    saved = [line.split(" ")[0] for line in capsys.readouterr().out.splitlines()]
    assert sorted(saved) == ["f64[5,4]", "f64[5,4]", "i64[5]"], saved


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_huge_logits_stay_finite(dtype):
    """Shifting by the row's max keeps exp from overflowing: no NaN, exact one-hot gradients."""
    logits = jnp.array([[1000.0, -1000.0, 0.0], [-30000.0, 30000.0, 1.0]], dtype)
    with jax.debug_nans(True):  # raises on the first NaN any primitive produces
        y = jcnn.log_softmax(logits)
        loss, d = jax.value_and_grad(jcnn.softmax_cross_entropy)(logits, jnp.array([1, 1]))
    np.testing.assert_allclose(np.asarray(y[0], np.float64), [0, -2000, -1000], rtol=tol(dtype))
    assert d.dtype == dtype
    np.testing.assert_array_equal(np.asarray(d, np.float64), [[0.5, -0.5, 0], [0, 0, 0]])
    np.testing.assert_allclose(float(loss), 1000, rtol=tol(dtype))


def as_dtype(args, dtype):
    return tuple(a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a for a in args)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("op, args", [
    pytest.param("log_softmax", (arr(4, 6),), id="log_softmax"),
    pytest.param("softmax_cross_entropy", xent_args((2, 3, 4)), id="xent-NT"),
])
def test_low_precision_matches_float64(op, args, dtype):
    """The rule run in `dtype` against autodiff in float64 on the very same rounded inputs."""
    in_f64 = jax.jit(lambda *a: getattr(reference, op)(*as_dtype(a, jnp.float64)).astype(dtype))
    assert_matches_reference(jax.jit(getattr(jcnn, op)), in_f64, as_dtype(args, dtype), (0,),
                             rtol=tol(dtype))


def test_under_jit_vmap_and_vmap_of_grad():
    """A batch of (T, K) logits with their labels: vmap of the loss and of its gradient equal a
    loop, shared labels (in_axes None) included."""
    logits, ids = xent_args((3, 5, 4))
    loss, grad = jcnn.softmax_cross_entropy, jax.grad(jcnn.softmax_cross_entropy)
    for in_axes, ids_at in [((0, 0), lambda i: ids[i]), ((0, None), lambda i: ids[0])]:
        batch_ids = ids if in_axes[1] == 0 else ids[0]
        losses = jax.jit(jax.vmap(loss, in_axes))(logits, batch_ids)
        grads = jax.jit(jax.vmap(grad, in_axes))(logits, batch_ids)
        for i in range(3):
            np.testing.assert_allclose(losses[i], loss(logits[i], ids_at(i)), rtol=1e-12)
            np.testing.assert_allclose(grads[i], grad(logits[i], ids_at(i)), rtol=1e-12)
    np.testing.assert_allclose(jax.vmap(jcnn.log_softmax)(logits), jcnn.log_softmax(logits),
                               rtol=1e-12)


F32 = jnp.zeros((3, 5), jnp.float32)
IDS = jnp.zeros(3, jnp.int32)
BAD = [  # (id, op, args, exception, words the message must contain); more in test_errors.py
    ("float-labels", "softmax_cross_entropy", (F32, IDS.astype(jnp.float32)), TypeError,
     ["labels", "integer"]),
    ("bool-labels", "softmax_cross_entropy", (F32, IDS.astype(bool)), TypeError,
     ["labels", "integer"]),
    ("labels-shape-NT", "softmax_cross_entropy", (jnp.zeros((2, 3, 5)), jnp.zeros((2, 4), int)),
     ValueError, ["labels", "(2, 3)"]),
    ("labels-one-hot", "softmax_cross_entropy", (F32, jnp.zeros((3, 5), jnp.int32)), ValueError,
     ["labels", "(3,)"]),
    ("labels-negative", "softmax_cross_entropy", (F32, IDS - 1), ValueError, ["labels", "[0, 5)"]),
    ("logits-scalar", "softmax_cross_entropy", (jnp.float32(0), IDS), ValueError, ["logits"]),
    ("log_softmax-scalar", "log_softmax", (jnp.float32(0),), ValueError, ["x", "class axis"]),
    ("log_softmax-int", "log_softmax", (IDS,), TypeError, ["x", "floating"]),
    ("log_softmax-no-classes", "log_softmax", (jnp.zeros((2, 0)),), ValueError,
     ["x", "no classes"]),
    ("logits-no-classes", "softmax_cross_entropy", (jnp.zeros((2, 0)), IDS[:2]), ValueError,
     ["logits", "no classes", "(2, 0)"]),
]


@pytest.mark.parametrize("op, args, error, words", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_is_refused_naming_the_argument(op, args, error, words):
    with pytest.raises(error, match=f"^{op}: ") as raised:
        getattr(jcnn, op)(*args)
    assert all(word in str(raised.value) for word in words), str(raised.value)


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.int8, jnp.int16])
def test_narrow_labels_with_more_classes_than_their_dtype_counts(dtype):
    """300 classes and uint8/int8 labels (or 40,000 and int16): the one-hot of the backward
    compares class ids in int32; in the labels' dtype they wrapped (class 261 matched label 5,
    class 256 label 0) and the gradient was off by 1/N there."""
    classes = 40_000 if dtype == jnp.int16 else 300
    logits = jnp.asarray(np.random.default_rng(0).standard_normal((4, classes)), jnp.float32)
    labels = jnp.asarray([5, 100, 0, 127], dtype)
    got = jax.grad(jcnn.softmax_cross_entropy)(logits, labels)
    want = jax.grad(reference.softmax_cross_entropy)(logits.astype(jnp.float64),
                                                     labels.astype(jnp.int32))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(jnp.sum(got, axis=-1), 0, atol=1e-6)
