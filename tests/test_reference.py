"""The autodiff twins themselves: differentiable under jit, and the transposed conv is the
exact adjoint of conv2d (the identity every other conv test leans on)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcnn import reference as R


@pytest.mark.parametrize("op, kwargs", [(R.max_pool2d, {}), (R.avg_pool2d, {}),
                                        (R.avg_pool2d, {"count_include_pad": False, "padding": 1})],
                         ids=["max", "avg", "avg-exclude-pad"])
def test_pools_are_differentiable_under_jit(op, kwargs, rng):
    x = jnp.asarray(rng.standard_normal((2, 6, 6, 3)), jnp.float32)
    g = jax.jit(jax.grad(lambda x: jnp.sum(op(x, 2, **kwargs) ** 2)))(x)
    assert g.shape == x.shape and g.dtype == x.dtype and bool(jnp.any(g != 0))


@pytest.mark.parametrize("stride, padding, dilation, groups", [
    ((2, 1), ((1, 0), (2, 1)), (1, 2), 2),
    (2, 1, 1, 6),
    (3, 0, 1, 1),
], ids=["asym-groups2", "depthwise", "stride3"])
def test_conv_transpose2d_is_the_adjoint_of_conv2d(stride, padding, dilation, groups, rng):
    x = rng.standard_normal((2, 7, 6, 6))
    w = rng.standard_normal((3, 2, 6 // groups, 6))
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    y = rng.standard_normal(R.conv2d(x, w, **kw).shape)
    # the rows of x that the last window does not reach come back as output_padding
    short = R.conv_transpose2d(y, w, **kw).shape[1:3]
    output_padding = tuple(n - m for n, m in zip(x.shape[1:3], short))
    t = R.conv_transpose2d(y, w, output_padding=output_padding, **kw)
    assert t.shape == x.shape
    np.testing.assert_allclose(jnp.vdot(R.conv2d(x, w, **kw), y), jnp.vdot(x, t), rtol=1e-12)


@pytest.mark.parametrize("call", [
    lambda m, r: m.conv2d(r((2, 4, 4, 3)), r((3, 3, 3, 2)), r((2,)), padding=1),
    lambda m, r: m.conv_transpose2d(r((2, 4, 4, 3)), r((3, 3, 2, 3)), r((2,)), stride=2),
    lambda m, r: m.dense(r((2, 3, 5)), r((5, 4)), r((4,))),
    lambda m, r: m.batch_norm(r((2, 3, 3, 4)), r((4,)), r((4,))),
], ids=["conv2d", "conv_transpose2d", "dense", "batch_norm"])
def test_per_channel_broadcasts_are_explicit(call, rng):
    """conftest sets jax_numpy_rank_promotion='raise': a bias added as `y + b` would raise."""
    y = call(R, lambda s: jnp.asarray(rng.standard_normal(s)))
    assert bool(jnp.all(jnp.isfinite(y)))
