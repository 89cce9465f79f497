"""Your own layer with your own backward rule: write the `custom_vjp`, check it against autodiff
with `jcnn.check_vjp`, wrap it as a `Layer`, and train a model that uses it.

    python examples/custom_layer.py [STEPS]
"""
import itertools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jcnn
from jcnn import layers as L
from jcnn.train.data import batches, load_dataset
from jcnn.train.step import init_train_state, make_train_step


@jax.custom_vjp
def swish(x):
    """x * sigmoid(x), elementwise."""
    return x * jax.nn.sigmoid(x)


def _swish_fwd(x):
    s = jax.nn.sigmoid(x)
    return x * s, (x, s)  # residuals: what the backward needs


def _swish_bwd(res, g):
    x, s = res
    return (g * s * (1 + x * (1 - s)),)  # d/dx [x s(x)] = s + x s (1 - s)


swish.defvjp(_swish_fwd, _swish_bwd)


def swish_reference(x):
    return x * jax.nn.sigmoid(x)  # no rule: jax.grad differentiates this itself


def swish_layer() -> L.Layer:
    """A Layer is its init and apply; this one has no params and no state."""
    return L.Layer(init=lambda key, input_shape: ({}, {}),
                   apply=lambda params, state, x, *, train, key=None: (swish(x), state),
                   name="swish")


# 1. The rule against autodiff (and finite differences: the input is float64).
x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 5)))
print(jcnn.check_vjp(swish, swish_reference, x))

# 2. The layer inside a model, trained for a few steps with the hand-derived gradients.
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 100
model = L.serial(L.conv2d(16, 3, padding=1), swish_layer(), L.max_pool2d(2),
                 L.flatten(), L.dense(10))
optimizer = optax.adam(3e-3)
ts = init_train_state(model, optimizer, jax.random.key(0), (32, 8, 8, 1))
step = make_train_step(model, optimizer)
data = load_dataset("digits")
stream = (batch for epoch in itertools.count()
          for batch in batches(data.train_images, data.train_labels, 32, seed=0, epoch=epoch))
losses = []
for images, labels in itertools.islice(stream, steps):
    ts, loss = step(ts, images, labels)
    losses.append(float(loss))
print(f"{model.layers[1].name} model: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {steps} steps")
