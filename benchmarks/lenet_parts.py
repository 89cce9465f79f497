"""Where a LeNet training step's time goes on this machine: each conv's forward, input gradient
(dx) and filter gradient (dw), as autodiff and as jcnn's rules compute them, each max-pool's
forward + backward, and the whole autodiff step, timed interleaved
(`jcnn.bench.harness.interleaved`).

The convs are what both paths must pay; their sum over the autodiff step is the floor of the
jcnn/autodiff step ratio for as long as jcnn's convs run XLA's convolutions.

    python benchmarks/lenet_parts.py [--batch-sizes 128 512] [--repeats 40]
"""
from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp
import numpy as np

import jcnn
from jcnn import reference
from jcnn.bench import harness as bench

# (name, image HWC, kernel HWIO) for the two convs of `bench.LENET`
CONVS = (("conv1", (28, 28, 1), (5, 5, 1, 6)), ("conv2", (14, 14, 6), (5, 5, 6, 16)))
POOLS = (("pool1", (28, 28, 6)), ("pool2", (14, 14, 16)))


def conv_parts(ops, batch: int, image, kernel, rng) -> dict:
    """name -> (jitted fn, args): forward, dx alone, dw alone (each pulls a fixed cotangent)."""
    x = jnp.asarray(rng.standard_normal((batch, *image), dtype=np.float32))
    w = jnp.asarray(rng.standard_normal(kernel, dtype=np.float32))
    g = jnp.asarray(rng.standard_normal((batch, *image[:2], kernel[3]), dtype=np.float32))

    def conv(x, w):
        return ops.conv2d(x, w, padding=2)

    def dx(x, w, g):
        return jax.vjp(lambda x: conv(x, w), x)[1](g)[0]

    def dw(x, w, g):
        return jax.vjp(lambda w: conv(x, w), w)[1](g)[0]
    return {"fwd": (jax.jit(conv), (x, w)), "dx": (jax.jit(dx), (x, w, g)),
            "dw": (jax.jit(dw), (x, w, g))}


def pool_fwd_bwd(ops, batch: int, image, rng):
    x = jnp.asarray(rng.standard_normal((batch, *image), dtype=np.float32))
    g = jnp.asarray(rng.standard_normal((batch, image[0] // 2, image[1] // 2, image[2]),
                                        dtype=np.float32))

    def f(x, g):
        y, pull = jax.vjp(lambda x: ops.max_pool2d(x, 2), x)
        return y, pull(g)[0]
    return jax.jit(f), (x, g)


def measure(batch: int, repeats: int) -> dict[str, float]:
    """Median ms of every part, and of the whole autodiff step, timed in the same rounds."""
    rng = np.random.default_rng(0)
    runners = {}
    for label, ops in (("autodiff", reference), ("jcnn", jcnn)):
        for name, image, kernel in CONVS:
            for part, (fn, args) in conv_parts(ops, batch, image, kernel, rng).items():
                runners[f"{name} {part} {label}"] = (fn, args)
        if hasattr(ops, "max_pool2d"):
            for name, image in POOLS:
                runners[f"{name} fwd+bwd {label}"] = pool_fwd_bwd(ops, batch, image, rng)
    timed = {k: (lambda fn=fn, args=args: jax.block_until_ready(fn(*args)))
             for k, (fn, args) in runners.items()}
    images, labels = bench._batch(bench.MODELS["lenet"], batch)
    timed["step autodiff"] = bench.jax_step_runner(bench.MODELS["lenet"], reference, images,
                                                    labels, None)[0]
    times = bench.interleaved(timed, repeats, rounds=5)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 512])
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    for batch in args.batch_sizes:
        ms = measure(batch, args.repeats)
        print(f"\nB={batch}: median ms")
        for k, v in ms.items():
            print(f"  {k:24s} {v:8.2f}")
        both_pay = sum(min(ms[f"{c} {p} autodiff"], ms[f"{c} {p} jcnn"])
                       for c, *_ in CONVS for p in ("fwd", "dw"))
        both_pay += min(ms["conv2 dx autodiff"], ms["conv2 dx jcnn"])
        print(f"  conv work both paths pay (fastest of the two forms): {both_pay:.2f} ms = "
              f"{both_pay / ms['step autodiff']:.2f} of the autodiff step")


if __name__ == "__main__":
    main()
