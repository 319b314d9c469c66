"""Networks for F-SAM experiments, built by name.

Paper models (the CIFAR networks of the F-SAM paper, as in its official code):
``resnet18``, ``vgg16_bn``, ``wrn28_10``, ``pyramidnet110``.
CPU-friendly models: ``resnet8``, ``resnet20``, ``resnet32`` (classic CIFAR ResNets) and ``cnn_small``.
Large images (your own photos at 224 px): ``resnet18_imagenet``, ``resnet50_imagenet`` (ImageNet stem:
7x7 stride-2 conv + max-pool; torchvision's layout, without torchvision).

Every model takes ``num_classes`` and ``in_channels`` and pools globally before its classifier, so
it runs on 28x28 grey images (MNIST, Fashion-MNIST) as well as on 32x32 RGB images (CIFAR).
Each architecture's source is given in its module's docstring.

>>> from friendly_sam.models import build_model
>>> model = build_model("resnet20", num_classes=10, in_channels=1)

Models of optional packages: ``torchvision:<name>`` and ``timm:<name>`` (imported only when asked for).
Saved weights and fine-tuning with a new classifier: :func:`load_pretrained`.

New models are added with the :func:`register_model` decorator (see :mod:`.registry`).
"""

from __future__ import annotations

# isort: off
# Importing the model modules registers them; the import order is the listing order.
from . import resnet18, vgg, wide_resnet, pyramidnet  # noqa: F401  (paper models)
from . import resnet_cifar, small_cnn  # noqa: F401  (CPU-friendly models)
from . import resnet_imagenet  # noqa: F401  (large images)

# isort: on
from .pretrained import (
    PretrainedReport,
    PretrainedWeightsError,
    classifier_name,
    load_pretrained,
    read_state_dict,
)
from .pyramidnet import PyramidNet
from .registry import (
    EXTERNAL_PREFIXES,
    ModelPackageError,
    ModelSpec,
    available_models,
    build_model,
    count_parameters,
    describe_models,
    get_model_spec,
    model_in_channels,
    register_model,
)
from .resnet18 import ResNet18
from .resnet_cifar import CifarResNet
from .resnet_imagenet import ImageNetResNet
from .small_cnn import SmallCNN
from .vgg import VGG
from .wide_resnet import WideResNet

MODEL_NAMES: tuple[str, ...] = available_models()
"""Names of the built-in models (paper models first). :func:`available_models` also lists models
registered later."""

__all__ = [
    "EXTERNAL_PREFIXES",
    "MODEL_NAMES",
    "ModelPackageError",
    "ModelSpec",
    "PretrainedReport",
    "PretrainedWeightsError",
    "available_models",
    "build_model",
    "classifier_name",
    "count_parameters",
    "describe_models",
    "get_model_spec",
    "load_pretrained",
    "model_in_channels",
    "read_state_dict",
    "register_model",
    "CifarResNet",
    "ImageNetResNet",
    "PyramidNet",
    "ResNet18",
    "SmallCNN",
    "VGG",
    "WideResNet",
]
