"""Formulations of a stride-1 convolution on this backend, timed interleaved: XLA's
`conv_general_dilated` (what jcnn and autodiff both emit) against im2col (patches + one matmul,
the patches from `conv_general_dilated_patches` or stacked shifted slices)
a sum of kh*kw shifted slices (one small matmul, or a broadcast multiply when C == 1, per
tap), and XLA's conv with its output channels padded past 16 (`pad17`). The shapes are the
LeNet convs (forward, and conv2's input gradient, which is a conv of the cotangent with the
flipped kernel) and the ResNet-8 3x3 convs.

    python benchmarks/conv_forms.py [--batch-sizes 128 512] [--repeats 40] [--dtype float32]
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jcnn.bench import harness as bench

# (name, image HWC, kernel HWIO), all stride 1 and "same" padding
SHAPES = (("lenet conv1 fwd", (28, 28, 1), (5, 5, 1, 6)),
          ("lenet conv2 fwd", (14, 14, 6), (5, 5, 6, 16)),
          ("lenet conv2 dx", (14, 14, 16), (5, 5, 16, 6)),
          ("resnet 16->16 @32", (32, 32, 16), (3, 3, 16, 16)),
          ("resnet 32->32 @16", (16, 16, 32), (3, 3, 32, 32)),
          ("resnet 64->64 @8", (8, 8, 64), (3, 3, 64, 64)))


def xla(x, w):
    p = w.shape[0] // 2
    return lax.conv_general_dilated(x, w, (1, 1), [(p, p), (p, p)],
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def im2col(x, w):
    """Patches (N, H, W, C*kh*kw), channel-major as `conv_general_dilated_patches` orders
    them, times the kernel reshaped to match."""
    kh, kw, c, o = w.shape
    patches = lax.conv_general_dilated_patches(x, (kh, kw), (1, 1),
                                               [(kh // 2,) * 2, (kw // 2,) * 2],
                                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return patches @ w.transpose(2, 0, 1, 3).reshape(c * kh * kw, o)


def _shifted(x, kh: int, kw: int) -> list:
    """The kh*kw windows' views of x padded "same": view (i, j) at (h, w) is x[h+i-ph, w+j-pw]."""
    n, h, wd, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (kh // 2,) * 2, (kw // 2,) * 2, (0, 0)))
    return [xp[:, i:i + h, j:j + wd, :] for i in range(kh) for j in range(kw)]


def stacked(x, w):
    """im2col built from shifted slices (tap-major, as HWIO flattens), then one matmul."""
    kh, kw, c, o = w.shape
    return jnp.concatenate(_shifted(x, kh, kw), axis=-1) @ w.reshape(kh * kw * c, o)


def taps(x, w):
    """sum_{i,j} xpad[:, i:i+H, j:j+W, :] @ w[i, j]: XLA fuses the C == 1 case into one loop."""
    kh, kw, c, o = w.shape
    wt = w.reshape(kh * kw, c, o)
    return sum(v * wt[t, 0] if c == 1 else v @ wt[t] for t, v in enumerate(_shifted(x, kh, kw)))


# jaxlib 0.10.2's CPU backend hands a convolution to YNNPACK only when max(C, O) > 16
# (xla/backends/cpu/ynn_support.cc: smaller ones "probably" cost more in overhead) and runs the
# rest through its older Eigen path, which is 2-6x slower on the LeNet shapes.
YNN_MIN_FEATURES = 17


def pad17(x, w):
    """XLA's conv with zero filters appended up to 17 output channels, then sliced off."""
    o = w.shape[-1]
    extra = max(0, YNN_MIN_FEATURES - max(o, w.shape[2]))
    return xla(x, jnp.pad(w, ((0, 0), (0, 0), (0, 0), (0, extra))))[..., :o]


FORMS = {"xla": xla, "im2col": im2col, "stacked": stacked, "taps": taps, "pad17": pad17}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 512])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--dtype", choices=sorted(bench.DTYPES), default="float32")
    parser.add_argument("--only", help="run the shapes whose name contains this")
    args = parser.parse_args()
    dtype = bench.DTYPES[args.dtype] or jnp.float32
    rng = np.random.default_rng(0)
    for batch in args.batch_sizes:
        for name, image, kernel in SHAPES:
            if args.only and args.only not in name:
                continue
            x = jnp.asarray(rng.standard_normal((batch, *image)), dtype)
            w = jnp.asarray(rng.standard_normal(kernel), dtype)
            want = np.asarray(xla(x, w), np.float32)
            runners = {}
            for form, f in FORMS.items():
                fn = jax.jit(f)
                err = np.max(np.abs(np.asarray(fn(x, w), np.float32) - want)) / np.max(np.abs(want))
                assert err < 3e-2, (name, form, err)
                runners[form] = lambda fn=fn: jax.block_until_ready(fn(x, w))
            bench.print_op_forms(f"B={batch:4d} {name:20s}", runners, args.repeats, "xla")


if __name__ == "__main__":
    main()
