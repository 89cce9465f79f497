"""A first conv layer (one input channel, stride 1) as kh*kw shifted slices: forward and filter
gradient (the input's gradient is never needed there), against `jcnn.conv2d` and autodiff.

    Y[n,y,x,o]  = sum_{i,j} Xp[n, y+i, x+j] * W[i,j,0,o]          (Xp: X padded, C = 1)
    dW[i,j,0,o] = sum_{n,y,x} Xp[n, y+i, x+j] * G[n,y,x,o]

The forward is one elementwise loop that XLA fuses whole (a broadcast multiply-add per tap);
dW stays XLA's convolution (its C-as-batch, N-as-feature layout is already fast: stacking the
slices into a (N*H*W, kh*kw) matrix and one matmul measured 5-10x slower). XLA's own convolution
with C = 1 (and O <= 16) runs on its slow generic CPU path, so this is the LeNet's largest
single saving on CPU. Times fwd + dW (+ db) as the model's first layer needs them.

    python benchmarks/conv1_taps.py [--batch-sizes 128 512] [--dtype float32 bfloat16]
"""
from __future__ import annotations

import argparse
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import jcnn
from jcnn import reference
from jcnn.bench import harness as bench


def _views(x, kh: int, kw: int, pad: int) -> list:
    """Xp[:, i:i+H, j:j+W, 0] for each tap (i, j), row-major: (N, H, W) each."""
    n, h, w, _ = x.shape
    xp = jnp.pad(x[..., 0], ((0, 0), (pad, pad), (pad, pad)))
    return [xp[:, i:i + h, j:j + w] for i in range(kh) for j in range(kw)]


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv1(x, w, pad: int):
    kh, kw, _, o = w.shape
    wt = w.reshape(kh * kw, o).astype(jnp.float32)  # accumulate in float32 whatever the dtype:
    views = _views(x.astype(jnp.float32), kh, kw, pad)  # bf16 adds on CPU are f32 and a round
    return sum(v[..., None] * wt[t] for t, v in enumerate(views)).astype(x.dtype)


def _conv1_fwd(x, w, pad):
    return conv1(x, w, pad), (x, w)


def _conv1_bwd(pad, res, g):
    x, w = res
    dw = jax.vjp(lambda w: reference.conv2d(x, w, padding=pad), w)[1](g)[0]
    # dx is not needed by a first layer; returning zeros lets XLA drop it
    return jnp.zeros_like(x), dw


conv1.defvjp(_conv1_fwd, _conv1_bwd)

FORMS = {"autodiff": lambda x, w: reference.conv2d(x, w, padding=2),
         "jcnn": lambda x, w: jcnn.conv2d(x, w, padding=2),
         "taps": lambda x, w: conv1(x, w, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 512])
    parser.add_argument("--dtype", nargs="+", choices=sorted(bench.DTYPES), default=["float32"])
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for dtype_name in args.dtype:
        dtype = bench.DTYPES[dtype_name] or jnp.float32
        for batch in args.batch_sizes:
            x = jnp.asarray(rng.standard_normal((batch, 28, 28, 1)), dtype)
            w = jnp.asarray(rng.standard_normal((5, 5, 1, 6)), dtype)
            g = jnp.asarray(rng.standard_normal((batch, 28, 28, 6)), dtype)
            runners, outs = {}, {}
            for name, f in FORMS.items():
                def fwd_dw(x, w, g, f=f):
                    y, pull = jax.vjp(lambda w: f(x, w), w)
                    return y, pull(g)[0]
                fn = jax.jit(fwd_dw)
                outs[name] = [np.asarray(a, np.float32) for a in fn(x, w, g)]
                runners[name] = lambda fn=fn: jax.block_until_ready(fn(x, w, g))
            for name, got in outs.items():
                for a, b in zip(got, outs["autodiff"]):
                    np.testing.assert_allclose(a, b, rtol=0.05, atol=0.05 * np.abs(b).max())
            bench.print_op_forms(f"{dtype_name} B={batch:4d} fwd+dW ", runners, args.repeats,
                                 "autodiff")


if __name__ == "__main__":
    main()
