"""Layers as pairs of pure functions, composed like `stax.serial`.

Every layer is a `Layer(init, apply, name, layers)`:

    init(key, input_shape) -> (params, state)
    apply(params, state, x, *, train, key=None) -> (y, new_state)

`params` are what the optimiser trains, `state` what the layer carries between calls (batch-norm
running statistics); both are plain dicts of arrays, so `jax.tree_util`, optax and
`jcnn.train.checkpoint` take them as they are. `train` picks batch statistics and dropout; `key` is
needed only by a training-mode dropout. `input_shape` includes the batch axis: `(N, H, W, C)`.
`init` is traceable: `jax.jit(model.init, static_argnums=1)` draws every param in one compiled
call instead of one small computation per array.

Every constructor takes `ops`, the namespace whose functions compute the layer: `jcnn` (the
hand-derived gradients, the default) or `jcnn.reference` (the autodiff twins). The choice only
changes how gradients are computed: `init` is the same, so the same key gives the same params.

    model = serial(conv2d(8, 3, padding=1), relu(), flatten(), dense(10))
    params, state = model.init(key, (32, 8, 8, 1))
    logits, state = model.apply(params, state, images, train=True, key=dropout_key)
"""
from __future__ import annotations

import math
from types import ModuleType
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from jcnn import ops as hand_ops
from jcnn._validate import per_axis, rate_check

Params = dict
State = dict
Shape = tuple[int, ...]


class Layer(NamedTuple):
    init: Callable[[jax.Array, Shape], tuple[Params, State]]
    apply: Callable[..., tuple[jax.Array, State]]  # (params, state, x, *, train, key=None)
    name: str
    layers: tuple = ()  # the sub-layers of a combinator (`serial`, `residual`), in call order


def _he_normal(key: jax.Array, shape: Shape) -> jax.Array:
    """float32 weights with std sqrt(2 / fan_in), truncated at two std (He et al., 2015); fan_in
    is every axis but the last. Drawn with the non-partitionable threefry, which XLA:CPU
    compiles several times faster (seconds, for a ResNet); params are never drawn sharded."""
    with jax.threefry_partitionable(False):
        return jax.nn.initializers.he_normal()(key, shape, jnp.float32)


def output_shape(layer: Layer, params: Params, state: State, input_shape: Shape) -> Shape:
    """The shape `layer.apply` returns for an input of `input_shape`, traced without running."""
    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    y = jax.eval_shape(lambda p, s, x: layer.apply(p, s, x, train=False)[0], params, state, x)
    return tuple(y.shape)


def _stateless(name: str, fn: Callable[[jax.Array], jax.Array]) -> Layer:
    """A layer without params or state: `y = fn(x)`, the same in training and evaluation."""
    def init(key, input_shape):
        return {}, {}

    def apply(params, state, x, *, train, key=None):
        return fn(x), state
    return Layer(init, apply, name)


def conv2d(out_channels: int, kernel_size, *, stride=1, padding=0, dilation=1, groups: int = 1,
           bias: bool = True, padding_mode: str = "zeros", ops: ModuleType = hand_ops) -> Layer:
    """2-D convolution, NHWC in and out. params: `w` (kh, kw, C // groups, out_channels), HWIO,
    He-normal; `b` (out_channels,), zeros. `stride`/`padding`/`dilation`/`padding_mode` as in
    `jcnn.conv2d`."""
    return _conv("conv2d", 2, out_channels, kernel_size, bias, ops,
                 dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                      padding_mode=padding_mode))


def conv1d(out_channels: int, kernel_size, *, stride=1, padding=0, dilation=1, groups: int = 1,
           bias: bool = True, padding_mode: str = "zeros", ops: ModuleType = hand_ops) -> Layer:
    """1-D convolution, NWC in and out. params: `w` (k, C // groups, out_channels), He-normal;
    `b` (out_channels,), zeros. The other arguments as in `jcnn.conv1d`."""
    return _conv("conv1d", 1, out_channels, kernel_size, bias, ops,
                 dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                      padding_mode=padding_mode))


def conv3d(out_channels: int, kernel_size, *, stride=1, padding=0, dilation=1, groups: int = 1,
           bias: bool = True, padding_mode: str = "zeros", ops: ModuleType = hand_ops) -> Layer:
    """3-D convolution, NDHWC in and out. params: `w` (kd, kh, kw, C // groups, out_channels),
    He-normal; `b` (out_channels,), zeros. The other arguments as in `jcnn.conv3d`."""
    return _conv("conv3d", 3, out_channels, kernel_size, bias, ops,
                 dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                      padding_mode=padding_mode))


def _conv(name: str, axes: int, out_channels: int, kernel_size, bias: bool, ops: ModuleType,
          config: dict) -> Layer:
    """The conv layer over `axes` spatial axes; `config` goes to `ops.<name>` as it is."""
    kernel = per_axis(kernel_size, "kernel_size", f"{name} layer", axes)
    groups = config["groups"]

    def init(key, input_shape):
        channels = input_shape[-1]
        if channels % groups:
            raise ValueError(f"{name} layer: groups={groups} does not divide the input's "
                             f"{channels} channels (input shape {tuple(input_shape)})")
        params = {"w": _he_normal(key, (*kernel, channels // groups, out_channels))}
        if bias:
            params["b"] = jnp.zeros((out_channels,), jnp.float32)
        return params, {}

    def apply(params, state, x, *, train, key=None):
        return getattr(ops, name)(x, params["w"], params.get("b"), **config), state
    return Layer(init, apply, name)


def dense(out_features: int, *, bias: bool = True, ops: ModuleType = hand_ops) -> Layer:
    """Fully connected, `(..., in_features) -> (..., out_features)`. params: `w`
    (in_features, out_features), He-normal; `b` (out_features,), zeros."""
    def init(key, input_shape):
        params = {"w": _he_normal(key, (input_shape[-1], out_features))}
        if bias:
            params["b"] = jnp.zeros((out_features,), jnp.float32)
        return params, {}

    def apply(params, state, x, *, train, key=None):
        return ops.dense(x, params["w"], params.get("b")), state
    return Layer(init, apply, "dense")


def relu(*, ops: ModuleType = hand_ops) -> Layer:
    return _stateless("relu", lambda x: ops.relu(x))


def leaky_relu(negative_slope: float = 0.01, *, ops: ModuleType = hand_ops) -> Layer:
    return _stateless("leaky_relu", lambda x: ops.leaky_relu(x, negative_slope))


def gelu(approximate: bool = True, *, ops: ModuleType = hand_ops) -> Layer:
    return _stateless("gelu", lambda x: ops.gelu(x, approximate))


def silu(*, ops: ModuleType = hand_ops) -> Layer:
    return _stateless("silu", lambda x: ops.silu(x))


def elu(alpha: float = 1.0, *, ops: ModuleType = hand_ops) -> Layer:
    return _stateless("elu", lambda x: ops.elu(x, alpha))


def softplus(*, ops: ModuleType = hand_ops) -> Layer:
    return _stateless("softplus", lambda x: ops.softplus(x))


def sigmoid(*, ops: ModuleType = hand_ops) -> Layer:
    return _stateless("sigmoid", lambda x: ops.sigmoid(x))


def tanh(*, ops: ModuleType = hand_ops) -> Layer:
    return _stateless("tanh", lambda x: ops.tanh(x))


def max_pool2d(window, stride=None, padding=0, dilation=1, ceil_mode: bool = False, *,
               ops: ModuleType = hand_ops) -> Layer:
    """`(N, H, W, C) -> (N, H', W', C)`, the maximum of each window; `stride=None` is `window`."""
    return _stateless("max_pool2d", lambda x: ops.max_pool2d(x, window, stride, padding,
                                                             dilation, ceil_mode))


def avg_pool2d(window, stride=None, padding=0, count_include_pad: bool = True,
               ceil_mode: bool = False, *, ops: ModuleType = hand_ops) -> Layer:
    """`(N, H, W, C) -> (N, H', W', C)`, the mean of each window; `stride=None` is `window`."""
    return _stateless("avg_pool2d", lambda x: ops.avg_pool2d(x, window, stride, padding,
                                                             count_include_pad, ceil_mode))


def global_avg_pool2d(*, ops: ModuleType = hand_ops) -> Layer:
    """`(N, H, W, C) -> (N, C)`."""
    return _stateless("global_avg_pool2d", lambda x: ops.global_avg_pool2d(x))


def adaptive_avg_pool2d(output_size, *, ops: ModuleType = hand_ops) -> Layer:
    """`(N, H, W, C) -> (N, OH, OW, C)`, the mean of each of PyTorch's adaptive bins."""
    return _stateless("adaptive_avg_pool2d", lambda x: ops.adaptive_avg_pool2d(x, output_size))


def upsample2d(scale, mode: str = "nearest", *, ops: ModuleType = hand_ops) -> Layer:
    """`(N, H, W, C) -> (N, H*sh, W*sw, C)`, "nearest" or "bilinear" (align_corners=False)."""
    return _stateless("upsample2d", lambda x: ops.upsample2d(x, scale, mode))


def flatten(*, ops: ModuleType = hand_ops) -> Layer:
    """`(N, ...) -> (N, prod(...))`."""
    return _stateless("flatten", lambda x: ops.flatten(x))


def batch_norm(*, momentum: float = 0.9, eps: float = 1e-5, ops: ModuleType = hand_ops) -> Layer:
    """Batch normalisation over every axis but the last (channels).

    params: `scale` (C,) ones, `bias` (C,) zeros. state: running `mean` (C,) and `var` (C,),
    which keep their dtype (float32 from `init`) whatever the compute dtype. Training
    normalises with the batch statistics through `ops.batch_norm` (whose gradient flows
    through them too) and updates
    `running = momentum * running + (1 - momentum) * batch`, the variance unbiased as in
    PyTorch; evaluation normalises with the running statistics through
    `ops.batch_norm(..., mean=, var=)`, `(x - mean) / sqrt(var + eps) * scale + bias`, in x's
    dtype.
    """
    def init(key, input_shape):
        c = input_shape[-1]
        ones, zeros = jnp.ones((c,), jnp.float32), jnp.zeros((c,), jnp.float32)
        return {"scale": ones, "bias": zeros}, {"mean": zeros, "var": ones}

    def apply(params, state, x, *, train, key=None):
        if not train:
            mean, var = (state[k].astype(x.dtype) for k in ("mean", "var"))
            return ops.batch_norm(x, params["scale"], params["bias"], eps=eps, mean=mean,
                                  var=var), state
        y = ops.batch_norm(x, params["scale"], params["bias"], eps=eps)
        n = math.prod(x.shape[:-1])
        if n == 0:  # an empty batch has no statistics: the running ones stay (as in PyTorch)
            return y, state
        axes = tuple(range(x.ndim - 1))
        stats = lax.stop_gradient(x).astype(state["mean"].dtype)
        mean, var = jnp.mean(stats, axis=axes), jnp.var(stats, axis=axes) * (n / max(n - 1, 1))
        new_state = {"mean": momentum * state["mean"] + (1 - momentum) * mean,
                     "var": momentum * state["var"] + (1 - momentum) * var}
        return y, new_state
    return Layer(init, apply, "batch_norm")


def layer_norm(*, eps: float = 1e-5, ops: ModuleType = hand_ops) -> Layer:
    """Layer normalisation over the last axis (channels), in training and evaluation alike.
    params: `scale` (C,) ones, `bias` (C,) zeros; no state."""
    def init(key, input_shape):
        c = input_shape[-1]
        return {"scale": jnp.ones((c,), jnp.float32), "bias": jnp.zeros((c,), jnp.float32)}, {}

    def apply(params, state, x, *, train, key=None):
        return ops.layer_norm(x, params["scale"], params["bias"], eps=eps), state
    return Layer(init, apply, "layer_norm")


def group_norm(groups: int, *, eps: float = 1e-5, ops: ModuleType = hand_ops) -> Layer:
    """Group normalisation: each sample's channels in `groups` groups, each normalised over its
    channels and positions, in training and evaluation alike. params: `scale` (C,) ones,
    `bias` (C,) zeros; no state."""
    def init(key, input_shape):
        c = input_shape[-1]
        return {"scale": jnp.ones((c,), jnp.float32), "bias": jnp.zeros((c,), jnp.float32)}, {}

    def apply(params, state, x, *, train, key=None):
        return ops.group_norm(x, groups, params["scale"], params["bias"], eps=eps), state
    return Layer(init, apply, "group_norm")


def dropout(rate: float, *, ops: ModuleType = hand_ops) -> Layer:
    """Inverted dropout in training (`key` required), the identity in evaluation."""
    rate = rate_check(rate, "dropout layer")  # now, not at the first training step

    def init(key, input_shape):
        return {}, {}

    def apply(params, state, x, *, train, key=None):
        if not train:
            return x, state
        if key is None:
            raise ValueError("dropout layer: training mode needs a PRNG key; pass "
                             "apply(..., train=True, key=key)")
        return ops.dropout(x, rate, key), state
    return Layer(init, apply, "dropout")


def split_key(key: Optional[jax.Array], n: int) -> list:
    """The n keys a combinator hands its sub-layers (all None without a key); `check_model`
    uses it too, so a layer checked alone sees the key it gets inside the model."""
    return [None] * n if key is None else list(jax.random.split(key, n))


def serial(*layers: Layer) -> Layer:
    """The layers one after another. params and state are dicts keyed `"{i}_{name}"`
    (`"0_conv2d"`, `"1_relu"`, ...) holding each layer's own dicts; `layers` keeps them. From
    eleven layers on (indices past 9) the index is zero-padded (`"00_conv2d"`): `jax.tree_util`
    rebuilds dicts with sorted keys, and this keeps that order the layers' order."""
    width = len(str(len(layers) - 1))
    names = [f"{i:0{width}d}_{layer.name}" for i, layer in enumerate(layers)]

    def init(key, input_shape):
        params, state, shape = {}, {}, tuple(input_shape)
        for name, layer, k in zip(names, layers, split_key(key, len(layers))):
            params[name], state[name] = layer.init(k, shape)
            shape = output_shape(layer, params[name], state[name], shape)
        return params, state

    def apply(params, state, x, *, train, key=None):
        new_state = {}
        for name, layer, k in zip(names, layers, split_key(key, len(layers))):
            x, new_state[name] = layer.apply(params[name], state[name], x, train=train, key=k)
        return x, new_state
    return Layer(init, apply, "serial", tuple(layers))


def residual(body: Layer, shortcut: Optional[Layer] = None) -> Layer:
    """`y = body(x) + shortcut(x)` (`shortcut` defaults to the identity). params and state are
    `{"body": ..., "shortcut": ...}`; the sum is plain `+`, whose gradient needs no rule."""
    branches = (body,) if shortcut is None else (body, shortcut)
    names = ("body", "shortcut")[:len(branches)]

    def init(key, input_shape):
        keys = split_key(key, len(branches))
        both = {name: b.init(k, input_shape) for name, b, k in zip(names, branches, keys)}
        return {n: ps[0] for n, ps in both.items()}, {n: ps[1] for n, ps in both.items()}

    def apply(params, state, x, *, train, key=None):
        new_state, outs = {}, []
        for name, b, k in zip(names, branches, split_key(key, len(branches))):
            y, new_state[name] = b.apply(params[name], state[name], x, train=train, key=k)
            outs.append(y)
        return outs[0] + (x if shortcut is None else outs[1]), new_state
    return Layer(init, apply, "residual", branches)


__all__ = ["Layer", "output_shape", "conv2d", "dense", "relu", "leaky_relu", "gelu", "sigmoid",
           "tanh", "silu", "elu", "softplus", "max_pool2d", "avg_pool2d", "global_avg_pool2d",
           "flatten", "batch_norm", "layer_norm", "group_norm", "dropout", "serial", "residual",
           "split_key", "adaptive_avg_pool2d", "upsample2d"]
