"""Train a LeNet on the embedded 8x8 digits with jcnn's functional API, end to end.

    python examples/train_lenet.py [EPOCHS]

The model is a pair of pure functions; params and state are dicts of arrays; the gradient is
`jax.value_and_grad` running jcnn's hand-derived rules; optax updates the params.
"""
import sys

import jax
import jax.numpy as jnp
import optax

import jcnn
from jcnn.train.data import batches, load_dataset
from jcnn.models import lenet

epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
data = load_dataset("digits")                       # float32 NHWC images in [0, 1], int labels
model = lenet(data.num_classes)                     # ops=jcnn: hand-derived gradients
params, state = model.init(jax.random.key(0), (32, 8, 8, 1))
optimizer = optax.adam(1e-3)
opt_state = optimizer.init(params)


def loss_fn(params, state, x, y):
    logits, state = model.apply(params, state, x, train=True)
    return jcnn.softmax_cross_entropy(logits, y), state


@jax.jit
def step(params, state, opt_state, x, y):
    (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, x, y)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), state, opt_state, loss


@jax.jit
def predict(params, state, x):
    logits, _ = model.apply(params, state, x, train=False)  # evaluation mode
    return jnp.argmax(logits, axis=-1)


for epoch in range(epochs):
    for x, y in batches(data.train_images, data.train_labels, 32, seed=0, epoch=epoch):
        params, state, opt_state, loss = step(params, state, opt_state, x, y)
    accuracy = jnp.mean(predict(params, state, data.test_images) == data.test_labels)
    print(f"epoch {epoch + 1}: batch loss {float(loss):.4f}, test accuracy {float(accuracy):.2%}")
