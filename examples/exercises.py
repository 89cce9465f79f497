"""Exercises on backpropagation through a convolution, with self-checks (docs/exercises.md).

    python examples/exercises.py               # checks YOUR answers, the ones in this file
    python examples/exercises.py --solutions   # checks the reference answers instead

Fill in the three places marked EXERCISE below, then run the first command: each exercise
prints "right" or what is still wrong. The checks compare your answers with jcnn (jax.grad
through its hand-derived rules), with jcnn.naive's loops, and with jcnn.check_vjp.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

import jcnn
from jcnn import naive, reference

# the stride-2 case of docs/conv_backprop.html
X1 = np.array([[1, 2, 0, 1, 3],
               [0, 1, 3, 2, 1],
               [2, 1, 0, 1, 0],
               [1, 3, 2, 0, 2],
               [0, 1, 1, 2, 1]], dtype=np.float64)
G1 = np.array([[-1, 2],
               [1, -1]], dtype=np.float64)
STRIDE1, KERNEL1, ENTRY1 = 2, 3, (1, 2)  # a 3x3 filter, stride 2: the entry dW[1,2]


# ---- EXERCISE 1: one filter-gradient entry by hand ----------------------------------------------
# X1 (5x5) went through a 3x3 convolution with stride 2 and no padding, giving a 2x2 output whose
# upstream gradient is G1. Work out dW[1,2] on paper and write the number here.

ANSWER_1 = None


# ---- EXERCISE 2: conv2d's backward as loops -----------------------------------------------------
# One image, one channel: x (H, W), w (kh, kw), g (OH, OW) = dL/dY, with
#     Y[y,x] = sum_{i,j} X[y*s + i - p, x*s + j - p] * W[i,j]      (X reads 0 in the padding)
# Return (dx, dw), NumPy arrays shaped like x and w. Plain Python loops are the point.

def conv2d_backward_loops(g, x, w, stride: int, padding: int):
    raise NotImplementedError("exercise 2")


# ---- EXERCISE 3: the input gradient inside a jax.custom_vjp -------------------------------------
# The backward rule of a stride-1, unpadded conv2d (NHWC x, HWIO w): `custom_vjp_conv` below
# returns (input_gradient(w, g), filter_gradient(x, w, g)); filter_gradient is given. Write the
# input gradient dx: G padded by k-1 zeros, correlated with the filter rotated by 180 degrees
# (and its channel axes swapped: G has O channels, dx has C), with jcnn.conv2d. First write it
# WITHOUT the rotation and run the checks: jcnn.check_vjp names the argument that is wrong, and
# it is x only. Then rotate.

def input_gradient(w, g):
    return None  # EXERCISE 3: jcnn.conv2d(g, <the filter you build from w>, padding=...)


def filter_gradient(x, w, g):
    """dW[i,j,c,o] = sum_{n,y,x} X[n, y+i, x+j, c] * G[n,y,x,o]  (stride 1, no padding)."""
    oh, ow = g.shape[1:3]
    return jnp.stack([jnp.stack([jnp.einsum("nyxc,nyxo->co", x[:, i:i + oh, j:j + ow], g)
                                 for j in range(w.shape[1])]) for i in range(w.shape[0])])


# ---- the checks ---------------------------------------------------------------------------------

def check_1(answers) -> str | None:
    """None when right, else what is wrong."""
    if answers.ANSWER_1 is None:
        return "ANSWER_1 is not filled in yet"

    def loss(w):
        y = jcnn.conv2d(jnp.asarray(X1)[None, :, :, None], w, stride=STRIDE1)
        return jnp.sum(y[0, :, :, 0] * G1)
    dw = np.asarray(jax.jit(jax.grad(loss))(jnp.zeros((KERNEL1, KERNEL1, 1, 1))))[:, :, 0, 0]
    want = dw[ENTRY1]
    if not np.isclose(float(answers.ANSWER_1), want):
        return (f"ANSWER_1 = {answers.ANSWER_1}, not what jcnn computes. Which X[r,c] meets "
                "G[y,x] through W[1,2]? r = 2y + 1, c = 2x + 2")
    return None


LOOP_CASES = (  # (x shape, w shape, stride, padding)
    ((4, 4), (2, 2), 1, 0), ((5, 5), (3, 3), 2, 1), ((6, 7), (3, 2), 2, 0), ((5, 4), (3, 3), 1, 2))


def check_2(answers) -> str | None:
    rng = np.random.default_rng(2)
    for x_shape, w_shape, s, p in LOOP_CASES:
        x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
        y = naive.conv2d(x[None, :, :, None], w[:, :, None, None], stride=s, padding=p)
        g = rng.standard_normal(y.shape[1:3])
        try:
            dx, dw = answers.conv2d_backward_loops(g, x, w, s, p)
        except NotImplementedError:
            return "conv2d_backward_loops is not written yet"
        want_dx, want_dw, _ = naive.conv2d_backward(g[None, :, :, None], x[None, :, :, None],
                                                    w[:, :, None, None], stride=s, padding=p)
        for name, got, want in (("dw", dw, want_dw[:, :, 0, 0]), ("dx", dx, want_dx[0, :, :, 0])):
            if np.shape(got) != want.shape or not np.allclose(got, want):
                return (f"{name} differs from jcnn.naive.conv2d_backward for x {x_shape}, "
                        f"w {w_shape}, stride {s}, padding {p}")
    return None


def custom_vjp_conv(input_gradient: Callable) -> Callable:
    """conv2d (stride 1, no padding) as a jax.custom_vjp whose backward returns
    `(input_gradient(w, g), filter_gradient(x, w, g))`."""
    @jax.custom_vjp
    def conv(x, w):
        return reference.conv2d(x, w)

    def fwd(x, w):
        return conv(x, w), (x, w)

    def bwd(res, g):
        x, w = res
        return input_gradient(w, g), filter_gradient(x, w, g)

    conv.defvjp(fwd, bwd)
    return conv


def check_3(answers) -> str | None:
    with jax.enable_x64(True):  # float64: finite differences join the check
        key_x, key_w = jax.random.split(jax.random.key(3))
        x = jax.random.normal(key_x, (2, 6, 5, 2), jnp.float64)
        w = jax.random.normal(key_w, (3, 2, 2, 3), jnp.float64)
        if answers.input_gradient(w, jnp.ones_like(reference.conv2d(x, w))) is None:
            return "input_gradient is not written yet"
        try:
            jcnn.check_vjp(jax.jit(custom_vjp_conv(answers.input_gradient)), reference.conv2d, x, w)
        except AssertionError as failure:
            return f"jcnn.check_vjp finds the rule wrong:\n{failure}"
    return None


CHECKS = (("1: one stride-2 filter-gradient entry by hand", check_1),
          ("2: conv2d's backward as loops", check_2),
          ("3: the input gradient in a custom_vjp", check_3))


def check_all(answers: ModuleType | SimpleNamespace) -> dict:
    """{exercise: None when right, else what is wrong}."""
    return {name: check(answers) for name, check in CHECKS}


def solutions() -> ModuleType:
    path = Path(__file__).resolve().parent / "exercise_solutions.py"
    spec = importlib.util.spec_from_file_location("exercise_solutions", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solutions", action="store_true",
                        help="check the reference answers (examples/exercise_solutions.py)")
    args = parser.parse_args(argv)
    results = check_all(solutions() if args.solutions else SimpleNamespace(**globals()))
    for name, problem in results.items():
        print(f"exercise {name}: " + ("right" if problem is None else f"not yet. {problem}"))
    return 0 if all(problem is None for problem in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
