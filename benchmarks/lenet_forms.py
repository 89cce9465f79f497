"""Two LeNet-step candidates measured and not taken, in the whole training step against jcnn as
shipped and autodiff, timed interleaved, with XLA's temp memory:

- fused:   relu + max-pool as one rule. relu is monotone, so pool(relu(x)) = relu(pool(x)):
           the forward pools first, and the only residual is an int8 per output, the window
           position of the first maximum, or K (no position) where that maximum is <= 0. No
           full-size relu mask is saved or read.
- rows dw: conv1's filter gradient (one input channel) as one dot contracting batch and rows,
           C[i, x1, x, o] = sum_{n,y} Xp[n, y+i, x1] G[n, y, x, o], then dW[i, j, o] =
           sum_x C[i, x+j, x, o]. A well-shaped matmul (no transposes, no im2col), at the
           cost of computing every (x1, x) pair where only 5 diagonals are kept.

Both give the shipped step's gradients (checked below before timing).

    python benchmarks/lenet_forms.py [--batch-sizes 128 512] [--repeats 40]
"""
from __future__ import annotations

import argparse
from functools import partial
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

import jcnn
from jcnn import conv, reference
from jcnn.bench import harness as bench
from jcnn import layers as L
from jcnn._validate import pool_config
from jcnn._windows import max_of as _max_of
from jcnn.forms.pool import _index_dtype
from jcnn.pool import _place, _windows


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _relu_pool(cfg, x):
    return jnp.maximum(_max_of(_windows(x, cfg, -jnp.inf)), 0)


def _relu_pool_fwd(cfg, x):
    views = _windows(x, cfg, -jnp.inf)
    m = _max_of(views)
    index = jnp.full(m.shape, len(views), _index_dtype(len(views) + 1))
    for k in reversed(range(len(views))):
        index = jnp.where((views[k] == m) & (m > 0), jnp.asarray(k, index.dtype), index)
    return jnp.maximum(m, 0), (index, x.shape)


def _relu_pool_bwd(cfg, res, g):
    index, x_shape = res
    parts = [jnp.where(index == jnp.asarray(k, index.dtype), g, jnp.zeros_like(g))
             for k in range(cfg.window[0] * cfg.window[1])]
    return (_place(parts, cfg, x_shape[1:3]),)


_relu_pool.defvjp(_relu_pool_fwd, _relu_pool_bwd)


def relu_max_pool2x2(x):
    return _relu_pool(pool_config(x, 2, None, 0, "relu_max_pool2x2"), x)


def fused_lenet(ops):
    """bench.LENET with each relu + max-pool pair as the fused rule."""
    pool = L._stateless("relu_max_pool2d", relu_max_pool2x2)
    return L.serial(L.conv2d(6, 5, padding=2, ops=ops), pool, L.conv2d(16, 5, padding=2, ops=ops),
                    pool, L.flatten(ops=ops), L.dense(120, ops=ops), L.relu(ops=ops),
                    L.dense(bench.NUM_CLASSES, ops=ops))


def rows_dw(shipped, cfg, x, g):
    if x.shape[3] != 1 or cfg.stride != (1, 1) or cfg.dilation != (1, 1):
        return shipped(cfg, x, g)
    (top, bottom), (left, right) = cfg.pads
    xp = jnp.pad(x[..., 0], ((0, 0), (top, bottom), (left, right)))
    oh, ow = g.shape[1:3]
    kh, kw = xp.shape[1] - oh + 1, xp.shape[2] - ow + 1
    u = jnp.stack([xp[:, i:i + oh] for i in range(kh)], axis=2)        # (N, OH, kh, Wp)
    c = jnp.einsum("nyix,nyzo->ixzo", u, g)                           # (kh, Wp, OW, O)
    dw = jnp.stack([sum(c[:, z + j, z] for z in range(ow)) for j in range(kw)], axis=1)
    return dw[:, :, None].astype(x.dtype)


def rows_dw_runner(spec, images, labels):
    """jcnn's step compiled while `conv._conv2d_dw` is `rows_dw`."""
    with mock.patch.object(conv, "_conv2d_dw", partial(rows_dw, conv._conv2d_dw)):
        return bench.jax_step_runner(spec, jcnn, images, labels, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 512])
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    spec = bench.MODELS["lenet"]
    fused = spec._replace(build=fused_lenet)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((4, 8, 8, 3), dtype=np.float32))
    x = x.at[:, ::2, ::2].set(x[:, 1::2, ::2]).at[0].set(0.0)  # ties, and a window of zeros
    np.testing.assert_array_equal(  # the fused rule: the same gradient, bit for bit
        jax.grad(lambda x: jnp.sum(jnp.cos(jcnn.max_pool2d(jcnn.relu(x), 2))))(x),
        jax.grad(lambda x: jnp.sum(jnp.cos(relu_max_pool2x2(x))))(x))
    cfg = conv._used_padding(conv.ConvConfig((1, 1), ((2, 2), (2, 2)), (1, 1), 1), (8, 8), (8, 8),
                             (5, 5))
    g = jnp.asarray(rng.standard_normal((4, 8, 8, 6), dtype=np.float32))
    np.testing.assert_allclose(rows_dw(conv._conv2d_dw, cfg, x[..., :1], g),
                               conv._conv2d_dw(cfg, x[..., :1], g), rtol=1e-5, atol=1e-4)
    for batch in args.batch_sizes:
        images, labels = bench._batch(spec, batch)
        made = {"autodiff": bench.jax_step_runner(spec, reference, images, labels, None),
                "jcnn": bench.jax_step_runner(spec, jcnn, images, labels, None),
                "fused relu+pool": bench.jax_step_runner(fused, jcnn, images, labels, None),
                "rows dw": rows_dw_runner(spec, images, labels)}
        bench.print_step_forms(f"lenet B={batch:4d}", made, args.repeats, rounds=8,
                               against=("autodiff", "jcnn"))


if __name__ == "__main__":
    main()
