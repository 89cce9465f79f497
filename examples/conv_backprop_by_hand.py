"""Backpropagation through one convolution, by hand: every filter-gradient entry printed as the
sum of products it is, then the same numbers from four independent places, then one SGD step.

    python examples/conv_backprop_by_hand.py

One 4x4 single-channel image X, one 2x2 filter W, no batch, no bias in the sums (its gradient is
shown once). The layer above is pretended to have handed back the upstream gradient
G = dL/dY, so the loss is L = sum(G * Y). Two cases:

* stride 1, no padding: Y is 3x3 and every filter weight is used at all 9 output positions;
* stride 2, padding 1: Y is 3x3 again, the windows no longer overlap and some of their taps
  land on the zero padding, which contributes nothing to the sums.

The index convention is jcnn's (NHWC / HWIO, cross-correlation):

    Y[y,x]   = sum_{i,j} X[y*s + i - p, x*s + j - p] * W[i,j]
    dW[i,j]  = sum_{y,x} X[y*s + i - p, x*s + j - p] * G[y,x]      (X reads 0 in the padding)
    dX[r,c]  = sum of G[y,x] * W[i,j] over every (y,x,i,j) with y*s + i - p = r, x*s + j - p = c

The guide that derives these is docs/backprop.md.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jcnn
from jcnn import naive, reference

jax.config.update("jax_enable_x64", True)  # the sums below are exact in float64 and printable

X = np.array([[1, 2, 0, 1],
              [3, 1, 2, 0],
              [0, 1, 1, 2],
              [2, 0, 1, 1]], dtype=np.float64)
W = np.array([[1.0, -1.0],
              [0.5, 2.0]])
LEARNING_RATE = 0.1


class Case(NamedTuple):
    name: str
    stride: int
    padding: int
    g: np.ndarray  # the upstream gradient dL/dY, shaped like Y


CASES = (
    Case("stride 1, no padding", 1, 0, np.array([[1.0, 0.0, -1.0],
                                                  [0.5, 1.0, 0.0],
                                                  [0.0, -0.5, 1.0]])),
    Case("stride 2, padding 1", 2, 1, np.array([[0.5, 1.0, -1.0],
                                                 [2.0, 0.0, 1.0],
                                                 [1.0, -0.5, 0.25]])),
)


class Term(NamedTuple):
    """One product X[r,c] * G[y,x] inside the sum dW[i,j]."""
    r: int
    c: int
    y: int
    x: int


# ---- plain Python loops ---------------------------------------------------------------------

def out_size(n: int, k: int, stride: int, padding: int) -> int:
    return (n + 2 * padding - k) // stride + 1


def forward_loops(x, w, stride: int, padding: int) -> np.ndarray:
    """Y[y,x] = sum_{i,j} X[y*s + i - p, x*s + j - p] W[i,j]; padding reads as zero."""
    kh, kw = w.shape
    oh, ow = out_size(x.shape[0], kh, stride, padding), out_size(x.shape[1], kw, stride, padding)
    y = np.zeros((oh, ow))
    for oy in range(oh):
        for ox in range(ow):
            for i in range(kh):
                for j in range(kw):
                    r, c = oy * stride + i - padding, ox * stride + j - padding
                    if 0 <= r < x.shape[0] and 0 <= c < x.shape[1]:
                        y[oy, ox] += x[r, c] * w[i, j]
    return y


def filter_grad_terms(x_shape, w_shape, g_shape, stride: int, padding: int) -> dict:
    """{(i, j): [Term, ...]}: the products that make up dW[i,j], one per output position whose
    window puts tap (i, j) on a real (unpadded) input pixel. The same W[i,j] is used at every
    output position, so its gradient collects one term from each of them."""
    terms = {}
    for i in range(w_shape[0]):
        for j in range(w_shape[1]):
            terms[i, j] = [Term(oy * stride + i - padding, ox * stride + j - padding, oy, ox)
                           for oy in range(g_shape[0]) for ox in range(g_shape[1])
                           if 0 <= oy * stride + i - padding < x_shape[0]
                           and 0 <= ox * stride + j - padding < x_shape[1]]
    return terms


def filter_grad_loops(x, w_shape, g, stride: int, padding: int) -> np.ndarray:
    """dW[i,j] = sum of X[r,c] * G[y,x] over the terms of `filter_grad_terms`."""
    dw = np.zeros(w_shape)
    for (i, j), terms in filter_grad_terms(x.shape, w_shape, g.shape, stride, padding).items():
        dw[i, j] = sum(x[t.r, t.c] * g[t.y, t.x] for t in terms)
    return dw


def input_grad_loops(x_shape, w, g, stride: int, padding: int) -> np.ndarray:
    """dX: each product X[r,c] * W[i,j] in Y[y,x] sends G[y,x] * W[i,j] back to X[r,c]."""
    dx = np.zeros(x_shape)
    for oy in range(g.shape[0]):
        for ox in range(g.shape[1]):
            for i in range(w.shape[0]):
                for j in range(w.shape[1]):
                    r, c = oy * stride + i - padding, ox * stride + j - padding
                    if 0 <= r < x_shape[0] and 0 <= c < x_shape[1]:
                        dx[r, c] += g[oy, ox] * w[i, j]
    return dx


def input_grad_by_flipped_filter(x_shape, w, g, stride: int, padding: int) -> np.ndarray:
    """dX again, as a plain stride-1 correlation: spread G out (stride - 1 zeros between its
    entries: the forward stride becomes holes in the gradient), lay it on a zero canvas k-1 rows
    and columns wider than X, at offset k-1-p (the padding crops), and slide the filter rotated
    by 180 degrees over it. With p = 0, s = 1 this is the "full" convolution of G with W."""
    kh, kw = w.shape
    spread = np.zeros(((g.shape[0] - 1) * stride + 1, (g.shape[1] - 1) * stride + 1))
    spread[::stride, ::stride] = g
    canvas = np.zeros((x_shape[0] + kh - 1, x_shape[1] + kw - 1))
    for r in range(spread.shape[0]):
        for c in range(spread.shape[1]):
            rr, cc = r + kh - 1 - padding, c + kw - 1 - padding
            if 0 <= rr < canvas.shape[0] and 0 <= cc < canvas.shape[1]:
                canvas[rr, cc] = spread[r, c]
    return forward_loops(canvas, w[::-1, ::-1], 1, 0)


def sgd_update(w, dw, lr: float = LEARNING_RATE) -> np.ndarray:
    """One plain gradient-descent step: W <- W - lr * dW."""
    return w - lr * dw


# ---- the same numbers from jcnn ---------------------------------------------------------------

def _nhwc(a):
    return jnp.asarray(a)[None, :, :, None]  # (H, W) -> (1, H, W, 1)


def _hwio(a):
    return jnp.asarray(a)[:, :, None, None]  # (kh, kw) -> (kh, kw, 1, 1)


def grads_four_ways(case: Case, x=X, w=W) -> dict:
    """{way: (dX, dW)} for the loss L = sum(G * Y), each (H, W) / (kh, kw) float64 NumPy:

    loops      the plain loops above
    naive      jcnn.naive.conv2d_backward (NumPy loops over every index, NHWC)
    custom_vjp jax.grad through jcnn.conv2d: jcnn's hand-derived backward rule
    autodiff   jax.grad through jcnn.reference.conv2d: JAX differentiates lax's convolution
    """
    s, p, g = case.stride, case.padding, case.g
    ways = {"loops": (input_grad_loops(x.shape, w, g, s, p),
                      filter_grad_loops(x, w.shape, g, s, p))}
    dx, dw, _ = naive.conv2d_backward(_nhwc(g), _nhwc(x), _hwio(w), stride=s, padding=p)
    ways["naive"] = (dx[0, :, :, 0], dw[:, :, 0, 0])
    for way, conv in (("custom_vjp", jcnn.conv2d), ("autodiff", reference.conv2d)):
        def loss(xx, ww, conv=conv):
            return jnp.sum(_nhwc(g) * conv(xx, ww, stride=s, padding=p))
        dx, dw = jax.grad(loss, argnums=(0, 1))(_nhwc(x), _hwio(w))
        ways[way] = (np.asarray(dx)[0, :, :, 0], np.asarray(dw)[:, :, 0, 0])
    return ways


def forward_both(case: Case, x=X, w=W) -> tuple[np.ndarray, np.ndarray]:
    """Y from the loops and from jcnn.conv2d."""
    y = jcnn.conv2d(_nhwc(x), _hwio(w), stride=case.stride, padding=case.padding)
    return forward_loops(x, w, case.stride, case.padding), np.asarray(y)[0, :, :, 0]


# ---- printing ---------------------------------------------------------------------------------

def num(v: float) -> str:
    """A number as a Python literal that reads well: 2, -0.5, 0.25 (negatives in parentheses
    when they follow an operator)."""
    text = f"{v:g}"
    return f"({text})" if v < 0 else text


def sum_line(i: int, j: int, terms, x, g) -> str:
    """`dW[i,j] = x[r,c]*g[y,x] + ... = X*G + ... = total`; the middle part is a valid Python
    expression that evaluates to the total (the test checks it)."""
    total = sum(x[t.r, t.c] * g[t.y, t.x] for t in terms)
    names = " + ".join(f"x[{t.r},{t.c}]*g[{t.y},{t.x}]" for t in terms)
    values = " + ".join(f"{num(x[t.r, t.c])}*{num(g[t.y, t.x])}" for t in terms)
    return f"   dW[{i},{j}] = {names}\n           = {values}\n           = {total:g}"


def grid(a: np.ndarray, indent: str = "    ") -> str:
    return "\n".join(indent + " ".join(f"{v:6g}" for v in row) for row in a)


def show_case(case: Case, x=X, w=W) -> None:
    s, p, g = case.stride, case.padding, case.g
    print(f"\n=== {case.name} ===")
    print(f"Y[y,x] = sum_{{i,j}} X[y*{s} + i - {p}, x*{s} + j - {p}] * W[i,j]"
          + ("   (X reads 0 outside the image)" if p else ""))
    y_loops, y_jcnn = forward_both(case, x, w)
    print(f"\n1. the output Y, {y_loops.shape[0]}x{y_loops.shape[1]} (loops; jcnn.conv2d agrees: "
          f"{np.allclose(y_loops, y_jcnn)}):\n{grid(y_loops)}")
    print(f"\n2. the upstream gradient G = dL/dY, handed down by the layer above:\n{grid(g)}")
    print("\n3. each filter weight is used at every output position, so its gradient is the "
          "sum over them:\n   dW[i,j] = sum_{y,x} X[y*s + i - p, x*s + j - p] * G[y,x]"
          + ("\n   (taps that land on the padding read 0 and are left out)" if p else ""))
    for (i, j), terms in filter_grad_terms(x.shape, w.shape, g.shape, s, p).items():
        print(sum_line(i, j, terms, x, g))
    ways = grads_four_ways(case, x, w)
    print("\n4. the same dW four ways:")
    for way, (_, dw) in ways.items():
        print(f"   {way:10s} {np.array2string(dw.ravel(), separator=', ')}")
    print(f"   bias: db = sum of G = {g.sum():g}")
    dx = ways["loops"][0]
    print("\n5. the input gradient dX: each product X[r,c]*W[i,j] sends G[y,x]*W[i,j] back to "
          f"X[r,c]\n   (naive, custom_vjp and autodiff agree: "
          f"{all(np.allclose(dx, d) for d, _ in ways.values())}):\n{grid(dx)}")
    flipped = input_grad_by_flipped_filter(x.shape, w, g, s, p)
    print(f"   the same as G{' spread out by the stride,' if s > 1 else ''} padded by k-1"
          f"{'-p' if p else ''} and correlated with W rotated 180 degrees "
          f"{np.array2string(w[::-1, ::-1].ravel(), separator=', ')}: {np.allclose(dx, flipped)}")
    w_new = sgd_update(w, ways["loops"][1])
    print(f"\n6. one SGD step, W <- W - {LEARNING_RATE} * dW:")
    for i in range(w.shape[0]):
        for j in range(w.shape[1]):
            print(f"   W[{i},{j}] = {w[i, j]:g} - {LEARNING_RATE} * {num(ways['loops'][1][i, j])} "
                  f"= {w_new[i, j]:g}")


def main() -> None:
    print(f"X (the image, 4x4):\n{grid(X)}\nW (the filter, 2x2):\n{grid(W)}")
    for case in CASES:
        show_case(case)


if __name__ == "__main__":
    main()
