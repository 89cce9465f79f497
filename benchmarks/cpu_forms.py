"""Do jcnn's CPU forms pay on this CPU? The whole training step with each form switched off in
turn (its chooser or predicate in `jcnn/forms/` patched before compiling, so the plain rule is
lowered in its place), beside jcnn as shipped and autodiff, timed interleaved, with XLA's temp
memory. The forms were chosen on one host; run this on a new one (benchmarks/RESULTS.md).

- taps:   a one-channel input as a sum over the kernel taps (`conv._taps_pay`, LeNet's conv1);
- rows:   a stride-1 conv into 3-7 channels by kernel rows (`conv._rows_pay`, LeNet's conv2 dx);
- pad8:   3-7 input channels padded to 8 (`conv._eight_channels_pay`, LeNet's conv2, the stem);
- dw:     the filter gradient in batch chunks, a matmul for 1x1 (`conv.filter_gradient`);
- bits:   max-pool's bitmask or index instead of the re-derived mask (`pool.max_pool`);
- packed: relu's mask packed eight to a byte (`activation.leaky`);
- sums:   batch norm's two channel sums in one pass (`norm.channel_sums`).

    python benchmarks/cpu_forms.py [--model lenet] [--batch-sizes 128 512] [--dtype float32]
"""
from __future__ import annotations

import argparse
from unittest import mock

import jcnn
from jcnn import reference
from jcnn.bench import harness as bench
from jcnn.forms import activation, conv, norm, pool


def _false(*args):
    return False


def _none(*args):
    return None


FORMS = {"taps": (conv, "_taps_pay", _false), "rows": (conv, "_rows_pay", _false),
         "pad8": (conv, "_eight_channels_pay", _false), "dw": (conv, "filter_gradient", _none),
         "bits": (pool, "max_pool", _none), "packed": (activation, "leaky", _none),
         "sums": (norm, "channel_sums", _none)}


def without(spec, images, labels, dtype, form):
    """A jcnn step compiled with one form switched off."""
    module, name, replacement = FORMS[form]
    with mock.patch.object(module, name, replacement):
        return bench.jax_step_runner(spec, jcnn, images, labels, bench.DTYPES[dtype])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(bench.MODELS), default="lenet")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 512])
    parser.add_argument("--dtype", choices=sorted(bench.DTYPES), default="float32")
    parser.add_argument("--forms", nargs="+", choices=sorted(FORMS), default=sorted(FORMS))
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
        for form in args.forms:
            made[f"jcnn without {form}"] = without(spec, images, labels, args.dtype, form)
        bench.print_step_forms(f"{args.model} B={batch:5d} {args.dtype:8s}", made, args.repeats,
                               args.rounds)


if __name__ == "__main__":
    main()
