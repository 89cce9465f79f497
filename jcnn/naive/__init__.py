"""jcnn.naive: forward and backward passes as plain NumPy loops over every index, for small
inputs. The learner's view, and a third oracle that shares no compute code with the JAX paths."""
from jcnn.naive.conv import conv2d, conv2d_backward, conv_transpose2d, conv_transpose2d_backward
from jcnn.naive.pool import avg_pool2d_backward, max_pool2d_backward
from jcnn.naive.layers import batch_norm_backward, dense_backward, softmax_cross_entropy_backward
