"""An empty batch (N = 0) through every op and every max-pool form: the output is empty, and the
gradients equal autodiff's of jcnn.reference (an empty dx, zeros for the parameters): no
ZeroDivisionError from a mean over no labels or a batch split into no parts."""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jcnn
from jcnn import pool, reference
from jcnn._validate import pool_config
from jcnn.forms import pool as pool_forms
from gradcheck import restrict

f64 = jnp.float64
KEY = jax.random.key(0)
LABELS = jnp.zeros((0,), jnp.int32)

# (id, op name, args (the first is the batch), kwargs, argnums)
CASES = [
    ("conv2d-bias", "conv2d", ((0, 6, 6, 3), (3, 3, 3, 4), (4,)), dict(padding=1), (0, 1, 2)),
    ("conv_transpose2d", "conv_transpose2d", ((0, 3, 3, 4), (3, 3, 2, 4)), dict(stride=2), (0, 1)),
    ("conv1d-reflect", "conv1d", ((0, 6, 3), (3, 3, 4), (4,)),
     dict(padding=2, padding_mode="reflect"), (0, 1, 2)),
    ("conv3d-replicate", "conv3d", ((0, 3, 4, 3, 2), (2, 2, 2, 2, 3)),
     dict(padding=1, padding_mode="replicate"), (0, 1)),
    ("conv_transpose1d", "conv_transpose1d", ((0, 3, 4), (3, 2, 4)), dict(stride=2), (0, 1)),
    ("conv_transpose3d", "conv_transpose3d", ((0, 2, 3, 2, 4), (2, 2, 2, 2, 4)), dict(stride=2),
     (0, 1)),
    ("dense-bias", "dense", ((0, 5), (5, 3), (3,)), {}, (0, 1, 2)),
    ("flatten", "flatten", ((0, 2, 3, 4),), {}, (0,)),
    ("relu", "relu", ((0, 4, 4, 2),), {}, (0,)),
    ("gelu", "gelu", ((0, 4),), {}, (0,)),
    ("silu", "silu", ((0, 4),), {}, (0,)),
    ("elu", "elu", ((0, 4),), {}, (0,)),
    ("softplus", "softplus", ((0, 4),), {}, (0,)),
    ("avg_pool2d", "avg_pool2d", ((0, 6, 6, 2), 2), {}, (0,)),
    ("global_avg_pool2d", "global_avg_pool2d", ((0, 6, 6, 2),), {}, (0,)),
    ("adaptive_avg_pool2d", "adaptive_avg_pool2d", ((0, 5, 6, 2),), dict(output_size=(2, 4)),
     (0,)),
    ("upsample2d-nearest", "upsample2d", ((0, 3, 3, 2), 2), {}, (0,)),
    ("upsample2d-bilinear", "upsample2d", ((0, 3, 3, 2), 2), dict(mode="bilinear"), (0,)),
    ("batch_norm", "batch_norm", ((0, 4, 4, 3), (3,), (3,)), {}, (0, 1, 2)),
    ("layer_norm", "layer_norm", ((0, 4, 4, 3), (3,), (3,)), {}, (0, 1, 2)),
    ("log_softmax", "log_softmax", ((0, 10),), {}, (0,)),
    ("dropout", "dropout", ((0, 4, 4, 2), 0.5, KEY), {}, (0,)),
]


def arrays(specs, rng):
    return [jnp.asarray(rng.standard_normal(s), f64) if isinstance(s, tuple) else s
            for s in specs]


def assert_empty_and_as_autodiff(f, ref, args, argnums):
    y, pull = jax.vjp(f, *(args[i] for i in argnums))
    y_ref, pull_ref = jax.vjp(ref, *(args[i] for i in argnums))
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
    assert y.size == 0 or y.ndim == 0  # an empty output, or the loss, a scalar
    g = jnp.ones(y.shape, y.dtype)
    for i, got, want in zip(argnums, pull(g), pull_ref(g)):
        assert got.shape == want.shape == args[i].shape, i
        np.testing.assert_array_equal(got, want)
        assert got.size == 0 or not np.any(got), i  # zeros for a parameter


@pytest.mark.parametrize("name, specs, kw, argnums", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_an_empty_batch_through_each_op(name, specs, kw, argnums, rng):
    args = arrays(specs, rng)
    assert_empty_and_as_autodiff(restrict(partial(getattr(jcnn, name), **kw), args, argnums),
                                 restrict(partial(getattr(reference, name), **kw), args, argnums),
                                 args, argnums)


@pytest.mark.parametrize("form", ["plain", "cpu"])  # cpu on tiling windows: the bitmask
@pytest.mark.parametrize("window, stride, padding", [(2, None, 0), (3, 2, 1)])
def test_an_empty_batch_through_each_max_pool_form(form, window, stride, padding, rng):
    x = jnp.asarray(rng.standard_normal((0, 6, 6, 2)), f64)
    cfg = pool_config(x, window, stride, padding, "max_pool2d")
    rule = partial(pool._max_pool if form == "plain" else pool_forms._argmax_pool, cfg)
    assert_empty_and_as_autodiff(rule, lambda x: reference.max_pool2d(x, window, stride, padding),
                                 [x], (0,))


def test_an_empty_batch_through_the_loss_is_nan_as_in_autodiff_and_its_gradient_empty(rng):
    """The mean over no labels is NaN (as autodiff's, NumPy's and PyTorch's); its gradient is
    the empty dlogits, not a division by zero."""
    logits = jnp.asarray(rng.standard_normal((0, 10)), f64)
    loss = jcnn.softmax_cross_entropy(logits, LABELS)
    assert np.isnan(loss) and np.isnan(reference.softmax_cross_entropy(logits, LABELS))
    grad = jax.grad(jcnn.softmax_cross_entropy)(logits, LABELS)
    assert grad.shape == (0, 10)
    np.testing.assert_array_equal(grad, jax.grad(reference.softmax_cross_entropy)(logits, LABELS))

