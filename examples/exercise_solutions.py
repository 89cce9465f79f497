"""Reference answers to examples/exercises.py (read them after trying; docs/exercises.md).

    python examples/exercises.py --solutions     # every check passes on these
"""
import jax.numpy as jnp
import numpy as np

import jcnn

# 1. dW[1,2] = sum_{y,x} X[2y + 1, 2x + 2] * G[y,x]
#            = X[1,2]*G[0,0] + X[1,4]*G[0,1] + X[3,2]*G[1,0] + X[3,4]*G[1,1]
#            = 3*(-1) + 1*2 + 2*1 + 2*(-1) = -1
ANSWER_1 = -1


def conv2d_backward_loops(g, x, w, stride: int, padding: int):
    """Each product X[r,c] * W[i,j] inside Y[y,x] sends G[y,x] * X[r,c] to dW[i,j] and
    G[y,x] * W[i,j] to dX[r,c]; products with the padding involve no X and are skipped."""
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    for y in range(g.shape[0]):
        for xx in range(g.shape[1]):
            for i in range(w.shape[0]):
                for j in range(w.shape[1]):
                    r, c = y * stride + i - padding, xx * stride + j - padding
                    if 0 <= r < x.shape[0] and 0 <= c < x.shape[1]:
                        dw[i, j] += x[r, c] * g[y, xx]
                        dx[r, c] += w[i, j] * g[y, xx]
    return dx, dw


def input_gradient(w, g):
    """dX = G padded by k-1, correlated with W rotated by 180 degrees, channels swapped."""
    kh, kw = w.shape[:2]
    rotated = jnp.flip(w, (0, 1)).swapaxes(2, 3)  # HWIO -> rotated, O in and C out
    return jcnn.conv2d(g, rotated, padding=((kh - 1, kh - 1), (kw - 1, kw - 1)))
