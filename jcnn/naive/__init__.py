"""jcnn.naive: forward and backward passes as plain NumPy loops over every index, for small
inputs. The learner's view, and a third oracle that shares no compute code with the JAX paths.

Every op has one shape: `op(*inputs, **config)` computes the forward with the jcnn op's
signature, and `op_backward(g, *inputs, **config)`, the output cotangent `g` first, returns a
tuple of cotangents, one per input in order (None for an absent bias and for integer labels),
in float64."""
from jcnn.naive.conv import (conv1d, conv1d_backward, conv2d, conv2d_backward, conv3d,
                             conv3d_backward, conv_transpose1d, conv_transpose1d_backward,
                             conv_transpose2d, conv_transpose2d_backward, conv_transpose3d,
                             conv_transpose3d_backward)
from jcnn.naive.layers import (batch_norm, batch_norm_backward, dense, dense_backward, group_norm,
                               group_norm_backward, layer_norm, layer_norm_backward,
                               softmax_cross_entropy, softmax_cross_entropy_backward)
from jcnn.naive.pool import avg_pool2d, avg_pool2d_backward, max_pool2d, max_pool2d_backward
from jcnn.naive.pool import adaptive_avg_pool2d, adaptive_avg_pool2d_backward
from jcnn.naive.upsample import upsample2d, upsample2d_backward

__all__ = ["conv2d", "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward",
           "conv1d", "conv1d_backward", "conv3d", "conv3d_backward", "conv_transpose1d",
           "conv_transpose1d_backward", "conv_transpose3d", "conv_transpose3d_backward",
           "dense", "dense_backward", "batch_norm", "batch_norm_backward", "layer_norm",
           "layer_norm_backward", "group_norm", "group_norm_backward",
           "softmax_cross_entropy", "softmax_cross_entropy_backward", "max_pool2d",
           "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
           "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward", "upsample2d",
           "upsample2d_backward"]
