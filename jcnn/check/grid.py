"""The grid `jcnn verify` runs: every op's hand-derived gradients over a table of
configurations, compared with autodiff of `jcnn.reference`, central finite differences
(float64), the Taylor-remainder test and the NumPy loops of `jcnn.naive`.

Each case is checked by `jcnn.check_vjp` (autodiff, finite differences, Taylor) and, where
`jcnn.naive` has the op, by the loops for the same random output cotangent. Kinked cases run on
inputs rounded to a coarse grid (`jcnn.check.kinked`: exact zeros for relu, tied maxima in
max-pool windows): there finite differences and the Taylor test fail for the reference too, so
they pass as a kink, and autodiff and the loops decide, at first and (--order 2) second order.
"""
from __future__ import annotations

import contextlib
from functools import partial
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

import jcnn
from jcnn import naive, reference
from jcnn.check.vjp import check_vjp, kinked

NAIVE_RTOL = {"float64": 1e-9, "float32": 2e-4}


class Case(NamedTuple):
    op: str
    config: str  # what the table shows
    shapes: tuple  # shapes of the float arguments, in order
    kwargs: dict
    full_only: bool = False  # only with --full
    extra: tuple = ()  # non-float trailing arguments, made by `_args`
    kinks: bool = False  # the float arguments rounded to a coarse grid (`kinked`)
    # how the op is called: (op, kwargs) -> f(*float args, *extra); None: op(*args, **kwargs).
    # The same call binds the op's `jcnn.naive` backward (with the output cotangent first).
    call: Optional[Callable] = None
    positive: tuple = ()  # indices of float arguments drawn in (0.5, 2.5) (variances)


def _positional(name: str, at: int) -> Callable:
    """A call passing kwargs[name] positionally, before the argument at index `at`: dropout's
    rate and group_norm's groups sit between arrays."""
    def call(op, kwargs):
        rest = {k: v for k, v in kwargs.items() if k != name}
        return lambda *a: op(*a[:at], kwargs[name], *a[at:], **rest)
    return call


def _keywords(*names: str) -> Callable:
    """A call passing the last len(names) arguments as these keywords (batch_norm's mean and
    var in evaluation mode)."""
    def call(op, kwargs):
        def f(*a):
            k = len(a) - len(names)
            return op(*a[:k], **dict(zip(names, a[k:])), **kwargs)
        return f
    return call


def _conv(config, x, w, bias=True, full=False, op="conv2d", **kw):
    shapes = (x, w, (w[-1],)) if bias else (x, w)
    return Case(op, config, shapes, kw, full)


def _convt(config, x, w, bias=True, full=False, op="conv_transpose2d", **kw):
    shapes = (x, w, (w[-2] * kw.get("groups", 1),)) if bias else (x, w)
    return Case(op, config, shapes, kw, full)


# Kernel 2 with stride 2 and no padding is avoided for the autodiff comparison: jaxlib 0.10.2's
# CPU compiler aborts the process on autodiff of that lhs-dilated conv (tests/test_conv.py
# checks jcnn's own rule there against the loops and finite differences, in a subprocess).
CASES = [
    _conv("3x3 s1 p1", (2, 5, 5, 3), (3, 3, 3, 4), padding=1),
    _conv("3x2 s2 SAME, odd", (2, 7, 5, 2), (3, 2, 2, 3), stride=2, padding="SAME"),
    _conv("3x3 s3, rows unreached", (1, 8, 7, 2), (3, 3, 2, 2), bias=False, stride=3),
    _conv("asym pads, dil 2", (2, 7, 6, 2), (2, 3, 2, 3), padding=((1, 0), (2, 1)), dilation=2),
    _conv("groups 2", (2, 5, 4, 4), (3, 3, 2, 6), padding=1, groups=2),
    _conv("depthwise", (1, 6, 6, 3), (3, 3, 1, 3), stride=2, padding=1, groups=3),
    _conv("1x1", (2, 3, 4, 5), (1, 1, 5, 2)),
    _conv("kernel = padded input", (1, 3, 4, 2), (5, 6, 2, 3), padding=1),
    # the forms jcnn picks on CPU (conv.py): LeNet's shapes must be checked as they are run
    _conv("1 channel (CPU: tap sum)", (2, 8, 8, 1), (5, 5, 1, 4), padding=2),
    _conv("6->16 14x14 (CPU: rows dx)", (1, 14, 14, 6), (5, 5, 6, 16), padding=2),
    _conv("33 images (CPU: dW chunks)", (33, 5, 5, 3), (3, 3, 3, 2), padding=1, full=True),
    _conv("VALID, s (1,2), dil (2,1)", (2, 9, 9, 2), (3, 3, 2, 2), stride=(1, 2),
          dilation=(2, 1), padding="VALID", full=True),
    _conv("SAME s2 dil 2, groups 2", (1, 9, 8, 4), (3, 3, 2, 4), stride=2, padding="SAME",
          dilation=2, groups=2, full=True),
    _convt("3x3 s2 p1 op1", (2, 3, 4, 3), (3, 3, 2, 3), stride=2, padding=1, output_padding=1),
    _convt("groups 2, dil 2", (1, 4, 3, 4), (3, 2, 3, 4), padding=(1, 0), dilation=2, groups=2),
    _convt("s3 asym pads", (2, 3, 3, 2), (3, 3, 2, 2), bias=False, stride=3,
           padding=((1, 0), (0, 2)), output_padding=(2, 1)),
    _convt("1x1 s1", (2, 3, 3, 4), (1, 1, 3, 4), full=True),
    _conv("s2 p1, unreached", (2, 8, 3), (3, 3, 4), op="conv1d", stride=2, padding=1),
    _conv("SAME dil 2, groups 2", (1, 7, 4), (2, 2, 4), op="conv1d", padding="SAME", dilation=2,
          groups=2, full=True),
    _conv("s(2,1,1) p1 groups 2", (1, 4, 4, 3, 4), (2, 3, 2, 2, 4), op="conv3d", stride=(2, 1, 1),
          padding=1, groups=2),
    _convt("s2 p1 op1", (2, 4, 3), (3, 2, 3), op="conv_transpose1d", stride=2, padding=1,
           output_padding=1),
    _convt("s(2,1,3) groups 2", (1, 3, 2, 3, 4), (3, 2, 2, 1, 4), op="conv_transpose3d",
           stride=(2, 1, 3), padding=(1, 0, 1), output_padding=(1, 0, 2), groups=2),
    _conv("reflect, asym pads", (2, 4, 5, 2), (3, 3, 2, 3), padding=((3, 1), (2, 4)),
          padding_mode="reflect"),
    _conv("replicate s2", (1, 4, 3, 2), (2, 3, 2, 2), padding=(2, 1), stride=2,
          padding_mode="replicate"),
    _conv("circular, pad = size", (1, 3, 4, 4), (3, 2, 2, 4), padding=((3, 0), (1, 4)), groups=2,
          padding_mode="circular"),
    _conv("reflect SAME", (1, 5, 4, 2), (4, 3, 2, 2), padding="SAME", padding_mode="reflect",
          full=True),
    _conv("reflect dil 2", (2, 5, 2), (3, 2, 3), op="conv1d", padding=4, dilation=2,
          padding_mode="reflect", full=True),
    _conv("replicate asym", (2, 4, 2), (3, 2, 3), op="conv1d", padding=((3, 1),),
          padding_mode="replicate", full=True),
    _conv("circular s2", (1, 4, 2), (3, 2, 2), op="conv1d", padding=4, stride=2,
          padding_mode="circular"),
    _conv("reflect", (1, 3, 4, 3, 2), (2, 2, 3, 2, 2), op="conv3d", padding=(2, 1, 2),
          padding_mode="reflect"),
    _conv("circular s(1,2,1)", (1, 3, 2, 4, 2), (2, 2, 3, 2, 3), op="conv3d", padding=(3, 2, 1),
          stride=(1, 2, 1), padding_mode="circular", full=True),
    _conv("replicate asym", (1, 2, 3, 4, 2), (3, 2, 2, 2, 2), op="conv3d",
          padding=((2, 1), (0, 3), (1, 0)), padding_mode="replicate", full=True),
    Case("max_pool2d", "2x2 s2", ((2, 6, 6, 3),), {"window": 2}),
    Case("max_pool2d", "3x3 s2 p1, overlapping", ((2, 7, 7, 2),),
         {"window": 3, "stride": 2, "padding": 1}),
    Case("max_pool2d", "2x3 s(1,2) SAME", ((1, 5, 7, 2),),
         {"window": (2, 3), "stride": (1, 2), "padding": "SAME"}),
    Case("max_pool2d", "3x3 s3, rows unreached", ((2, 8, 7, 1),), {"window": 3, "stride": 3},
         True),
    Case("avg_pool2d", "2x2 s2", ((2, 6, 6, 3),), {"window": 2}),
    Case("avg_pool2d", "3x3 s2 p1, count pad", ((2, 7, 7, 2),),
         {"window": 3, "stride": 2, "padding": 1}),
    Case("avg_pool2d", "3x3 s2 p1, exclude pad", ((2, 7, 7, 2),),
         {"window": 3, "stride": 2, "padding": 1, "count_include_pad": False}),
    Case("avg_pool2d", "2x3 asym pads", ((1, 5, 6, 2),),
         {"window": (2, 3), "padding": ((1, 0), (0, 2))}, True),
    Case("global_avg_pool2d", "", ((2, 4, 5, 3),), {}),
    Case("max_pool2d", "3x3 s2 p1 ceil_mode", ((1, 6, 7, 2),),
         {"window": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
    Case("max_pool2d", "2x2 s1 dilation 2", ((2, 7, 6, 2),),
         {"window": 2, "stride": 1, "dilation": 2}, True),
    Case("max_pool2d", "3x3 s2 d2 ceil, kinks: ties", ((1, 9, 8, 2),),
         {"window": 3, "stride": 2, "dilation": 2, "ceil_mode": True}, kinks=True),
    Case("avg_pool2d", "3x3 s2 p1 ceil, count pad", ((1, 6, 7, 2),),
         {"window": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
    Case("avg_pool2d", "2x2 s3 p1 ceil, exclude pad", ((1, 7, 8, 2),),
         {"window": 2, "stride": 3, "padding": 1, "count_include_pad": False, "ceil_mode": True},
         True),
    Case("adaptive_avg_pool2d", "7x5 -> 3x2", ((2, 7, 5, 2),), {"output_size": (3, 2)}),
    Case("upsample2d", "nearest x2", ((2, 3, 4, 2),), {"scale": 2}),
    Case("upsample2d", "bilinear x(3,2)", ((1, 3, 4, 2),), {"scale": (3, 2), "mode": "bilinear"}),
    Case("dense", "(4, 5) -> 3", ((4, 5), (5, 3), (3,)), {}),
    Case("dense", "(2, 3, 2, 5) -> 3, no bias", ((2, 3, 2, 5), (5, 3)), {}, True),
    Case("max_pool2d", "2x2 s2, kinks: ties", ((2, 6, 6, 3),), {"window": 2}, kinks=True),
    Case("max_pool2d", "3x3 s2 p1, kinks: ties", ((2, 7, 7, 2),),
         {"window": 3, "stride": 2, "padding": 1}, kinks=True),
    Case("relu", "", ((3, 7),), {}),
    Case("relu", "kinks: zeros", ((3, 7),), {}, kinks=True),
    Case("leaky_relu", "slope 0.1", ((3, 7),), {"negative_slope": 0.1}),
    Case("leaky_relu", "slope 0.1, kinks: zeros", ((3, 7),), {"negative_slope": 0.1},
         kinks=True),
    Case("sigmoid", "", ((3, 7),), {}),
    Case("tanh", "", ((3, 7),), {}),
    Case("gelu", "tanh approximation", ((3, 7),), {"approximate": True}),
    Case("gelu", "exact (erf)", ((3, 7),), {"approximate": False}),
    Case("silu", "", ((3, 7),), {}),
    Case("elu", "alpha 1", ((3, 7),), {}),
    Case("elu", "alpha 0.3, kinks: zeros", ((3, 7),), {"alpha": 0.3}, kinks=True),
    Case("softplus", "", ((3, 7),), {}),
    Case("batch_norm", "(8, 5)", ((8, 5), (5,), (5,)), {}),
    Case("batch_norm", "(3, 4, 4, 2)", ((3, 4, 4, 2), (2,), (2,)), {}),
    Case("layer_norm", "(8, 5)", ((8, 5), (5,), (5,)), {}),
    Case("layer_norm", "(3, 4, 4, 2), eps 0.5", ((3, 4, 4, 2), (2,), (2,)), {"eps": 0.5}),
    Case("group_norm", "(2, 2, 2, 6), 3 groups", ((2, 2, 2, 6), (6,), (6,)), {"groups": 3},
         call=_positional("groups", 1)),
    Case("group_norm", "1 group (layer norm of HWC)", ((2, 2, 2, 4), (4,), (4,)),
         {"groups": 1}, call=_positional("groups", 1)),
    Case("group_norm", "groups = C (instance norm)", ((2, 2, 3, 4), (4,), (4,)),
         {"groups": 4}, call=_positional("groups", 1)),
    # one element per group: var = 0 whatever x, y = bias, dx = 0; eps keeps r finite
    Case("group_norm", "1x1, groups = C: var 0", ((3, 1, 1, 4), (4,), (4,)),
         {"groups": 4, "eps": 0.1}, call=_positional("groups", 1)),
    Case("batch_norm", "eval (8, 5)", ((8, 5), (5,), (5,), (5,), (5,)), {},
         call=_keywords("mean", "var"), positive=(4,)),
    Case("batch_norm", "eval (2, 3, 3, 2), eps 0.1", ((2, 3, 3, 2),) + ((2,),) * 4,
         {"eps": 0.1}, call=_keywords("mean", "var"), positive=(4,)),
    Case("dropout", "rate 0.3", ((4, 6),), {"rate": 0.3}, extra=("key",),
         call=_positional("rate", 1)),
    Case("log_softmax", "", ((4, 6),), {}),
    Case("softmax_cross_entropy", "(5, 4)", ((5, 4),), {}, extra=("labels",)),
    Case("softmax_cross_entropy", "(5, 4), label_smoothing 0.1", ((5, 4),),
         {"label_smoothing": 0.1}, extra=("labels",)),
    Case("softmax_cross_entropy", "(2, 3, 4)", ((2, 3, 4),), {}, True, extra=("labels",)),
    Case("flatten", "(2, 3, 2, 2)", ((2, 3, 2, 2),), {}),
]


class Result(NamedTuple):
    op: str
    config: str
    autodiff: Optional[float]  # worst relative error of the cotangents vs autodiff
    fd: Optional[float]  # worst relative error vs central finite differences
    naive: Optional[float]  # worst relative error vs jcnn.naive, None where it has no op
    taylor: Optional[float]  # lowest measured convergence order (2 is right, 1 is wrong)
    ok: bool
    detail: str  # check_vjp's report where it failed


def _args(case: Case, dtype, seed: int) -> tuple:
    rng = np.random.default_rng(seed)
    arrays = [jnp.asarray(rng.uniform(0.5, 2.5, s) if i in case.positive
                          else rng.standard_normal(s), dtype) for i, s in enumerate(case.shapes)]
    if case.kinks:
        arrays = [kinked(a) for a in arrays]
    elif case.op == "max_pool2d":  # distinct values well apart: no ties for finite differences
        x = np.arange(np.prod(case.shapes[0]), dtype=np.float64)
        arrays[0] = jnp.asarray(rng.permutation(x).reshape(case.shapes[0]) / x.size, dtype)
    for extra in case.extra:
        if extra == "key":
            arrays.append(jax.random.key(seed))
        else:
            arrays.append(jnp.asarray(rng.integers(0, case.shapes[0][-1], case.shapes[0][:-1]),
                                      jnp.int32))
    return tuple(arrays)


def _bound(module, case: Case) -> Callable:
    return _bind(getattr(module, case.op), case)


def _bind(op: Callable, case: Case) -> Callable:
    """op as a function of the case's float and extra arguments, called as `case.call` says."""
    if case.call is not None:
        return case.call(op, case.kwargs)
    return lambda *a: op(*a, **case.kwargs)


def _rel(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(float(np.abs(want).max(initial=0)), 1e-30)
    return float(np.abs(got - want).max(initial=0)) / max(scale, 1.0)


def _naive_error(case: Case, args: tuple, seed: int) -> Optional[float]:
    """The worst relative error of jcnn's cotangents of the float arguments against the loops'
    for one random output cotangent, or None where `jcnn.naive` has no such op."""
    backward = getattr(naive, case.op + "_backward", None)
    if backward is None:
        return None
    floats = args[:len(case.shapes)]
    y, pull = jax.vjp(lambda *f: _bound(jcnn, case)(*f, *args[len(floats):]), *floats)
    g = np.random.default_rng(seed + 1).standard_normal(np.shape(y))
    want = _bind(partial(backward, g), case)(*(np.asarray(a, np.float64) for a in floats),
                                              *(np.asarray(a) for a in args[len(floats):]))
    # the loops return None for a non-float argument (group_norm's groups, labels): dropped,
    # the rest line up with the float arguments
    want = [w for w in want if w is not None]
    got = pull(jnp.asarray(g, y.dtype))
    return max(_rel(a, b) for a, b in zip(got, want))


def _worst(report, check: str, field: str, pick=max) -> Optional[float]:
    values = [getattr(r, field) for r in report.rows if r.check.rstrip("2") == check
              and getattr(r, field) is not None]
    return pick(values) if values else None


def run_case(case: Case, dtype: str = "float64", order: int = 1, taylor: bool = False,
             seed: int = 0) -> Result:
    """One case, checked by `check_vjp` and the loops. float64 runs with x64 enabled for the
    call only (`jax.enable_x64`): the global JAX config is left as it was."""
    with jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext():
        args = _args(case, jnp.dtype(dtype), seed)
        report = check_vjp(_bound(jcnn, case), _bound(reference, case), *args, order=order,
                           taylor_test=taylor, samples=1, seed=seed, raise_on_failure=False)
        naive_err = _naive_error(case, args, seed)
    naive_ok = naive_err is None or naive_err <= NAIVE_RTOL.get(dtype, 5e-2)
    ok = report.ok and naive_ok
    detail = "" if report.ok else str(report)
    if not naive_ok:
        detail += f"\n{case.op} {case.config}: jcnn.naive disagrees, relative error {naive_err:.2e}"
    return Result(case.op, case.config, _worst(report, "vjp", "max_rel"),
                  _worst(report, "fd", "max_rel"), naive_err,
                  _worst(report, "taylor", "order", min), ok, detail.strip())


def _fmt(value: Optional[float], spec: str = ".1e") -> str:
    return "-" if value is None else format(value, spec)


def table(results: list[Result]) -> str:
    """One line per case, at most 100 columns."""
    head = f"{'op':<22}{'config':<28}{'autodiff':>9}{'fin.diff':>9}{'naive':>9}{'taylor':>8}  pass"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r.op:<22}{r.config[:27]:<28}{_fmt(r.autodiff):>9}{_fmt(r.fd):>9}"
                     f"{_fmt(r.naive):>9}{_fmt(r.taylor, '.2f'):>8}  {'ok' if r.ok else 'FAIL'}")
    return "\n".join(lines)
