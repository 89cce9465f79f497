"""Using a trained run: `load_trained(path)` rebuilds the model of a `jcnn train` checkpoint
from the config saved in it and applies it to new images with the run's preprocessing.

    trained = jcnn.load_trained("runs/mnist")        # its checkpoint.npz, or any .npz path
    labels = trained.predict(images)                  # uint8 pixels or floats in [0, 1]

A run's checkpoint records, beside its options, what inference needs (`inference_config`): the
number of classes, the input shape (H, W, C) and `pixel_max`, the largest raw pixel value,
which training divided the pixels by. Integer images are raw pixels, 0..pixel_max, and are
divided here; float images are taken as already divided (what `jcnn.train.data.load_dataset`
returns). Checkpoints written before these fields existed get them from their dataset's name.

Only `params/...` and `state/...` are read (no optimizer state), into a template initialised
from the recorded shapes. Images run in fixed-size batches of `batch_size` through one jitted
function, the last batch padded, so any number of images compiles once per dtype.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jcnn.layers import Layer
from jcnn.models import BY_NAME
from jcnn.train.checkpoint import CheckpointError, load_checkpoint, read_config
from jcnn.train.data import INPUT_SHAPES, NUM_CLASSES, PIXEL_MAX, Dataset
from jcnn.train.step import _forward

CHECKPOINT = "checkpoint.npz"  # what `jcnn train --out DIR` writes in DIR
COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


def inference_config(data: Dataset) -> dict:
    """What a run's checkpoint records so that `load_trained` can use it on new images."""
    return {"num_classes": data.num_classes, "input_shape": list(data.train_images.shape[1:]),
            "pixel_max": PIXEL_MAX[data.name]}


def _positive_ints(value, n: int) -> bool:
    return (isinstance(value, list) and len(value) == n
            and all(type(v) is int and v > 0 for v in value))


def _checked(path: Path, config: dict) -> dict:
    """`config` with the inference fields (derived from the dataset for older checkpoints),
    or a CheckpointError saying which field is missing or wrong."""
    def bad(why: str):
        return CheckpointError(f"checkpoint {path}: the saved config {why}")
    if config.get("model") not in BY_NAME:
        raise bad(f"names model {config.get('model')!r}, not one of {', '.join(BY_NAME)}")
    if config.get("dtype", "float32") not in COMPUTE_DTYPES:
        raise bad(f"names dtype {config.get('dtype')!r}, not one of {', '.join(COMPUTE_DTYPES)}")
    if "input_shape" not in config:
        if config.get("data") not in INPUT_SHAPES:
            raise bad(f"records no input shape, and its dataset {config.get('data')!r} is not "
                      f"one of {', '.join(INPUT_SHAPES)}")
        name = config["data"]
        config = {**config, "num_classes": NUM_CLASSES, "input_shape": list(INPUT_SHAPES[name]),
                  "pixel_max": PIXEL_MAX[name]}
    if not _positive_ints([config.get("num_classes")], 1):
        raise bad(f"has num_classes {config.get('num_classes')!r}, not an int > 0")
    if not _positive_ints(config.get("input_shape"), 3):
        raise bad(f"has input_shape {config.get('input_shape')!r}, not [H, W, C] ints > 0")
    pixel_max = config.get("pixel_max")
    if type(pixel_max) is not int or not 0 < pixel_max <= 255:
        raise bad(f"has pixel_max {pixel_max!r}, not an int in 1..255")
    return config


class Trained:
    """A trained model with its params, model state and run config; `logits` and `predict`
    take images as the run saw them before preprocessing (see the module docstring)."""

    def __init__(self, model: Layer, params: dict, state: dict, config: dict, *,
                 batch_size: int = 256):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Trained: batch_size must be an int >= 1, got {batch_size!r}")
        self.model, self.params, self.state, self.config = model, params, state, config
        self.batch_size = batch_size
        compute_dtype = COMPUTE_DTYPES[config.get("dtype", "float32")]
        pixel_max = config["pixel_max"]

        def batch_logits(params, state, x):
            if jnp.issubdtype(x.dtype, jnp.integer):
                x = x.astype(jnp.float32) / pixel_max
            return _forward(model, compute_dtype, params, state, x, train=False)[0]
        self._batch_logits = jax.jit(batch_logits)

    def _images(self, images: Any) -> np.ndarray:
        """images -> (N, H, W, C) uint8 pixels or float32, or a one-line ValueError."""
        a = np.asarray(images)
        h, w, c = self.config["input_shape"]
        integer = np.issubdtype(a.dtype, np.integer)
        if not (integer or jnp.issubdtype(a.dtype, jnp.floating)):
            raise TypeError(f"Trained: images must be integer pixels or floats, got dtype "
                            f"{a.dtype}")
        if a.shape == (h, w, c) or (c == 1 and a.shape == (h, w)):
            a = a.reshape(1, h, w, c)  # one image
        elif c == 1 and a.ndim == 3 and a.shape[1:] == (h, w):
            a = a[..., None]
        if a.ndim != 4 or a.shape[1:] != (h, w, c):
            grey = f", (N, {h}, {w})" if c == 1 else ""
            raise ValueError(f"Trained: images must be (N, {h}, {w}, {c}){grey} or one "
                             f"({h}, {w}, {c}) image, as the run's {self.config.get('data')} "
                             f"inputs; got shape {np.shape(images)}")
        if not integer:
            return a.astype(np.float32)
        top = self.config["pixel_max"]
        if a.size and (a.min() < 0 or a.max() > top):
            raise ValueError(f"Trained: integer images are raw pixels 0..{top} for this run, "
                             f"got values {a.min()}..{a.max()}; pass floats if they are "
                             f"already scaled")
        return a.astype(np.uint8)

    def logits(self, images: Any) -> jax.Array:
        """(N, num_classes) float32 logits of `images` in evaluation mode."""
        x = self._images(images)
        b, n = self.batch_size, len(x)
        out = []
        for start in range(0, n, b):
            chunk = x[start:start + b]
            padded = np.pad(chunk, ((0, b - len(chunk)),) + ((0, 0),) * 3)
            out.append(self._batch_logits(self.params, self.state, padded)[:len(chunk)])
        if not out:
            return jnp.zeros((0, self.config["num_classes"]), jnp.float32)
        return jnp.concatenate(out)

    def predict(self, images: Any) -> np.ndarray:
        """(N,) int labels: the argmax of the logits."""
        return np.asarray(jnp.argmax(self.logits(images), axis=-1))


def load_trained(path: str | os.PathLike, *, batch_size: int = 256) -> Trained:
    """The run saved at `path`: a checkpoint .npz, or a `jcnn train --out` directory (its
    checkpoint.npz). Raises CheckpointError naming the file and what is wrong with it."""
    path = Path(path)
    file = path / CHECKPOINT if path.is_dir() else path
    if path.is_dir() and not file.exists():
        raise CheckpointError(f"{path}: a directory without a {CHECKPOINT} (not a jcnn train "
                              f"--out directory?)")
    config = _checked(file, read_config(file))
    model = BY_NAME[config["model"]](config["num_classes"])
    shape = (1, *config["input_shape"])
    params, state = jax.eval_shape(lambda key: model.init(key, shape), jax.random.key(0))
    tree = load_checkpoint(file, {"params": params, "state": state}, strict=False)
    return Trained(model, tree["params"], tree["state"], config, batch_size=batch_size)


__all__ = ["Trained", "load_trained", "inference_config", "CHECKPOINT"]
