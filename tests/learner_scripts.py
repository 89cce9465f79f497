"""The learner's scripts (docs/*.py, examples/*.py) imported by path, once per process."""
import functools
import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def load(relative: str) -> ModuleType:
    """`load("docs/figures.py")`: the script at ROOT/relative, as a module."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
