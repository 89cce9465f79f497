"""The hand-ruled ops in one namespace: what `jcnn` exports, and the default `ops` of
`jcnn.layers` and `jcnn.models`, which import it from here (not from the half-initialised
package) so that they do not depend on the order of `jcnn/__init__.py`'s imports.
`jcnn.reference` has the same names with JAX's autodiff."""
from jcnn.activation import elu, gelu, leaky_relu, relu, sigmoid, silu, softplus, tanh
from jcnn.conv import (conv1d, conv2d, conv3d, conv_transpose1d, conv_transpose2d,
                       conv_transpose3d)
from jcnn.dense import dense, flatten
from jcnn.dropout import dropout
from jcnn.loss import log_softmax, softmax_cross_entropy
from jcnn.norm import batch_norm, group_norm, layer_norm
from jcnn.pool import avg_pool2d, global_avg_pool2d, max_pool2d
from jcnn.resize import adaptive_avg_pool2d, upsample2d

__all__ = ["conv2d", "conv_transpose2d", "conv1d", "conv3d", "conv_transpose1d",
           "conv_transpose3d", "dense", "flatten", "relu", "leaky_relu", "sigmoid",
           "tanh", "gelu", "max_pool2d", "avg_pool2d", "global_avg_pool2d",
           "adaptive_avg_pool2d", "upsample2d", "batch_norm",
           "dropout", "log_softmax", "softmax_cross_entropy", "silu", "elu", "softplus",
           "layer_norm", "group_norm"]
