"""The floor of the jcnn/autodiff step ratio while both paths run XLA's convolutions: the
autodiff step against the same step with every op but conv2d, dense and the loss replaced by
the cheapest stand-in of the same shape (relu: identity; 2x2 max-pool: a strided slice; batch
norm: `x * scale + bias`). Hand rules for the replaced ops can at best make them free, so
T(stand-ins) / T(autodiff) bounds what they can reach; below it only a faster conv goes, or a
step with less temp memory: on CPU a temp buffer of 32 MiB or more is page-faulted in anew
every step, so the floor holds only between steps whose temp is on the same side of that
(the page faults per step are printed; benchmarks/RESULTS.md). jcnn's step is timed beside.

    python benchmarks/floor.py [--model lenet resnet8] [--batch-sizes ...] [--repeats 40]
"""
from __future__ import annotations

import argparse
import statistics
import types

import jcnn
from jcnn import reference
from jcnn.bench import harness as bench


def _strided(x, window, stride=None, padding=0):
    assert window == 2 and stride is None and padding == 0, "stand-in for the 2x2/2 pool only"
    return x[:, ::2, ::2]


STAND_INS = types.SimpleNamespace(**{
    **{name: getattr(reference, name) for name in reference.__dir__() if not name.startswith("_")},
    "relu": lambda x: x,
    "max_pool2d": _strided,
    "batch_norm": lambda x, scale, bias, *, eps=1e-5: x * scale + bias,
})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", choices=sorted(bench.MODELS),
                        default=list(bench.MODELS))
    parser.add_argument("--batch-sizes", nargs="+", type=int)
    parser.add_argument("--dtype", choices=sorted(bench.DTYPES), default="float32")
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    for name in args.model:
        spec = bench.MODELS[name]
        for batch in args.batch_sizes or spec.batch_sizes:
            images, labels = bench._batch(spec, batch)
            runners, temp = {}, {}
            for label, ops in (("autodiff", reference), ("stand-ins", STAND_INS), ("jcnn", jcnn)):
                runners[label], memory = bench.jax_step_runner(spec, ops, images, labels,
                                                               bench.DTYPES[args.dtype])
                temp[label] = memory["temp_bytes"]
            ms = {k: 1e3 * statistics.median(v)
                  for k, v in bench.interleaved(runners, args.repeats, rounds=5).items()}
            faults = {k: bench.faults_per_call(run) for k, run in runners.items()}
            print(f"{name:8s} B={batch:4d} {args.dtype}: autodiff {ms['autodiff']:7.2f} ms, "
                  f"convs+dense+loss only {ms['stand-ins']:7.2f} ms -> time floor "
                  f"{ms['stand-ins'] / ms['autodiff']:.2f} "
                  f"(jcnn {ms['jcnn'] / ms['autodiff']:.2f}); "
                  f"temp {temp['autodiff'] / 1e6:.1f} vs {temp['stand-ins'] / 1e6:.1f} MB -> "
                  f"memory floor {temp['stand-ins'] / temp['autodiff']:.2f} (jcnn "
                  f"{temp['jcnn'] / temp['autodiff']:.2f}); page faults per step "
                  + ", ".join(f"{k} {v:.0f}" for k, v in faults.items() if v is not None),
                  flush=True)


if __name__ == "__main__":
    main()
