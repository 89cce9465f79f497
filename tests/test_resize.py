"""adaptive_avg_pool2d and upsample2d: against PyTorch in float64 (values and gradients),
autodiff of jcnn.reference (first and second order), finite differences and the NumPy loops;
jit, vmap, half precision, and the compiled gradients free of scatter and gather."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jcnn
from jcnn import naive, reference
from gradcheck import (assert_finite_differences, assert_matches_reference,
                       assert_second_order_matches, pulled)

CASES = [  # (id, op, x shape, kwargs)
    ("adaptive-7x5-to-3", "adaptive_avg_pool2d", (2, 7, 5, 2), dict(output_size=3)),
    ("adaptive-7x9-to-4x5", "adaptive_avg_pool2d", (1, 7, 9, 2), dict(output_size=(4, 5))),
    ("adaptive-identity-and-global", "adaptive_avg_pool2d", (1, 5, 6, 1),
     dict(output_size=(5, 1))),
    ("nearest-2", "upsample2d", (2, 3, 4, 2), dict(scale=2)),
    ("nearest-(3,1)", "upsample2d", (1, 3, 2, 2), dict(scale=(3, 1))),
    ("bilinear-2", "upsample2d", (2, 3, 4, 2), dict(scale=2, mode="bilinear")),
    ("bilinear-(3,2)", "upsample2d", (1, 4, 3, 1), dict(scale=(3, 2), mode="bilinear")),
    ("bilinear-one-row", "upsample2d", (1, 1, 3, 2), dict(scale=(2, 4), mode="bilinear")),
]
IDS = [c[0] for c in CASES]


def _torch(op, x, g, kwargs):
    """PyTorch's y and dx (NHWC in and out), float64."""
    torch = pytest.importorskip("torch")
    t = torch.tensor(np.transpose(np.asarray(x), (0, 3, 1, 2)), requires_grad=True)
    if op == "adaptive_avg_pool2d":
        y = torch.nn.functional.adaptive_avg_pool2d(t, kwargs["output_size"])
    else:
        scale, mode = kwargs["scale"], kwargs.get("mode", "nearest")
        scale = tuple(float(s) for s in (scale if isinstance(scale, tuple) else (scale, scale)))
        y = torch.nn.functional.interpolate(
            t, scale_factor=scale, mode=mode,
            **({} if mode == "nearest" else dict(align_corners=False)))
    y.backward(torch.tensor(np.transpose(g, (0, 3, 1, 2))))
    return (np.transpose(y.detach().numpy(), (0, 2, 3, 1)),
            np.transpose(t.grad.numpy(), (0, 2, 3, 1)))


def _x(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


@pytest.mark.parametrize("_, op, shape, kwargs", CASES, ids=IDS)
def test_matches_pytorch(_, op, shape, kwargs):
    x = _x(shape)
    f = lambda x: getattr(jcnn, op)(x, **kwargs)
    g = np.random.default_rng(1).standard_normal(jax.eval_shape(f, x).shape)
    y_torch, dx_torch = _torch(op, x, g, kwargs)
    y, (dx,) = pulled(f, jnp.asarray(g), x)
    np.testing.assert_allclose(y, y_torch, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dx, dx_torch, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("_, op, shape, kwargs", CASES, ids=IDS)
def test_three_ways_and_second_order(_, op, shape, kwargs):
    x = _x(shape)
    f = lambda x: getattr(jcnn, op)(x, **kwargs)
    ref = lambda x: getattr(reference, op)(x, **kwargs)
    assert_matches_reference(f, ref, (x,), (0,))
    assert_second_order_matches(f, ref, (x,), (0,))
    assert_finite_differences(f, (x,), (0,))
    g = np.random.default_rng(2).standard_normal(jax.eval_shape(ref, x).shape)
    y, (dx,) = pulled(f, jnp.asarray(g), x)
    np.testing.assert_allclose(y, getattr(naive, op)(x, **kwargs), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dx, getattr(naive, op + "_backward")(g, x, **kwargs)[0],
                               rtol=1e-12, atol=1e-14)


def test_adaptive_bins_overlap_where_the_size_does_not_divide():
    """5 rows into 3 bins: [0, 2), [1, 4), [3, 5); rows 1 and 3 sit in two bins each."""
    x = jnp.arange(5.0).reshape(1, 5, 1, 1)
    np.testing.assert_allclose(jcnn.adaptive_avg_pool2d(x, (3, 1))[0, :, 0, 0], [0.5, 2, 3.5])
    dx = jax.grad(lambda x: jnp.sum(jcnn.adaptive_avg_pool2d(x, (3, 1))))(x)
    np.testing.assert_allclose(dx[0, :, 0, 0], [1 / 2, 1 / 2 + 1 / 3, 1 / 3, 1 / 3 + 1 / 2, 1 / 2])


def test_bilinear_clamps_at_both_edges():
    """Scale 2: the first output row reads row -1/4, clamped to row 0 (x[0] exactly); the last
    reads row H - 3/4, whose neighbour past the end is clamped to H - 1 (x[H-1] exactly)."""
    x = _x((1, 3, 1, 1))
    y = jcnn.upsample2d(x, (2, 1), "bilinear")[0, :, 0, 0]
    np.testing.assert_allclose([y[0], y[-1]], [x[0, 0, 0, 0], x[0, -1, 0, 0]], rtol=1e-15)
    np.testing.assert_allclose(y[1], 0.75 * x[0, 0, 0, 0] + 0.25 * x[0, 1, 0, 0], rtol=1e-14)


def test_jit_vmap_and_vmap_of_grad():
    """The three maps in one function: adaptive (4, 5) -> (2, 3), then both upsamplings."""
    def op(x):
        y = jcnn.adaptive_avg_pool2d(x, (2, 3))
        return jcnn.upsample2d(y, 2) * jcnn.upsample2d(y, (2, 2), "bilinear")
    xs = _x((3, 2, 4, 5, 2))
    loss = jax.grad(lambda x: jnp.sum(op(x) ** 2))
    np.testing.assert_allclose(jax.jit(op)(xs[0]), op(xs[0]))
    np.testing.assert_allclose(jax.vmap(op)(xs), jnp.stack([op(x) for x in xs]))
    np.testing.assert_allclose(jax.vmap(loss)(xs), jnp.stack([loss(x) for x in xs]))


@pytest.mark.parametrize("dtype, rtol", [(jnp.float32, 1e-6), (jnp.bfloat16, 1e-2)])
@pytest.mark.parametrize("op", [lambda x: jcnn.adaptive_avg_pool2d(x, 3),
                                lambda x: jcnn.upsample2d(x, 3),
                                lambda x: jcnn.upsample2d(x, 3, "bilinear")],
                         ids=["adaptive", "nearest", "bilinear"])
def test_low_precision_matches_float64(dtype, rtol, op):
    x = _x((2, 7, 7, 2))
    g = jnp.asarray(np.random.default_rng(3).standard_normal(jax.eval_shape(op, x).shape))
    y_low, (dx_low,) = pulled(op, g.astype(dtype), x.astype(dtype))
    y, (dx,) = pulled(op, g, x)
    assert y_low.dtype == dx_low.dtype == dtype
    for low, want, scale in ((y_low, y, x), (dx_low, dx, g)):
        np.testing.assert_allclose(np.asarray(low, np.float64), want, rtol=rtol,
                                   atol=4 * rtol * float(jnp.abs(scale).max()))


def test_second_order_has_no_scatter_or_gather():
    """The backward is the transposed map and its backward the map again: matmuls with static
    matrices and reshapes, at every order."""
    def hvp(x):
        inner = jax.grad(lambda x: jnp.sum(jnp.cos(
            jcnn.upsample2d(jcnn.adaptive_avg_pool2d(x, 3), 2, "bilinear")
            + jcnn.upsample2d(jcnn.adaptive_avg_pool2d(x, 3), 2))))
        return jax.grad(lambda x: jnp.sum(inner(x) ** 2))(x)
    hlo = jax.jit(hvp).lower(_x((1, 7, 7, 1))).compile().as_text()
    assert not re.search(r"(scatter|gather)\(", hlo)


@pytest.mark.parametrize("make, op, kwargs", [
    ("adaptive_avg_pool2d", "adaptive_avg_pool2d", dict(output_size=(2, 3))),
    ("upsample2d", "upsample2d", dict(scale=2, mode="bilinear")),
    ("max_pool2d", "max_pool2d", dict(window=2, stride=2, padding=1, dilation=2, ceil_mode=True)),
    ("avg_pool2d", "avg_pool2d", dict(window=3, stride=2, padding=1, count_include_pad=False,
                                      ceil_mode=True)),
], ids=["adaptive", "upsample", "max-options", "avg-options"])
def test_layers_apply_their_op_and_options_in_both_namespaces(make, op, kwargs, key):
    x = _x((2, 6, 7, 3))
    for ops in (jcnn, reference):
        layer = getattr(jcnn.layers, make)(**kwargs, ops=ops)
        params, state = layer.init(key, x.shape)
        y, _ = layer.apply(params, state, x, train=True)
        np.testing.assert_allclose(y, getattr(reference, op)(x, **kwargs), rtol=1e-12)
        assert jcnn.layers.output_shape(layer, params, state, x.shape) == y.shape
