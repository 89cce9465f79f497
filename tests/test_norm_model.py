"""A small ResNet-style CNN with group norm, layer norm, silu and elu, built from `jcnn.layers`,
learns the embedded digits through the hand-derived rules alone: its test accuracy after a
few hundred steps passes a bar the untrained network is far below."""
import jax
import optax
import pytest

import jcnn
from jcnn import layers as L
from jcnn.train.parallel import data_mesh
from jcnn.train.step import evaluate, init_train_state, make_eval_step
from test_train import _train, digits  # noqa: F401  (digits: the module's dataset fixture)


def _conv_gn(channels: int, stride: int = 1):
    """3x3 conv without bias (the group norm's bias replaces it), group norm of 2 groups."""
    return [L.conv2d(channels, 3, stride=stride, padding=1, bias=False), L.group_norm(2)]


def norm_resnet(num_classes: int, width: int = 8) -> L.Layer:
    """stem conv-gn-silu; a residual block (conv-gn-silu-conv-gn + x, then elu); a strided
    block to 2 * width (its shortcut a strided 1x1 conv-gn); global average pool; layer norm
    over the features; dense classifier."""
    block = L.residual(L.serial(*_conv_gn(width), L.silu(), *_conv_gn(width)))
    down = L.residual(L.serial(*_conv_gn(2 * width, 2), L.silu(), *_conv_gn(2 * width)),
                      L.serial(L.conv2d(2 * width, 1, stride=2, bias=False), L.group_norm(2)))
    return L.serial(*_conv_gn(width), L.silu(), block, L.elu(), down, L.elu(),
                    L.global_avg_pool2d(), L.layer_norm(), L.dense(num_classes))


def _accuracy(model, ts, data):
    return evaluate(make_eval_step(model), ts.params, ts.state, data.test_images,
                    data.test_labels, 120, data_mesh())[1]


@pytest.mark.parametrize("steps, bar", [
    pytest.param(200, 0.9, id="200-steps"),
    pytest.param(600, 0.95, id="600-steps", marks=pytest.mark.slow),
])
def test_group_and_layer_norm_resnet_learns_the_digits(digits, steps, bar):  # noqa: F811
    """The bar is 5 points under what this seed reached when written (200 steps: 95.8%). The
    untrained network scores about chance; with the group norms' dx dropped (a lost cotangent:
    the convs never learn) 200 steps reached 40%. Group norm's statistics detached from the
    gradient still reached 95.6%: that error is the op tests' to catch (tests/test_norm.py)."""
    model = norm_resnet(10)
    untrained = init_train_state(model, optax.adam(3e-3), jax.random.key(0), (32, 8, 8, 1))
    assert _accuracy(model, untrained, digits) < 0.3
    _, ts = _train(model, jcnn, optax.adam(3e-3), digits, steps)
    accuracy = _accuracy(model, ts, digits)
    assert accuracy >= bar, f"test accuracy {accuracy:.3f} after {steps} steps"
