"""PyTorch twins of `jcnn.models.lenet` and `resnet(depth=8)` for `jcnn bench`: the same layers,
shapes and SGD-momentum step, run eagerly (NCHW), in channels_last, or under `torch.compile`.
torch is not a dependency of jcnn: only `jcnn bench` imports this module, and only when torch
rows are asked for."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from jcnn.bench.models import LR, MOMENTUM, NUM_CLASSES


def lenet(in_channels: int) -> nn.Module:
    """`jcnn.bench.models.LENET`: conv5x5(pad 2)-relu-pool x2 (6, 16 channels), dense-relu 120,
    dense classifier."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.LazyLinear(120), nn.ReLU(), nn.Linear(120, NUM_CLASSES))


def _conv_bn(cin: int, cout: int, kernel: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    """relu(conv-bn-relu-conv-bn (x) + shortcut(x)), as `jcnn.models.basic_block`."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(cin, cout, 3, stride), nn.ReLU(),
                                  *_conv_bn(cout, cout, 3, 1))
        reshapes = stride != 1 or cin != cout
        self.shortcut = (nn.Sequential(*_conv_bn(cin, cout, 1, stride)) if reshapes
                         else nn.Identity())

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


def resnet8(in_channels: int, width: int = 16) -> nn.Module:
    """The CIFAR ResNet-8 of `jcnn.models.resnet(depth=8)`: stem, one block per stage."""
    blocks = [BasicBlock(width * 2 ** max(s - 1, 0), width * 2 ** s, 1 if s == 0 else 2)
              for s in range(3)]
    return nn.Sequential(*_conv_bn(in_channels, width, 3, 1), nn.ReLU(), *blocks,
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, NUM_CLASSES))


MODELS = {"lenet": lenet, "resnet8": resnet8}


def step_runner(model: str, mode: str, images: np.ndarray, labels: np.ndarray,
                dtype: str) -> Callable[[], object]:
    """A runner for one training step on the NHWC batch (`images`, `labels`): `mode` is "eager"
    (NCHW), "channels_last" or "compile" (channels_last under `torch.compile`); bfloat16 runs
    under CPU autocast on float32 params, as jcnn's `compute_dtype`."""
    torch.manual_seed(0)
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    y = torch.from_numpy(labels.astype(np.int64))
    net = MODELS[model](x.shape[1])
    net(x[:1])  # materialise the lazy layer
    if mode != "eager":
        net, x = net.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    forward = torch.compile(net) if mode == "compile" else net
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def run():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = nn.functional.cross_entropy(forward(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()
    run()  # compile (for "compile") here, so a failure surfaces before timing starts
    return run
