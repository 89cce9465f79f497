"""Inverted dropout: y = x * keep / (1 - rate), keep ~ Bernoulli(1 - rate) per element.

The mask is drawn in the wrapper from the key (`jax.random.bernoulli(key, 1 - rate, x.shape)`,
the same draw as `jcnn.reference.dropout`), so the rule sees only x and a boolean mask:
    dx = G * keep / (1 - rate)
It saves the mask (one byte an element) rather than regenerating it from the key: regenerating
would run the random generator (32 hashed bits an element, the costly part of dropout) a second
time in the backward to spare that byte. The key never enters the rule, so it needs no cotangent.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jcnn._validate import dropout_check

Array = jax.Array


def dropout(x: Array, rate: float, key: Array) -> Array:
    """x any shape; rate the probability of dropping an element, in [0, 1); key a PRNG key.
    rate=0 returns x itself."""
    rate = dropout_check(x, rate, key)
    if rate == 0:
        return x
    x = jnp.asarray(x)  # a Python or NumPy scalar too, as jnp takes it
    return _scaled_mask(rate, x, jax.random.bernoulli(key, 1 - rate, x.shape))


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scaled_mask(rate: float, x: Array, keep: Array) -> Array:
    return jnp.where(keep, x / jnp.asarray(1 - rate, x.dtype), jnp.zeros_like(x))


def _scaled_mask_fwd(rate, x, keep):
    return _scaled_mask(rate, x, keep), keep


def _scaled_mask_bwd(rate, keep, g):
    return _scaled_mask(rate, g, keep), None  # the mask is not differentiable


_scaled_mask.defvjp(_scaled_mask_fwd, _scaled_mask_bwd)
