"""The batch-norm backward's two channel sums, one pass or two, in the whole ResNet-8 training
step: autodiff, jcnn as shipped (lowered for CPU one variadic reduction, `jcnn/forms/norm.py`;
elsewhere two `jnp.sum`s), and jcnn with each form forced, timed interleaved, with XLA's temp
memory. The forced forms are built by patching the form's chooser before compiling.

    python benchmarks/bn_forms.py [--batch-sizes 32 128] [--repeats 30]
"""
from __future__ import annotations

import argparse
from unittest import mock

import jcnn
from jcnn import norm, reference
from jcnn.bench import harness as bench
from jcnn.forms import norm as norm_forms


def forced_runner(spec, images, labels, one_pass: bool):
    """A jcnn step whose batch norms reduce in one pass (or two sums) whatever the backend."""
    form = norm_forms._one_pass if one_pass else norm._two_sums
    with mock.patch.object(norm_forms, "channel_sums", lambda g: None), \
            mock.patch.object(norm, "_two_sums", form):
        return bench.jax_step_runner(spec, jcnn, images, labels, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 128])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    spec = bench.MODELS["resnet8"]
    for batch in args.batch_sizes:
        images, labels = bench._batch(spec, batch)
        made = {"autodiff": bench.jax_step_runner(spec, reference, images, labels, None),
                "jcnn": bench.jax_step_runner(spec, jcnn, images, labels, None),
                "jcnn, one pass": forced_runner(spec, images, labels, True),
                "jcnn, two sums": forced_runner(spec, images, labels, False)}
        bench.print_step_forms(f"resnet8 B={batch:4d}", made, args.repeats, rounds=10,
                               against=("autodiff", "jcnn, two sums"))


if __name__ == "__main__":
    main()
