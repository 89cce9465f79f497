"""dropout: the same mask as jcnn.reference for the same key, survivors scaled by 1/(1-rate), the
mean kept, the gradient zero where dropped; the rule against autodiff (first and second order)
and finite differences; the key gets no gradient; low precision; jit and vmap over keys."""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

import jcnn
from jcnn import reference
from gradcheck import (assert_finite_differences, assert_matches_reference,
                       assert_second_order_matches)

X = jnp.asarray(np.random.default_rng(0).standard_normal((400, 50))) + 3.0  # mean far from 0
RATES = [pytest.param(r, id=f"rate{r}") for r in (0.1, 0.5, 0.9)]
KEYS = [pytest.param(jax.random.key, id="typed-key"),
        pytest.param(jax.random.PRNGKey, id="raw-key")]


@pytest.mark.parametrize("make_key", KEYS)
@pytest.mark.parametrize("rate", RATES)
def test_mask_scale_and_gradient(rate, make_key):
    key = make_key(7)
    y = jcnn.dropout(X, rate, key)
    np.testing.assert_array_equal(y, reference.dropout(X, rate, key))  # the same mask
    kept = np.asarray(y != 0)
    np.testing.assert_allclose(y[kept], X[kept] / (1 - rate), rtol=1e-15)
    dx = jax.grad(lambda x: jnp.sum(jcnn.dropout(x, rate, key)))(X)
    np.testing.assert_array_equal(dx, np.where(kept, 1 / (1 - rate), 0.0))


@pytest.mark.parametrize("rate", RATES)
def test_keeps_a_fraction_1_minus_rate_and_the_mean(rate):
    """20000 draws: the kept fraction is within 5 standard deviations of 1 - rate, and the mean
    of y within 5 standard errors of the mean of x."""
    y = np.asarray(jcnn.dropout(X, rate, jax.random.key(1)))
    n, p = X.size, 1 - rate
    assert abs(np.mean(y != 0) - p) < 5 * np.sqrt(p * rate / n)
    assert abs(np.mean(y) - float(jnp.mean(X))) < 5 * np.std(y) / np.sqrt(n)


def test_different_keys_give_different_masks():
    a, b = (jcnn.dropout(X, 0.5, jax.random.key(k)) != 0 for k in (1, 2))
    assert 0.4 < float(jnp.mean(a != b)) < 0.6


def test_rate_zero_returns_x_itself(key):
    assert jcnn.dropout(X, 0.0, key) is X
    assert jcnn.dropout(X, 0, key) is X


@pytest.mark.parametrize("rate", RATES)
def test_rule_matches_autodiff_and_finite_differences(rate, key):
    f, ref = (jax.jit(partial(m.dropout, rate=rate, key=key)) for m in (jcnn, reference))
    x = (X[:4, :6],)
    assert_matches_reference(f, ref, x, (0,))
    assert_second_order_matches(f, ref, x, (0,))
    assert_finite_differences(f, x, (0,), order=2)


@pytest.mark.parametrize("make_key", KEYS)
def test_the_key_gets_a_float0_cotangent(make_key):
    key = make_key(3)
    y, pull = jax.vjp(lambda x, k: jcnn.dropout(x, 0.5, k), X, key)
    dx, dkey = pull(jnp.ones_like(y))
    assert dx.dtype == X.dtype and dkey.dtype == jax.dtypes.float0 and dkey.shape == key.shape


def test_forward_saves_only_the_boolean_mask(capsys):
    print_saved_residuals(lambda x: jcnn.dropout(x, 0.5, jax.random.key(0)), X)
    saved = capsys.readouterr().out.splitlines()
    assert len(saved) == 1 and saved[0].startswith("bool[400,50]"), saved


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_low_precision_keeps_the_dtype_and_the_reference_values(dtype, key):
    x = X.astype(dtype)
    y, pull = jax.vjp(lambda x: jcnn.dropout(x, 0.3, key), x)
    np.testing.assert_array_equal(y, reference.dropout(x, 0.3, key))
    dx = pull(jnp.ones_like(y))[0]
    assert y.dtype == dx.dtype == dtype
    np.testing.assert_array_equal(dx,
                                  jax.grad(lambda x: jnp.sum(reference.dropout(x, 0.3, key)))(x))


def test_under_jit_and_vmap_over_keys():
    keys = jax.random.split(jax.random.key(5), 3)
    xs = X[:3]
    drop = lambda x, k: jcnn.dropout(x, 0.25, k)
    ys = jax.jit(jax.vmap(drop))(xs, keys)
    np.testing.assert_array_equal(ys, [reference.dropout(x, 0.25, k) for x, k in zip(xs, keys)])
    grads = jax.vmap(jax.grad(lambda x, k: jnp.sum(jnp.sin(drop(x, k)))))(xs, keys)
    np.testing.assert_allclose(grads, jnp.cos(ys) * (ys != 0) / 0.75, rtol=1e-12)


KEY = jax.random.key(0)
BAD = [  # (id, args, exception, words the message must contain)
    ("rate-one", (X, 1.0, KEY), ValueError, ["rate", "[0, 1)"]),
    ("rate-above-one", (X, 1.5, KEY), ValueError, ["rate", "[0, 1)"]),
    ("rate-negative", (X, -0.1, KEY), ValueError, ["rate", "[0, 1)"]),
    ("rate-string", (X, "0.5", KEY), TypeError, ["rate"]),
    ("rate-bool", (X, True, KEY), TypeError, ["rate"]),
    ("rate-array", (X, jnp.float32(0.5), KEY), TypeError, ["rate"]),
    ("key-float", (X, 0.5, jnp.zeros(2)), TypeError, ["key"]),
    ("key-batch", (X, 0.5, jax.random.split(KEY, 3)), TypeError, ["key", "one PRNG key", "(3,)"]),
    ("x-int", (X.astype(jnp.int32), 0.5, KEY), TypeError, ["x", "floating"]),
]


@pytest.mark.parametrize("args, error, words", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_is_refused_naming_the_argument(args, error, words):
    with pytest.raises(error, match="^dropout: ") as raised:
        jcnn.dropout(*args)
    assert all(word in str(raised.value) for word in words), str(raised.value)
