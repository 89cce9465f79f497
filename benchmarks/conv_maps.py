"""Each convolution of the benchmark models, its three maps timed alone: jcnn's (the form this
backend takes, `jcnn.forms`), XLA's plain convolution (what autodiff of `lax.conv` builds) and,
where torch imports, PyTorch's (`aten.convolution_backward` on channels_last tensors, oneDNN on
CPU), with each map's GFLOP/s. The forward and the two gradients of one conv do the same number
of multiply-adds, 2 * N*OH*OW*O * kh*kw*C FLOP. The sums are what the step's convolutions cost
at best by each library (the stem's input gradient is not needed by a step and is left out).

The bytes account: each map must at least read its two operands and write its result once
(forward x, w -> y; input gradient g, w -> dx; filter gradient x, g -> dw), MB a map below.
With the FMA peak (`jcnn.bench.harness.cpu_peak`) and the memory bandwidth measured here (a
jitted a + 2b over 3 x 128 MiB, the better of two), each map's floor is max(FLOP / peak,
bytes / bandwidth): the line per conv gives which of the two bounds it, and the sums compare
them with each library.

    python benchmarks/conv_maps.py [--model resnet8 lenet] [--batch 128] [--repeats 20]
"""
from __future__ import annotations

import argparse

import jax
import numpy as np
from jax import lax

import jcnn
from jcnn.bench import harness as bench
from jcnn.cli.malloc import keep_freed_memory

# model -> (image side, in channels, out channels, kernel, stride, how many in the model);
# padding kernel // 2 (ResNet) or 2 (LeNet's 5x5 "same")
CONVS = {
    "resnet8": [(32, 3, 16, 3, 1, 1), (32, 16, 16, 3, 1, 2), (32, 16, 32, 3, 2, 1),
                (16, 32, 32, 3, 1, 1), (32, 16, 32, 1, 2, 1), (16, 32, 64, 3, 2, 1),
                (8, 64, 64, 3, 1, 1), (16, 32, 64, 1, 2, 1)],
    "lenet": [(28, 1, 6, 5, 1, 1), (14, 6, 16, 5, 1, 1)],
}


def jax_maps(conv):
    """forward, input gradient, filter gradient of `conv(x, w)`, jitted."""
    return (jax.jit(conv),
            jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0]),
            jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0]))


def torch_maps(x, w, stride, pad):
    """The same three maps in PyTorch (channels_last), or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))) \
        .contiguous(memory_format=torch.channels_last)
    tw = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1))) \
        .contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = torch.nn.functional.conv2d(tx, tw, stride=stride, padding=pad)
    tg = torch.ones_like(y)

    def backward(mask):
        return lambda: torch.ops.aten.convolution_backward(
            tg, tx, tw, None, (stride,) * 2, (pad,) * 2, (1, 1), False, (0, 0), 1, mask)

    def forward():
        with torch.no_grad():
            return torch.nn.functional.conv2d(tx, tw, stride=stride, padding=pad)
    return forward, backward((True, False, False)), backward((False, True, False))


def memory_gbps(values: int = 2 ** 25, repeats: int = 10) -> float:
    """GB/s of a jitted a + 2b over float32 arrays of `values` (two reads, one write)."""
    a, b = (jax.device_put(np.ones(values, np.float32)) for _ in range(2))
    triad = jax.jit(lambda a, b: a + 2 * b)
    for _ in range(3):  # the output's pages faulted in once, then reused (malloc kept)
        triad(a, b).block_until_ready()
    t = bench.interleaved({"triad": lambda: triad(a, b).block_until_ready()}, repeats, 2)
    return 3 * 4 * values / float(np.median(t["triad"])) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", choices=sorted(CONVS), default=["resnet8"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    keep_freed_memory()  # as `jcnn bench` runs: no page faults in the timings
    peak, _ = bench.cpu_peak()
    gbps = max(memory_gbps(), memory_gbps())  # a process's first arrays ran at 1/3 the speed
    print(f"{bench.describe_cpu(open('/proc/cpuinfo').read()) or 'cpu'}, batch {args.batch}, "
          f"ms (GFLOP/s) per map: forward / input gradient / filter gradient; FMA peak "
          f"{peak or float('nan'):.0f} GFLOP/s, memory {gbps:.1f} GB/s")
    for model in args.model:
        totals: dict[str, float] = {}
        floors = {"FLOP": 0.0, "bytes": 0.0}
        print(f"{model}: side  C -> O  k  s  x count  GFLOP  MB a map  floor ms (by)  "
              "jcnn | xla | torch")
        for index, (side, c, o, k, s, count) in enumerate(CONVS[model]):
            pad = 2 if model == "lenet" else k // 2
            rng = np.random.default_rng(0)
            x = rng.standard_normal((args.batch, side, side, c), dtype=np.float32)
            w = rng.standard_normal((k, k, c, o), dtype=np.float32) * 0.1
            paths = {
                "jcnn": jax_maps(lambda x, w: jcnn.conv2d(x, w, stride=s, padding=pad)),
                "xla": jax_maps(lambda x, w: lax.conv_general_dilated(
                    x, w, (s, s), [(pad, pad)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC"))),
            }
            torch_runs = torch_maps(x, w, s, pad)
            y = paths["xla"][0](x, w)
            gflop = 2 * y.size * k * k * c / 1e9
            mb = 4 * (x.size + w.size + y.size) / 1e6  # each map moves x, w, y (or dx, dw, g)
            maps_needed = count * (2 if index == 0 else 3)
            by_flop = maps_needed * gflop / (peak or np.inf) * 1e3
            by_bytes = maps_needed * mb / gbps
            floors["FLOP"] += by_flop
            floors["bytes"] += by_bytes
            x, w, g = jax.device_put((x, w, np.ones(y.shape, np.float32)))
            runners = {}
            for name, (f, dx, dw) in paths.items():
                runners[name] = [lambda f=f: f(x, w).block_until_ready(),
                                 lambda dx=dx: dx(x, w, g).block_until_ready(),
                                 lambda dw=dw: dw(x, w, g).block_until_ready()]
            if torch_runs is not None:
                runners["torch"] = list(torch_runs)
            flat = {f"{name} {m}": run for name, runs in runners.items()
                    for m, run in zip("f dx dw".split(), runs)}
            times = bench.interleaved(flat, args.repeats, 4)
            ms = {key: 1e3 * float(np.median(t)) for key, t in times.items()}
            cells = []
            for name in runners:
                maps = [ms[f"{name} {m}"] for m in ("f", "dx", "dw")]
                needed = [maps[0], 0.0, maps[2]] if index == 0 else maps  # the stem: no dx
                totals[name] = totals.get(name, 0.0) + count * sum(needed)
                cells.append(" / ".join(f"{t:.2f} ({gflop / t * 1e3:.0f})" for t in maps))
            floor = f"{max(by_flop, by_bytes):.2f} ({'FLOP' if by_flop > by_bytes else 'bytes'})"
            print(f"  {side:4d}  {c:2d} -> {o:2d}  {k}  {s}  x{count}  {gflop:.3f}  "
                  f"{mb:.1f}  {floor}   " + " | ".join(cells), flush=True)
        print("  the model's convolutions, ms: " +
              ", ".join(f"{name} {t:.1f}" for name, t in totals.items()) +
              f"; floors: FLOP {floors['FLOP']:.1f}, bytes {floors['bytes']:.1f}")


if __name__ == "__main__":
    main()
