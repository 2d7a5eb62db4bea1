"""Every registered model, forward on small inputs; then the VGG options and their errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models import MODELS, build_model, default_options, feature_size, list_models
from models.cost import count, latency_ms


def torchvision_model(name: str) -> nn.Module:
    """torchvision's model `name`, imported here: at the top, collecting this file cost every xdist worker 1.6 s."""
    import torchvision

    return getattr(torchvision.models, name)()


def small_options(name: str, input_size: int) -> dict:
    """Options that keep a forward pass cheap on 2 CPU cores."""
    defaults = default_options(name)
    options = {k: v for k, v in {"width_mult": 0.125, "fc1": 16, "fc2": 16}.items() if k in defaults}
    if input_size == 28 and "width5" in defaults:
        # Five stride-2 pools take 28 -> 14 -> 7 -> 3 -> 1 -> 0; a stride-1 fourth pool ends at 1x1.
        options["stride4"] = 1
    return options


def conv_stack_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.features.parameters())


def layers(module: nn.Module, kind: type[nn.Module]) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, kind)]


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize(("input_size", "in_channels"), [(32, 3), (28, 1)])
def test_forward(name: str, input_size: int, in_channels: int) -> None:
    torch.manual_seed(0)
    model = build_model(
        name, num_classes=7, in_channels=in_channels, input_size=input_size, **small_options(name, input_size)
    )
    out = model(torch.randn(2, in_channels, input_size, input_size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_models())
def test_a_model_built_from_its_listed_defaults_is_the_model_built_without_options(name: str) -> None:
    """`default_options` lists exactly what the constructor takes and what it does by default: passing every
    listed default explicitly builds the same network, and each listed option is accepted."""
    defaults = default_options(name)
    assert {"num_classes", "in_channels", "input_size"} <= set(defaults)
    with torch.device("meta"):
        implicit, explicit = build_model(name), build_model(name, **defaults)
        out = explicit(torch.empty(2, defaults["in_channels"], defaults["input_size"], defaults["input_size"]))
    assert str(implicit) == str(explicit)
    assert [p.shape for p in implicit.parameters()] == [p.shape for p in explicit.parameters()]
    assert out.shape == (2, defaults["num_classes"])


def test_vgg16_conv_stack_has_the_published_parameter_count() -> None:
    with torch.device("meta"):
        ours = build_model("vgg16")
        reference = torchvision_model("vgg16")
    assert conv_stack_params(ours) == 14_714_688 == conv_stack_params(reference)


@pytest.mark.parametrize("name", ["vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg16_bn", "vgg19_bn"])
def test_vgg_conv_stack_matches_torchvision(name: str) -> None:
    with torch.device("meta"):
        ours = build_model(name).features.state_dict()
        reference = torchvision_model(name).features.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in reference.items()}


def test_vgg7_is_the_course_network() -> None:
    model = build_model("vgg7")
    assert [c.out_channels for c in layers(model.features, nn.Conv2d)] == [64, 64, 128, 128, 128]
    fcs = layers(model.classifier, nn.Linear)
    assert [(fc.in_features, fc.out_features) for fc in fcs] == [(128 * 8 * 8, 256), (256, 10)]
    assert layers(model.features, nn.BatchNorm2d)


def test_head_is_sized_for_the_input() -> None:
    assert build_model("vgg16").classifier[0].in_features == 512
    assert build_model("vgg7", input_size=28, width_mult=0.125).classifier[0].in_features == 16 * 7 * 7


@pytest.mark.parametrize(
    ("name", "options", "block", "sizes"),
    [
        ("vgg16", {"input_size": 16}, 5, "from 1x1 to 0x0 (input 16x16)"),
        ("vgg16", {"input_size": 28}, 5, "from 1x1 to 0x0 (input 28x28)"),
        ("vgg7", {"input_size": 4, "kernel2": 3}, 2, "from 2x2 to 0x0 (input 4x4)"),
        ("vgg7", {"input_size": 8, "stride1": 8}, 2, "from 1x1 to 0x0 (input 8x8)"),
    ],
)
def test_pooling_collapse_is_refused_at_build_time(name: str, options: dict, block: int, sizes: str) -> None:
    with pytest.raises(ValueError, match=f"{name}: block {block} max-pool") as error:
        build_model(name, **options)
    assert sizes in str(error.value)
    with pytest.raises(ValueError, match=f"block {block}"):
        feature_size(name, **options)


def test_feature_size() -> None:
    assert feature_size("vgg16") == 512
    assert feature_size("vgg7", input_size=28) == 128 * 7 * 7
    assert feature_size("vgg7", stride1=1, width2=32) == 32 * 15 * 15  # 32 -> 31 -> 15


def test_unknown_model() -> None:
    with pytest.raises(ValueError, match="unknown model 'vgg99'; choose from: lenet5, resnet18, vgg11"):
        build_model("vgg99")


@pytest.mark.parametrize(("name", "option"), [("vgg16", "width6"), ("vgg7", "fc2"), ("lenet5", "width_mult")])
def test_unknown_option(name: str, option: str) -> None:
    message = f"unknown option '{option}' for model '{name}'; valid options: num_classes, in_channels"
    with pytest.raises(ValueError, match=message):
        build_model(name, **{option: 1})


def test_unknown_option_when_calling_a_constructor_directly() -> None:
    with pytest.raises(ValueError, match="unknown option 'widht1' for model 'vgg16'"):
        MODELS["vgg16"](widht1=32)


def test_bad_init() -> None:
    with pytest.raises(ValueError, match="vgg7: unknown init 'orthogonal'; choose from: kaiming, xavier"):
        build_model("vgg7", init="orthogonal")


@pytest.mark.parametrize(
    ("option", "value"),
    [("width1", 32.5), ("width1", True), ("batch_norm", 1), ("init", 3), ("dropout", "x")],
)
def test_wrong_type(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"vgg7: option {option} must be"):
        build_model("vgg7", **{option: value})


@pytest.mark.parametrize(("option", "value"), [("width1", 0), ("stride2", -1), ("dropout", 1.0), ("width_mult", 0)])
def test_out_of_range(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"vgg7: option {option}={value} is out of range"):
        build_model("vgg7", **{option: value})


def test_per_block_options_change_the_network() -> None:
    base = build_model("vgg7", width_mult=0.25)
    assert base.features[0].out_channels == 16
    assert build_model("vgg7", width_mult=0.25, width1=32).features[0].out_channels == 8
    assert build_model("vgg7", width1=32).features[0].out_channels == 32
    # stride1=1 keeps block 1 at 31x31 (kernel 2), so block 2 ends at 15x15 instead of 8x8.
    wide = build_model("vgg7", width_mult=0.25, stride1=1)
    assert wide.classifier[0].in_features == 32 * 15 * 15 != base.classifier[0].in_features
    assert wide(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    pools = layers(build_model("vgg7", width_mult=0.25, kernel2=3, stride2=1), nn.MaxPool2d)
    assert [(p.kernel_size, p.stride) for p in pools] == [(2, 2), (3, 1)]
    head = build_model("vgg16", width_mult=0.125, fc1=64, fc2=32, num_classes=100).classifier
    assert [fc.out_features for fc in layers(head, nn.Linear)] == [64, 32, 100]


def test_batch_norm_option() -> None:
    assert not layers(build_model("vgg11", width_mult=0.125), nn.BatchNorm2d)
    assert layers(build_model("vgg11_bn", width_mult=0.125), nn.BatchNorm2d)
    assert not layers(build_model("vgg7", width_mult=0.125, batch_norm=False), nn.BatchNorm2d)


def test_init_schemes() -> None:
    torch.manual_seed(0)
    kaiming = build_model("vgg7", width_mult=0.25)
    xavier = build_model("vgg7", width_mult=0.25, init="xavier")
    for model in (kaiming, xavier):
        for m in layers(model, nn.Conv2d) + layers(model, nn.Linear):
            assert torch.count_nonzero(m.bias) == 0
    # torchvision's linear init is N(0, 0.01); Glorot's uniform bound for 256 -> 10 is sqrt(6 / 266) ~ 0.15.
    assert kaiming.classifier[-1].weight.std() < 0.02
    assert xavier.classifier[-1].weight.std() > 0.05
    assert xavier.classifier[-1].weight.abs().max() <= (6 / (256 + 10)) ** 0.5


@pytest.mark.parametrize("name", ["vgg19_bn", "vgg7", "resnet18", "lenet5"])
def test_builds_on_the_meta_device(name: str) -> None:
    with torch.device("meta"):
        model = build_model(name)
    tensors = [*model.parameters(), *model.buffers()]
    assert tensors
    assert all(t.is_meta for t in tensors)


def test_cost_counts_multiply_accumulates_without_allocating():
    with torch.device("meta"):
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128, 10)
        )
    # by hand: the conv makes 8 x 8x8 outputs of 3x3x3 products each; the linear layer 10 outputs of 128
    assert count(model, (3, 8, 8)) == {"params": 3 * 8 * 9 + 8 + 128 * 10 + 10, "macs": 8 * 64 * 27 + 10 * 128}


def test_a_stride_one_pool_costs_more_compute_for_the_same_weights():
    def cost(**options):
        with torch.device("meta"):
            return count(build_model("vgg7", num_classes=100, **options), (3, 32, 32))

    wide_maps, narrow_maps = cost(stride1=1, stride2=2), cost(stride1=2, stride2=2)
    assert wide_maps["macs"] > 2 * narrow_maps["macs"]
    assert cost(width1=32)["macs"] < cost(width1=64)["macs"]


def test_latency_is_measured_on_the_models_device_and_leaves_its_mode():
    model = build_model("vgg7", num_classes=10, width1=8, width2=16, fc1=16).train()
    ms = latency_ms(model, (3, 32, 32), repeats=3)
    assert 0 < ms < 10_000 and model.training
