"""Do jcnn's CPU convolution forms pay on this CPU? The whole training step with each form
switched off in turn (its `conv._*_pay` predicate patched to False before compiling), beside
jcnn as shipped and autodiff, timed interleaved, with XLA's temp memory. The forms were chosen
on one host; run this on a new one (benchmarks/RESULTS.md, seventh session, has a table of it).

- taps:  a one-channel input as a sum over the kernel taps (`_taps_pay`, LeNet's conv1);
- rows:  a stride-1 conv into 3-7 channels by kernel rows (`_rows_pay`, LeNet's conv2 dx);
- pad8:  3-7 input channels padded to 8 (`_eight_channels_pay`, LeNet's conv2, ResNet's stem).

    python benchmarks/cpu_forms.py [--model lenet] [--batch-sizes 128 512] [--dtype float32]
"""
from __future__ import annotations

import argparse
from unittest import mock

import jcnn
from jcnn import bench, conv, reference

FORMS = {"taps": ("_taps_pay",), "rows": ("_rows_pay",), "pad8": ("_eight_channels_pay",)}
FORMS["all three"] = tuple(name for names in FORMS.values() for name in names)


def without(spec, images, labels, dtype, predicates):
    """A jcnn step compiled with the named predicates answering False."""
    off = {name: (lambda *args, **kwargs: False) for name in predicates}
    with mock.patch.multiple(conv, **off):
        return bench.jax_step_runner(spec, jcnn, images, labels, bench.DTYPES[dtype])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(bench.MODELS), default="lenet")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 512])
    parser.add_argument("--dtype", choices=sorted(bench.DTYPES), default="float32")
    parser.add_argument("--repeats", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    spec = bench.MODELS[args.model]
    print(bench.environment()["device"])
    for batch in args.batch_sizes:
        images, labels = bench._batch(spec, batch)
        made = {"autodiff": bench.jax_step_runner(spec, reference, images, labels,
                                                  bench.DTYPES[args.dtype]),
                "jcnn": bench.jax_step_runner(spec, jcnn, images, labels,
                                              bench.DTYPES[args.dtype])}
        for form, predicates in FORMS.items():
            made[f"jcnn without {form}"] = without(spec, images, labels, args.dtype, predicates)
        bench.print_step_forms(f"{args.model} B={batch:5d} {args.dtype:8s}", made, args.repeats,
                               args.rounds)


if __name__ == "__main__":
    main()
