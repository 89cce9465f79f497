"""Pooling options: max-pool dilation and ceil_mode, avg-pool ceil_mode with PyTorch's divisor.
Each config against PyTorch in float64 (values and gradients), autodiff of jcnn.reference
(first and second order), finite differences and the NumPy loops; both max-pool forms (the plain
mask rule and the CPU index/bits form); tied maxima; jit and vmap."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jcnn
from jcnn import naive, pool, reference
from jcnn._validate import pool_config
from jcnn.forms import pool as pool_forms
from gradcheck import (assert_finite_differences, assert_matches_reference,
                       assert_second_order_matches, pulled)

CONFIGS = [  # (id, x shape, kwargs); symmetric int/pair padding, as PyTorch takes
    ("ceil-last-window-in-right-pad-dropped", (2, 5, 5, 2),
     dict(window=2, stride=2, padding=1, ceil_mode=True)),
    ("ceil-partial-last-window", (1, 7, 6, 2), dict(window=3, stride=2, padding=1, ceil_mode=True)),
    ("ceil-s3-unpadded", (1, 7, 8, 1), dict(window=2, stride=3, ceil_mode=True)),
    ("ceil-s3-p1", (1, 6, 7, 2), dict(window=3, stride=3, padding=1, ceil_mode=True)),
    ("dil2", (2, 8, 7, 1), dict(window=3, stride=2, dilation=2)),
    ("dil(2,1)-ceil-asym", (1, 9, 8, 2),
     dict(window=(3, 2), stride=(2, 3), padding=(1, 1), dilation=(2, 1), ceil_mode=True)),
    ("dil2-tiling-stride", (1, 8, 8, 1), dict(window=2, dilation=2)),
]
IDS = [c[0] for c in CONFIGS]
AVG = [c for c in CONFIGS if "dilation" not in c[2]]
FORMS = ["plain", "cpu"]


def distinct(shape, seed=0):
    """Values 1/size apart: no ties, and finite differences never cross a kink."""
    n = int(np.prod(shape))
    return jnp.asarray(np.random.default_rng(seed).permutation(n).reshape(shape) / n)


def max_with(form, kwargs):
    def f(x):
        cfg = pool_config(x, kwargs["window"], kwargs.get("stride"), kwargs.get("padding", 0),
                          "t", kwargs.get("dilation", 1), kwargs.get("ceil_mode", False))
        return (pool._max_pool if form == "plain" else pool_forms._argmax_pool)(cfg, x)
    return f


def _torch(op, x, g, **kwargs):
    """PyTorch's y and dx (NHWC in and out), float64."""
    torch = pytest.importorskip("torch")
    t = torch.tensor(np.transpose(np.asarray(x), (0, 3, 1, 2)), requires_grad=True)
    kwargs = dict(kwargs, kernel_size=kwargs.pop("window"))
    y = getattr(torch.nn.functional, op)(t, **kwargs)
    y.backward(torch.tensor(np.transpose(g, (0, 3, 1, 2))))
    return (np.transpose(y.detach().numpy(), (0, 2, 3, 1)),
            np.transpose(t.grad.numpy(), (0, 2, 3, 1)))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("_, shape, kwargs", CONFIGS, ids=IDS)
def test_max_pool_matches_pytorch(form, _, shape, kwargs):
    x = distinct(shape)
    f = max_with(form, kwargs)
    g = np.random.default_rng(1).standard_normal(jax.eval_shape(f, x).shape)
    y_torch, dx_torch = _torch("max_pool2d", x, g, **kwargs)
    y, (dx,) = pulled(f, jnp.asarray(g), x)
    assert y.shape == y_torch.shape
    np.testing.assert_array_equal(y, y_torch)
    np.testing.assert_allclose(dx, dx_torch, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("include", [True, False], ids=["count-pad", "exclude-pad"])
@pytest.mark.parametrize("_, shape, kwargs", AVG, ids=[c[0] for c in AVG])
def test_avg_pool_matches_pytorch(include, _, shape, kwargs):
    """PyTorch's divisor: with count_include_pad the padding counts but not the part of a
    ceil_mode window past it; without, only the input's elements."""
    x = distinct(shape)
    f = lambda x: jcnn.avg_pool2d(x, **kwargs, count_include_pad=include)
    g = np.random.default_rng(2).standard_normal(jax.eval_shape(f, x).shape)
    y_torch, dx_torch = _torch("avg_pool2d", x, g, **kwargs, count_include_pad=include)
    y, (dx,) = pulled(f, jnp.asarray(g), x)
    np.testing.assert_allclose(y, y_torch, rtol=1e-12)
    np.testing.assert_allclose(dx, dx_torch, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("_, shape, kwargs", CONFIGS, ids=IDS)
def test_max_pool_three_ways_and_second_order(form, _, shape, kwargs):
    x = distinct(shape)
    f, ref = max_with(form, kwargs), lambda x: reference.max_pool2d(x, **kwargs)
    assert_matches_reference(f, ref, (x,), (0,))
    assert_second_order_matches(f, ref, (x,), (0,))
    assert_finite_differences(f, (x,), (0,))
    g = np.random.default_rng(1).standard_normal(jax.eval_shape(ref, x).shape)
    y, (dx,) = pulled(f, jnp.asarray(g), x)
    np.testing.assert_array_equal(y, naive.max_pool2d(x, **kwargs))
    np.testing.assert_allclose(dx, naive.max_pool2d_backward(g, x, **kwargs)[0],
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("include", [True, False], ids=["count-pad", "exclude-pad"])
@pytest.mark.parametrize("_, shape, kwargs", AVG, ids=[c[0] for c in AVG])
def test_avg_pool_three_ways_and_second_order(include, _, shape, kwargs):
    x = distinct(shape)
    f = lambda x: jcnn.avg_pool2d(x, **kwargs, count_include_pad=include)
    ref = lambda x: reference.avg_pool2d(x, **kwargs, count_include_pad=include)
    assert_matches_reference(f, ref, (x,), (0,))
    assert_second_order_matches(f, ref, (x,), (0,))
    assert_finite_differences(f, (x,), (0,))
    g = np.random.default_rng(2).standard_normal(jax.eval_shape(ref, x).shape)
    y, (dx,) = pulled(f, jnp.asarray(g), x)
    np.testing.assert_allclose(y, naive.avg_pool2d(x, **kwargs, count_include_pad=include),
                               rtol=1e-12)
    np.testing.assert_allclose(
        dx, naive.avg_pool2d_backward(g, x, **kwargs, count_include_pad=include)[0],
        rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("kwargs", [CONFIGS[1][2], CONFIGS[4][2], CONFIGS[5][2]],
                         ids=[IDS[1], IDS[4], IDS[5]])
def test_ties_with_dilation_and_ceil_mode_go_to_the_first_maximum_once(form, kwargs):
    """0/1 inputs: every window tied; its G lands once, on the first maximum in row-major
    window order (dilated taps, the ceil_mode window's -inf padding never chosen)."""
    x = jnp.asarray(np.random.default_rng(0).integers(0, 2, (2, 9, 8, 1)), jnp.float64)
    f = max_with(form, kwargs)
    g = np.random.default_rng(3).standard_normal(jax.eval_shape(f, x).shape)
    _, (dx,) = pulled(f, jnp.asarray(g), x)
    np.testing.assert_allclose(dx, naive.max_pool2d_backward(g, x, **kwargs)[0], atol=1e-12)
    np.testing.assert_allclose(
        dx, pulled(lambda x: reference.max_pool2d(x, **kwargs), jnp.asarray(g), x)[1][0],
        atol=1e-12)
    _, (ones,) = pulled(f, jnp.ones(g.shape), x)
    assert float(jnp.sum(ones)) == g.size
    assert_second_order_matches(f, lambda x: reference.max_pool2d(x, **kwargs), (x,), (0,))


@pytest.mark.parametrize("op", [
    lambda x: jcnn.max_pool2d(x, 3, 2, 1, dilation=2, ceil_mode=True),
    lambda x: jcnn.avg_pool2d(x, 3, 2, 1, count_include_pad=True, ceil_mode=True)],
    ids=["max", "avg"])
def test_options_under_jit_and_vmap(op):
    xs = distinct((3, 2, 8, 8, 2))
    loss = lambda x: jnp.sum(op(x) ** 2)
    np.testing.assert_allclose(jax.jit(op)(xs[0]), op(xs[0]))
    np.testing.assert_allclose(jax.vmap(op)(xs), jnp.stack([op(x) for x in xs]))
    np.testing.assert_allclose(jax.vmap(jax.grad(loss))(xs),
                               jnp.stack([jax.grad(loss)(x) for x in xs]))


def test_the_cpu_form_keeps_bits_only_for_undilated_tiles():
    """A dilated 2x2/2 window does not tile: the form stores the index, not the bits."""
    x = distinct((1, 8, 8, 1))
    for dilation, saved in ((1, jnp.uint8), (2, jnp.int8)):
        cfg = pool_config(x, 2, None, 0, "t", dilation)
        assert jax.eval_shape(lambda x: pool_forms._argmax_pool_fwd(cfg, x), x)[1][0].dtype \
            == saved
