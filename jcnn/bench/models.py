"""What `jcnn bench` times: the models, their input shapes and default batch sizes, and the
SGD-momentum step's constants, shared by the JAX paths (`jcnn.bench.harness`) and the PyTorch
twins (`jcnn.bench.torch_twins`)."""
from __future__ import annotations

from types import ModuleType
from typing import Callable, NamedTuple

import jax.numpy as jnp

from jcnn import models
from jcnn.layers import Layer

NUM_CLASSES = 10
LR, MOMENTUM = 0.01, 0.9


class ModelSpec(NamedTuple):
    build: Callable[[ModuleType], Layer]   # ops -> model
    image: tuple[int, int, int]            # (H, W, C)
    batch_sizes: tuple[int, ...]           # CPU-sized defaults


# The LeNet (conv 5x5 -> 6, pool, conv 5x5 -> 16, pool, dense 784-120-10), pinned here
# so that the benchmark does not move when `models.lenet`'s defaults do.
LENET = {"channels": (6, 16), "hidden": (120,)}
MODELS = {
    "lenet": ModelSpec(lambda ops: models.lenet(NUM_CLASSES, **LENET, ops=ops), (28, 28, 1),
                       (128, 512)),
    "resnet8": ModelSpec(lambda ops: models.resnet(NUM_CLASSES, 8, ops=ops), (32, 32, 3),
                         (32, 128)),
}
DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}
