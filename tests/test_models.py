"""The image zoo: every registered image model builds, trains and exposes its taps; sizes
match the published parameter counts."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
from torch import nn

from kdistill import taps
from kdistill.errors import ConfigError, ShapeError
from kdistill.models import MODELS, create_model
from kdistill.models.shufflenetv2 import channel_shuffle

IMAGE_MODULES = {"convnet", "resnet", "wrn", "mobilenetv2", "shufflenetv2"}
# every registered model whose factory lives in an image-zoo module: a model added to one of
# these files is tested here without editing this list
IMAGE_MODELS = [n for n in MODELS.names() if MODELS.get(n).__module__.rsplit(".", 1)[-1] in IMAGE_MODULES]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_zoo_is_registered():
    expected = {
        "convnet", "convnet2", "convnet4", "convnet6", "convnet8", "convnet10",
        "resnet", "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
        "resnet8x4", "resnet32x4",
        "wrn", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2",
        "mobilenetv2", "shufflenetv2",
    }  # fmt: skip
    assert expected <= set(IMAGE_MODELS)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_grey_28x28_trains(name):
    """Fashion-MNIST shape: forward gives (N, classes), every parameter gets a finite gradient."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, input_shape=(1, 28, 28))
    assert model.default_taps["stages"] and model.default_taps["embedding"]
    out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)
    out.logsumexp(1).sum().backward()
    assert not any(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient reaches {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient in {pname}"


@pytest.mark.parametrize("name", [*IMAGE_MODELS, "mlp"])
def test_channels_last_gives_the_same_outputs(name):
    """``train.channels_last`` (on by default on CUDA) hands NHWC batches to every network,
    MLPs included: no model may ``.view`` across the layout or change its result."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, input_shape=(1, 28, 28)).eval()
    x = torch.randn(3, 1, 28, 28)
    ref = model(x)
    model.to(memory_format=torch.channels_last)
    out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_rgb_32x32_taps(name):
    """CIFAR-100 shape: taps resolve, stages go shallow -> deep, embedding feeds the classifier."""
    model = create_model(name, num_classes=100, input_shape=(3, 32, 32))
    stages, emb = model.default_taps["stages"], model.default_taps["embedding"]
    assert emb.endswith(":input")
    x = torch.randn(2, 3, 32, 32)
    shapes = taps.probe(model, [*stages, emb], x)
    stage_shapes = [shapes[s] for s in stages]
    assert all(len(s) == 4 and s[0] == 2 for s in stage_shapes)
    for (_, c0, h0, w0), (_, c1, h1, w1) in pairwise(stage_shapes):
        assert c1 >= c0 or (h1 <= h0 and w1 <= w0), f"{name}: stage taps out of order: {stage_shapes}"
    # deeper never means spatially larger, and the deepest is coarser than the shallowest
    assert all(b[2] <= a[2] for a, b in pairwise(stage_shapes))
    assert stage_shapes[-1][2] < stage_shapes[0][2]
    head = model.get_submodule(taps.split_tap(emb)[0])
    assert isinstance(head, nn.Linear) and head.out_features == 100
    assert shapes[emb] == (2, head.in_features)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 100)


@pytest.mark.parametrize("name", IMAGE_MODELS)
@pytest.mark.parametrize("shape", [(1, 32, 32), (1, 8, 8)])
def test_other_image_sizes(name, shape):
    """Grey 32x32 and the smallest supported size (8x8) also run."""
    model = create_model(name, num_classes=10, input_shape=shape).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 1


# CIFAR-100 (3x32x32, 100 classes) sizes from CRD (Tian et al. 2019, arXiv:1910.10699),
# Tables 1-2 and the RepDistiller model files
CRD_PARAMS_M = {
    "resnet20": 0.28,
    "resnet56": 0.86,
    "resnet110": 1.73,
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "wrn_16_2": 0.70,
    "wrn_40_2": 2.26,
    "mobilenetv2": 0.81,
    "shufflenetv2": 1.35,
}


@pytest.mark.parametrize("name", sorted(CRD_PARAMS_M))
def test_crd_param_counts(name):
    count = n_params(create_model(name, num_classes=100, input_shape=(3, 32, 32)))
    assert count / 1e6 == pytest.approx(CRD_PARAMS_M[name], rel=0.02)


def test_param_counts_against_imagenet_references():
    """At 1000 classes the CIFAR variants differ from torchvision's ImageNet nets only where
    documented, so their exact published counts pin down every other layer.

    torchvision lists 3,504,872 parameters for mobilenet_v2; CRD's version adds the 1x1
    expansion conv (32x32) + BN (2x32) of the t=1 block: +1,088. torchvision lists
    2,278,604 (x1.0) and 1,366,792 (x0.5) for ShuffleNetV2; the CIFAR stem is a 1x1 instead
    of a 3x3 conv from 3 to 24 channels: -(27 - 3) * 24 = -576.
    """
    mb = create_model("mobilenetv2", num_classes=1000, input_shape=(3, 224, 224), width_mult=1.0)
    assert n_params(mb) == 3_504_872 + 32 * 32 + 2 * 32
    for size, published in ((1.0, 2_278_604), (0.5, 1_366_792)):
        sn = create_model("shufflenetv2", num_classes=1000, input_shape=(3, 224, 224), net_size=size)
        assert n_params(sn) == published - (27 - 3) * 24


@pytest.mark.parametrize(("depth", "widen", "millions"), [(16, 8, 11.0), (40, 4, 8.9)])
def test_wrn_paper_param_counts(depth, widen, millions):
    """Zagoruyko & Komodakis (2016) Table 1/4, CIFAR-10: WRN-16-8 11.0M, WRN-40-4 8.9M."""
    model = create_model("wrn", num_classes=10, input_shape=(3, 32, 32), depth=depth, widen=widen)
    assert n_params(model) / 1e6 == pytest.approx(millions, abs=0.05)


@pytest.mark.parametrize("layers", [2, 4, 6, 8, 10])
def test_convnet_depth_counts_conv_layers(layers):
    for name, kwargs in ((f"convnet{layers}", {}), ("convnet", {"layers": layers})):
        model = create_model(name, num_classes=10, input_shape=(1, 28, 28), **kwargs)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) == layers
        assert all(c.kernel_size == (3, 3) for c in convs)


def test_convnet_default_is_two_layers():
    convs = [m for m in create_model("convnet", 10, (3, 32, 32)).modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2


@pytest.mark.parametrize(
    ("layers", "classes", "widths", "hidden"),
    [
        # TAKD layer books (plane_cifar10_book / plane_cifar100_book)
        (2, 10, [16, 16], []),
        (2, 100, [32, 32], []),
        (8, 10, [16, 16, 32, 32, 64, 64, 128, 128], [64]),
        (10, 10, [32, 32, 64, 64, 128, 128, 256, 256, 256, 256], [128]),
        (10, 100, [32, 32, 64, 64, 128, 128, 256, 256, 256, 256], [512]),
    ],
)
def test_convnet_widths_follow_takd(layers, classes, widths, hidden):
    model = create_model(f"convnet{layers}", num_classes=classes, input_shape=(3, 32, 32))
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == widths
    linears = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears == [*hidden, classes]


def test_convnet6_cifar100_has_two_pools():
    """The CIFAR-100 6-layer book pools twice only, so its last stage stays at 8x8."""
    model = create_model("convnet6", num_classes=100, input_shape=(3, 32, 32))
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 2
    shapes = taps.probe(model, model.default_taps["stages"], torch.randn(2, 3, 32, 32))
    assert [s[2] for s in shapes.values()] == [32, 16, 8]


def test_resnet_depth_counts_weighted_layers():
    """He et al.: depth 6n+2 = stem conv + 6n block convs + the classifier."""
    for depth in (8, 20, 56):
        model = create_model("resnet", 10, (3, 32, 32), depth=depth)
        main_convs = [m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and "shortcut" not in n]
        assert len(main_convs) + 1 == depth


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]


def test_identity_blocks_pass_input_through():
    """With the residual branch's last BN zeroed, a stride-1 same-width ResNet block is
    ``relu(x)`` and a WRN block is ``x``: the shortcut is a true identity."""
    resnet = create_model("resnet20", 10, (3, 32, 32))
    wrn = create_model("wrn_16_2", 10, (3, 32, 32))
    x = torch.randn(2, 16, 8, 8)
    block = resnet.layer1[1].eval()
    nn.init.zeros_(block.bn2.weight)
    nn.init.zeros_(block.bn2.bias)
    torch.testing.assert_close(block(x), x.relu())
    wblock = wrn.block1[1].eval()
    nn.init.zeros_(wblock.conv2.weight)
    x = torch.randn(2, 32, 8, 8)
    torch.testing.assert_close(wblock(x), x)


def test_input_taps_see_pre_activations():
    """ReLUs are not in place, so ``:input`` taps keep their negative pre-activations."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16)
    for name, spec in (("resnet8", "layer1.0.act"), ("wrn_16_1", "relu"), ("convnet2", "stage1.relu1")):
        model = create_model(name, 10, (3, 16, 16))
        shapes = [spec, f"{spec}:input"]
        with torch.no_grad(), taps.FeatureTaps(model, shapes) as feats:
            model(x)
        pre, post = feats[f"{spec}:input"], feats[spec]
        assert pre.min() < 0 and post.min() >= 0, name
        torch.testing.assert_close(post, pre.relu())


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("convnet", {"layers": 3}),
        ("convnet", {"variant": "imagenet"}),
        ("resnet", {"depth": 21}),
        ("wrn", {"depth": 15}),
        ("wrn", {"widen": 0}),
        ("mobilenetv2", {"width_mult": 0.0}),
        ("shufflenetv2", {"net_size": 0.7}),
        ("resnet20", {"depth": 32}),  # fixed-depth names take no depth
    ],
)
def test_bad_settings_raise_config_error(name, kwargs):
    with pytest.raises(ConfigError):
        create_model(name, 10, (3, 32, 32), **kwargs)


@pytest.mark.parametrize("shape", [(1, 40), (784,), (3, 0, 32)])
def test_non_image_shapes_raise_shape_error(shape):
    with pytest.raises(ShapeError, match="input_shape"):
        create_model("resnet8", 10, shape)
