"""`jcnn train | verify | bench | predict | evaluate`: each subcommand lives in its own module
of this package (`jcnn.cli.train`, `jcnn.cli.verify`, ...), which exposes `configure(parser)` to
add its options and `run(args) -> int` to do the work. Modules are imported only when their
subcommand runs, so `jcnn verify` never loads optax or matplotlib."""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Optional, Sequence

COMMANDS = {
    "train": ("jcnn.cli.train", "train a CNN with the hand-derived gradients"),
    "verify": ("jcnn.cli.verify",
               "check every op's gradients against autodiff, finite differences and NumPy"),
    "bench": ("jcnn.cli.bench", "time a training step: hand rules vs autodiff (vs PyTorch)"),
    "predict": ("jcnn.cli.predict", "label images with a trained run"),
    "evaluate": ("jcnn.cli.evaluate", "a trained run's test accuracy and confusion matrix"),
}


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


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="jcnn", description=__doc__.split(":")[0])
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{" + ",".join(COMMANDS) + "}")
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == chosen:
            importlib.import_module(module).configure(p)
    args = parser.parse_args(argv)
    return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
