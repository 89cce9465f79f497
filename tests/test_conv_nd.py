"""conv1d, conv3d, conv_transpose1d, conv_transpose3d and the padding modes of conv1d/2d/3d: the
N-d hand rules (the three maps of jcnn/conv.py over one or three spatial axes, and the pad op of
jcnn/padding.py) against autodiff of `jcnn.reference`, float64 finite differences (both through
`jcnn.check_vjp`, first and second order), the NumPy loops of `jcnn.naive`, and PyTorch float64
where it is installed; under jit and vmap.
"""
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jcnn
from jcnn import naive, padding, reference
from gradcheck import assert_matches_reference, cpu_text, pulled


class Case(NamedTuple):
    name: str
    op: str
    x: tuple  # (N, *spatial, C)
    w: tuple  # (*kernel, C // groups, O); transposed: (*kernel, O // groups, C)
    kw: dict
    bias: bool = True


CASES = [
    Case("1d-plain", "conv1d", (2, 7, 3), (3, 3, 4), {}),
    Case("1d-stride2-unreached-pad1", "conv1d", (2, 8, 2), (3, 2, 3), dict(stride=2, padding=1)),
    Case("1d-same-dilation2-groups2", "conv1d", (1, 7, 4), (2, 2, 4),
         dict(padding="SAME", dilation=2, groups=2)),
    Case("1d-asym-pads", "conv1d", (2, 5, 2), (2, 2, 3), dict(padding=((2, 0),)), bias=False),
    Case("3d-plain", "conv3d", (2, 3, 4, 3, 2), (2, 2, 2, 2, 3), {}),
    Case("3d-everything", "conv3d", (1, 5, 4, 6, 4), (2, 3, 2, 2, 4),
         dict(stride=(2, 1, 3), padding=((1, 0), (0, 2), (1, 1)), dilation=(1, 2, 1), groups=2)),
    Case("3d-same-stride2", "conv3d", (1, 4, 5, 3, 2), (3, 2, 3, 2, 2),
         dict(stride=2, padding="SAME")),
    Case("t1d-stride2-op1", "conv_transpose1d", (2, 4, 3), (3, 2, 3),
         dict(stride=2, padding=1, output_padding=1)),
    Case("t1d-groups2-dilation2", "conv_transpose1d", (1, 4, 4), (3, 3, 4),
         dict(dilation=2, groups=2, padding=(2,)), bias=False),
    Case("t3d-everything", "conv_transpose3d", (1, 3, 2, 3, 4), (3, 2, 2, 1, 4),
         dict(stride=(2, 1, 3), groups=2, padding=(1, 0, 1), output_padding=(1, 0, 2))),
    Case("t3d-plain", "conv_transpose3d", (2, 2, 3, 2, 2), (2, 2, 2, 3, 2), {}),
    # the padding modes, each on 1, 2 and 3 axes, up to the largest padding each allows
    Case("1d-reflect", "conv1d", (2, 5, 2), (3, 2, 3), dict(padding=4, padding_mode="reflect",
                                                           dilation=2)),
    Case("1d-replicate", "conv1d", (2, 4, 2), (3, 2, 3), dict(padding=((3, 1),),
                                                             padding_mode="replicate")),
    Case("1d-circular", "conv1d", (1, 4, 2), (3, 2, 2), dict(padding=4, stride=2,
                                                            padding_mode="circular")),
    Case("2d-reflect", "conv2d", (2, 4, 5, 2), (3, 3, 2, 3),
         dict(padding=((3, 1), (2, 4)), padding_mode="reflect")),
    Case("2d-replicate", "conv2d", (1, 4, 3, 2), (2, 3, 2, 2),
         dict(padding=(2, 1), stride=2, padding_mode="replicate")),
    Case("2d-circular", "conv2d", (1, 3, 4, 4), (3, 2, 2, 4),
         dict(padding=((3, 0), (1, 4)), groups=2, padding_mode="circular")),
    Case("2d-reflect-same", "conv2d", (1, 5, 4, 2), (4, 3, 2, 2),
         dict(padding="SAME", padding_mode="reflect")),
    Case("3d-reflect", "conv3d", (1, 3, 4, 3, 2), (2, 2, 3, 2, 2),
         dict(padding=(2, 1, 2), padding_mode="reflect")),
    Case("3d-replicate", "conv3d", (1, 2, 3, 4, 2), (3, 2, 2, 2, 2),
         dict(padding=((2, 1), (0, 3), (1, 0)), padding_mode="replicate")),
    Case("3d-circular", "conv3d", (1, 3, 2, 4, 2), (2, 2, 3, 2, 3),
         dict(padding=(3, 2, 1), stride=(1, 2, 1), padding_mode="circular")),
]
BY_NAME = {c.name: c for c in CASES}


def cases(names=None):
    return [pytest.param(c, id=c.name) for c in CASES if names is None or c.name in names]


def out_channels(c):
    return c.w[-1] if "transpose" not in c.op else c.w[-2] * c.kw.get("groups", 1)


def build(c, rng, dtype=jnp.float64):
    """(f of (x, w[, b]), its twin, args)."""
    args = [jnp.asarray(rng.standard_normal(s), dtype) for s in (c.x, c.w)]
    if c.bias:
        args.append(jnp.asarray(rng.standard_normal(out_channels(c)), dtype))
    fn, ref = getattr(jcnn, c.op), getattr(reference, c.op)

    def twin(*a):
        with jax.numpy_rank_promotion("allow"):  # the twin adds its bias by broadcasting
            return ref(*a, **c.kw)
    return (lambda *a: fn(*a, **c.kw)), twin, args


@pytest.mark.parametrize("c", cases())
def test_matches_autodiff_of_the_reference(c, rng):
    """The output and the cotangents, one jit-compiled program each, against the twin's."""
    f, ref, args = build(c, rng)
    assert_matches_reference(f, ref, args, tuple(range(len(args))))


# check_vjp compares with autodiff and central finite differences in float64, first and second
# order (the gradient of <y, C> + <vjp(G), U> jointly in every argument). The default run takes
# a 3-D case with every option and a 2-D padding mode (every case is compared with autodiff and
# the loops above, with PyTorch to second order below, and in jcnn verify's grid); --runslow all.
CHECK_VJP = {"3d-everything", "2d-reflect"}


@pytest.mark.parametrize("c", [pytest.param(c, id=c.name, marks=() if c.name in CHECK_VJP else
                                            pytest.mark.slow) for c in CASES])
def test_check_vjp_with_finite_differences_to_second_order(c, rng):
    f, ref, args = build(c, rng)
    jcnn.check_vjp(jax.jit(f), jax.jit(ref), *args, order=2, samples=1, taylor_test=False)


@pytest.mark.parametrize("c", cases())
def test_matches_naive_loops(c, rng):
    f, _, args = build(c, rng)
    out = jax.eval_shape(f, *args)
    g = jnp.asarray(rng.standard_normal(out.shape))
    y, grads = pulled(f, g, *args)
    np.testing.assert_allclose(y, getattr(naive, c.op)(*args, **c.kw), rtol=1e-10, atol=1e-10)
    want = getattr(naive, c.op + "_backward")(g, *args, **c.kw)
    for name, got, expect in zip(("dx", "dw", "db"), grads, want):
        np.testing.assert_allclose(got, expect, rtol=1e-10, atol=1e-10, err_msg=name)


JIT_VMAP = {"3d-everything", "t1d-stride2-op1", "1d-reflect"}


@pytest.mark.parametrize("c", cases(JIT_VMAP))
def test_vmap_of_grad_under_jit_agrees_with_a_loop(c, rng):
    """Per-example gradients, x and w both batched, jit-compiled, against each example's eager
    gradient, and the vmapped forward against each example's."""
    f, _, (x, w, *b) = build(c, rng)
    xs, ws = jnp.stack([x, -2 * x, x ** 2]), jnp.stack([w, 3 * w, -w])
    in_axes = (0, 0) + (None,) * len(b)
    ys = jax.jit(jax.vmap(f, in_axes))(xs, ws, *b)
    grad = jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a))), argnums=tuple(range(2 + len(b))))
    batched = jax.jit(jax.vmap(grad, in_axes))(xs, ws, *b)
    for i in range(len(xs)):
        np.testing.assert_allclose(ys[i], f(xs[i], ws[i], *b), rtol=1e-12, atol=1e-12)
        for got, want in zip(batched, grad(xs[i], ws[i], *b)):
            np.testing.assert_allclose(got if got.ndim == want.ndim else got[i], want,
                                       rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode, pad_mode", [("reflect", "reflect"), ("replicate", "edge"),
                                            ("circular", "wrap")])
def test_conv2d_padding_mode_is_explicit_jnp_pad_then_a_valid_conv(mode, pad_mode, rng):
    """conv2d(x, padding=p, padding_mode=m) = conv2d(jnp.pad(x, p, m), padding=0): values and
    both cotangents (the fold against autodiff of jnp.pad)."""
    x, w = rng.standard_normal((2, 4, 5, 2)), rng.standard_normal((3, 2, 2, 3))
    pads = ((2, 3), (1, 4))

    def explicit(x, w):
        return jcnn.conv2d(jnp.pad(x, ((0, 0), *pads, (0, 0)), mode=pad_mode), w)

    g = jnp.asarray(rng.standard_normal(jax.eval_shape(explicit, x, w).shape))
    y, grads = pulled(lambda x, w: jcnn.conv2d(x, w, padding=pads, padding_mode=mode), g, x, w)
    y_want, grads_want = pulled(explicit, g, x, w)
    np.testing.assert_allclose(y, y_want, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, grads_want):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_fold_is_the_adjoint_of_pad_and_pad_is_the_adjoint_of_fold(mode, rng):
    """<pad(x), g> = <x, fold(g)>, with the largest pads each mode allows (reflect: size - 1,
    circular: size) on three axes; the cotangent of each is the other."""
    sizes, pads = (4, 3, 5), ((3, 1), (0, 2), (4, 4)) if mode != "circular" else ((4, 1), (3, 0),
                                                                                   (5, 5))
    x = jnp.asarray(rng.standard_normal((2, *sizes, 3)))
    pad, fold = (jax.jit(partial(op, mode, pads)) for op in (padding.pad, padding.fold))
    g = jnp.asarray(rng.standard_normal(jax.eval_shape(pad, x).shape))
    np.testing.assert_allclose(jnp.vdot(pad(x), g), jnp.vdot(x, fold(g)), rtol=1e-12)
    _, (dx,) = pulled(pad, g, x)
    _, (dg,) = pulled(fold, x, g)
    np.testing.assert_allclose(dx, fold(g), rtol=1e-12)
    np.testing.assert_allclose(dg, pad(x), rtol=1e-12)


def test_reflect_padding_is_pytorchs_with_no_edge_repeat():
    x = jnp.arange(5.0).reshape(1, 5, 1)
    np.testing.assert_array_equal(padding.pad("reflect", ((3, 2),), x).ravel(),
                                  [3, 2, 1, 0, 1, 2, 3, 4, 3, 2])
    np.testing.assert_array_equal(padding.pad("replicate", ((2, 1),), x).ravel(),
                                  [0, 0, 0, 1, 2, 3, 4, 4])
    np.testing.assert_array_equal(padding.pad("circular", ((2, 5),), x).ravel(),
                                  [3, 4, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4])


@pytest.mark.parametrize("c", cases({"3d-everything", "2d-reflect", "3d-replicate",
                                      "1d-circular", "t3d-everything"}))
def test_forward_and_backward_compile_to_three_convolutions_and_no_scatter(c, rng):
    """y, dx and dw: one convolution each, whatever the number of axes, and the padding modes'
    fold adds slices: no scatter or gather."""
    f, _, args = build(c, rng)
    argnums = tuple(range(len(args)))
    text = cpu_text(jax.grad(lambda *a: jnp.sum(f(*a) ** 2), argnums=argnums), *args)
    assert text.count("stablehlo.convolution") == 3, text
    for word in ("scatter", "gather"):
        assert word not in text


def test_second_order_of_the_padding_runs_through_its_rules(rng):
    """The gradient of a gradient through a padding mode: the pad's and the fold's rules, no
    scatter (autodiff of jnp.pad's reflect and edge would build one)."""
    x, w = rng.standard_normal((1, 5, 2)), rng.standard_normal((3, 2, 2))

    def inner(x, w):
        return jnp.sum(jax.grad(lambda x: jnp.sum(jnp.sin(jcnn.conv1d(
            x, w, padding=2, padding_mode="replicate"))))(x) ** 2)
    text = cpu_text(jax.grad(inner, argnums=(0, 1)), x, w)
    assert "scatter" not in text and "gather" not in text


# PyTorch float64: forward, first and second order, through its own modules

# every op and every padding mode (the convolutions through PyTorch's own Conv modules)
TORCH = {"1d-same-dilation2-groups2", "3d-circular", "t1d-groups2-dilation2", "t3d-everything",
         "1d-reflect", "2d-reflect-same", "2d-replicate", "3d-reflect", "1d-circular"}


def _torch_fn(torch, c):
    """The PyTorch op of case c as a function of torch tensors in PyTorch's layouts (a module for
    the convolutions, so that its padding_mode is PyTorch's own)."""
    kw, axes = dict(c.kw), len(c.x) - 2
    stride, dilation, groups = (kw.get(k, 1) for k in ("stride", "dilation", "groups"))
    pads = kw.get("padding", 0)
    if "transpose" in c.op:
        fn = getattr(torch.nn.functional, c.op)
        return lambda x, w, b: fn(x, w, b, stride, pads, kw.get("output_padding", 0), groups,
                                  dilation)
    module = getattr(torch.nn, f"Conv{axes}d")(
        c.x[-1], c.w[-1], c.w[:axes], stride=stride, dilation=dilation, groups=groups,
        bias=c.bias, dtype=torch.float64,
        padding=pads.lower() if isinstance(pads, str) else pads,
        padding_mode=kw.get("padding_mode", "zeros"))
    return lambda x, w, b: module._conv_forward(x, w, b)


@pytest.mark.parametrize("c", cases(TORCH))
def test_matches_pytorch_float64_to_second_order(c, rng):
    """y, the cotangents for a random G, and the gradient of <y, C> + <dx, Ux> + <dw, Uw> (+ db)
    w.r.t. every input (second order), against PyTorch's autograd in float64."""
    torch = pytest.importorskip("torch")
    f, _, args = build(c, rng)
    axes = len(c.x) - 2
    to_torch = (0, axes + 1, *range(1, axes + 1))  # (N, *S, C) -> (N, C, *S)
    g, cy = (rng.standard_normal(jax.eval_shape(f, *args).shape) for _ in range(2))
    us = [rng.standard_normal(np.shape(a)) for a in args]

    def scalar(*a):
        y, pull = jax.vjp(f, *a)
        return jnp.vdot(y, cy) + sum(jnp.vdot(d, u) for d, u in zip(pull(jnp.asarray(g)), us))
    y, first = pulled(f, jnp.asarray(g), *args)
    second = jax.jit(jax.grad(scalar, argnums=tuple(range(len(args)))))(*args)

    leaves = [torch.tensor(np.asarray(a), requires_grad=True) for a in args]
    x_t = leaves[0].permute(*to_torch)
    # (*k, C/g, O) -> (O, C/g, *k); transposed, (*k, O/g, C) -> (C, O/g, *k): the same swap
    w_t = leaves[1].permute(axes + 1, axes, *range(axes))
    y_t = _torch_fn(torch, c)(x_t, w_t, leaves[2] if c.bias else None)
    y_t = y_t.permute(0, *range(2, axes + 2), 1)  # back to (N, *S, O)
    t = lambda a: torch.tensor(np.asarray(a))  # noqa: E731
    grads_t = torch.autograd.grad(y_t, leaves, t(g), create_graph=True)
    s_t = (y_t * t(cy)).sum() + sum((d * t(u)).sum() for d, u in zip(grads_t, us))
    second_t = torch.autograd.grad(s_t, leaves)

    np.testing.assert_allclose(y, y_t.detach().numpy(), rtol=1e-10, atol=1e-10)
    for name, got, want in zip(("dx", "dw", "db"), first, grads_t):
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-10, atol=1e-10,
                                   err_msg=name)
    for name, got, want in zip(("x", "w", "b"), second, second_t):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-10, atol=1e-10,
                                   err_msg=f"second order, {name}")


def test_conv2d_with_zeros_is_unchanged_by_the_nd_rules(rng):
    """conv2d without a padding_mode still runs its CPU forms: a one-channel input's forward is
    the tap sum (no convolution), while conv1d and conv3d of one channel stay convolutions."""
    x2, w2 = rng.standard_normal((2, 6, 6, 1)), rng.standard_normal((3, 3, 1, 2))
    assert "convolution" not in cpu_text(lambda w: jcnn.conv2d(x2, w, padding=1), w2)
    x1, w1 = rng.standard_normal((2, 6, 1)), rng.standard_normal((3, 1, 2))
    assert "convolution" in cpu_text(lambda w: jcnn.conv1d(x1, w, padding=1), w1)
    x3, w3 = rng.standard_normal((2, 3, 4, 4, 1)), rng.standard_normal((2, 3, 3, 1, 2))
    assert "convolution" in cpu_text(lambda w: jcnn.conv3d(x3, w, padding=1), w3)


@pytest.mark.parametrize("name, input_shape, kw, w_shape, out_shape", [
    ("conv1d", (2, 6, 3), dict(padding=1, padding_mode="reflect"), (3, 3, 4), (2, 6, 4)),
    ("conv3d", (1, 4, 5, 4, 2), dict(stride=2, padding=1, padding_mode="circular"),
     (3, 3, 3, 2, 4), (1, 2, 3, 2, 4)),
])
def test_conv1d_and_conv3d_layers_apply_their_op(name, input_shape, kw, w_shape, out_shape, rng):
    """init draws the kernel (*kernel, C, O) and zero bias; apply is the op with the layer's
    config (padding_mode passed through), the same through jcnn and jcnn.reference."""
    from jcnn import layers
    x = jnp.asarray(rng.standard_normal(input_shape), jnp.float32)
    layer = getattr(layers, name)(4, 3, **kw)
    params, state = layer.init(jax.random.key(0), input_shape)
    assert params["w"].shape == w_shape and not np.any(params["b"])
    y, _ = layer.apply(params, state, x, train=True)
    assert y.shape == out_shape
    np.testing.assert_allclose(y, getattr(jcnn, name)(x, params["w"], params["b"], **kw),
                               rtol=1e-6)
    twin = getattr(layers, name)(4, 3, ops=reference, **kw)
    with jax.numpy_rank_promotion("allow"):
        y_ref, _ = twin.apply(*twin.init(jax.random.key(0), input_shape), x, train=True)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
