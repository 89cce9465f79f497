"""Data parallelism over every device JAX sees, with `jax.sharding`.

One mesh axis, `"data"`, spans `jax.devices()`: each batch is split along its first axis across
the devices, params and optimiser state are replicated, and `jax.jit` inserts the all-reduces
(gradient sums, batch-norm statistics). The same code runs on 1 CPU, 1 GPU, 8 GPUs, or several
hosts after `jax.distributed.initialize()`: there `jax.devices()` lists every host's devices and
each host supplies only the slices of a (host-identical) global batch its own devices hold.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA = "data"


def data_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A 1-D mesh named `"data"` over `devices` (default: all of `jax.devices()`)."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), (DATA,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Split the leading (batch) axis across the mesh's `"data"` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    if batch_size % mesh.size:
        raise ValueError(f"batch size {batch_size} is not divisible by the {mesh.size} devices "
                         f"JAX sees; use a multiple of {mesh.size}")


def put(tree, sharding: NamedSharding):
    """Host arrays -> global `jax.Array`s laid out by `sharding`. Every process passes the same
    values; each places only the pieces its own devices hold, so this works across hosts."""
    def one(a):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])
    return jax.tree_util.tree_map(one, tree)


def shard_batch(tree, mesh: Mesh):
    """Put a batch (arrays with a leading batch axis) on the mesh, split across `"data"`."""
    for a in jax.tree_util.tree_leaves(tree):
        check_batch_size(np.shape(a)[0], mesh)
    return put(tree, batch_sharded(mesh))


__all__ = ["DATA", "data_mesh", "replicated", "batch_sharded", "check_batch_size", "put",
           "shard_batch"]
