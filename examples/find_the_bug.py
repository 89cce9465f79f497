"""Find the bug: a user's own layer with a wrong backward rule, inside a small CNN, named by
`jcnn.check_model`.

The user wrote hard-tanh (clip to [-1, 1]) as a `jax.custom_vjp`, but its backward lets the
gradient through everywhere, also where the input was clipped (the derivative there is 0).
The model still trains, the loss still falls, and nothing crashes: only a check finds it.

    python examples/find_the_bug.py            # prints the per-layer table and the culprit
    python examples/find_the_bug.py --fixed    # the corrected rule: every layer passes
"""
import argparse

import jax
import jax.numpy as jnp

import jcnn
from jcnn import layers as L
from jcnn.check import check_model


def hard_tanh_rule(fixed: bool):
    @jax.custom_vjp
    def hard_tanh(x):
        return jnp.clip(x, -1.0, 1.0)

    def fwd(x):
        return hard_tanh(x), jnp.abs(x) < 1  # where the input was not clipped

    def bwd(inside, g):
        return (jnp.where(inside, g, 0.0) if fixed else g,)  # the bug: g everywhere

    hard_tanh.defvjp(fwd, bwd)
    return hard_tanh


def activation(fn, name: str) -> L.Layer:
    """A layer with no params or state: y = fn(x)."""
    return L.Layer(lambda key, shape: ({}, {}), lambda p, s, x, *, train, key=None: (fn(x), s),
                   name)


def model(hard_tanh, ops=jcnn) -> L.Layer:
    return L.serial(L.conv2d(4, 3, padding=1, ops=ops), activation(hard_tanh, "hard_tanh"),
                    L.max_pool2d(2, ops=ops), L.flatten(ops=ops), L.dense(10, ops=ops))


def main(fixed: bool = False):
    with jax.enable_x64(True):  # float64: finite differences join the check
        suspect = model(hard_tanh_rule(fixed))
        trusted = model(lambda x: jnp.clip(x, -1.0, 1.0), ops=jcnn.reference)  # autodiff
        params, state = suspect.init(jax.random.key(0), (4, 8, 8, 1))
        params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), params)
        x = 2 * jax.random.normal(jax.random.key(1), (4, 8, 8, 1), jnp.float64)  # some |x| > 1
        report = check_model(suspect, trusted, params, state, x, raise_on_failure=False)
    print(report)
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixed", action="store_true", help="use the corrected rule")
    main(parser.parse_args().fixed)
