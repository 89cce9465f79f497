"""The report `jcnn.check_vjp` returns: one row per comparison, a table that reads in 100
columns, and a plain-dict form for JSON. Plain frozen dataclasses, not pytrees. `CheckFailed`
is the error `check_vjp` and `check_model` raise with their report."""
from __future__ import annotations

import math
import textwrap
from dataclasses import asdict, dataclass
from typing import Optional

WIDTH = 100


@dataclass(frozen=True)
class Row:
    """One comparison. `check` is one of: output (forward values), vjp (cotangents for random
    output cotangents), jacobian (every basis cotangent), fd (central finite difference),
    taylor (remainder convergence order), the same with a `2` for second order, or skip;
    " (kinks)" after it for the arguments rounded to a coarse grid (`kinks=True`), the dtype,
    e.g. " (float64)", for f's own rule checked cast up."""
    check: str
    argument: str  # e.g. "x (arg 0)", or "output"
    ok: bool
    max_abs: Optional[float] = None
    max_rel: Optional[float] = None
    tol: Optional[float] = None
    order: Optional[float] = None  # taylor rows: measured order of the remainder
    note: str = ""  # a short phrase for the table
    where: str = ""  # a failure's localisation: worst element, values, pattern
    picture: str = ""  # a failure's ASCII map


@dataclass(frozen=True)
class Report:
    """What `check_vjp` compared and found. `ok` is True when every row passed."""
    f: str
    reference: str
    dtype: str
    order: int
    rows: tuple[Row, ...]
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)

    @property
    def failures(self) -> tuple[Row, ...]:
        return tuple(row for row in self.rows if not row.ok)

    def row(self, check: str, argument: str) -> Row:
        """The row of `check` for the argument named `argument` ("x" finds "x (arg 0)")."""
        for r in self.rows:
            if r.check == check and r.argument.split(" (")[0] == argument:
                return r
        raise KeyError(f"no {check!r} row for {argument!r}: rows are "
                       f"{[(r.check, r.argument) for r in self.rows]}")

    def to_dict(self) -> dict:
        """JSON-ready: non-finite floats become the strings 'inf', '-inf', 'nan'."""
        return {"ok": self.ok, "f": self.f, "reference": self.reference, "dtype": self.dtype,
                "order": self.order, "notes": list(self.notes),
                "rows": [{k: _json_float(v) for k, v in asdict(r).items()} for r in self.rows]}

    def __str__(self) -> str:
        verdict = "ok" if self.ok else f"FAILED ({len(self.failures)} of {len(self.rows)} rows)"
        width = max([9] + [len(r.check) + 1 for r in self.rows])  # "taylor2 (float64)" too
        lines = [f"check_vjp({self.f} vs {self.reference}, {self.dtype}, order {self.order}): "
                 f"{verdict}",
                 f"{'check':<{width}}{'argument':<19}{'max abs':>9}{'max rel':>9}"
                 f"{'tolerance':>10}  {'result':<7}note"]
        lines += [_table_line(r, width) for r in self.rows]
        lines += [textwrap.fill(n, WIDTH, subsequent_indent="  ") for n in self.notes]
        for r in self.failures:
            lines.append(textwrap.fill(f"{r.check} {r.argument}: {r.where or r.note}", WIDTH,
                                       subsequent_indent="    "))
            if r.picture:
                lines.append(textwrap.indent(r.picture, "    "))
        return "\n".join(lines)


def _json_float(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _num(value: Optional[float], width: int) -> str:
    return f"{value:>{width}.2e}" if value is not None else " " * width


def _table_line(r: Row, width: int) -> str:
    line = (f"{r.check:<{width}}{r.argument[:18]:<19}{_num(r.max_abs, 9)}{_num(r.max_rel, 9)}"
            f"{_num(r.tol, 10)}  {'ok' if r.ok else 'FAIL':<7}{r.note}")
    return line if len(line) <= WIDTH else line[:WIDTH - 3] + "..."


class CheckFailed(AssertionError):
    """A comparison failed; `.report` is the full report (`check_vjp`'s `Report`,
    `check_model`'s `ModelReport`), `str(error)` the headline, when given, then its table."""

    def __init__(self, report, headline: str = ""):
        super().__init__("\n".join(part for part in (headline, str(report)) if part))
        self.report = report
