"""Checkpoints as `.npz` files that cannot run code when loaded.

A pytree (params, model state, optax state, step, key, ...) is flattened by key path into named
arrays — `params/0_conv2d/w`, `opt_state/0/mu/0_conv2d/w` — and written with `numpy.savez`; a
JSON config rides along as one string array. bfloat16 (an ml_dtypes type) is stored as its raw
bytes, with its dtype's name beside them, and comes back as bfloat16. Loading uses
`allow_pickle=False` and a template tree of the same structure (e.g. a freshly initialised
one), so nothing but arrays is ever read. Writes are atomic (`jcnn.train.atomic`): a crash
mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import numpy as np

from jcnn.train.atomic import atomic_open

_CONFIG, _DTYPES = "__config__", "__dtypes__"
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


def load_checkpoint(path: str | os.PathLike, like):
    """The tree saved at `path`, rebuilt in the structure of `like` (any tree with the same
    key paths, shapes and dtypes: a freshly initialised one, or its `jax.eval_shape`); leaves
    come back as NumPy arrays. Raises ValueError naming what differs."""
    named, treedef = _flatten(like)
    with np.load(path, allow_pickle=False) as data:
        stored = set(data.files) - {_CONFIG, _DTYPES}
        raw = json.loads(str(data[_DTYPES])) if _DTYPES in data.files else {}
        missing, extra = sorted(set(named) - stored), sorted(stored - set(named))
        if missing or extra:
            raise ValueError(f"checkpoint {path}: does not match the expected structure; "
                             f"missing {missing[:5]}, unexpected {extra[:5]}")
        leaves = []
        for name, leaf in named.items():
            a, want = data[name], _spec(leaf)
            if name in raw and raw[name] == want[1].name:
                a = a.view(want[1])
            if (a.shape, a.dtype) != want:
                raise ValueError(f"checkpoint {path}: {name} has shape {a.shape} dtype "
                                 f"{raw.get(name, a.dtype)}, expected shape {want[0]} dtype "
                                 f"{want[1]}")
            leaves.append(a)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def read_config(path: str | os.PathLike) -> dict:
    """The config dict saved with the checkpoint at `path`."""
    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data[_CONFIG]))


__all__ = ["save_checkpoint", "load_checkpoint", "read_config"]
