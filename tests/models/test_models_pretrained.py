"""--pretrained / --new-head (load_pretrained) and the torchvision: / timm: model adapters."""

from __future__ import annotations

import importlib
import os
import pickle

import pytest
import torch

from friendly_sam.models import (
    ModelPackageError,
    PretrainedWeightsError,
    build_model,
    classifier_name,
    load_pretrained,
    model_in_channels,
)
from friendly_sam.models import registry as registry_module


def _trained_resnet8(num_classes=10, seed=0):
    torch.manual_seed(seed)
    return build_model("resnet8", num_classes, 3)


def _same_tensors(a, b, skip=()):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if not k.startswith(skip))


def test_load_state_dict_and_report(tmp_path):
    src = _trained_resnet8(seed=1)
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    dst = _trained_resnet8(seed=2)
    report = load_pretrained(dst, path)
    assert report.loaded == len(src.state_dict()) and not report.missing and not report.unexpected
    assert _same_tensors(src, dst)
    assert "loaded" in report.summary()


def test_missing_and_unexpected_keys_are_reported(tmp_path):
    state = _trained_resnet8(seed=1).state_dict()
    removed = next(k for k in state if k.endswith("weight") and "bn" in k)
    del state[removed]
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "w.pt"
    torch.save(state, path)
    report = load_pretrained(_trained_resnet8(), path)
    assert report.missing == (removed,) and report.unexpected == ("extra.weight",)
    assert "1 missing" in report.summary() and "1 unexpected" in report.summary()


def test_checkpoint_and_ddp_containers(tmp_path):
    src = _trained_resnet8(seed=3)
    for i, obj in enumerate(
        [
            {"model": src.state_dict(), "epoch": 3},  # a friendly-sam checkpoint
            {"state_dict": {"module." + k: v for k, v in src.state_dict().items()}},  # Lightning + DDP
        ]
    ):
        path = tmp_path / f"c{i}.pt"
        torch.save(obj, path)
        dst = _trained_resnet8(seed=4)
        assert not load_pretrained(dst, path).missing
        assert _same_tensors(src, dst)


def test_other_number_of_classes_needs_new_head(tmp_path):
    src = _trained_resnet8(num_classes=10, seed=5)
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    dst = _trained_resnet8(num_classes=4, seed=6)
    head_before = dst.fc.weight.detach().clone()
    with pytest.raises(PretrainedWeightsError, match="--new-head"):
        load_pretrained(dst, path)
    assert classifier_name(dst) == "fc"
    report = load_pretrained(dst, path, new_head=True)
    assert report.new_head == ("fc.weight", "fc.bias") and not report.missing and not report.unexpected
    assert torch.equal(dst.fc.weight, head_before)  # the new head keeps its fresh initialisation
    assert _same_tensors(src, dst, skip=("fc.",))  # everything else loaded
    assert dst(torch.randn(2, 3, 16, 16)).shape == (2, 4)


def test_bad_files_are_clear_errors(tmp_path):
    model = _trained_resnet8()
    with pytest.raises(PretrainedWeightsError, match="no such file"):
        load_pretrained(model, tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(100))
    with pytest.raises(PretrainedWeightsError, match="weights_only=True"):
        load_pretrained(model, junk)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"model": Evil()}, f, protocol=2)
    with pytest.raises(PretrainedWeightsError, match="weights_only=True"):
        load_pretrained(model, evil)
    assert not (tmp_path / "pwned").exists()  # the file's code never ran
    other = tmp_path / "other.pt"
    torch.save(build_model("cnn_small", 10, 3).state_dict(), other)
    with pytest.raises(PretrainedWeightsError, match="another"):
        load_pretrained(model, other)
    notdict = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], notdict)
    with pytest.raises(PretrainedWeightsError, match="no state dict"):
        load_pretrained(model, notdict)


@pytest.mark.parametrize("package", ["torchvision", "timm"])
def test_missing_or_broken_package_is_one_clear_error(monkeypatch, package):
    real = importlib.import_module

    def broken(name, *args, **kwargs):
        if name.split(".")[0] == package:
            raise RuntimeError("operator torchvision::nms does not exist\nmore detail")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(registry_module.importlib, "import_module", broken)
    with pytest.raises(ModelPackageError) as info:
        build_model(f"{package}:resnet18", 10, 3)
    msg = str(info.value)
    assert f"pip install {package}" in msg and "fails to import" in msg and "nms" in msg
    assert "more detail" not in msg  # one line
    assert isinstance(info.value, ModuleNotFoundError)  # the CLI's handler prints it as one line


def test_external_name_checks():
    with pytest.raises(ValueError, match="give a model name"):
        build_model("timm:", 10, 3)
    with pytest.raises(ValueError, match="3-channel"):
        build_model("torchvision:resnet18", 10, 1)
    assert model_in_channels("torchvision:resnet18") == 3
    assert model_in_channels("timm:resnet18") is None and model_in_channels("resnet8") is None
    with pytest.raises(ValueError, match="unknown model"):
        build_model("keras:resnet", 10, 3)


def _import_or_skip(module: str):
    try:
        return importlib.import_module(module)
    except Exception as exc:  # PyPI's torchvision wheel is built for CUDA torch: fails next to CPU torch
        pytest.skip(f"{module} does not import here: {type(exc).__name__}: {str(exc).splitlines()[0]}")


def test_torchvision_adapter(tmp_path):
    _import_or_skip("torchvision.models")
    model = build_model("torchvision:resnet18", 7, 3)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    path = tmp_path / "tv.pt"
    torch.save(build_model("torchvision:resnet18", 1000, 3).state_dict(), path)
    report = load_pretrained(model, path, new_head=True)
    assert report.new_head == ("fc.weight", "fc.bias") and not report.missing


def test_timm_adapter():
    _import_or_skip("timm")
    model = build_model("timm:resnet18", 5, 1)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 5)
    with pytest.raises(ValueError, match="unknown timm model"):
        build_model("timm:no_such_net", 5, 3)
