"""ResNet-18 for small images, CIFAR-style (He et al., 2016, with the stem used on CIFAR).

A 3x3 stride-1 stem without max-pool in place of ImageNet's 7x7 stride-2 stem and pool, which would leave a
32x32 input 8x8 before the first residual block.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection; a 1x1 conv projects the shortcut when the shape changes."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem, four stages of ``BasicBlock`` (the last three halve the size), global average pool, linear.

    Args:
        layers: Blocks per stage.
        num_classes: Size of the output layer.
        in_channels: Channels of the input images.
        width_mult: Multiplies the stage widths 64, 128, 256, 512 (rounded, at least 1).
    """

    def __init__(self, layers: list[int], num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> None:
        super().__init__()
        widths = [max(1, round(w * width_mult)) for w in (64, 128, 256, 512)]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        channels = widths[0]
        for i, (blocks, width) in enumerate(zip(layers, widths, strict=True)):
            first = BasicBlock(channels, width, stride=1 if i == 0 else 2)
            stages.append(nn.Sequential(first, *(BasicBlock(width, width) for _ in range(blocks - 1))))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def resnet18(num_classes: int = 10, in_channels: int = 3, input_size: int = 32, width_mult: float = 1.0) -> ResNet:
    """CIFAR-style ResNet-18: BasicBlocks [2, 2, 2, 2].

    Args:
        num_classes: Size of the output layer.
        in_channels: Channels of the input images.
        input_size: Side of the input images. Accepted so every model takes the same data options; the
            global average pool makes the network work for any size.
        width_mult: Multiplies the stage widths 64..512 (rounded, at least 1).
    """
    if input_size < 1 or width_mult <= 0:
        raise ValueError(f"resnet18: need input_size >= 1 and width_mult > 0, got {input_size}, {width_mult}")
    return ResNet([2, 2, 2, 2], num_classes, in_channels, width_mult)
