"""The `jcnn bench` harness: runners for a jit-compiled training step and for single ops, timed
interleaved, with XLA's memory figures and the page faults per step, as table rows.

A step is forward, backward and an SGD-momentum update, jit-compiled with donated buffers
(`jcnn.train.step.make_train_step`). Each path is warmed up, then timed one step at a time
(`block_until_ready`) in interleaved rounds, so that load from other processes falls on every
path alike. The form benchmarks (benchmarks/*_forms.py) use the same timing.
"""
from __future__ import annotations

import datetime
import functools
import os
import platform
import statistics
import time
from pathlib import Path
from types import ModuleType
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jcnn
from jcnn import reference
from jcnn.bench.models import DTYPES, LR, MODELS, MOMENTUM, NUM_CLASSES, ModelSpec
from jcnn.train.step import TrainState, init_train_state, make_train_step


# ---- timing ---------------------------------------------------------------------------------

def interleaved(runners: dict[str, Callable[[], object]], repeats: int, rounds: int,
                warmup: int = 3) -> dict[str, list[float]]:
    """Seconds per call of each runner (a call runs one step and waits for it): `warmup` calls
    each, then `rounds` rounds in which every runner makes `repeats // rounds` timed calls in
    turn, so a burst of load from elsewhere hits all of them rather than one."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    per_round = max(1, repeats // rounds)
    for _ in range(rounds):
        for name, run in runners.items():
            for _ in range(per_round):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    return times


def faults_per_call(run: Callable[[], object], calls: int = 5) -> Optional[float]:
    """Minor page faults per call of `run`, over the whole process (None where the OS does
    not count them). XLA:CPU allocates a step's temp buffer anew on every call; glibc's malloc
    serves one of 32 MiB or more with a fresh mmap, so each of its 4 KiB pages faults (and is
    zeroed) in every step: tens of thousands of faults a step for a ResNet-8 at B=128, which is
    why temp memory costs time too (benchmarks/RESULTS.md)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        run()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def _time(runners: dict[str, Callable[[], object]], memory: dict[str, dict], repeats: int,
          rounds: int) -> dict[str, list[float]]:
    """`interleaved` times; each runner's page faults per call go into its `memory` entry."""
    times = interleaved(runners, repeats, rounds)
    for impl, run in runners.items():
        memory.setdefault(impl, {})["faults"] = faults_per_call(run)
    return times


def cost_analysis(compiled) -> dict:
    """XLA's cost analysis of one call of `compiled` ({} where the backend gives none): a dict
    in current jax, a list of one dict per module in older versions."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return cost or {}


def step_flops(compiled) -> Optional[float]:
    """FLOPs of one call of `compiled` by XLA's cost analysis (None where it counts none)."""
    flops = cost_analysis(compiled).get("flops")
    return float(flops) if flops and flops > 0 else None


def _figures(compiled) -> dict:
    """XLA's memory figures and FLOP count of a compiled step or op."""
    stats = compiled.memory_analysis()
    flops = {"flops": step_flops(compiled)}
    if stats is None:  # some backends give no figures
        return {"temp_bytes": None, "argument_bytes": None} | flops
    return {"temp_bytes": int(stats.temp_size_in_bytes),
            "argument_bytes": int(stats.argument_size_in_bytes)} | flops


FIELDS = ("model", "op", "batch", "dtype", "impl", "median_ms", "min_ms", "runs", "ratio",
          "ratio_lo", "ratio_hi", "torch_ratio", "temp_bytes", "argument_bytes", "temp_ratio",
          "faults", "flops", "gflops", "note")


def _round_ratios(t: list[float], base: list[float], rounds: int) -> list[float]:
    """The ratio of medians within each interleaving round: a burst of load that slows one
    round slows both paths in it, so the spread of these says how far the run's ratio can be
    trusted."""
    k = len(t) // rounds
    return [statistics.median(t[i * k:(i + 1) * k]) / statistics.median(base[i * k:(i + 1) * k])
            for i in range(rounds)]


def _rows(case: dict, times: dict[str, list[float]], memory: dict[str, dict],
          notes: dict[str, str], baseline: str = "autodiff", rounds: int = 1) -> list[dict]:
    """One row per implementation, each with every field of `FIELDS` (None where it has no
    value): median and fastest time, `ratio` / `temp_ratio` against the baseline's,
    `ratio_lo`/`ratio_hi` the lowest and highest of the `rounds` per-round ratios (`times`
    holds each round's runs in turn, as `interleaved` returns them), `gflops` the baseline's
    FLOP count by XLA over the median (every row computes the same model's step; XLA's count
    of a hand rule's own step counts a loop's body once, and PyTorch's rows have none), and for
    the JAX rows `torch_ratio`, the median against the fastest PyTorch variant's (when any
    ran)."""
    rows = []
    for impl in [*times, *notes]:
        row = dict.fromkeys(FIELDS) | case | {"impl": impl, "note": notes.get(impl)}
        row |= memory.get(impl, {})
        if impl in times:
            t = times[impl]
            row |= {"median_ms": 1e3 * statistics.median(t), "min_ms": 1e3 * min(t), "runs": len(t)}
        rows.append(row)
    base = next(r for r in rows if r["impl"] == baseline)
    for r in rows:
        if r["median_ms"] is not None:
            r["ratio"] = r["median_ms"] / base["median_ms"]
            per_round = _round_ratios(times[r["impl"]], times[baseline], rounds)
            r["ratio_lo"], r["ratio_hi"] = min(per_round), max(per_round)
        if r["temp_bytes"] is not None and base["temp_bytes"]:
            r["temp_ratio"] = r["temp_bytes"] / base["temp_bytes"]
        if r["median_ms"] is not None:
            r["flops"] = base["flops"] or r["flops"]
            r["gflops"] = r["flops"] and r["flops"] / r["median_ms"] / 1e6
    torch = [r["median_ms"] for r in rows
             if r["impl"].startswith("torch-") and r["median_ms"] is not None]
    for r in rows:
        if torch and r["median_ms"] is not None and not r["impl"].startswith("torch-"):
            r["torch_ratio"] = r["median_ms"] / min(torch)
    return rows


def _jax_runners(hand: ModuleType, make: Callable[[ModuleType], tuple[Callable, dict]]):
    """`make(ops)` for the hand rules and for autodiff: (runners, memory, notes) keyed by
    implementation; an op missing from the ops module (one that has landed in
    `jcnn.reference` but not yet in jcnn) becomes a note rather than an error."""
    runners, memory, notes = {}, {}, {}
    for impl, ops in (("jcnn" if hand is jcnn else "reference", hand), ("autodiff", reference)):
        try:
            runners[impl], memory[impl] = make(ops)
        except AttributeError as e:
            if e.obj is not ops:  # any other AttributeError is a bug: let it show
                raise
            notes[impl] = f"{ops.__name__} has no {e.name}"
    return runners, memory, notes


# ---- the training step ----------------------------------------------------------------------

def _batch(spec: ModelSpec, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, *spec.image), dtype=np.float32)
    return images, rng.integers(0, NUM_CLASSES, batch).astype(np.int32)


def compile_step(spec: ModelSpec, ops: ModuleType, images: np.ndarray, labels: np.ndarray,
                 compute_dtype) -> tuple[object, TrainState, jax.Array, jax.Array]:
    """The jitted, donated training step with `ops` compiled for this batch, with a fresh
    train state (from key 0) and the batch on the device: `compiled(ts, x, y)`."""
    model, optimizer = spec.build(ops), optax.sgd(LR, momentum=MOMENTUM)
    ts = init_train_state(model, optimizer, jax.random.key(0), images.shape)
    x, y = jnp.asarray(images), jnp.asarray(labels)
    compiled = make_train_step(model, optimizer, ops=ops, compute_dtype=compute_dtype) \
        .lower(ts, x, y).compile()
    return compiled, ts, x, y


def step_runner(compiled, ts: TrainState, x: jax.Array, y: jax.Array) -> Callable[[], object]:
    """A runner for `compiled` (from `compile_step`): each call takes one step from the state
    the last call left (the first from `ts`) and returns the new state and the loss."""
    state = [ts]

    def run():
        state[0], loss = compiled(state[0], x, y)
        return jax.block_until_ready((state[0], loss))
    return run


def jax_step_runner(spec: ModelSpec, ops: ModuleType, images: np.ndarray, labels: np.ndarray,
                    compute_dtype) -> tuple[Callable[[], object], dict]:
    """A runner for one jitted, donated training step with `ops`, and its memory figures."""
    compiled, ts, x, y = compile_step(spec, ops, images, labels, compute_dtype)
    return step_runner(compiled, ts, x, y), _figures(compiled)


def bench_step(name: str, batch: int, dtype: str, *, repeats: int, rounds: int,
               hand: ModuleType = jcnn, torch_modes: Sequence[str] = ()) -> list[dict]:
    """Rows for one (model, batch, dtype): hand rules, autodiff, and each PyTorch mode."""
    spec = MODELS[name]
    images, labels = _batch(spec, batch)
    runners, memory, notes = _jax_runners(
        hand, lambda ops: jax_step_runner(spec, ops, images, labels, DTYPES[dtype]))
    for mode in torch_modes:
        from jcnn.bench import torch_twins  # torch is optional: imported only when asked for
        try:
            runners[f"torch-{mode}"] = torch_twins.step_runner(name, mode, images, labels, dtype)
        except RuntimeError as e:
            # torch.compile needs a C++ compiler and may fail (its errors are RuntimeErrors):
            # say so, go on; a failing eager or channels_last step is a bug and shows
            if mode != "compile":
                raise
            notes[f"torch-{mode}"] = f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"
    case = {"model": name, "op": "train step", "batch": batch, "dtype": dtype}
    return _rows(case, _time(runners, memory, repeats, rounds), memory, notes, rounds=rounds)


def print_step_forms(label: str, made: dict[str, tuple[Callable[[], object], dict]],
                     repeats: int, rounds: int, against: Sequence[str] = ("autodiff",)) -> None:
    """For the form benchmarks (benchmarks/*_forms.py): time the steps `made` (name -> runner
    and memory, as `jax_step_runner` returns them) interleaved, and print a line per form:
    median and minimum ms, the ratio to each form named in `against`, XLA's temp MB."""
    times = interleaved({k: run for k, (run, _) in made.items()}, repeats, rounds)
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    width = max(map(len, made))
    for name, (_, memory) in made.items():
        ratios = "  ".join(f"x{ms[name] / ms[base]:.3f} {base}" for base in against)
        print(f"{label} {name:{width}s} {ms[name]:8.2f} ms (min {1e3 * min(times[name]):7.2f})  "
              f"{ratios}  temp {memory['temp_bytes'] / 1e6:6.1f} MB", flush=True)


def print_op_forms(label: str, runners: dict[str, Callable[[], object]], repeats: int,
                   base: str, rounds: int = 5) -> None:
    """For the form benchmarks: time `runners` interleaved and print one line, each form's
    median ms and its ratio to the form named `base`."""
    ms = {k: 1e3 * statistics.median(v) for k, v in interleaved(runners, repeats, rounds).items()}
    print(f"{label} " + "  ".join(f"{k} {v:7.2f} ms (x{v / ms[base]:.2f})" for k, v in ms.items()),
          flush=True)


# ---- single ops -----------------------------------------------------------------------------

class OpCase(NamedTuple):
    """One layer of a model as a benchmark: `call(ops, *args)` on arrays from `args(rng, batch)`,
    differentiated with respect to the arguments `argnums` (as the model needs them)."""
    name: str
    model: str
    call: Callable[..., jax.Array]
    args: Callable[[np.random.Generator, int], tuple[np.ndarray, ...]]
    argnums: tuple[int, ...]


def _normal(image: tuple[int, ...], *params: tuple[int, ...]):
    """Arguments: a batch of `image`-shaped inputs, then one array of each `params` shape."""
    def args(rng, batch):
        return tuple(rng.standard_normal(s, dtype=np.float32) for s in ((batch, *image), *params))
    return args


def _logits_labels(rng, batch):
    return (rng.standard_normal((batch, NUM_CLASSES), dtype=np.float32),
            rng.integers(0, NUM_CLASSES, batch).astype(np.int32))


OP_CASES = (
    OpCase("conv1 5x5 1->6 (dw, db)", "lenet",
           lambda ops, x, w, b: ops.conv2d(x, w, b, padding=2),
           _normal((28, 28, 1), (5, 5, 1, 6), (6,)), (1, 2)),
    OpCase("relu+pool1 2x2 28x28x6", "lenet", lambda ops, x: ops.max_pool2d(ops.relu(x), 2),
           _normal((28, 28, 6)), (0,)),
    OpCase("conv2 5x5 6->16", "lenet", lambda ops, x, w, b: ops.conv2d(x, w, b, padding=2),
           _normal((14, 14, 6), (5, 5, 6, 16), (16,)), (0, 1, 2)),
    OpCase("relu+pool2 2x2 14x14x16", "lenet", lambda ops, x: ops.max_pool2d(ops.relu(x), 2),
           _normal((14, 14, 16)), (0,)),
    OpCase("dense 784->120", "lenet", lambda ops, x, w, b: ops.dense(x, w, b),
           _normal((784,), (784, 120), (120,)), (0, 1, 2)),
    OpCase("softmax_cross_entropy", "lenet", lambda ops, z, y: ops.softmax_cross_entropy(z, y),
           _logits_labels, (0,)),
    OpCase("conv 3x3 16->16 32x32", "resnet8", lambda ops, x, w: ops.conv2d(x, w, padding=1),
           _normal((32, 32, 16), (3, 3, 16, 16)), (0, 1)),
    OpCase("conv 3x3/2 16->32 32x32", "resnet8",
           lambda ops, x, w: ops.conv2d(x, w, stride=2, padding=1),
           _normal((32, 32, 16), (3, 3, 16, 32)), (0, 1)),
    OpCase("batch_norm 32x32x16", "resnet8", lambda ops, x, s, b: ops.batch_norm(x, s, b),
           _normal((32, 32, 16), (16,), (16,)), (0, 1, 2)),
    OpCase("relu 32x32x16", "resnet8", lambda ops, x: ops.relu(x), _normal((32, 32, 16)), (0,)),
)


def op_runner(case: OpCase, ops: ModuleType, args: tuple[jax.Array, ...]
              ) -> tuple[Callable[[], object], dict]:
    """A runner for the op's forward and its backward pulled by a fixed random cotangent (the
    output is returned too, as a model uses it), jit-compiled; and its memory figures."""
    def fwd_bwd(ct, *args):
        def f(*diff):
            full = list(args)
            for i, a in zip(case.argnums, diff):
                full[i] = a
            return case.call(ops, *full)
        y, pull = jax.vjp(f, *(args[i] for i in case.argnums))
        return y, pull(ct)
    out = jax.eval_shape(functools.partial(case.call, ops), *args)
    # drawn by NumPy: jax.random.normal compiles a generator per shape (0.8 s each on 2 cores)
    ct = jnp.asarray(np.random.default_rng(1).standard_normal(out.shape), out.dtype)
    compiled = jax.jit(fwd_bwd).lower(ct, *args).compile()
    return (lambda: jax.block_until_ready(compiled(ct, *args))), _figures(compiled)


def bench_op(case: OpCase, batch: int, dtype: str, *, repeats: int, rounds: int,
             hand: ModuleType = jcnn) -> list[dict]:
    """Rows for one op at one batch size: the hand rule and autodiff."""
    cast = jnp.float32 if DTYPES[dtype] is None else DTYPES[dtype]
    args = tuple(jnp.asarray(a, cast if a.dtype.kind == "f" else a.dtype)
                 for a in case.args(np.random.default_rng(0), batch))
    runners, memory, notes = _jax_runners(hand, lambda ops: op_runner(case, ops, args))
    case_fields = {"model": case.model, "op": case.name, "batch": batch, "dtype": dtype}
    return _rows(case_fields, _time(runners, memory, repeats, rounds), memory, notes,
                 rounds=rounds)


# ---- the environment -------------------------------------------------------------------------

def describe_cpu(cpuinfo: str) -> Optional[str]:
    """'AMD EPYC (family 23 model 1, AVX2)' from /proc/cpuinfo's text: the model name alone does
    not tell hosts apart (two EPYC generations have measured different ratios), and which of
    jcnn's CPU forms pay depends on the vector extensions (benchmarks/RESULTS.md)."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if "model name" not in fields:
        return None
    flags = set(fields.get("flags", "").split())
    isa = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"),
                                        ("asimd", "NEON")) if flag in flags), None)
    detail = [f"family {fields['cpu family']} model {fields['model']}"
              if "cpu family" in fields and "model" in fields else None, isa]
    detail = [d for d in detail if d]
    return fields["model name"] + (f" ({', '.join(detail)})" if detail else "")


# float32 FLOPs per cycle and core from the vector extensions: (cpuinfo flag, FLOPs, why)
FLOPS_PER_CYCLE = (
    ("avx512f", 64, "2 FMA units x 16 float32 lanes x 2 (512-bit FMA units: Zen 5, Xeon "
                    "server cores; Zen 4 is counted at 32: it splits 512-bit ops in two)"),
    ("fma", 32, "2 FMA units x 8 float32 lanes x 2 (AVX2 + FMA)"),
    ("asimd", 16, "2 FMA units x 4 float32 lanes x 2 (NEON)"),
)


def fma_peak(cpuinfo: str, cores: int, base_khz: Optional[str] = None
             ) -> tuple[Optional[float], str]:
    """The float32 FMA peak in GFLOP/s assumed for `cores` cores of the CPU /proc/cpuinfo's
    text describes, and how it was got: cores x clock x FLOPs per cycle (`FLOPS_PER_CYCLE`).
    The clock is cpufreq's base frequency (`base_khz`, kHz) where the kernel gives one, else
    cpuinfo's "cpu MHz" (the clock the kernel reports; a VM's is its host's nominal clock).
    Turbo clocks above it make the real peak higher: a fraction of it is an upper bound."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", fields.get("Features", "")).split())
    per_cycle = next(((flag, n, why) for flag, n, why in FLOPS_PER_CYCLE if flag in flags), None)
    if base_khz:
        mhz, clock = float(base_khz) / 1e3, "cpufreq base_frequency"
    elif "cpu MHz" in fields:
        mhz, clock = float(fields["cpu MHz"]), "/proc/cpuinfo cpu MHz"
    else:
        return None, "no clock in /proc/cpuinfo or cpufreq"
    if per_cycle is None:
        return None, "no FMA vector extension known to jcnn in /proc/cpuinfo's flags"
    flag, n, why = per_cycle
    if flag == "avx512f" and fields.get("vendor_id") == "AuthenticAMD" \
            and fields.get("cpu family") == "25":  # Zen 4: 256-bit units
        n, why = 32, "Zen 4: 2 x 256-bit FMA units x 8 float32 lanes x 2"
    return (cores * mhz * n / 1e3,
            f"{cores} cores x {mhz:.0f} MHz ({clock}) x {n} FLOP/cycle ({flag}: {why})")


def cpu_peak() -> tuple[Optional[float], str]:
    """`fma_peak` of this machine: the cores this process may run on (os.sched_getaffinity)."""
    info = Path("/proc/cpuinfo")
    if not info.exists():
        return None, "no /proc/cpuinfo"
    base = Path("/sys/devices/system/cpu/cpu0/cpufreq/base_frequency")
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)
    return fma_peak(info.read_text(), cores, base.read_text().strip() if base.exists() else None)


def environment() -> dict:
    """Where the numbers come from: device, cores, versions, date and load, and on a CPU the
    FMA peak assumed (`cpu_peak`) with how it was got."""
    from importlib import metadata
    info = Path("/proc/cpuinfo")
    cpu = (describe_cpu(info.read_text()) if info.exists() else None) or platform.processor()
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = None
    device = jax.devices()[0]
    peak, how = cpu_peak() if device.platform == "cpu" else (None, "not a CPU")
    return {"platform": device.platform,
            "device": cpu if device.platform == "cpu" else device.device_kind,
            "cores": os.cpu_count(), "jax": jax.__version__,
            "jaxlib": metadata.version("jaxlib"), "torch": torch_version,
            "python": platform.python_version(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "load_average": os.getloadavg(), "fma_peak_gflops": peak, "fma_peak_how": how}
