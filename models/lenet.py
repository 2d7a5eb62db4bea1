"""LeNet-5 (LeCun et al., 1998) for 28x28 and 32x32 images.

The modern reading: ReLU and max-pooling in place of the paper's scaled tanh and trainable subsampling, and a
plain linear output layer in place of its RBF units.
"""

from __future__ import annotations

import torch
from torch import nn


class LeNet5(nn.Module):
    """conv5x5(6) -> pool -> conv5x5(16) -> pool -> fc120 -> fc84 -> classes.

    Args:
        num_classes: Size of the output layer.
        in_channels: Channels of the input images.
        input_size: Side of the square input images.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> None:
        super().__init__()
        # The network was designed for a 32x32 retina; MNIST's 28x28 digits were padded by 2 pixels to fit.
        padding = 2 if input_size < 32 else 0
        size = ((input_size + 2 * padding - 4) // 2 - 4) // 2
        if size < 1:
            raise ValueError(f"lenet5: input {input_size}x{input_size} is too small; it needs at least 12x12")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=padding),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * size * size, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def lenet5(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> LeNet5:
    """LeNet-5; see ``LeNet5`` for the options."""
    return LeNet5(num_classes, in_channels, input_size)
