"""What batch norm and relu cost in ResNet-8's training step: the most that folding them into
the convolutions' neighbours could save (issue #21). XLA:CPU calls a library for each
convolution and fuses no elementwise work into it, so the batch norms' and relus' passes over
the activations (and the layer's running statistics) are paid apart from the convolutions;
oneDNN folds such work into a convolution as post-ops. The step is timed as it is, without the
running-statistics update, with each batch norm an identity, and with every batch norm and relu
an identity (same convolutions, same shapes), interleaved, beside the memory floor of the
passes the batch norms and relus make at least.

    python benchmarks/bn_relu_cost.py [--batch-sizes 32 128] [--repeats 24]
"""
from __future__ import annotations

import argparse
import types
from unittest import mock

from conv_maps import memory_gbps  # benchmarks/, the script's directory

import jcnn
from jcnn import layers
from jcnn.bench import harness as bench
from jcnn.cli.malloc import keep_freed_memory

BATCH_NORM = layers.batch_norm

# The least passes over each normalised tensor: forward, the statistics (one read) and
# y = relu(xhat * scale + bias) (a read, a write); backward, the two channel sums of g and
# xhat (two reads) and dx (reads of g, x and the mask, a write).
PASSES = 8


def ops_with(**fns) -> types.SimpleNamespace:
    """jcnn's ops with those named replaced."""
    return types.SimpleNamespace(**{**{k: getattr(jcnn, k) for k in dir(jcnn)}, **fns})


def identity_bn(x, scale, bias, **kwargs):
    return x


def no_running_stats(**kwargs) -> layers.Layer:
    """A batch-norm layer that normalises as jcnn's does but leaves its running statistics."""
    layer = BATCH_NORM(**kwargs)
    return layers.Layer(layer.init,
                        lambda p, s, x, *, train, key=None: (layer.apply(p, s, x, train=train)[0],
                                                             s), layer.name)


def normalised_bytes(batch: int) -> int:
    """Bytes of every tensor ResNet-8's batch norms normalise (float32): the stem and block 1's
    two at 32x32x16, block 2's two and its shortcut at 16x16x32, block 3's at 8x8x64."""
    return 4 * batch * (3 * 32 * 32 * 16 + 3 * 16 * 16 * 32 + 3 * 8 * 8 * 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--repeats", type=int, default=24)
    args = parser.parse_args()
    keep_freed_memory()
    spec = bench.MODELS["resnet8"]
    variants = {
        "jcnn": (jcnn, None),
        "no running stats": (jcnn, no_running_stats),
        "bn = identity": (ops_with(batch_norm=identity_bn), None),
        "bn, relu = identity": (ops_with(batch_norm=identity_bn, relu=lambda x: x), None),
    }
    gbps = memory_gbps()
    for batch in args.batch_sizes:
        images, labels = bench._batch(spec, batch)
        made = {}
        for name, (ops, layer) in variants.items():
            with mock.patch.object(layers, "batch_norm", layer or BATCH_NORM):
                made[name] = bench.jax_step_runner(spec, ops, images, labels, None)
        bench.print_step_forms(f"resnet8 B={batch:4d}", made, args.repeats, rounds=6,
                               against=("jcnn",))
        floor = PASSES * normalised_bytes(batch) / (gbps * 1e9)
        print(f"resnet8 B={batch:4d} the batch norms' and relus' memory floor: {PASSES} passes "
              f"over {normalised_bytes(batch) / 1e6:.0f} MB at {gbps:.0f} GB/s = "
              f"{1e3 * floor:.1f} ms", flush=True)


if __name__ == "__main__":
    main()
