"""jcnn against PyTorch in float64: the forward, the first-order cotangents of every float
argument and the second order (the gradient, jointly in every float argument and the output
cotangent, of <cotangent of the args, v>: a Hessian-vector product through jcnn's rules against
`torch.autograd.grad(..., create_graph=True)` twice).

PyTorch is a fourth oracle that shares no code with jcnn, its autodiff twins or its loops, and
it fixes the conventions jcnn follows: conv_transpose2d's kernel, max pooling's first maximum
on ties, count_include_pad, group norm's groups, label smoothing. Each torch twin takes the very
arrays jcnn takes, in jcnn's layouts (NHWC, HWIO), and permutes them itself (NCHW, OIHW).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jcnn

torch = pytest.importorskip("torch")
F = torch.nn.functional


def nchw(x):
    return x.permute(0, 3, 1, 2)


def nhwc(y):
    return y.permute(0, 2, 3, 1)


def oihw(w):
    """HWIO -> OIHW; conv_transpose2d's (kh, kw, out // groups, in) -> torch's
    (in, out // groups, kh, kw) is the same permutation."""
    return w.permute(3, 2, 0, 1)


def _normal(rng, shapes):
    return [rng.standard_normal(s) for s in shapes]


def _kinks(rng, shapes):
    """Integers: exact zeros (relu's kink) and tied maxima (max pooling's)."""
    return [np.round(rng.standard_normal(s) * 1.5) for s in shapes]


def _eval_stats(rng, shapes):
    """x, scale, bias, mean normal; var (the last) in (0.5, 2.5)."""
    return _normal(rng, shapes[:-1]) + [rng.uniform(0.5, 2.5, shapes[-1])]


class Case(NamedTuple):
    jx: Callable  # the jcnn op on jax arrays in jcnn's layouts
    tt: Callable  # the same on torch tensors in jcnn's layouts
    shapes: tuple  # the float arguments' shapes
    make: Callable = _normal  # (rng, shapes) -> the float arguments (NumPy float64)
    second_order: bool = True  # False: torch's second derivative differs at a kink (elu's)


def _conv(x, w, b, *, stride=1, padding=0, dilation=1, groups=1):
    """jcnn.conv2d with symmetric int padding and its torch twin."""
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    shapes = (x, w) if b is None else (x, w, (b,))
    return Case(lambda *a: jcnn.conv2d(*a, **kw),
                lambda x, w, *b: nhwc(F.conv2d(nchw(x), oihw(w), *b, **kw)), shapes)


def _convt(x, w, b, *, stride=1, padding=0, output_padding=0, dilation=1, groups=1):
    kw = dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation,
              groups=groups)
    shapes = (x, w) if b is None else (x, w, (b,))
    return Case(lambda *a: jcnn.conv_transpose2d(*a, **kw),
                lambda x, w, *b: nhwc(F.conv_transpose2d(nchw(x), oihw(w), *b, **kw)), shapes)


def _max(shape, window, stride=None, padding=0, make=_normal):
    return Case(lambda x: jcnn.max_pool2d(x, window, stride, padding),
                lambda x: nhwc(F.max_pool2d(nchw(x), window, stride, padding)), (shape,), make)


def _avg(shape, window, stride, padding, count_include_pad):
    return Case(lambda x: jcnn.avg_pool2d(x, window, stride, padding, count_include_pad),
                lambda x: nhwc(F.avg_pool2d(nchw(x), window, stride, padding,
                                            count_include_pad=count_include_pad)), (shape,))


def _unary(jop, top, make=_normal, second_order=True):
    return Case(jop, top, ((3, 7),), make, second_order)


LABELS = np.array([0, 3, 1, 4, 2])


CASES = {
    "conv2d-3x3-p1": _conv((2, 5, 5, 3), (3, 3, 3, 4), 4, padding=1),
    "conv2d-s2-p1-dil2": _conv((1, 7, 6, 2), (2, 3, 2, 3), 3, stride=2, padding=1, dilation=2),
    "conv2d-groups2-s(1,2)-p(1,0)": _conv((2, 5, 4, 4), (3, 3, 2, 6), 6, stride=(1, 2),
                                          padding=(1, 0), groups=2),
    "conv2d-depthwise-s2-no-bias": _conv((1, 6, 6, 3), (3, 3, 1, 3), None, stride=2,
                                         padding=1, groups=3),
    "conv2d-asym-pads": Case(  # torch pads (left, right, top, bottom) first
        lambda x, w, b: jcnn.conv2d(x, w, b, padding=((1, 0), (2, 1))),
        lambda x, w, b: nhwc(F.conv2d(F.pad(nchw(x), (2, 1, 1, 0)), oihw(w), b)),
        ((2, 4, 5, 2), (3, 3, 2, 3), (3,))),
    "convT-s2-p1-op1": _convt((2, 3, 4, 3), (3, 3, 2, 3), 2, stride=2, padding=1,
                              output_padding=1),
    "convT-groups2-dil2-p(1,0)": _convt((1, 4, 3, 4), (3, 2, 3, 4), 6, padding=(1, 0),
                                        dilation=2, groups=2),
    "convT-s3-op(2,1)-no-bias": _convt((2, 3, 3, 2), (3, 3, 2, 2), None, stride=3, padding=1,
                                       output_padding=(2, 1)),
    "dense": Case(jcnn.dense, lambda x, w, b: F.linear(x, w.T, b), ((4, 5), (5, 3), (3,))),
    "dense-rank3-no-bias": Case(jcnn.dense, lambda x, w: x @ w, ((2, 3, 5), (5, 3))),
    "relu": _unary(jcnn.relu, torch.relu),
    "relu-zeros": _unary(jcnn.relu, torch.relu, _kinks),
    "leaky_relu-0.1": _unary(lambda x: jcnn.leaky_relu(x, 0.1), lambda x: F.leaky_relu(x, 0.1)),
    "leaky_relu-0.1-zeros": _unary(lambda x: jcnn.leaky_relu(x, 0.1),
                                   lambda x: F.leaky_relu(x, 0.1), _kinks),
    "sigmoid": _unary(jcnn.sigmoid, torch.sigmoid),
    "tanh": _unary(jcnn.tanh, torch.tanh),
    "gelu-tanh": _unary(lambda x: jcnn.gelu(x, approximate=True),
                        lambda x: F.gelu(x, approximate="tanh")),
    "gelu-erf": _unary(lambda x: jcnn.gelu(x, approximate=False),
                       lambda x: F.gelu(x, approximate="none")),
    "silu": _unary(jcnn.silu, F.silu),
    "elu-1": _unary(jcnn.elu, F.elu),
    # at x = 0 torch takes elu' = alpha (the left branch) but elu'' = 0 (the right one); jcnn,
    # as JAX's autodiff (tests/test_transforms.py), alpha for both: first order only here
    "elu-0.3-zeros": _unary(lambda x: jcnn.elu(x, 0.3), lambda x: F.elu(x, 0.3), _kinks,
                            second_order=False),
    "softplus": _unary(jcnn.softplus, F.softplus),
    "max_pool2d-2x2": _max((2, 6, 6, 3), 2),
    "max_pool2d-3x3-s2-p1": _max((2, 7, 7, 2), 3, 2, 1),
    "max_pool2d-2x2-ties": _max((2, 6, 6, 3), 2, make=_kinks),
    "max_pool2d-3x3-s2-p1-ties": _max((2, 7, 7, 2), 3, 2, 1, make=_kinks),
    "avg_pool2d-2x2": _avg((2, 6, 6, 3), 2, None, 0, True),
    "avg_pool2d-3x3-s2-p1-count-pad": _avg((2, 7, 7, 2), 3, 2, 1, True),
    "avg_pool2d-3x3-s2-p1-exclude-pad": _avg((2, 7, 7, 2), 3, 2, 1, False),
    "global_avg_pool2d": Case(jcnn.global_avg_pool2d, lambda x: x.mean(dim=(1, 2)),
                              ((2, 4, 5, 3),)),
    "batch_norm-train-NHWC": Case(
        jcnn.batch_norm, lambda x, s, b: nhwc(F.batch_norm(nchw(x), None, None, s, b,
                                                           training=True, eps=1e-5)),
        ((3, 4, 4, 2), (2,), (2,))),
    "batch_norm-train-NC-eps0.5": Case(
        lambda x, s, b: jcnn.batch_norm(x, s, b, eps=0.5),
        lambda x, s, b: F.batch_norm(x, None, None, s, b, training=True, eps=0.5),
        ((8, 5), (5,), (5,))),
    # torch's F.batch_norm treats running statistics as constants: its eval-mode twin is the
    # formula (its forward is checked against F.batch_norm below)
    "batch_norm-eval": Case(
        lambda x, s, b, m, v: jcnn.batch_norm(x, s, b, eps=1e-3, mean=m, var=v),
        lambda x, s, b, m, v: (x - m) / torch.sqrt(v + 1e-3) * s + b,
        ((3, 4, 4, 2), (2,), (2,), (2,), (2,)), _eval_stats),
    "layer_norm": Case(jcnn.layer_norm, lambda x, s, b: F.layer_norm(x, (4,), s, b, eps=1e-5),
                       ((2, 3, 3, 4), (4,), (4,))),
    "layer_norm-eps0.5": Case(lambda x, s, b: jcnn.layer_norm(x, s, b, eps=0.5),
                              lambda x, s, b: F.layer_norm(x, (5,), s, b, eps=0.5),
                              ((6, 5), (5,), (5,))),
    "group_norm-2-groups": Case(lambda x, s, b: jcnn.group_norm(x, 2, s, b),
                                lambda x, s, b: nhwc(F.group_norm(nchw(x), 2, s, b)),
                                ((2, 3, 3, 4), (4,), (4,))),
    "group_norm-instance-norm": Case(lambda x, s, b: jcnn.group_norm(x, 4, s, b),
                                     lambda x, s, b: nhwc(F.group_norm(nchw(x), 4, s, b)),
                                     ((2, 3, 3, 4), (4,), (4,))),
    "group_norm-1-group": Case(lambda x, s, b: jcnn.group_norm(x, 1, s, b, eps=0.1),
                               lambda x, s, b: nhwc(F.group_norm(nchw(x), 1, s, b, eps=0.1)),
                               ((2, 3, 3, 4), (4,), (4,))),
    "log_softmax": Case(jcnn.log_softmax, lambda x: F.log_softmax(x, -1), ((4, 6),)),
    "softmax_cross_entropy": Case(
        lambda z: jcnn.softmax_cross_entropy(z, jnp.asarray(LABELS)),
        lambda z: F.cross_entropy(z, torch.as_tensor(LABELS)), ((5, 6),)),
    "softmax_cross_entropy-smoothing-0.1": Case(
        lambda z: jcnn.softmax_cross_entropy(z, jnp.asarray(LABELS), label_smoothing=0.1),
        lambda z: F.cross_entropy(z, torch.as_tensor(LABELS), label_smoothing=0.1), ((5, 6),)),
}


def _jax_side(op: Callable):
    """(y, cotangents of args, d/d(args, ct) <cotangents of args, v>) through jcnn's rules."""
    def cotangents(args, ct):
        return jax.vjp(op, *args)[1](ct)

    def hvp(args, ct, v):
        return jax.grad(lambda a, c: sum(jnp.vdot(d, u) for d, u in zip(cotangents(a, c), v)),
                        argnums=(0, 1))(args, ct)
    return jax.jit(lambda args, ct, v: (op(*args), cotangents(args, ct), hvp(args, ct, v)))


def _torch_side(op: Callable, args, ct, v):
    args = [torch.tensor(a, requires_grad=True) for a in args]
    ct = torch.tensor(ct, requires_grad=True)
    y = op(*args)
    grads = torch.autograd.grad(y, args, ct, create_graph=True)
    s = sum((d * torch.tensor(u)).sum() for d, u in zip(grads, v))
    # a cotangent that is constant in an argument (relu's, conv's) has no graph to it: zeros
    second = torch.autograd.grad(s, [*args, ct], allow_unused=True, materialize_grads=True)
    return y, grads, (second[:-1], second[-1])


def _close(got, want, what):
    want = np.asarray(want.detach().numpy() if hasattr(want, "detach") else want)
    got = np.asarray(got)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    scale = max(1.0, float(np.abs(want).max(initial=0)))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11 * scale, err_msg=what)


# rows whose features another row covers too: run with --runslow (the default run keeps every
# op and every listed feature: 31 rows, 50 s on the loaded 2-core machine it was written on)
SLOW = {"conv2d-3x3-p1", "conv2d-depthwise-s2-no-bias", "conv2d-asym-pads",
        "convT-groups2-dil2-p(1,0)", "dense-rank3-no-bias", "relu", "leaky_relu-0.1",
        "max_pool2d-2x2", "avg_pool2d-2x2", "batch_norm-train-NC-eps0.5", "layer_norm-eps0.5",
        "group_norm-1-group"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else [])
                                  for n in CASES])
def test_forward_gradients_and_second_order_match_torch_float64(name):
    case = CASES[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    args = case.make(rng, case.shapes)
    y_shape = jax.eval_shape(case.jx, *(jax.ShapeDtypeStruct(a.shape, jnp.float64)
                                        for a in args)).shape
    ct, v = rng.standard_normal(y_shape), [rng.standard_normal(a.shape) for a in args]
    y, grads, (hx, hct) = _jax_side(case.jx)([jnp.asarray(a) for a in args], jnp.asarray(ct),
                                               [jnp.asarray(u) for u in v])
    ty, tgrads, (thx, thct) = _torch_side(case.tt, args, ct, v)
    _close(y, ty, "forward")
    for i, (g, tg) in enumerate(zip(grads, tgrads)):
        _close(g, tg, f"cotangent of argument {i}")
    if case.second_order:
        for i, (h, th) in enumerate(zip(hx, thx)):
            _close(h, th, f"second order: d/d(argument {i})")
        _close(hct, thct, "second order: d/d(output cotangent)")


def test_batch_norm_eval_twin_is_torchs_evaluation_mode():
    """The formula the eval-mode row differentiates is F.batch_norm(training=False)."""
    rng = np.random.default_rng(0)
    x, s, b, m, v = (torch.tensor(a) for a in _eval_stats(rng, ((3, 4, 4, 2),) + ((2,),) * 4))
    want = nhwc(F.batch_norm(nchw(x), m, v, s, b, training=False, eps=1e-3))
    _close(CASES["batch_norm-eval"].jx(*(jnp.asarray(a.numpy()) for a in (x, s, b, m, v))),
           want, "forward")


def test_the_tie_rows_have_ties():
    """The max-pool rows with ties must hold windows whose maximum is not unique."""
    x = _kinks(np.random.default_rng(sum(map(ord, "max_pool2d-2x2-ties"))), ((2, 6, 6, 3),))[0]
    windows = x.reshape(2, 3, 2, 3, 2, 3).transpose(0, 1, 3, 5, 2, 4).reshape(-1, 4)
    assert ((windows == windows.max(axis=1, keepdims=True)).sum(axis=1) > 1).any()
