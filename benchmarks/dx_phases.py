"""The input gradient of a strided conv on this backend, two ways: the plain rule (one
convolution of the cotangent spread out by the stride, `lhs_dilation`: XLA:CPU's slowest
convolution path) and the phase form (`jcnn.forms.conv._by_phases`: one stride-1 convolution
per phase of the rows and columns, interleaved). The table chose `_phases_pay`'s region: run it
on a new host to re-check it.

    python benchmarks/dx_phases.py [--batch-sizes 32 128] [--repeats 20]
"""
from __future__ import annotations

import argparse
from functools import partial

import jax
import numpy as np

from jcnn import conv, reference
from jcnn._validate import conv2d_config
from jcnn.bench import harness as bench
from jcnn.forms import conv as conv_forms

# (image side, dx channels, cotangent channels, kernel, stride), padding kernel // 2
CASES = [(side, c, 2 * c, k, 2) for k in (3, 1) for side in (8, 16, 32, 64)
         for c in (8, 16, 32, 64) if side * side * c <= 32 * 32 * 64]


def maps(batch: int, side: int, c: int, o: int, k: int, s: int):
    """The plain rule and the phase form of this conv's input gradient, jitted, their operands
    (g, the flipped kernel) and the conv's config."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, side, side, c), dtype=np.float32)
    w = rng.standard_normal((k, k, c, o), dtype=np.float32)
    y = jax.eval_shape(lambda x, w: reference.conv2d(x, w, stride=s, padding=k // 2), x, w)
    cfg = conv2d_config(x, w, None, s, k // 2, 1, 1)
    cfg = conv._used_padding(cfg, x.shape[1:3], y.shape[1:3], w.shape[:2])
    hwoi, pads = conv._flipped(cfg, w)
    plain = partial(conv._spread_correlate, cfg, pads)
    g = rng.standard_normal(y.shape, dtype=np.float32)
    phases = partial(conv_forms._by_phases, cfg.stride, pads)
    return jax.jit(plain), jax.jit(phases), (jax.device_put(g), jax.device_put(hwoi)), cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print("batch  side  C -> O(g)  k  plain ms  phases ms  phases / plain  chosen")
    for batch in args.batch_sizes:
        for side, c, o, k, s in CASES:
            plain, phases, operands, cfg = maps(batch, side, c, o, k, s)
            np.testing.assert_allclose(phases(*operands), plain(*operands), rtol=2e-4,
                                       atol=2e-4)
            times = bench.interleaved({"plain": lambda: plain(*operands).block_until_ready(),
                                       "phases": lambda: phases(*operands).block_until_ready()},
                                      args.repeats, 4)
            t = {name: 1e3 * float(np.median(v)) for name, v in times.items()}
            chosen = conv_forms._phases_pay(cfg, *operands)
            print(f"{batch:5d}  {side:4d}  {c:2d} -> {o:3d}  {k}  {t['plain']:8.2f}  "
                  f"{t['phases']:9.2f}  {t['phases'] / t['plain']:14.2f}  {chosen}", flush=True)


if __name__ == "__main__":
    main()
