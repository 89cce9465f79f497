"""Two classic CNNs, each a few lines of `jcnn.layers`. Inputs are NHWC images; outputs are
`(N, num_classes)` logits. `ops=jcnn.reference` builds the same network (same params from the
same key) with autodiff gradients instead of the hand-derived ones."""
from __future__ import annotations

import functools
from types import ModuleType

from jcnn import ops as hand_ops
from jcnn import layers as L


def lenet(num_classes: int, *, channels: tuple[int, ...] = (16, 32),
          hidden: tuple[int, ...] = (64,), ops: ModuleType = hand_ops) -> L.Layer:
    """LeNet style: [conv 5x5 - relu - max-pool 2x2] per entry of `channels`, then dense-relu
    per entry of `hidden`, then a dense classifier. The convs pad by 2 ("same"), so only the
    pools shrink the image: 8x8 digits -> 2x2, 28x28 MNIST -> 7x7, 32x32 CIFAR -> 8x8.
    `channels=(6, 16), hidden=(120, 84)` are LeNet-5's sizes (LeCun et al., 1998); the wider
    default generalises better on the 1,437 training digits."""
    features = [layer for c in channels for layer in
                (L.conv2d(c, 5, padding=2, ops=ops), L.relu(ops=ops), L.max_pool2d(2, ops=ops))]
    head = [layer for h in hidden for layer in (L.dense(h, ops=ops), L.relu(ops=ops))]
    return L.serial(*features, L.flatten(ops=ops), *head, L.dense(num_classes, ops=ops))


def _conv_bn(channels: int, kernel: int, stride: int, ops: ModuleType) -> list[L.Layer]:
    """conv (no bias: the batch norm's own bias replaces it) followed by batch norm."""
    return [L.conv2d(channels, kernel, stride=stride, padding=kernel // 2, bias=False, ops=ops),
            L.batch_norm(ops=ops)]


def basic_block(in_channels: int, channels: int, stride: int, *,
                ops: ModuleType = hand_ops) -> L.Layer:
    """relu(conv-bn-relu-conv-bn (x) + shortcut(x)), 3x3 convs; the shortcut is the identity
    unless the block changes the shape, then a strided 1x1 conv-bn (He et al., 2016)."""
    body = L.serial(*_conv_bn(channels, 3, stride, ops), L.relu(ops=ops),
                    *_conv_bn(channels, 3, 1, ops))
    reshapes = stride != 1 or in_channels != channels
    shortcut = L.serial(*_conv_bn(channels, 1, stride, ops)) if reshapes else None
    return L.serial(L.residual(body, shortcut), L.relu(ops=ops))


def resnet(num_classes: int, depth: int = 20, *, width: int = 16,
           ops: ModuleType = hand_ops) -> L.Layer:
    """The CIFAR ResNet of He et al. (2016): a 3x3 conv-bn-relu stem of `width` channels, three
    stages of (depth - 2) / 6 basic blocks with width, 2*width, 4*width channels (the last two
    halve the image), global average pooling and a dense classifier. depth 8, 20, 32, ..."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"resnet: depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, ...), "
                         f"got {depth}")
    blocks, in_channels = [], width
    for stage in range(3):
        channels = width * 2 ** stage
        for i in range((depth - 2) // 6):
            stride = 2 if stage > 0 and i == 0 else 1
            blocks.append(basic_block(in_channels, channels, stride, ops=ops))
            in_channels = channels
    return L.serial(*_conv_bn(width, 3, 1, ops), L.relu(ops=ops), *blocks,
                    L.global_avg_pool2d(ops=ops), L.dense(num_classes, ops=ops))


# The models `jcnn train --model NAME` builds and `jcnn.load_trained` rebuilds, by name: each
# takes (num_classes, *, ops).
BY_NAME = {"lenet": lenet,
           "resnet8": functools.partial(resnet, depth=8),
           "resnet20": functools.partial(resnet, depth=20)}

__all__ = ["lenet", "basic_block", "resnet", "BY_NAME"]
