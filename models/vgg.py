"""VGG for small images, written as a table in the manner of torchvision's and timm's ``vgg.py``.

A preset is a list of blocks, each ``(number of 3x3 convs, width)`` and each closed by a max-pool. Every
knob a search may turn is a flat option holding one number or string (``width2``, ``stride3``, ``fc1``,
...), so a trial config maps one to one onto MLflow params and onto the MLflow UI's parallel coordinates.

Options of every preset (``N`` blocks, ``M`` hidden fc layers; see ``default_options``):

- ``num_classes`` (10), ``in_channels`` (3), ``input_size`` (32): the data; images are square.
- ``width1..widthN``: conv width of block i; ``width_mult`` (1.0) then scales every conv width.
- ``kernel1..kernelN`` (2), ``stride1..strideN`` (2): the max-pool closing block i.
- ``fc1..fcM``: hidden sizes of the head; ``dropout`` (0.5) after each hidden layer, as torchvision.
- ``batch_norm``: False for ``vgg11..vgg19``, True for ``*_bn`` and ``vgg7``.
- ``init`` ("kaiming"): "kaiming" as torchvision, or "xavier".
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from models.options import Option, check_options

INITS = ("kaiming", "xavier")

Stage = tuple[int, int, int, int]  # (number of convs, width, max-pool kernel, max-pool stride)


class Cfg(NamedTuple):
    blocks: list[tuple[int, int]]  # (number of 3x3 convs, width); a max-pool closes each block
    fc: list[int]  # hidden sizes of the head, before the output layer
    batch_norm: bool = False


# torchvision's 4096-wide ImageNet head would hold most of the weights on a 32x32 input, where the conv
# stack ends at 1x1x512; 512 hidden units is the usual CIFAR choice.
_HEAD = [512, 512]

CFGS: dict[str, Cfg] = {
    # The course exercise: Block2 -> Block3 -> fc -> fc, seven weight layers. Batch norm on by default: a
    # plain 7-layer VGG trains slowly at the learning rates a short trial can afford.
    "vgg7": Cfg([(2, 64), (3, 128)], [256], batch_norm=True),
    "vgg11": Cfg([(1, 64), (1, 128), (2, 256), (2, 512), (2, 512)], _HEAD),
    "vgg13": Cfg([(2, 64), (2, 128), (2, 256), (2, 512), (2, 512)], _HEAD),
    "vgg16": Cfg([(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)], _HEAD),
    "vgg19": Cfg([(2, 64), (2, 128), (4, 256), (4, 512), (4, 512)], _HEAD),
}


class VGG(nn.Module):
    """A conv stack (``features``) and a fully connected head (``classifier``), as torchvision names them."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _cfg(arch: str) -> Cfg:
    # "vgg16_bn" shares vgg16's table; only its batch_norm default differs.
    if arch.removesuffix("_bn") not in CFGS:
        raise ValueError(f"unknown VGG preset {arch!r}; choose from: {', '.join(CFGS)}")
    return CFGS[arch.removesuffix("_bn")]


def default_options(arch: str) -> dict[str, Option]:
    """Every option a VGG preset accepts, with its default.

    Args:
        arch: A preset name such as "vgg16" or "vgg16_bn".
    """
    cfg = _cfg(arch)
    blocks = range(1, len(cfg.blocks) + 1)
    return {
        "num_classes": 10,
        "in_channels": 3,
        "input_size": 32,
        "width_mult": 1.0,
        **{f"width{i}": width for i, (_, width) in enumerate(cfg.blocks, 1)},
        **{f"kernel{i}": 2 for i in blocks},
        **{f"stride{i}": 2 for i in blocks},
        **{f"fc{i}": size for i, size in enumerate(cfg.fc, 1)},
        "dropout": 0.5,
        "batch_norm": cfg.batch_norm or arch.endswith("_bn"),
        "init": "kaiming",
    }


def _resolve(arch: str, options: dict[str, Option]) -> tuple[dict[str, Option], list[Stage]]:
    """Checks ``options`` against the preset; returns them merged with the defaults, and the stages.

    Cheap: allocates no tensors, so every error surfaces before the first weight does.
    """
    opts = default_options(arch)
    check_options(arch, options, opts)
    opts.update(options)
    if opts["init"] not in INITS:
        raise ValueError(f"{arch}: unknown init {opts['init']!r}; choose from: {', '.join(INITS)}")
    for key, value in opts.items():
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if numeric and not (0 <= value < 1 if key == "dropout" else value > 0):
            raise ValueError(f"{arch}: option {key}={value} is out of range")
    mult = opts["width_mult"]
    blocks = [
        (convs, max(1, round(opts[f"width{i}"] * mult)), opts[f"kernel{i}"], opts[f"stride{i}"])
        for i, (convs, _) in enumerate(_cfg(arch).blocks, 1)
    ]
    return opts, blocks


class PoolingCollapse(ValueError):
    """A max-pool shrinks the feature map below 1x1: this architecture cannot see its input."""


def _final_size(arch: str, input_size: int, blocks: list[Stage]) -> int:
    """Side of the last feature map; raises if a max-pool would shrink it below 1x1."""
    size = input_size  # 3x3 convs with padding 1 keep the size; only the pools shrink it
    for i, (_, _, kernel, stride) in enumerate(blocks, 1):
        after = (size - kernel) // stride + 1
        if after < 1:
            raise PoolingCollapse(
                f"{arch}: block {i} max-pool (kernel {kernel}, stride {stride}) shrinks the feature map "
                f"from {size}x{size} to {max(after, 0)}x{max(after, 0)} (input {input_size}x{input_size}); "
                "use smaller pooling kernels or strides, a shallower preset or a larger input"
            )
        size = after
    return size


def feature_size(arch: str, **options: Option) -> int:
    """Number of features the head receives, without building any weights.

    Lets a search reject a config before it reaches a worker.

    Args:
        arch: A VGG preset name, such as "vgg16".
        **options: The options ``build_model`` would get.

    Raises:
        ValueError: On an unknown option or init, or when pooling shrinks the feature map below 1x1.
    """
    opts, blocks = _resolve(arch, options)
    return blocks[-1][1] * _final_size(arch, opts["input_size"], blocks) ** 2


def make_layers(blocks: list[Stage], in_channels: int, batch_norm: bool) -> nn.Sequential:
    """The conv stack, flat as in torchvision so ``features[0]`` is the first conv."""
    layers: list[nn.Module] = []
    for convs, width, kernel, stride in blocks:
        for _ in range(convs):
            # Conv bias kept even under batch norm, as torchvision, so parameter counts match its models.
            layers.append(nn.Conv2d(in_channels, width, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
            in_channels = width
        layers.append(nn.MaxPool2d(kernel_size=kernel, stride=stride))
    return nn.Sequential(*layers)


def make_head(in_features: int, hidden: list[int], num_classes: int, dropout: float) -> nn.Sequential:
    """Hidden fc layers (Linear, ReLU, Dropout), then the output layer, as torchvision's classifier."""
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(in_features, size), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        in_features = size
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


def init_weights(model: nn.Module, scheme: str) -> None:
    """torchvision's VGG init ("kaiming"), or Glorot's uniform init for convs and linears ("xavier")."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            if scheme == "kaiming":
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if scheme == "kaiming":
                nn.init.normal_(m.weight, 0, 0.01)
            else:
                nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


def _vgg(arch: str, **options: Option) -> VGG:
    opts, blocks = _resolve(arch, options)
    size = _final_size(arch, opts["input_size"], blocks)
    hidden = [opts[f"fc{i}"] for i in range(1, len(_cfg(arch).fc) + 1)]
    model = VGG(
        make_layers(blocks, opts["in_channels"], opts["batch_norm"]),
        make_head(blocks[-1][1] * size * size, hidden, opts["num_classes"], opts["dropout"]),
    )
    init_weights(model, opts["init"])
    return model


def vgg7(**options: Option) -> VGG:
    """The course's VGG: two blocks [(2, 64), (3, 128)], fc1=256, batch norm on; see module docstring."""
    return _vgg("vgg7", **options)


def vgg11(**options: Option) -> VGG:
    """VGG-11 (configuration "A"); options in the module docstring."""
    return _vgg("vgg11", **options)


def vgg11_bn(**options: Option) -> VGG:
    """VGG-11 with batch norm."""
    return _vgg("vgg11_bn", **options)


def vgg13(**options: Option) -> VGG:
    """VGG-13 (configuration "B"); options in the module docstring."""
    return _vgg("vgg13", **options)


def vgg13_bn(**options: Option) -> VGG:
    """VGG-13 with batch norm."""
    return _vgg("vgg13_bn", **options)


def vgg16(**options: Option) -> VGG:
    """VGG-16 (configuration "D"); options in the module docstring."""
    return _vgg("vgg16", **options)


def vgg16_bn(**options: Option) -> VGG:
    """VGG-16 with batch norm."""
    return _vgg("vgg16_bn", **options)


def vgg19(**options: Option) -> VGG:
    """VGG-19 (configuration "E"); options in the module docstring."""
    return _vgg("vgg19", **options)


def vgg19_bn(**options: Option) -> VGG:
    """VGG-19 with batch norm."""
    return _vgg("vgg19_bn", **options)
