"""The training step: jit-compiled and data-parallel, with the evaluation step beside it.

    model = jcnn.models.lenet(10)                       # ops=jcnn: hand-derived gradients
    optimizer = optax.adam(1e-3)
    ts = init_train_state(model, optimizer, jax.random.key(0), (batch, 8, 8, 1))
    step = make_train_step(model, optimizer)
    ts, loss = step(ts, *shard_batch((images, labels), data_mesh()))

The gradient mode is the model's `ops`: with `jcnn` ops `jax.value_and_grad` runs the hand
rules, with `jcnn.reference` ops the same call is JAX's own autodiff. Build the model and the
step with the same `ops` (the step takes its loss from it).

`make_train_step(..., augment=random_crops(pad, flip))` augments each batch inside the step
from the step's own key, so an augmented run is as seeded and as exactly resumable as a plain
one; `decoupled_weight_decay` adds AdamW's decay to any optax optimiser.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jcnn
from jcnn.layers import Layer
from jcnn.train.data import batches
from jcnn.train.parallel import batch_sharded, data_mesh, replicated, shard_batch


class TrainState(NamedTuple):
    params: dict
    state: dict        # the model's state: batch-norm running statistics
    opt_state: Any     # optax's state for `params`
    step: jax.Array    # int32 (): optimiser steps taken
    key: jax.Array     # uint32 (2,): raw PRNG key; step k draws dropout from fold_in(key, k)


def init_train_state(model: Layer, optimizer: optax.GradientTransformation, key: jax.Array,
                     input_shape: tuple[int, ...]) -> TrainState:
    """Fresh params (float32) and state from `key` for inputs of `input_shape` (N, H, W, C)."""
    init_key, step_key = jax.random.split(key)
    params, state = jax.jit(model.init, static_argnums=1)(init_key, tuple(input_shape))
    return TrainState(params, state, optimizer.init(params), jnp.zeros((), jnp.int32),
                      jax.random.key_data(step_key))


def _forward(model: Layer, compute_dtype, params, state, x, *, train: bool, key=None):
    """Logits in the dtype of `x` (the master dtype); with `compute_dtype` the params and `x`
    are cast to it first, so the layers run in it and gradients come back in the master's."""
    master = x.dtype
    if compute_dtype is not None:
        params = jax.tree_util.tree_map(lambda p: p.astype(compute_dtype), params)
        x = x.astype(compute_dtype)
    logits, state = model.apply(params, state, x, train=train, key=key)
    return logits.astype(master), state


def random_crops(pad: int, flip: bool = False) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """`augment(key, images) -> images`: each image (N, H, W, C) shifted by up to `pad` pixels
    each way, the border filled with zeros (a random H x W crop of the image padded by `pad`),
    and with `flip` mirrored left-right with probability 1/2."""
    def augment(key, images):
        n, h, w, c = images.shape
        shift_key, flip_key = jax.random.split(key)
        corners = jax.random.randint(shift_key, (n, 2), 0, 2 * pad + 1)
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        crop = jax.vmap(lambda image, yx: jax.lax.dynamic_slice(
            image, (yx[0], yx[1], 0), (h, w, c)))(padded, corners)
        if not flip:
            return crop
        mirror = jax.random.bernoulli(flip_key, 0.5, (n, 1, 1, 1))
        return jnp.where(mirror, crop[:, :, ::-1], crop)
    return augment


def decoupled_weight_decay(rate: float, schedule: optax.Schedule
                           ) -> optax.GradientTransformation:
    """Chained after an optimiser: subtracts `schedule(step) * rate * w` from the update of
    every kernel w (params of 2 or more dims; biases and norm scales are not decayed), as AdamW
    does, whatever the optimiser did to the gradient."""
    def init(params):
        return optax.ScaleByScheduleState(count=jnp.zeros((), jnp.int32))

    def update(updates, state, params):
        lr = schedule(state.count)
        updates = jax.tree_util.tree_map(
            lambda u, w: u - (lr * rate * w).astype(u.dtype) if w.ndim >= 2 else u,
            updates, params)
        return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))
    return optax.GradientTransformation(init, update)


def make_train_step(model: Layer, optimizer: optax.GradientTransformation, *,
                    ops: ModuleType = jcnn, compute_dtype=None, mesh=None,
                    augment: Optional[Callable[[jax.Array, jax.Array], jax.Array]] = None
                    ) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, jax.Array]]:
    """`step(ts, images, labels) -> (ts, loss)`: one optimiser step on the mean
    `ops.softmax_cross_entropy` of a batch, images (N, H, W, C) float, labels (N,) int;
    `augment(key, images)` (e.g. `random_crops`) first, with a key of its own drawn from the
    step's.

    jit-compiled with `ts` donated (its buffers are reused: do not touch the old `ts` after the
    call). The batch is split across `mesh` (default: every device), `ts` is replicated.
    `compute_dtype=jnp.bfloat16` runs the model in bfloat16 on float32 master params.
    """
    mesh = data_mesh() if mesh is None else mesh

    def loss_fn(params, state, images, labels, key):
        logits, state = _forward(model, compute_dtype, params, state, images, train=True, key=key)
        return ops.softmax_cross_entropy(logits, labels), state

    def step(ts: TrainState, images, labels):
        key = jax.random.fold_in(jax.random.wrap_key_data(ts.key), ts.step)
        if augment is not None:
            key, augment_key = jax.random.split(key)
            images = augment(augment_key, images)
        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            ts.params, ts.state, images, labels, key)
        updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
        params = optax.apply_updates(ts.params, updates)
        return TrainState(params, state, opt_state, ts.step + 1, ts.key), loss

    rep, data = replicated(mesh), batch_sharded(mesh)
    return jax.jit(step, in_shardings=(rep, data, data), out_shardings=rep, donate_argnums=0)


def make_eval_step(model: Layer, *, ops: ModuleType = jcnn, compute_dtype=None, mesh=None
                   ) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """`eval_step(params, state, images, labels, mask) -> (loss_sum, correct)`: the
    cross-entropy and the correct predictions summed over the batch weighted by `mask` (N,)
    float (1 real, 0 padding), in evaluation mode (running statistics, no dropout)."""
    mesh = data_mesh() if mesh is None else mesh

    def eval_step(params, state, images, labels, mask):
        logits, _ = _forward(model, compute_dtype, params, state, images, train=False)
        nll = -jnp.take_along_axis(ops.log_softmax(logits), labels[:, None], axis=1)[:, 0]
        correct = (jnp.argmax(logits, axis=1) == labels).astype(mask.dtype)
        return jnp.sum(mask * nll), jnp.sum(mask * correct)

    rep, data = replicated(mesh), batch_sharded(mesh)
    return jax.jit(eval_step, in_shardings=(rep, rep, data, data, data), out_shardings=rep)


def evaluate(eval_step, params, state, images: np.ndarray, labels: np.ndarray,
             batch_size: int, mesh) -> tuple[float, float]:
    """Mean loss and accuracy over every example exactly once: the last batch is padded to
    `batch_size` and masked, so one compiled `eval_step` serves every batch."""
    loss_sum, correct = 0.0, 0
    for x, y, mask in batches(images, labels, batch_size, shuffle=False, remainder="pad"):
        batch_loss, batch_correct = eval_step(params, state, *shard_batch((x, y, mask), mesh))
        loss_sum, correct = loss_sum + float(batch_loss), correct + round(float(batch_correct))
    return loss_sum / len(labels), correct / len(labels)
