"""`jcnn bench`: time a full training step with jcnn's hand-derived rules against JAX's autodiff
(`jcnn.reference` + `jax.grad`), and PyTorch when it is installed, in one run.

A step is forward, backward and an SGD-momentum update, jit-compiled with donated buffers
(`jcnn.train.step.make_train_step`, run by `jcnn.bench.harness`). Each path is warmed up, then
timed one step at a time (`block_until_ready`) in interleaved rounds, so that load from other
processes falls on every path alike; the table gives the median, the ratio to autodiff, XLA's
compiled memory figures (temp and argument bytes) and the minor page faults per step (where a
large temp buffer's pages are faulted in anew each step, that is time the memory costs). `--ops`
times single ops (forward + backward) the same way, so a regression points at its op. `--hand
reference` runs autodiff against itself: its ratios show the harness's noise. Times are
measurements of this machine, not properties of jcnn: compare ratios taken in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Optional

import jcnn
from jcnn import reference
from jcnn.bench.harness import OP_CASES, bench_op, bench_step, environment
from jcnn.bench.models import DTYPES, MODELS
from jcnn.cli import UsageError, output_file, positive
from jcnn.train.atomic import atomic_open

HANDS = {"jcnn": jcnn, "reference": reference}
TORCH_MODES = ("eager", "channels_last", "compile")


def _torch_modes(arg: Optional[str], smoke: bool) -> tuple[str, ...]:
    """--torch: a comma list of modes, "none", or (default) every mode when torch imports
    (none under --smoke)."""
    if arg is None:
        from importlib.util import find_spec
        return () if smoke or find_spec("torch") is None else TORCH_MODES
    modes = () if arg == "none" else tuple(arg.split(","))
    unknown = set(modes) - set(TORCH_MODES)
    if unknown:
        raise UsageError(f"--torch takes none or a comma list of "
                         f"{', '.join(TORCH_MODES)}; got {', '.join(sorted(unknown))}")
    return modes


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", nargs="+", choices=sorted(MODELS), default=None,
                        help="models to time (default: all; lenet under --smoke)")
    parser.add_argument("--batch-sizes", nargs="+", type=positive(int), metavar="B",
                        help="batch sizes for every model (default: " + "; ".join(
                            f"{k} {' '.join(map(str, v.batch_sizes))}" for k, v in MODELS.items())
                        + "; e.g. 1024 8192 on a GPU)")
    parser.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=None,
                        help="compute dtypes, params stay float32 (default: both)")
    parser.add_argument("--repeats", type=positive(int), default=30,
                        help="timed runs per path (default 30)")
    parser.add_argument("--rounds", type=positive(int), default=5,
                        help="interleaving rounds the runs are split into (default 5)")
    parser.add_argument("--torch", metavar="MODES", help="PyTorch rows: comma list of "
                        f"{', '.join(TORCH_MODES)}, or none (default: all when torch imports)")
    parser.add_argument("--ops", action="store_true",
                        help="time single ops (forward + backward) instead of the training step")
    parser.add_argument("--hand", choices=sorted(HANDS), default="jcnn",
                        help="the rules timed against autodiff; reference gives an A/A run "
                        "whose ratios show the harness's noise")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny: batch 8, float32, 3 runs, no torch (for the test suite)")
    parser.add_argument("--json", type=output_file, metavar="PATH",
                        help="also write {environment, rows} as JSON here")


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: list[dict]) -> str:
    """The rows as an aligned text table: times in ms, memory in MB, ratios to autodiff (with
    their range over the rounds, and to the fastest PyTorch variant), minor page faults per
    step, GFLOP/s by XLA's cost analysis."""
    head = ("model", "op", "batch", "dtype", "impl", "median ms", "min ms", "ratio",
            "rounds", "vs torch", "temp MB", "arg MB", "temp ratio", "faults/step", "GFLOP/s")
    lines = [head] + [(r["model"], r["op"], str(r["batch"]), r["dtype"], r["impl"],
                       _fmt(r["median_ms"], ".2f"), _fmt(r["min_ms"], ".2f"),
                       _fmt(r["ratio"], ".2f"),
                       "-" if r["ratio_lo"] is None else f"{r['ratio_lo']:.2f}-{r['ratio_hi']:.2f}",
                       _fmt(r["torch_ratio"], ".2f"),
                       _fmt(r["temp_bytes"] and r["temp_bytes"] / 1e6, ".2f"),
                       _fmt(r["argument_bytes"] and r["argument_bytes"] / 1e6, ".2f"),
                       _fmt(r["temp_ratio"], ".2f"), _fmt(r["faults"], ".0f"),
                       _fmt(r["gflops"], ".1f"))
                      + ((r["note"],) if r["note"] else ())
                      for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
                     + ("  " + line[-1] if len(line) > len(head) else "") for line in lines)


def run(args) -> int:
    names = args.model or (["lenet"] if args.smoke else list(MODELS))
    dtypes = args.dtype or (["float32"] if args.smoke else list(DTYPES))
    repeats, rounds = (3, 1) if args.smoke else (args.repeats, args.rounds)
    torch_modes = _torch_modes(args.torch, args.smoke)
    hand = HANDS[args.hand]
    env = environment()
    print(f"jcnn bench: {env['platform']} {env['device']}, {env['cores']} cores, jax {env['jax']}, "
          f"jaxlib {env['jaxlib']}, torch {env['torch'] or 'not installed'}, load "
          f"{' '.join(f'{x:.2f}' for x in env['load_average'])}; {repeats} runs per path in "
          f"{rounds} interleaved rounds, median", flush=True)
    if env["fma_peak_gflops"]:  # GFLOP/s: XLA's cost analysis of the step over its median
        print(f"assumed FMA peak {env['fma_peak_gflops']:.0f} GFLOP/s: {env['fma_peak_how']}")
    rows = []
    for name in names:
        sizes = [8] if args.smoke else args.batch_sizes or MODELS[name].batch_sizes
        for batch in sizes:
            for dtype in dtypes:
                if args.ops:
                    for case in (c for c in OP_CASES if c.model == name):
                        rows += bench_op(case, batch, dtype, repeats=repeats, rounds=rounds,
                                         hand=hand)
                else:
                    rows += bench_step(name, batch, dtype, repeats=repeats, rounds=rounds,
                                       hand=hand, torch_modes=torch_modes)
    print(format_table(rows))
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        with atomic_open(args.json) as f:
            f.write(json.dumps({"environment": env, "rows": rows}, indent=1) + "\n")
    return 0
