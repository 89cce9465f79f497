"""jcnn: convolutional-network layers for JAX whose gradients are derived by hand, written as
`jax.custom_vjp` rules and proven right against autodiff, finite differences and NumPy loops.

Layouts: activations NHWC, conv kernels HWIO, dense weights (in_features, out_features).
"""
from jcnn import layers, models, reference
from jcnn.activation import gelu, leaky_relu, relu, sigmoid, tanh
from jcnn.check import CheckFailed, check_vjp
from jcnn.conv import conv2d, conv_transpose2d
from jcnn.dense import dense, flatten
from jcnn.dropout import dropout
from jcnn.loss import log_softmax, softmax_cross_entropy
from jcnn.model_check import check_model
from jcnn.norm import batch_norm
from jcnn.pool import avg_pool2d, global_avg_pool2d, max_pool2d

__all__ = [
    "reference",
    "layers",
    "models",
    "check_model",
    "conv2d",
    "conv_transpose2d",
    "dense",
    "flatten",
    "relu",
    "leaky_relu",
    "sigmoid",
    "tanh",
    "gelu",
    "max_pool2d",
    "avg_pool2d",
    "global_avg_pool2d",
    "batch_norm",
    "dropout",
    "log_softmax",
    "softmax_cross_entropy",
    "check_vjp",
    "CheckFailed",
]
