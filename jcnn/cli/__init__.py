"""`jcnn train | verify | bench | predict | evaluate`: each subcommand lives in its own module
of this package (`jcnn.cli.train`, `jcnn.cli.verify`, ...), which exposes `configure(parser)` to
add its options and `run(args) -> int` to do the work. Modules are imported only when their
subcommand runs, so `jcnn verify` never loads optax or matplotlib.

Every command reports a user error in one line on stderr, `jcnn CMD: message`, naming the
file or option and the reason, with no traceback (`--debug` shows it): exit 2 for usage
errors (argparse's, and `UsageError`), 1 for runtime failures (the library's `ValueError`s,
`TypeError`s and `OSError`s: a bad or missing file, images of the wrong dtype, a full disk),
128 + the signal's number for an interrupt."""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import math
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from jcnn.cli.malloc import keep_freed_memory

COMMANDS = {
    "train": ("jcnn.cli.train", "train a CNN with the hand-derived gradients"),
    "verify": ("jcnn.cli.verify",
               "check every op's gradients against autodiff, finite differences and NumPy"),
    "bench": ("jcnn.cli.bench", "time a training step: hand rules vs autodiff (vs PyTorch)"),
    "predict": ("jcnn.cli.predict", "label images with a trained run"),
    "evaluate": ("jcnn.cli.evaluate", "a trained run's test accuracy and confusion matrix"),
}
# the commands that train or time steps, for which glibc's malloc keeps freed memory (`malloc.py`)
KEEP_FREED_MEMORY = ("train", "bench")
# what `pip install 'jcnn[train]'` adds; a command that needs one of them says so when it is missing
TRAIN_EXTRA = ("optax", "tqdm", "matplotlib")


class UsageError(Exception):
    """Options that cannot work together, or an --out that does not fit the command: exit 2."""


def positive(kind: type, zero: bool = False) -> Callable[[str], Any]:
    """An argparse type: a finite number > 0 (>= 0 with `zero`) of `kind`, else a usage error
    naming the value."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (math.isfinite(value) and (value >= 0 if zero else value > 0)):
            raise argparse.ArgumentTypeError(f"must be {'>=' if zero else '>'} 0, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors are one line too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def output_file(text: str) -> Path:
    """An argparse type for a file a command writes at its end: its directory must exist now,
    so that a long run does not fail only when it comes to write."""
    path = Path(text)
    if not path.absolute().parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: directory {path.absolute().parent} does not "
                                         f"exist")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory, not a file")
    return path


def describe(error: BaseException) -> str:
    """One line for an error: an OSError as `file: reason`, others as their message."""
    if isinstance(error, OSError) and error.strerror:
        text = f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def _version() -> str:
    try:
        return importlib.metadata.version("jcnn")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown (not installed)"


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _Parser(prog="jcnn", description=__doc__.split(":")[0])
    parser.add_argument("--version", action="version", version=f"jcnn {_version()}")
    debug_help = "on an error, show the traceback instead of one line"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{" + ",".join(COMMANDS) + "}")
    chosen = next((a for a in argv if not a.startswith("-")), None)  # the subcommand
    debug = "--debug" in argv
    if chosen in KEEP_FREED_MEMORY:
        keep_freed_memory()  # before JAX's first computation starts its threads
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
        if name == chosen:
            try:
                importlib.import_module(module).configure(p)
            except ModuleNotFoundError as e:
                if debug or (e.name or "").split(".")[0] not in TRAIN_EXTRA:
                    raise
                print(f"jcnn {name}: needs {e.name}, which is not installed: "
                      f"pip install 'jcnn[train]'", file=sys.stderr)
                return 1
    args = parser.parse_args(argv)
    try:
        return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
    except (UsageError, ValueError, TypeError, OSError, KeyboardInterrupt) as e:
        if args.debug:
            raise
        print(f"jcnn {args.command}: " + ("interrupted" if isinstance(e, KeyboardInterrupt)
                                           else describe(e)), file=sys.stderr)
        return (2 if isinstance(e, UsageError) else
                128 + signal.SIGINT if isinstance(e, KeyboardInterrupt) else 1)
