"""The conv filter gradient on this backend, several ways: XLA's one convolution over the whole
batch (x as CHWN, the output image as the window; what autodiff builds too), jcnn's
`_conv2d_dw` as shipped (lowered for CPU a loop over chunks of 16 or 32 images, one
convolution each, `jcnn.forms.conv._chunked_dw`, a matmul for 1x1 kernels), the same rule with
chunks of other sizes (`--chunks`), and image patches^T @ G in a loop over chunks of about 1 MiB
of patches (not kept: faster for strided kernels, but its matmul multiplies the padding's zeros
by g, so a NaN in g reaches taps the convolution keeps finite). Alone for the convs of ResNet-8
and LeNet, then in the jcnn ResNet-8 and LeNet training steps as shipped and with one
convolution per filter gradient, beside autodiff, timed interleaved.

    python benchmarks/dw_forms.py [--batch 128] [--chunks 8 32] [--repeats 20] [--no-step]
"""
from __future__ import annotations

import argparse
from functools import partial
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jcnn
from jcnn import conv, reference
from jcnn.bench import harness as bench
from jcnn._validate import ConvConfig
from jcnn._windows import window_views
from jcnn.forms import conv as conv_forms

# (image side, in channels, out channels, kernel, stride), padding kernel // 2
CASES = [(32, 3, 16, 3, 1), (32, 16, 16, 3, 1), (32, 16, 32, 3, 2), (32, 16, 32, 1, 2),
         (16, 32, 32, 3, 1), (16, 32, 64, 3, 2), (8, 64, 64, 3, 1),
         (28, 1, 6, 5, 1), (14, 6, 16, 5, 1), (14, 16, 32, 5, 1)]


def one_conv(cfg, x, g):
    return lax.conv_general_dilated(x, g, window_strides=cfg.dilation, padding=cfg.pads,
                                    rhs_dilation=cfg.stride,
                                    dimension_numbers=("CHWN", "IHWO", "HWNC"))


def chunked(cfg, x, g, size):
    """jcnn's rule with `size` images per chunk (set while tracing)."""
    with mock.patch.object(conv_forms, "_dw_chunk", lambda x: size):
        return conv._conv2d_dw(cfg, x, g)


def patches(cfg, x, g, budget=2 ** 20, max_parts=32):
    """dW = sum over batch chunks of P^T G, P the chunk's image patches (rows: the kh*kw*C
    values each output position's window reads)."""
    (kh, kw), c, o = conv._kernel_hw(cfg, x.shape[1:3], g.shape[1:3]), x.shape[3], g.shape[3]

    def chunk_dw(xs, gs):
        p = jnp.concatenate(window_views(xs, (kh, kw), cfg.stride, cfg.dilation, cfg.pads, 0), 3)
        return lax.dot_general(p.reshape(-1, kh * kw * c), gs.reshape(-1, o),
                               (((0,), (0,)), ((), ())))

    n = x.shape[0]
    image_bytes = g.shape[1] * g.shape[2] * kh * kw * c * 4
    size = min(n, max(budget // image_bytes, -(-n // max_parts), 1))
    full, rest = divmod(n, size)
    dw = lax.fori_loop(0, full, lambda k, dw: dw + chunk_dw(
        *(lax.dynamic_slice_in_dim(a, k * size, size) for a in (x, g))),
        jnp.zeros((kh * kw * c, o)))
    if rest:
        dw = dw + chunk_dw(x[full * size:], g[full * size:])
    return dw.reshape(kh, kw, c, o)


def ops(batch: int, chunks: list[int], repeats: int) -> None:
    forms = {"one conv": one_conv, "jcnn": conv._conv2d_dw, "patches": patches,
             **{f"chunks of {z}": partial(chunked, size=z) for z in chunks if z < batch}}
    rng = np.random.default_rng(0)
    for side, c, o, k, s in CASES:
        out = (side + 2 * (k // 2) - k) // s + 1
        cfg = conv._used_padding(ConvConfig((s, s), ((k // 2,) * 2,) * 2, (1, 1), 1),
                                 (side, side), (out, out), (k, k))
        x = jnp.asarray(rng.standard_normal((batch, side, side, c), dtype=np.float32))
        g = jnp.asarray(rng.standard_normal((batch, out, out, o), dtype=np.float32))
        fns = {name: jax.jit(partial(f, cfg)) for name, f in forms.items()}
        want = np.asarray(fns["one conv"](x, g))
        for f in fns.values():
            np.testing.assert_allclose(f(x, g), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
        bench.print_op_forms(f"{side}x{side} {c}->{o} k{k} s{s} B={batch}:",
                             {n: partial(lambda f: f(x, g).block_until_ready(), f)
                              for n, f in fns.items()}, repeats, "one conv", rounds=4)


def step(model: str, batch: int, repeats: int) -> None:
    spec = bench.MODELS[model]
    images, labels = bench._batch(spec, batch)
    made = {name: bench.jax_step_runner(spec, hand, images, labels, None)
            for name, hand in (("autodiff", reference), ("jcnn", jcnn))}
    with mock.patch.object(conv_forms, "filter_gradient", lambda *args: None):
        made["jcnn, one conv"] = bench.jax_step_runner(spec, jcnn, images, labels, None)
    bench.print_step_forms(f"{model} B={batch:4d}", made, repeats, 6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--chunks", nargs="*", type=int, default=[])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-step", action="store_true")
    parser.add_argument("--no-ops", action="store_true")
    args = parser.parse_args()
    if not args.no_ops:
        ops(args.batch, args.chunks, args.repeats)
    if not args.no_step:
        for model in ("resnet8", "lenet"):
            step(model, args.batch, args.repeats)


if __name__ == "__main__":
    main()
