"""jcnn: convolutional-network layers for JAX whose gradients are derived by hand, written as
`jax.custom_vjp` rules and proven right against autodiff, finite differences and NumPy loops.

Layouts: activations NHWC, conv kernels HWIO, dense weights (in_features, out_features).
"""
from jcnn import layers, models, reference
from jcnn.check import CheckFailed, check_model, check_vjp
from jcnn.forward_mode import hessian, jacfwd, jvp, linearize
from jcnn.ops import (avg_pool2d, batch_norm, conv1d, conv2d, conv3d, conv_transpose1d,
                      conv_transpose2d, conv_transpose3d, dense, dropout, elu,
                      flatten, gelu, global_avg_pool2d, group_norm, layer_norm, leaky_relu,
                      log_softmax, max_pool2d, relu, sigmoid, silu, softmax_cross_entropy,
                      softplus, tanh)
from jcnn.ops import adaptive_avg_pool2d, upsample2d

__all__ = [
    "reference",
    "layers",
    "models",
    "check_model",
    "conv2d",
    "conv_transpose2d",
    "conv1d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose3d",
    "dense",
    "flatten",
    "relu",
    "leaky_relu",
    "sigmoid",
    "tanh",
    "gelu",
    "silu",
    "elu",
    "softplus",
    "max_pool2d",
    "avg_pool2d",
    "global_avg_pool2d",
    "adaptive_avg_pool2d",
    "upsample2d",
    "batch_norm",
    "layer_norm",
    "group_norm",
    "dropout",
    "log_softmax",
    "softmax_cross_entropy",
    "check_vjp",
    "CheckFailed",
    "jvp",
    "linearize",
    "jacfwd",
    "hessian",
    "load_trained",
    "Trained",
]


def __getattr__(name: str):
    """`jcnn.load_trained` and `jcnn.Trained` import `jcnn.train.trained` (and optax) on first
    use, so that `import jcnn` stays light."""
    if name in ("load_trained", "Trained"):
        from jcnn.train import trained
        return getattr(trained, name)
    raise AttributeError(f"module 'jcnn' has no attribute {name!r}")
