"""Which XLA:CPU flags make the training step faster? Each setting of XLA_FLAGS (below; findings
in benchmarks/XLA_CPU.md) runs in a fresh subprocess (XLA reads its flags once, at start-up):
the jcnn and autodiff steps of each case, timed interleaved (`jcnn.bench.harness`), with
- lib: what the compiled step hands to a library: the library fusions (`__ynn_fusion`,
  `__xnn_fusion`, `__onednn_fusion`) and custom calls, and of the step's convolutions and dots
  how many sit inside one (e.g. "ynn 3; conv 0/14, dot 3/3");
- diff: the step's outputs after one step from the same state (loss, params, optimiser state:
  SGD-momentum's trace is the gradient) against the default setting's, the largest over the
  arrays of max|a - b| / max|b|; `same` when within the compute dtype's tolerance (`RTOL`), so
  a flag that changes the numerics beyond rounding shows.

    python benchmarks/xla_cpu_flags.py                           # every setting, every case
    python benchmarks/xla_cpu_flags.py --settings eigen vector-512+eigen --json out.json
    python benchmarks/xla_cpu_flags.py --quick --cases lenet:8:float32   # smoke test

A setting "a+b" joins the flags of a and b. A setting whose subprocess fails (a flag this jaxlib
does not know aborts at start-up) gets a row saying so. Times are of this machine: run it on a
quiet one and compare settings within one run.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import pickle
import re
import statistics
import subprocess
import sys
import tempfile
from typing import NamedTuple, Optional

import numpy as np

# name -> (XLA_FLAGS, what it does in jaxlib 0.10.2: benchmarks/XLA_CPU.md)
SETTINGS = {
    "default": ("", "YNNPACK for dots and for convolutions it takes (more than 16 channels), "
                "Eigen for the other convolutions, XLA's fusion emitters"),
    "eigen": ("--xla_cpu_experimental_ynn_fusion_type=", "no library: Eigen's dots and convs"),
    "ynn-dot-only": ("--xla_cpu_experimental_ynn_fusion_type=individual_dot",
                     "YNNPACK for dots only, every convolution by Eigen"),
    "ynn-fusions": ("--xla_cpu_experimental_ynn_fusion_type=+dot,+eltwise,+reduce",
                    "YNNPACK fusions of dots with elementwise ops and reductions"),
    "xnn-fusions": ("--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce",
                    "XNNPACK fusions (dots, elementwise, reductions)"),
    "xnn-graph": ("--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
                  "XNNPACK graph fusion, greedy, with its cost model"),
    "xnn-graph-slinky": ("--xla_cpu_experimental_xnn_graph_fusion_mode="
                         "XNN_GRAPH_FUSION_MODE_GREEDY_SLINKY", "the same, scheduled by Slinky"),
    "xnn-graph-all": ("--xla_cpu_experimental_xnn_graph_fusion_mode="
                      "XNN_GRAPH_FUSION_MODE_BYPASS_COST_MODEL",
                      "XNNPACK graph fusion of every op it supports"),
    "onednn": ("--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot,eltwise",
               "oneDNN fusions of dots with elementwise ops"),
    "onednn-custom-call": ("--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call"
                           "=true", "oneDNN custom calls for matmuls and convolutions"),
    "vector-512": ("--xla_cpu_prefer_vector_width=512", "512-bit vectors in XLA's own kernels"),
    "fast-runtime": ("--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME",
                     "the optimisation preset for run time"),
    "memory-scheduler": ("--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
                         "the scheduler that minimises memory"),
    "concurrency-scheduler": ("--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED",
                              "the scheduler that maximises concurrent thunks"),
    "eigen-1-thread": ("--xla_cpu_multi_thread_eigen=false", "Eigen's kernels on one thread"),
    "no-fusion-emitters": ("--xla_cpu_use_fusion_emitters=false",
                           "the older elemental IR emitters for fusions"),
    "fast-math": ("--xla_cpu_enable_fast_math=true", "LLVM fast-math in XLA's own kernels"),
}
COMBINATIONS = ("vector-512+fast-runtime", "ynn-dot-only+xnn-graph-all",
                "vector-512+memory-scheduler")
CASES = ("lenet:128:float32", "lenet:512:float32", "resnet8:32:float32", "resnet8:128:float32",
         "resnet8:128:bfloat16")
# largest max|a - b| / max|b| over the step's outputs that still counts as rounding: a library
# reorders the sums of a conv or dot, which moves float32 results by a few ulps of the largest
# term, amplified through the backward pass; bfloat16 keeps 8 bits
RTOL = {"float32": 1e-4, "bfloat16": 3e-2}


def flags_of(setting: str) -> str:
    """XLA_FLAGS for a setting name, "a+b" joining a's and b's."""
    return " ".join(SETTINGS[part][0] for part in setting.split("+") if SETTINGS[part][0])


class Case(NamedTuple):
    model: str
    batch: int
    dtype: str


def parse_case(text: str) -> Case:
    """'resnet8:128:float32' -> Case('resnet8', 128, 'float32')."""
    from jcnn.bench.models import DTYPES, MODELS
    parts = text.split(":")
    if len(parts) != 3 or parts[0] not in MODELS or not parts[1].isdigit() \
            or parts[2] not in DTYPES:
        raise argparse.ArgumentTypeError(
            f"a case is model:batch:dtype with model in {sorted(MODELS)}, dtype in "
            f"{sorted(DTYPES)}; got {text!r}")
    return Case(parts[0], int(parts[1]), parts[2])


# ---- what the compiled step hands to libraries --------------------------------------------

_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%\S+ = .*? ([a-z][a-z0-9-]*)\(")
_CALLS = re.compile(r"calls=(%[\w.-]+)")
_FUSION_KIND = re.compile(r'"kind":"(__(\w+?)_fusion)"')
_TARGET = re.compile(r'custom_call_target="([^"]+)"')


def library_calls(hlo: str) -> dict[str, int]:
    """From a compiled module's text (`compiled.as_text()`): per library the fusions and custom
    calls handed to it, and the convolutions and dots in all ("conv", "dot") and inside a
    library fusion or custom call ("conv_lib", "dot_lib")."""
    computations: dict[str, list[tuple[str, str]]] = {}  # name -> (opcode, line)
    current = None
    for line in hlo.splitlines():
        if not line.startswith((" ", "\t")) and line.rstrip().endswith("{"):
            current = line.split()[0]  # "ENTRY" for the entry: no op calls it
            computations[current] = []
        elif current is not None and (match := _INSTRUCTION.match(line)):
            computations[current].append((match.group(1), line))
    counts: collections.Counter = collections.Counter()
    inside: set[str] = set()

    def mark(name: str) -> None:  # a computation a library runs, and those it calls
        if name in computations and name not in inside:
            inside.add(name)
            for _, line in computations[name]:
                for callee in _CALLS.findall(line):
                    mark(callee)
    for ops in computations.values():
        for opcode, line in ops:
            kind = _FUSION_KIND.search(line) if opcode == "fusion" else None
            target = _TARGET.search(line) if opcode == "custom-call" else None
            if kind:
                counts[kind.group(2)] += 1
                for callee in _CALLS.findall(line):
                    mark(callee)
            elif target and target.group(1).startswith("__"):  # e.g. __onednn$convolution
                library, _, op = target.group(1).lstrip("_").partition("$")
                counts[library] += 1
                short = {"convolution": "conv", "matmul": "dot"}.get(op)
                if short:
                    counts[short] += 1
                    counts[short + "_lib"] += 1
    for name, ops in computations.items():
        for opcode, _ in ops:
            short = {"convolution": "conv", "dot": "dot"}.get(opcode)
            if short:
                counts[short] += 1
                counts[short + "_lib"] += name in inside
    return {k: counts[k] for k in sorted(counts)}


def describe_library(calls: dict[str, int]) -> str:
    """'ynn 3; conv 0/14, dot 3/3' from `library_calls`'s counts."""
    libraries = " ".join(f"{k} {v}" for k, v in calls.items()
                         if k not in ("conv", "dot", "conv_lib", "dot_lib"))
    ops = ", ".join(f"{op} {calls.get(op + '_lib', 0)}/{calls.get(op, 0)}"
                    for op in ("conv", "dot"))
    return f"{libraries or 'none'}; {ops}"


# ---- the equality check -----------------------------------------------------------------

def max_rel_diff(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> float:
    """The largest over the arrays of max|got - want| / max|want| (absolute where want is all
    zeros); inf where the arrays differ in their names or shapes, or where one holds a NaN or
    an infinity the other has not."""
    if got.keys() != want.keys():
        return float("inf")
    worst = 0.0
    for name, b in want.items():
        a, b = np.asarray(got[name], np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape or not np.array_equal(np.isfinite(a), np.isfinite(b)):
            return float("inf")
        finite = np.isfinite(b)
        if not finite.any():
            continue
        scale = np.abs(b[finite]).max()
        diff = np.abs(a[finite] - b[finite]).max()
        worst = max(worst, float(diff / scale if scale > 0 else diff))
    return worst


def step_outputs(state, loss) -> dict[str, np.ndarray]:
    """The floating-point arrays a step returns, by their path in the tree."""
    import jax
    leaves = jax.tree_util.tree_flatten_with_path((state, loss))[0]
    out = {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}
    return {k: v for k, v in out.items() if np.issubdtype(v.dtype, np.floating)}


# ---- one setting, in its own process ------------------------------------------------------

def run_setting(cases: list[Case], repeats: int, rounds: int, warmup: int) -> list[dict]:
    """In the process XLA_FLAGS was set for: per case and path, the median step time, the
    library calls, XLA's FLOPs, and the outputs of the first step (from the fresh state)."""
    import jcnn
    from jcnn import reference
    from jcnn.bench import harness as bench
    results = []
    for case in cases:
        spec = bench.MODELS[case.model]
        images, labels = bench._batch(spec, case.batch)
        runners, result = {}, {"case": case._asdict()}
        for impl, ops in (("jcnn", jcnn), ("autodiff", reference)):
            compiled, ts, x, y = bench.compile_step(spec, ops, images, labels,
                                                    bench.DTYPES[case.dtype])
            runners[impl] = bench.step_runner(compiled, ts, x, y)
            result[impl] = {"lib": library_calls(compiled.as_text()),
                            "flops": bench.step_flops(compiled),
                            # copied before the next call donates the state's buffers
                            "outputs": step_outputs(*runners[impl]())}
        times = bench.interleaved(runners, repeats, rounds, warmup=warmup)
        for impl, t in times.items():
            result[impl]["ms"] = 1e3 * statistics.median(t)
        results.append(result)
    return results


def _child(path: str) -> None:
    """The subprocess's side: read the job from `path`, write the results over it. glibc's
    malloc is set as `jcnn bench` sets it, before JAX starts."""
    from jcnn.cli.malloc import keep_freed_memory
    keep_freed_memory()
    with open(path, "rb") as f:
        job = pickle.load(f)
    results = run_setting([Case(*c) for c in job["cases"]], job["repeats"], job["rounds"],
                          job["warmup"])
    with open(path, "wb") as f:
        pickle.dump(results, f)


def spawn(setting: str, cases: list[Case], repeats: int, rounds: int, warmup: int
          ) -> tuple[Optional[list[dict]], str]:
    """Run `run_setting` in a fresh Python with the setting's XLA_FLAGS (and no other):
    (results, "") or (None, the last line of its error output)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "job.pkl")
        with open(path, "wb") as f:
            pickle.dump({"cases": [tuple(c) for c in cases], "repeats": repeats,
                         "rounds": rounds, "warmup": warmup}, f)
        import jcnn  # the child imports the jcnn the parent runs
        root = os.path.dirname(os.path.dirname(os.path.abspath(jcnn.__file__)))
        env = dict(os.environ, XLA_FLAGS=flags_of(setting), JAX_PLATFORMS="cpu",
                   PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
        done = subprocess.run([sys.executable, __file__, "--child", path], env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
            return None, f"exit {done.returncode}: {lines[-1][:160] if lines else ''}"
        with open(path, "rb") as f:
            return pickle.load(f), ""


def measure(settings: list[str], cases: list[Case], repeats: int, rounds: int,
            warmup: int = 3) -> list[dict]:
    """A row per setting and case (the default setting first, as the outputs' reference):
    times, GFLOP/s (XLA's count of autodiff's step, the same math, over each median: XLA counts
    a loop's body once, and jcnn's filter gradient loops), library calls and the outputs'
    difference from the default's, per path."""
    settings = ["default"] + [s for s in settings if s != "default"]
    rows, reference = [], {}
    for setting in settings:
        results, error = spawn(setting, cases, repeats, rounds, warmup)
        for i, case in enumerate(cases):
            row = {"setting": setting, "flags": flags_of(setting), **case._asdict(),
                   "note": error or None}
            flops = results and results[i]["autodiff"]["flops"]
            for impl in ("jcnn", "autodiff"):
                got = results[i][impl] if results else {}
                if setting == "default" and got:
                    reference[case, impl] = got["outputs"]
                diff = (max_rel_diff(got["outputs"], reference[case, impl])
                        if got and (case, impl) in reference else None)
                gflops = got and flops and flops / got["ms"] / 1e6
                row |= {f"{impl}_ms": got.get("ms"), f"{impl}_gflops": gflops or None,
                        f"{impl}_lib": got.get("lib"),
                        f"{impl}_diff": diff,
                        f"{impl}_same": None if diff is None else diff <= RTOL[case.dtype]}
            rows.append(row)
    return rows


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: list[dict]) -> str:
    """The rows as an aligned text table."""
    head = ("setting", "model", "batch", "dtype", "jcnn ms", "autodiff ms", "jcnn/ad",
            "jcnn GFLOP/s", "jcnn lib", "autodiff lib", "jcnn diff", "ad diff", "same")
    lines = [head]
    for r in rows:
        same = [r["jcnn_same"], r["autodiff_same"]]
        lines.append((r["setting"], r["model"], str(r["batch"]), r["dtype"],
                      _fmt(r["jcnn_ms"], ".2f"), _fmt(r["autodiff_ms"], ".2f"),
                      _fmt(r["jcnn_ms"] and r["autodiff_ms"] and r["jcnn_ms"] / r["autodiff_ms"],
                           ".2f"),
                      _fmt(r["jcnn_gflops"], ".1f"),
                      describe_library(r["jcnn_lib"]) if r["jcnn_lib"] else "-",
                      describe_library(r["autodiff_lib"]) if r["autodiff_lib"] else "-",
                      _fmt(r["jcnn_diff"], ".1e"), _fmt(r["autodiff_diff"], ".1e"),
                      "-" if None in same else "yes" if all(same) else "NO")
                     + ((r["note"],) if r["note"] else ()))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
                     + ("  " + line[-1] if len(line) > len(head) else "") for line in lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", metavar="NAME",
                        default=[*SETTINGS, *COMBINATIONS],
                        help=f"settings ({', '.join(SETTINGS)}; a+b joins two; default: all "
                        f"and {', '.join(COMBINATIONS)})")
    parser.add_argument("--cases", nargs="+", type=parse_case, metavar="MODEL:B:DTYPE",
                        default=[parse_case(c) for c in CASES],
                        help=f"default: {' '.join(CASES)}")
    parser.add_argument("--repeats", type=int, default=30, help="timed steps per path")
    parser.add_argument("--rounds", type=int, default=5, help="interleaving rounds")
    parser.add_argument("--quick", action="store_true",
                        help="2 timed steps per path, 1 warm-up (a smoke test, not a timing)")
    parser.add_argument("--json", metavar="PATH", help="also write {environment, rows} here")
    parser.add_argument("--child", metavar="JOB", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child)
        return 0
    unknown = {p for s in args.settings for p in s.split("+")} - set(SETTINGS)
    if unknown:
        parser.error(f"unknown setting(s) {', '.join(sorted(unknown))}")
    repeats, rounds, warmup = (2, 1, 1) if args.quick else (args.repeats, args.rounds, 3)
    from jcnn.bench.harness import environment
    env = environment()
    print(f"xla_cpu_flags: {env['device']}, {env['cores']} cores, jaxlib {env['jaxlib']}, load "
          f"{' '.join(f'{x:.2f}' for x in env['load_average'])}; {repeats} steps per path in "
          f"{rounds} rounds, median", flush=True)
    rows = measure(args.settings, args.cases, repeats, rounds, warmup)
    print(format_table(rows))
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "rtol": RTOL, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
