"""`jcnn train` and `jcnn bench` set glibc's malloc to keep freed memory (`jcnn/cli/malloc.py`),
so that a step's large temporaries stop faulting fresh pages in on every step."""
import os
import platform
import subprocess
import sys

import pytest

import jcnn.cli
from jcnn.cli import malloc

# malloc, touch and free 96 MiB (above glibc's largest mmap threshold, 32 MiB) five times and
# print the minor page faults of the last four: each takes ~24,500 fresh pages by default.
FAULTS = """
import ctypes, resource, sys
from jcnn.cli import malloc
if sys.argv[1] == "keep":
    assert malloc.keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def touch():
    a = libc.malloc(96 << 20)
    ctypes.memset(a, 1, 96 << 20)
    libc.free(a)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")


def faults(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "JCNN_MALLOC"}  # conftest sets it
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True,
                         check=True, env=env)
    return int(out.stdout)


@glibc
def test_freed_memory_is_reused_without_page_faults():
    default, kept = faults("default"), faults("keep")
    assert default > 4 * 20_000  # each 96 MiB came back as fresh pages
    assert kept < 1_000, (default, kept)


@glibc
def test_jcnn_malloc_system_leaves_glibcs_defaults(monkeypatch):
    monkeypatch.setenv("JCNN_MALLOC", "system")
    assert malloc.keep_freed_memory() is False


@pytest.mark.parametrize("command, keeps", [("train", True), ("bench", True),
                                            ("verify", False), ("predict", False)])
def test_the_training_and_timing_commands_keep_freed_memory(monkeypatch, command, keeps):
    calls = []
    monkeypatch.setattr(jcnn.cli, "keep_freed_memory", lambda: calls.append(command))
    with pytest.raises(SystemExit):
        jcnn.cli.main([command, "--help"])
    assert calls == ([command] if keeps else [])
