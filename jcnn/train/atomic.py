"""Atomic file writes, for every file jcnn writes (checkpoints, metrics, plots, JSON reports).

The content goes to a new temporary file beside the target, is flushed and fsynced, and only
then `os.replace`s the target, and the directory is fsynced so that the rename itself is on
disk: a reader, or a run that dies halfway (a crash, a full disk, Ctrl-C), sees the old file or
the new one, never a torn one. The temporary file is created with mode 0o666 less the umask, as
`open` would; a target that exists keeps its own mode (a private 0o600 file stays private).
A process killed outright (SIGKILL, power loss) cannot remove its temporary file:
`remove_temporaries` clears those of given targets before a run writes them again.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
from typing import IO, Iterable, Iterator


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """`with atomic_open(path, "w" or "wb") as f:` write to f; the target is replaced when the
    block ends without an exception, and left as it was otherwise."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    path = os.path.abspath(os.fspath(path))
    head, name = os.path.split(path)
    tmp = os.path.join(head, _temporary(name, secrets.token_hex(4)))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            if os.path.exists(path):
                os.chmod(tmp, os.stat(path).st_mode & 0o7777)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    _fsync_directory(head)


def _temporary(name: str, token: str) -> str:
    """The temporary file `atomic_open` writes before it becomes `name`."""
    return f".{name}.{token}.tmp"


def remove_temporaries(directory: str | os.PathLike, names: Iterable[str]) -> list[str]:
    """Remove the temporary files that `atomic_open` left in `directory` for the targets
    `names` (when killed mid-write); returns the names removed. Call it only while no other
    process writes those targets."""
    pattern = re.compile("|".join(re.escape(_temporary(n, "@")).replace("@", "[0-9a-f]{8}")
                                  for n in names))
    removed = sorted(f for f in os.listdir(directory) if pattern.fullmatch(f))
    for f in removed:
        os.unlink(os.path.join(directory, f))
    return removed


def _fsync_directory(path: str) -> None:
    """Make a rename in `path` durable (POSIX); Windows cannot open a directory, and needs not."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory
        pass
    finally:
        os.close(fd)
