"""ImageNet-style networks: published parameter counts pin every layer."""

import pytest
import torch

from kdistill.models import create_model


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name, published", [("resnet50", 25_557_032), ("resnet18", 11_689_512),
                                             ("mobilenetv2_imagenet", 3_504_872)])
def test_published_parameter_counts(name, published):
    """torchvision's model tables (ResNet-50 v1.5 25,557,032; ResNet-18 11,689,512;
    MobileNetV2 1.0 3,504,872) at 3x224x224 and 1000 classes."""
    assert n_params(create_model(name, 1000, (3, 224, 224))) == published


def test_small_versions_run_on_small_images():
    for name, kw in (("resnet50", {"width": 4}), ("mobilenetv2_imagenet", {"width_mult": 0.25})):
        m = create_model(name, 5, (1, 16, 16), **kw).eval()
        assert m(torch.randn(2, 1, 16, 16)).shape == (2, 5)
        assert m.default_taps["embedding"] == "fc:input"
