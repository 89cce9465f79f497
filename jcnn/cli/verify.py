"""`jcnn verify`: every op's hand-derived gradients over the grid of `jcnn.check.grid`, against
autodiff, finite differences, the Taylor test and the NumPy loops; one line per case, exit 1 on
any mismatch, 2 for an unknown op."""
from __future__ import annotations

import argparse
import json
import sys

from jcnn.check.grid import CASES, run_case, table
from jcnn.cli import output_file
from jcnn.train.atomic import atomic_open


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--full", action="store_true", help="the whole grid, not the quick one")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                        help="float64 (default) adds finite differences at a tight tolerance")
    parser.add_argument("--order", type=int, choices=(1, 2), default=1,
                        help="2 also checks gradients of gradients (reverse over reverse)")
    parser.add_argument("--taylor", action="store_true",
                        help="add the Taylor-remainder test (order 2 = right, 1 = wrong)")
    parser.add_argument("--op", action="append", metavar="NAME",
                        help="only this op (repeatable), e.g. --op conv2d --op max_pool2d")
    parser.add_argument("--json", type=output_file, metavar="PATH",
                        help="also write the rows as JSON")


def run(args) -> int:
    known = sorted({c.op for c in CASES})
    unknown = sorted(set(args.op or ()) - set(known))
    if unknown:
        print(f"jcnn verify: unknown op {', '.join(unknown)}; choose from {', '.join(known)}",
              file=sys.stderr)
        return 2
    cases = [c for c in CASES
             if (args.full or not c.full_only) and (not args.op or c.op in args.op)]
    results = []
    for case in cases:
        results.append(run_case(case, args.dtype, args.order, args.taylor))
        print(table(results[-1:]).splitlines()[-1] if results[1:] else table(results), flush=True)
    failed = [r for r in results if not r.ok]
    for r in failed:
        print("\n" + r.detail)
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed "
          f"({args.dtype}, order {args.order}{', taylor' if args.taylor else ''})")
    if args.json:
        with atomic_open(args.json) as fh:
            json.dump([r._asdict() for r in results], fh, indent=1)
    return 1 if failed else 0
