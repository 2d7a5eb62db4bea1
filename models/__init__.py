"""Image classifiers by name: ``build_model("vgg16", num_classes=100, width1=32, stride5=1)``.

Every option is a plain str, int, float or bool, so a flat trial config passes straight through and logs to
MLflow as it is. Every model takes ``num_classes`` (10), ``in_channels`` (3) and ``input_size`` (32; 28 for
MNIST-like data); ``default_options(name)`` lists the rest.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from models import vgg
from models.lenet import lenet5
from models.options import Option, check_options
from models.resnet import resnet18
from models.vgg import PoolingCollapse, feature_size

__all__ = ["MODELS", "Option", "PoolingCollapse", "build_model", "default_options", "feature_size", "list_models"]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet5": lenet5,
    "resnet18": resnet18,
    "vgg7": vgg.vgg7,
    "vgg11": vgg.vgg11,
    "vgg11_bn": vgg.vgg11_bn,
    "vgg13": vgg.vgg13,
    "vgg13_bn": vgg.vgg13_bn,
    "vgg16": vgg.vgg16,
    "vgg16_bn": vgg.vgg16_bn,
    "vgg19": vgg.vgg19,
    "vgg19_bn": vgg.vgg19_bn,
}


def list_models() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted(MODELS)


def default_options(name: str) -> dict[str, Option]:
    """Every option ``build_model(name, ...)`` accepts, with its default.

    Args:
        name: A registered model name.

    Raises:
        ValueError: If ``name`` is not registered.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from: {', '.join(list_models())}")
    if name.removesuffix("_bn") in vgg.CFGS:
        # VGG options depend on the preset (width1..widthN, fc1..fcM), so its constructors take **options.
        return vgg.default_options(name)
    return {p.name: p.default for p in inspect.signature(MODELS[name]).parameters.values()}


def build_model(name: str, **options: Option) -> nn.Module:
    """Builds a registered model.

    Works under ``with torch.device("meta"):`` to check a config without allocating weights.

    Args:
        name: A registered model name; see ``list_models()``.
        **options: Options of that model; see ``default_options(name)``.

    Raises:
        ValueError: On an unknown model or option, a value of the wrong type or out of range, or (VGG) a
            pooling configuration that shrinks the feature map below 1x1.
    """
    check_options(name, options, default_options(name))
    return MODELS[name](**options)
