"""Where a training step's time goes, by kind of work, at two or more batch sizes: XLA's
profiler records each thunk of the compiled step (its HLO instruction), and each instruction is
put in a group by what it computes: the convolutions' forward, input gradient and filter
gradient (Eigen's, or YNNPACK's fusions), dots, copies and transposes (layout changes), and the
rest (XLA's loop fusions and reductions: batch norm, relu, adds, the optimizer). The table gives
each group's thunk time per step and per image, so a time per image that grows with the batch
points at its group. Thunk times are summed over XLA's threads (the two cores), so a group's
figure is CPU time, and the sum can exceed the step's wall time where thunks overlap.

`--torch` profiles PyTorch's step instead (channels_last, as `jcnn bench` times it) with
`torch.profiler`, each aten op's self time put in the same groups (`convolution_backward`
computes both gradients: its time is under "conv filter grad", the input gradient's row empty).
Its times are each op's time on the calling thread (oneDNN parallelises inside an op), so they
sum to about the step's wall time rather than to CPU time.

    python benchmarks/step_profile.py [--model resnet8] [--batch-sizes 32 128] [--steps 10]
                                      [--autodiff | --torch]
"""
from __future__ import annotations

import argparse
import collections
import glob
import re
import tempfile
import time
from typing import Optional

import jax
from jax._src.profiler import ProfileData

import jcnn
from jcnn import reference
from jcnn.bench import harness
from jcnn.bench.models import MODELS
from jcnn.cli.malloc import keep_freed_memory

GROUPS = ("conv forward", "conv input grad", "conv filter grad", "dot", "copy/transpose",
          "elementwise/reduce")


def computations(hlo: str) -> dict[str, str]:
    """HLO text -> {computation name: its body}."""
    bodies, name = {}, None
    for line in hlo.splitlines():
        head = re.match(r"(?:ENTRY )?%(\S+) .*\{$", line)
        if head:
            name, bodies[head.group(1)] = head.group(1), ""
        elif name is not None:
            bodies[name] += line + "\n"
    return bodies


def groups(hlo: str) -> dict[str, Optional[str]]:
    """Each instruction of the compiled step's HLO -> its group (see GROUPS), or None for a
    loop or call."""
    bodies = computations(hlo)
    found = {}
    for m in re.finditer(r"^\s*(?:ROOT )?%(\S+) = (.*?) (\w[\w-]*)\((.*)$", hlo, re.M):
        name, _, op, rest = m.groups()
        if op in ("while", "conditional", "call"):
            found[name] = None  # its thunk spans its body's, which are counted themselves
            continue
        called = re.search(r"calls=%([\w.-]+)", rest)
        body = bodies.get(called.group(1), "") if called else ""
        conv = m.group(0) if op == "convolution" else re.search(r".* convolution\(.*", body)
        if conv:
            found[name] = _conv_group(conv if isinstance(conv, str) else conv.group(0), rest)
        elif op == "dot" or " dot(" in body:
            found[name] = "dot"
        elif op in ("copy", "transpose") or name.startswith(("copy", "transpose")):
            found[name] = "copy/transpose"
        else:
            found[name] = "elementwise/reduce"
    return found


def _conv_group(conv: str, metadata: str) -> str:
    """A filter gradient's window is the image and its output the kernel, smaller than the
    window; a forward's or an input gradient's output is an image, its window the kernel."""
    shape, labels = re.search(r"\[([\d,]*)\]", conv), re.search(r"->(\w+)", conv)
    out = [int(d) for d in shape.group(1).split(",")]
    spatial = [out[labels.group(1).index(axis)] for axis in "01"]
    window = [int(d) for d in re.search(r"size=(\d+)x(\d+)", conv).groups()]
    if spatial[0] * spatial[1] < window[0] * window[1]:
        return "conv filter grad"
    return "conv input grad" if "transpose(" in metadata else "conv forward"


def profile(run, steps: int) -> dict[str, float]:
    """Seconds per step spent in each HLO instruction's thunks over `steps` calls of `run`."""
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d)
        for _ in range(steps):
            run()
        jax.profiler.stop_trace()
        data = ProfileData.from_file(glob.glob(f"{d}/**/*.xplane.pb", recursive=True)[0])
    spent = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                op = dict(event.stats).get("hlo_op")
                if op is not None:
                    spent[op] += event.duration_ns * 1e-9 / steps
    return spent


def median_wall(run, steps: int) -> float:
    """The median wall time in seconds of `steps` calls of `run` (each waits for its step)."""
    walls = []
    for _ in range(steps):
        start = time.perf_counter()
        run()
        walls.append(time.perf_counter() - start)
    return sorted(walls)[len(walls) // 2]


def step_groups(model: str, ops, batch: int, steps: int) -> tuple[dict[str, float], float, dict]:
    """(seconds per step in each group, the step's median wall time, XLA's cost analysis) for
    one batch size."""
    spec = MODELS[model]
    images, labels = harness._batch(spec, batch)
    compiled, ts, x, y = harness.compile_step(spec, ops, images, labels, None)
    run = harness.step_runner(compiled, ts, x, y)
    wall = median_wall(run, steps)
    where = groups(compiled.as_text())
    by_group = collections.Counter()
    for op, seconds in profile(run, steps).items():
        group = where.get(op, "elementwise/reduce")
        if group is not None:
            by_group[group] += seconds
    return by_group, wall, harness.cost_analysis(compiled)


def torch_group(name: str) -> str:
    """The group of an aten op of PyTorch's step, by its name."""
    lowered = name.lower()
    if "convolution_backward" in lowered or "convolutionbackward" in lowered:
        return "conv filter grad"
    if "convolution" in lowered:
        return "conv forward"
    if name in ("aten::mm", "aten::addmm", "aten::linear"):
        return "dot"
    if name in ("aten::copy_", "aten::contiguous", "aten::clone", "aten::to"):
        return "copy/transpose"
    return "elementwise/reduce"


def torch_step_groups(model: str, batch: int, steps: int) -> tuple[dict[str, float], float, dict]:
    """`step_groups` for PyTorch's channels_last step, from `torch.profiler`."""
    import torch.profiler

    from jcnn.bench import torch_twins  # torch is optional: imported only when asked for
    images, labels = harness._batch(MODELS[model], batch)
    run = torch_twins.step_runner(model, "channels_last", images, labels, "float32")
    wall = median_wall(run, steps)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            run()
    by_group = collections.Counter()
    for event in prof.key_averages():
        by_group[torch_group(event.key)] += event.self_cpu_time_total * 1e-6 / steps
    return by_group, wall, {}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet8", choices=sorted(MODELS))
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    p.add_argument("--steps", type=int, default=10)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--autodiff", action="store_true", help="profile autodiff's step instead")
    which.add_argument("--torch", action="store_true", help="profile PyTorch's step instead")
    args = p.parse_args()
    keep_freed_memory()  # as `jcnn bench` runs its steps
    if args.torch:
        rows = {b: torch_step_groups(args.model, b, args.steps) for b in args.batch_sizes}
    else:
        ops = reference if args.autodiff else jcnn
        rows = {b: step_groups(args.model, ops, b, args.steps) for b in args.batch_sizes}
    head = " | ".join(f"B={b} ms (per image)" for b in args.batch_sizes)
    name = "torch" if args.torch else "autodiff" if args.autodiff else "jcnn"
    print(f"| {args.model} {name} | {head} |")
    print("|---" * (len(args.batch_sizes) + 1) + "|")
    total = "all ops (thread time)" if args.torch else "all thunks (CPU)"
    for g in (*GROUPS, total, "step (wall)"):
        cells = []
        for b, (by_group, wall, _) in rows.items():
            s = {total: sum(by_group.values()), "step (wall)": wall}.get(g, by_group.get(g, 0.0))
            cells.append(f"{1e3 * s:.1f} ({1e3 * s / b:.3f})")
        print(f"| {g} | " + " | ".join(cells) + " |")
    if args.torch:
        return
    print("XLA's cost analysis of the step (every op's operands and result counted, no cache):",
          "; ".join(f"B={b}: {cost.get('flops', 0) / 1e9:.1f} GFLOP, "
                    f"{cost.get('bytes accessed', 0) / 1e9:.2f} GB"
                    for b, (_, _, cost) in rows.items()))


if __name__ == "__main__":
    main()
