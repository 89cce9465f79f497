"""Compile time and XLA temp memory of whole training steps, jcnn's rules against autodiff of
`jcnn.reference`: LeNet-5 and ResNet-8 at B=512, and a 16-layer stack of 3x3 32->32 conv + relu
at B=64 on 32x32 images. Each step is traced, lowered and compiled from scratch
(`jax.clear_caches()` first; no persistent cache), `--repeats` times, the two paths
interleaved; the median is printed.

The step is plain SGD on the mean softmax cross-entropy, built only from `jcnn.models` and
`jcnn.layers`, so the same script measures any checkout: run it once with the code under test
on `PYTHONPATH` and once with the baseline's, in one sitting, to compare (benchmarks/RESULTS.md).

    python benchmarks/compile_memory.py [--repeats 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import jcnn
from jcnn import layers as L
from jcnn import models, reference


def stack(ops, depth: int = 16, width: int = 32):
    body = [layer for _ in range(depth) for layer in (L.conv2d(width, 3, padding=1, ops=ops),
                                                      L.relu(ops=ops))]
    return L.serial(*body, L.global_avg_pool2d(ops=ops), L.dense(10, ops=ops))


CASES = {  # name -> (build(ops), image HWC, batch)
    "lenet": (lambda ops: models.lenet(10, channels=(6, 16), hidden=(120,), ops=ops),
              (28, 28, 1), 512),
    "resnet8": (lambda ops: models.resnet(10, 8, ops=ops), (32, 32, 3), 512),
    "stack16": (stack, (32, 32, 32), 64),
}


def compiled_step(build, ops, image, batch):
    model = build(ops)
    shape = (batch, *image)
    params, state = model.init(jax.random.key(0), shape)
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape, dtype=np.float32))
    y = jnp.zeros((batch,), jnp.int32)

    def step(params, state, x, y):
        def loss(params):
            logits, new_state = model.apply(params, state, x, train=True)
            return ops.softmax_cross_entropy(logits, y), new_state
        (value, new_state), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return jax.tree.map(lambda p, g: p - 0.01 * g, params, grads), new_state, value

    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0,)).lower(params, state, x, y).compile()
    return time.perf_counter() - start, compiled.memory_analysis().temp_size_in_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    rows = []
    print(f"jcnn from {jcnn.__file__}; jax {jax.__version__}")
    print(f"{'case':8} {'batch':>5} {'jcnn s':>7} {'autodiff s':>10} {'ratio':>6} "
          f"{'jcnn MiB':>9} {'autodiff MiB':>12} {'ratio':>6}")
    for name in args.cases:
        build, image, batch = CASES[name]
        seconds, temp = {"jcnn": [], "autodiff": []}, {}
        for _ in range(args.repeats):
            for impl, ops in (("jcnn", jcnn), ("autodiff", reference)):
                jax.clear_caches()
                s, t = compiled_step(build, ops, image, batch)
                seconds[impl].append(s)
                temp[impl] = t / 2 ** 20
        med = {k: statistics.median(v) for k, v in seconds.items()}
        row = dict(case=name, batch=batch, jcnn_s=med["jcnn"], autodiff_s=med["autodiff"],
                   compile_ratio=med["jcnn"] / med["autodiff"], jcnn_mib=temp["jcnn"],
                   autodiff_mib=temp["autodiff"], memory_ratio=temp["jcnn"] / temp["autodiff"])
        rows.append(row)
        print(f"{name:8} {batch:5d} {row['jcnn_s']:7.2f} {row['autodiff_s']:10.2f} "
              f"{row['compile_ratio']:6.2f} {row['jcnn_mib']:9.1f} {row['autodiff_mib']:12.1f} "
              f"{row['memory_ratio']:6.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
