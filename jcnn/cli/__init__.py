"""`jcnn train | verify | bench | predict | evaluate`: each subcommand lives in its own module
of this package (`jcnn.cli.train`, `jcnn.cli.verify`, ...), which exposes `configure(parser)` to
add its options and `run(args) -> int` to do the work. Modules are imported only when their
subcommand runs, so `jcnn verify` never loads optax or matplotlib."""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

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


def option_checks(parser: argparse.ArgumentParser, keys: Iterable[str]
                  ) -> dict[str, Callable[[Any], Optional[str]]]:
    """For each of `keys` (option dests), a check that a value read back from a file (a saved
    config) is one the option could have given: in its choices, of its type and accepted by
    it (`_positive` refuses -1). The check returns what is wrong, or None."""
    actions = {a.dest: a for a in parser._actions}

    def check(action: argparse.Action) -> Callable[[Any], Optional[str]]:
        def problem(value) -> Optional[str]:
            if action.choices is not None:
                return None if value in action.choices else \
                    f"not one of {', '.join(map(str, action.choices))}"
            if action.type is None:  # a flag (bool) or a plain string
                kind = bool if isinstance(action.const, bool) else str
                return None if type(value) is kind else f"not a {kind.__name__}"
            try:
                parsed = action.type(str(value))
            except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
                return f"not a valid {action.option_strings[0]} ({e})"
            if type(value) is bool or parsed != value:  # "5" for an int, 2.5 for an int
                return f"not a valid {action.option_strings[0]} (a {type(value).__name__})"
            return None
        return problem
    return {key: check(actions[key]) for key in keys}


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
