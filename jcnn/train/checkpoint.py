"""Checkpoints as `.npz` files that cannot run code when loaded.

A pytree (params, model state, optax state, step, key, ...) is flattened by key path into named
arrays — `params/0_conv2d/w`, `opt_state/0/mu/0_conv2d/w` — and written with `numpy.savez`; a
JSON config rides along as one string array. bfloat16 (an ml_dtypes type) is stored as its raw
bytes, with its dtype's name beside them, and comes back as bfloat16. Loading uses
`allow_pickle=False` and a template tree of the same structure (e.g. a freshly initialised
one), so nothing but arrays is ever read. Writes are atomic (`jcnn.train.atomic`): a crash
mid-write leaves the previous checkpoint intact.

Every way reading one can fail (no such file, a directory or FIFO in its place, a file that is
not an .npz, truncated, bit-flipped (the zip's CRC-32 of each array catches it), missing
arrays, a config that is not what the reader requires) raises one `CheckpointError` naming the
file and the reason; nothing is opened that is not a regular file, so a FIFO cannot hang it.
"""
from __future__ import annotations

import contextlib
import json
import os
import stat
import zipfile
import zlib
from typing import Any, Iterator, Optional

import jax
import numpy as np

from jcnn.train.atomic import atomic_open

_CONFIG, _DTYPES = "__config__", "__dtypes__"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or is not what it is read as; the message (one line)
    names the file and the reason."""
_RESERVED = (_CONFIG, _DTYPES, "file", "allow_pickle")  # ours, and numpy.savez's keywords


def _key_name(entry) -> str:
    for attr in ("key", "name", "idx"):  # DictKey, GetAttrKey (NamedTuple field), SequenceKey
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    raise TypeError(f"checkpoint: unsupported pytree key {entry!r}")


def _flatten(tree) -> tuple[dict[str, Any], Any]:
    """`{"a/b/c": leaf}` in tree order, and the treedef to rebuild the tree."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    named = {"/".join(_key_name(k) for k in path): leaf for path, leaf in paths}
    if len(named) != len(paths):
        raise ValueError("checkpoint: two leaves of the tree map to the same name")
    clash = sorted(set(named) & set(_RESERVED))
    if clash:
        raise ValueError(f"checkpoint: a top-level leaf may not be named {clash[0]!r} (reserved: "
                         f"{', '.join(_RESERVED)}); nest it or rename it")
    return named, treedef


def _spec(leaf) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an array, a `jax.ShapeDtypeStruct` or a Python scalar."""
    a = leaf if hasattr(leaf, "shape") and hasattr(leaf, "dtype") else np.asarray(leaf)
    return tuple(a.shape), np.dtype(a.dtype)


def save_checkpoint(path: str | os.PathLike, tree, config: Optional[dict] = None) -> None:
    """Write every leaf of `tree` (arrays or scalars, fully addressable) and the JSON-able
    `config` to `path`, atomically."""
    named, _ = _flatten(tree)
    arrays = {name: np.asarray(leaf) for name, leaf in named.items()}
    if any(a.dtype == object for a in arrays.values()):
        raise TypeError("checkpoint: leaves must be numeric arrays, not Python objects")
    arrays[_CONFIG] = np.asarray(json.dumps(config or {}))
    # .npy knows bfloat16 and the other ml_dtypes only as raw bytes ("V2"): keep their names
    arrays[_DTYPES] = np.asarray(json.dumps({n: a.dtype.name for n, a in arrays.items()
                                             if a.dtype.kind == "V"}))
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


# What numpy and zipfile raise on a damaged .npz. RuntimeError: a flipped flag bit makes
# zipfile see an encrypted member, or (its subclass NotImplementedError) an unknown compression.
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, ValueError, EOFError, OSError, KeyError,
                RuntimeError)


@contextlib.contextmanager
def _opened(path: str | os.PathLike) -> Iterator[Any]:
    """The `np.load`ed .npz at `path`. Whatever goes wrong inside the block while reading it
    (a corrupt zip, a bad CRC, a truncated array) comes out as a CheckpointError."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise CheckpointError(f"checkpoint {path}: {e.strerror or _one_line(e)}") from None
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise CheckpointError(f"checkpoint {path}: is {kind}, not a checkpoint file")
    try:
        with open(path, "rb") as f:
            head = f.read(6)
        if not head.startswith((b"PK\x03\x04", b"\x93NUMPY")):
            raise CheckpointError(f"checkpoint {path}: not an .npz file (" + (
                "empty" if not head else "it starts with neither a zip nor a .npy header") + ")")
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise CheckpointError(f"checkpoint {path}: a single .npy array, not a checkpoint "
                                  f"(.npz)")
        with data:
            yield data
    except CheckpointError:
        raise
    except _READ_ERRORS as e:
        raise CheckpointError(f"checkpoint {path}: corrupt or not a checkpoint: "
                              f"{_one_line(e)}") from e


def _json(path, data, name: str):
    if name not in data.files:
        raise CheckpointError(f"checkpoint {path}: no {name} entry: not written by jcnn")
    try:
        return json.loads(str(data[name]))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {path}: {name} is not valid JSON ({e})") from e


def load_checkpoint(path: str | os.PathLike, like, *, strict: bool = True):
    """The tree saved at `path`, rebuilt in the structure of `like` (any tree with the same
    key paths, shapes and dtypes: a freshly initialised one, or its `jax.eval_shape`); leaves
    come back as NumPy arrays. `strict=False` lets the file hold more than `like` (a template
    `{"params": ..., "state": ...}` reads those two parts of a saved TrainState and no
    optimizer state). Raises CheckpointError naming what differs."""
    named, treedef = _flatten(like)
    with _opened(path) as data:
        stored = set(data.files) - {_CONFIG, _DTYPES}
        raw = _json(path, data, _DTYPES) if _DTYPES in data.files else {}
        missing, extra = sorted(set(named) - stored), sorted(stored - set(named))
        if missing or (extra and strict):
            raise CheckpointError(f"checkpoint {path}: does not match the expected structure; "
                                  f"missing {missing[:5]}, unexpected {extra[:5]}")
        leaves = []
        for name, leaf in named.items():
            a, want = data[name], _spec(leaf)
            if name in raw and raw[name] == want[1].name:
                a = a.view(want[1])
            if (a.shape, a.dtype) != want:
                raise CheckpointError(f"checkpoint {path}: {name} has shape {a.shape} dtype "
                                      f"{raw.get(name, a.dtype)}, expected shape {want[0]} "
                                      f"dtype {want[1]}")
            leaves.append(a)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def read_config(path: str | os.PathLike) -> dict:
    """The config dict saved with the checkpoint at `path`."""
    with _opened(path) as data:
        config = _json(path, data, _CONFIG)
    if not isinstance(config, dict):
        raise CheckpointError(f"checkpoint {path}: the config is a {type(config).__name__}, "
                              f"not a JSON object")
    return config


__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "read_config"]
