"""Every registered model: forward/backward on tiny batches for grey 28x28 and RGB 32x32 inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from friendly_sam.models import MODEL_NAMES, build_model

CONFIGS = [
    pytest.param(1, 28, 10, id="grey28-10cls"),
    pytest.param(3, 32, 100, id="rgb32-100cls"),
]


@pytest.mark.parametrize("in_channels,size,num_classes", CONFIGS)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_backward(name: str, in_channels: int, size: int, num_classes: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=num_classes, in_channels=in_channels)
    x = torch.randn(2, in_channels, size, size)
    y = torch.tensor([0, num_classes - 1])

    model.train()
    out = model(x)
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    F.cross_entropy(out, y).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads), "some parameter got no gradient"
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)

    model.eval()
    with torch.no_grad():
        out_eval = model(x)
    assert out_eval.shape == (2, num_classes)
    assert torch.isfinite(out_eval).all()


@pytest.mark.parametrize("name", ["resnet8", "resnet20", "cnn_small"])
def test_small_models_channels_last_bf16_and_float64(name: str) -> None:
    # The CPU speed recipe (channels_last + bf16 autocast) and float64 (golden-trace style tests).
    model = build_model(name, 10, in_channels=1).to(memory_format=torch.channels_last)
    x = torch.randn(2, 1, 28, 28).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    out.float().sum().backward()
    assert out.shape == (2, 10)
    model64 = build_model(name, 10, in_channels=1).double()
    assert model64(torch.randn(2, 1, 28, 28, dtype=torch.float64)).dtype == torch.float64


def test_odd_and_larger_inputs() -> None:
    # Global pooling: other reasonable sizes work too (odd sizes exercise the strided shortcuts).
    for name in ["resnet20", "cnn_small", "vgg16_bn"]:
        model = build_model(name, 5, in_channels=3).eval()
        for size in (27, 40):
            assert model(torch.randn(2, 3, size, size)).shape == (2, 5)
