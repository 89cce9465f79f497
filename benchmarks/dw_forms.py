"""The conv filter gradient two ways on this backend: XLA's convolution (x as CHWN, the output
image as the window; what autodiff builds too) and `jcnn.conv._patch_dots` (image patches^T @ G
over chunks of the batch), alone for the convs of ResNet-8 and LeNet, then in the jcnn
ResNet-8 training step as shipped and with the convolution form forced, beside autodiff, timed
interleaved.

    python benchmarks/dw_forms.py [--batch 128] [--parts 8 32] [--repeats 20] [--no-step]

`--parts` adds patch forms with that many chunks instead of the shipped `budget` rule.
"""
from __future__ import annotations

import argparse
import statistics
from functools import partial
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jcnn
from jcnn import bench, conv, reference
from jcnn._validate import ConvConfig

# (image side, in channels, out channels, kernel, stride), padding kernel // 2
CASES = [(32, 3, 16, 3, 1), (32, 16, 16, 3, 1), (32, 16, 32, 3, 2), (32, 16, 32, 1, 2),
         (16, 32, 32, 3, 1), (16, 32, 64, 3, 2), (8, 64, 64, 3, 1),
         (28, 1, 6, 5, 1), (14, 6, 16, 5, 1), (14, 16, 32, 5, 1)]


def conv_form(cfg, x, g):
    return lax.conv_general_dilated(x, g, window_strides=cfg.dilation, padding=cfg.pads,
                                    rhs_dilation=cfg.stride,
                                    dimension_numbers=("CHWN", "IHWO", "HWNC"))


def patch_form(cfg, x, g, parts=None):
    k_hw = conv._kernel_hw(cfg, x.shape[1:3], g.shape[1:3])
    if parts is None:
        return conv._patch_dots(cfg, x, g, k_hw)
    return conv._patch_dots(cfg, x, g, k_hw, budget=1, max_parts=parts)


def ops(batch: int, parts: list[int], repeats: int) -> None:
    forms = {"conv": conv_form, "patches": patch_form,
             **{f"patches/{p}": partial(patch_form, parts=p) for p in parts}}
    rng = np.random.default_rng(0)
    for side, c, o, k, s in CASES:
        out = (side + 2 * (k // 2) - k) // s + 1
        cfg = conv._used_padding(ConvConfig((s, s), ((k // 2,) * 2,) * 2, (1, 1), 1),
                                 (side, side), (out, out), (k, k))
        x = jnp.asarray(rng.standard_normal((batch, side, side, c), dtype=np.float32))
        g = jnp.asarray(rng.standard_normal((batch, out, out, o), dtype=np.float32))
        fns = {name: jax.jit(partial(f, cfg)) for name, f in forms.items()}
        want = np.asarray(fns["conv"](x, g))
        for f in fns.values():
            np.testing.assert_allclose(f(x, g), want, rtol=1e-4, atol=1e-3 * np.abs(want).max())
        times = bench.interleaved({n: partial(lambda f: f(x, g).block_until_ready(), f)
                                   for n, f in fns.items()}, repeats, 4)
        base = statistics.median(times["conv"])
        print(f"{side}x{side} {c}->{o} k{k} s{s} B={batch}: " + "  ".join(
            f"{n} {statistics.median(t) * 1e3:.2f} ms (x{statistics.median(t) / base:.2f})"
            for n, t in times.items()), flush=True)


def step(batch: int, repeats: int) -> None:
    spec = bench.MODELS["resnet8"]
    images, labels = bench._batch(spec, batch)
    runners, memory = {}, {}
    runners["autodiff"], memory["autodiff"] = bench.jax_step_runner(spec, reference, images,
                                                                     labels, None)
    runners["jcnn"], memory["jcnn"] = bench.jax_step_runner(spec, jcnn, images, labels, None)
    with mock.patch.object(conv, "_patches_pay", lambda *_: False):
        runners["jcnn, conv dW"], memory["jcnn, conv dW"] = bench.jax_step_runner(
            spec, jcnn, images, labels, None)
    times = bench.interleaved(runners, repeats, 6)
    base = statistics.median(times["autodiff"])
    for name, t in times.items():
        print(f"resnet8 B={batch:4d} {name:18s} {statistics.median(t) * 1e3:8.2f} ms  "
              f"x{statistics.median(t) / base:.2f} autodiff  temp "
              f"{memory[name]['temp_bytes'] / 2 ** 20:6.1f} MB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--parts", nargs="*", type=int, default=[])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-step", action="store_true")
    args = parser.parse_args()
    ops(args.batch, args.parts, args.repeats)
    if not args.no_step:
        step(args.batch, args.repeats)


if __name__ == "__main__":
    main()
