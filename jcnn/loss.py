"""log-softmax and softmax cross-entropy over the last axis.

log_softmax: y = x - logsumexp(x). With p = softmax(x) = exp(y):
    dx = G - p * sum(G)                       (sum over the class axis)
softmax_cross_entropy: L = -(1/N) sum_{n,k} q[n, k] y[n, k], N the number of labels and q the
target, onehot(labels) smoothed by eps: q = (1 - eps) onehot + eps / C over C classes (PyTorch's
label_smoothing). Since sum_k q[n, k] = 1 and d y[n, j] / d x[n, k] = [j == k] - p[n, k]:
    dlogits = (p - q) * G / N
"""
from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jcnn._validate import check_float, classes_check, labels_check, smoothing_check

Array = jax.Array


def _log_softmax(x: Array) -> Array:
    shifted = x - lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))  # no overflow in exp
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))


def log_softmax(x: Array) -> Array:
    """x (..., classes) -> log-probabilities of the same shape."""
    check_float("log_softmax", x=x)
    classes_check(x, "log_softmax")
    return _log_softmax_op(x)


@jax.custom_vjp
def _log_softmax_op(x: Array) -> Array:
    return _log_softmax(x)


def _log_softmax_fwd(x):
    y = _log_softmax_op(x)  # through the rule itself, so second order differentiates by it
    return y, y  # p = exp(y): saving y alone serves both


def _log_softmax_bwd(y, g):
    return (g - jnp.exp(y) * jnp.sum(g, axis=-1, keepdims=True),)


_log_softmax_op.defvjp(_log_softmax_fwd, _log_softmax_bwd)


def softmax_cross_entropy(logits: Array, labels: Array, *, label_smoothing: float = 0.0
                          ) -> Array:
    """logits (..., classes) float, labels (...) int class ids -> the mean negative
    log-likelihood over the labels, a scalar in the logits' dtype; with label_smoothing eps
    in [0, 1], against targets (1 - eps) onehot + eps / classes."""
    labels_check(logits, labels)
    eps = smoothing_check(label_smoothing)
    return _xent(eps, logits, jnp.asarray(labels))  # a Python int is one unbatched label


def _targets(eps: float, labels: Array, like: Array) -> Array:
    """q = (1 - eps) onehot(labels) + eps / C, in `like`'s shape and dtype."""
    # class ids in int32: an iota in uint8 labels' own dtype wraps at 256 (class 261 == 5)
    onehot = labels[..., None].astype(jnp.int32) == lax.broadcasted_iota(jnp.int32, like.shape,
                                                                        like.ndim - 1)
    if eps == 0:
        return onehot.astype(like.dtype)
    share = eps / like.shape[-1]
    return jnp.where(onehot, 1 - eps + share, share).astype(like.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _xent(eps: float, logits: Array, labels: Array) -> Array:
    y = _log_softmax(logits)
    if eps == 0:  # one picked entry per label: no C-wide product
        return -jnp.mean(jnp.take_along_axis(y, labels[..., None], axis=-1))
    return -jnp.mean(jnp.sum(_targets(eps, labels, y) * y, axis=-1))


def _xent_fwd(eps, logits, labels):
    # the loss through the rule itself, so second order differentiates it by this rule; XLA
    # computes the log-softmax once for both
    return _xent(eps, logits, labels), (_log_softmax_op(logits), labels)  # p = exp(y), labels


def _xent_bwd(eps, res, g):
    y, labels = res
    # g * (1/N) with 1/N in float32 at least, not g / N: N itself overflows float16 from 65504
    # labels on; N as an array, since a symbolic batch makes it one (N = 0: dlogits is empty,
    # any factor does). The labels are integers: None stands for their float0 cotangent.
    acc = jnp.promote_types(y.dtype, jnp.float32)
    n = jnp.maximum(jnp.asarray(math.prod(labels.shape), acc), 1)
    return (jnp.exp(y) - _targets(eps, labels, y)) * (g * (1 / n).astype(y.dtype)), None


_xent.defvjp(_xent_fwd, _xent_bwd)
