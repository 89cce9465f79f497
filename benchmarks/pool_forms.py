"""relu followed by a 2x2/2 max-pool (the LeNet pattern), forward + backward, in several forms,
timed interleaved:

- autodiff:  `jax.vjp` of `jcnn.reference` relu then max_pool2d (select_and_scatter, which XLA's
  CPU backend expands into a variadic reduce-window with four s32 index arrays and a scatter);
- jcnn:      `jax.vjp` of `jcnn.relu` then `jcnn.max_pool2d` (when they have landed);
- index:     separate rules: relu saves its output, the pool saves the int8 position of each
  window's first maximum and rebuilds dx as one-hot(position) * g;
- fused:     one rule for relu + pool that saves only an int8 per output: the position of the
  first maximum, or -1 where that maximum is <= 0 (relu's gradient there is 0). Since relu is
  monotone, max(relu(x)) = relu(max(x)), so the forward pools first and applies relu to the
  4x smaller result.

    python benchmarks/pool_forms.py [--batch-sizes 128 512] [--repeats 40]
"""
from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp
import numpy as np

import jcnn
from jcnn import reference
from jcnn.bench import harness as bench

SHAPES = (("pool1 28x28x6", (28, 28, 6)), ("pool2 14x14x16", (14, 14, 16)))


def _windows(x):
    """(N, H, W, C) -> (N, H/2, W/2, C, 4): each 2x2 window's elements in row-major order."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(
        n, h // 2, w // 2, c, 4)


def _unwindows(v):
    """The inverse of `_windows`."""
    n, ho, wo, c, _ = v.shape
    return v.reshape(n, ho, wo, c, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(n, 2 * ho, 2 * wo, c)


def _scatter(pos, g):
    """dx: g at each window's position `pos` (int8; -1: nowhere), zero elsewhere."""
    return _unwindows(jnp.where(jnp.arange(4, dtype=jnp.int8) == pos[..., None], g[..., None],
                                jnp.zeros((), g.dtype)))


@jax.custom_vjp
def pool_index(x):
    return jnp.max(_windows(x), axis=-1)


def _pool_index_fwd(x):
    win = _windows(x)
    return jnp.max(win, axis=-1), jnp.argmax(win, axis=-1).astype(jnp.int8)  # first maximum


def _pool_index_bwd(pos, g):
    return (_scatter(pos, g),)


pool_index.defvjp(_pool_index_fwd, _pool_index_bwd)


@jax.custom_vjp
def relu_saving_output(x):
    return jnp.maximum(x, 0)


def _relu_fwd(x):
    y = jnp.maximum(x, 0)
    return y, y


def _relu_bwd(y, g):
    return (jnp.where(y > 0, g, jnp.zeros((), g.dtype)),)


relu_saving_output.defvjp(_relu_fwd, _relu_bwd)


@jax.custom_vjp
def relu_pool_fused(x):
    return jnp.maximum(jnp.max(_windows(x), axis=-1), 0)


def _relu_pool_fused_fwd(x):
    win = _windows(x)
    m = jnp.max(win, axis=-1)
    pos = jnp.where(m > 0, jnp.argmax(win, axis=-1), -1).astype(jnp.int8)
    return jnp.maximum(m, 0), pos


def _relu_pool_fused_bwd(pos, g):
    return (_scatter(pos, g),)


relu_pool_fused.defvjp(_relu_pool_fused_fwd, _relu_pool_fused_bwd)

FORMS = {"autodiff": lambda x: reference.max_pool2d(reference.relu(x), 2),
         "index": lambda x: pool_index(relu_saving_output(x)),
         "fused": relu_pool_fused}
if hasattr(jcnn, "max_pool2d") and hasattr(jcnn, "relu"):
    FORMS["jcnn"] = lambda x: jcnn.max_pool2d(jcnn.relu(x), 2)


def fwd_bwd(f):
    def run(x, g):
        y, pull = jax.vjp(f, x)
        return y, pull(g)[0]
    return jax.jit(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 512])
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for batch in args.batch_sizes:
        for name, (h, w, c) in SHAPES:
            x = jnp.asarray(rng.standard_normal((batch, h, w, c), dtype=np.float32))
            x = x.at[:, ::2, ::2].set(x[:, 1::2, ::2])  # ties: the first maximum must win
            g = jnp.asarray(rng.standard_normal((batch, h // 2, w // 2, c), dtype=np.float32))
            want = fwd_bwd(FORMS["autodiff"])(x, g)
            runners, temp = {}, {}
            for form, f in FORMS.items():
                fn = fwd_bwd(f)
                for a, b in zip(fn(x, g), want):
                    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=form)
                runners[form] = lambda fn=fn: jax.block_until_ready(fn(x, g))
                temp[form] = fn.lower(x, g).compile().memory_analysis().temp_size_in_bytes
            ms = {k: 1e3 * statistics.median(v)
                  for k, v in bench.interleaved(runners, args.repeats, rounds=5).items()}
            print(f"B={batch:4d} {name:15s} " + "  ".join(
                f"{k} {v:6.2f} ms ({v / ms['autodiff']:.2f}, temp {temp[k] / 1e6:.1f} MB)"
                for k, v in ms.items()), flush=True)


if __name__ == "__main__":
    main()
