"""Model registry: one decorator adds a network to :func:`build_model` and :func:`describe_models`.

Every registered factory takes the keyword arguments ``num_classes`` and ``in_channels`` (plus any
model-specific keyword arguments) and returns a freshly initialised :class:`torch.nn.Module`.

External models: ``torchvision:<name>`` and ``timm:<name>`` build a model of those packages (optional
extras, imported only when such a name is asked for), with the number of classes from the data.

Adding a model::

    from friendly_sam.models import register_model

    @register_model("mynet", description="what it is, in one line", paper=False, source="where from")
    def mynet(num_classes: int, in_channels: int = 3) -> nn.Module:
        return MyNet(num_classes, in_channels)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = [
    "EXTERNAL_PREFIXES",
    "ModelPackageError",
    "ModelSpec",
    "model_in_channels",
    "register_model",
    "available_models",
    "get_model_spec",
    "build_model",
    "count_parameters",
    "describe_models",
]

ModelFactory = Callable[..., nn.Module]
F = TypeVar("F", bound=ModelFactory)


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one model."""

    name: str
    factory: ModelFactory
    description: str
    paper: bool
    """True for the networks of the F-SAM paper's CIFAR experiments, False for the others."""
    source: str
    kind: str = "cpu"
    """``paper`` (the paper's CIFAR networks), ``cpu`` (small, CPU-friendly) or ``large`` (for large images)."""


_REGISTRY: dict[str, ModelSpec] = {}

EXTERNAL_PREFIXES: tuple[str, ...] = ("torchvision", "timm")
"""``<prefix>:<name>`` builds model ``<name>`` of that package (see :func:`build_model`)."""


class ModelPackageError(ModuleNotFoundError):
    """The optional package of a ``torchvision:`` / ``timm:`` model is missing or fails to import."""


def _normalise(name: str) -> str:
    return name.strip().lower()


def register_model(
    name: str, *, description: str, paper: bool = False, source: str = "", kind: str = "cpu"
) -> Callable[[F], F]:
    """Decorator registering ``factory(num_classes=..., in_channels=..., **kwargs) -> nn.Module``.

    ``kind`` of a model that is not the paper's: ``cpu`` (small) or ``large`` (for large images).

    Names are case-insensitive; registering a name twice raises ``ValueError``.
    """
    key = _normalise(name)

    def decorator(factory: F) -> F:
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered")
        _REGISTRY[key] = ModelSpec(key, factory, description, paper, source, "paper" if paper else kind)
        _param_count.cache_clear()
        return factory

    return decorator


def available_models() -> tuple[str, ...]:
    """Names of all registered models, paper models first, then in registration order."""
    return tuple(sorted(_REGISTRY, key=lambda n: not _REGISTRY[n].paper))


def get_model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name``; ``ValueError`` listing the valid names if unknown."""
    key = _normalise(name) if isinstance(name, str) else name
    try:
        return _REGISTRY[key]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(available_models())}") from None


def _check_positive_int(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")


def build_model(name: str, num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build a freshly initialised model by name.

    Args:
        name: one of :func:`available_models` (case-insensitive), or ``torchvision:<name>`` /
            ``timm:<name>`` for a model of those packages (randomly initialised; weights come from
            :func:`~friendly_sam.models.load_pretrained`).
        num_classes: size of the output layer.
        in_channels: channels of the input images (1 for MNIST-like data, 3 for CIFAR);
            torchvision models take 3 (see :func:`model_in_channels`).
        **kwargs: model-specific options, e.g. ``dropout`` for ``wrn28_10``; passed on to
            ``torchvision.models.get_model`` / ``timm.create_model`` for external models.

    Raises:
        ValueError: unknown name (the message lists the valid names) or non-positive sizes.
        ModelPackageError: the package of an external model is missing or does not import.
    """
    prefix, sep, arch = name.partition(":") if isinstance(name, str) else ("", "", "")
    external = bool(sep) and _normalise(prefix) in EXTERNAL_PREFIXES
    spec = None if external else get_model_spec(name)
    _check_positive_int(num_classes, "num_classes")
    _check_positive_int(in_channels, "in_channels")
    if spec is None:
        return _build_external(_normalise(prefix), arch.strip(), num_classes, in_channels, kwargs)
    return spec.factory(num_classes=num_classes, in_channels=in_channels, **kwargs)


def model_in_channels(name: str) -> int | None:
    """The input channels model ``name`` requires (3 for ``torchvision:`` models), or ``None`` when it
    adapts to the data (the built-in and ``timm:`` models): what an image folder is decoded to."""
    prefix, sep, _ = name.partition(":")
    return 3 if sep and _normalise(prefix) == "torchvision" else None


def _import_package(module: str, package: str, model: str) -> Any:
    # Optional extras are imported here, on demand. Any failure (not only a missing package: PyPI's
    # torchvision wheel built for CUDA torch fails to load next to a CPU torch) is one clear error.
    try:
        return importlib.import_module(module)
    except Exception as exc:
        raise ModelPackageError(
            f"--model {model} needs the {package} package, which "
            + ("is not installed" if isinstance(exc, ModuleNotFoundError) else "fails to import")
            + f" ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Install a build "
            f"matching this torch {torch.__version__}: pip install {package}",
            name=package,
        ) from None


def _build_external(prefix: str, arch: str, num_classes: int, in_channels: int, kwargs: dict) -> nn.Module:
    full = f"{prefix}:{arch}"
    if not arch:
        raise ValueError(f"--model {full}: give a model name after '{prefix}:', e.g. {prefix}:resnet50")
    if prefix == "torchvision":
        if in_channels != 3:
            raise ValueError(
                f"--model {full} takes 3-channel (RGB) images, the data has {in_channels}: load the "
                "images as RGB (image folders: channels=3)"
            )
        models = _import_package("torchvision.models", "torchvision", full)
        if arch not in models.list_models():
            raise ValueError(f"unknown torchvision model {arch!r}; see torchvision.models.list_models()")
        return models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    timm = _import_package("timm", "timm", full)
    if not timm.is_model(arch):
        raise ValueError(f"unknown timm model {arch!r}; see timm.list_models()")
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``model`` (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class _SkipRandomInitOnMeta(TorchFunctionMode):
    """Turns random in-place initialisers on meta tensors into no-ops.

    They have no effect on meta tensors anyway, but the first ``normal_`` on a meta tensor imports
    ``torch._dynamo`` (about 2.5 s); skipping it keeps :func:`describe_models` fast.
    """

    _NAMES = frozenset(
        {"normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "log_normal_", "exponential_", "random_"}
    )

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in self._NAMES:
            tensor = args[0] if args else kwargs.get("tensor")
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


@lru_cache(maxsize=256)
def _param_count(name: str, num_classes: int, in_channels: int) -> int:
    # Build on the meta device: no memory is allocated and initialisers are skipped, so even the
    # 36M-parameter WRN-28-10 is counted in milliseconds. Fall back to CPU for factories that
    # cannot run on meta tensors.
    try:
        with torch.device("meta"), _SkipRandomInitOnMeta():
            model = build_model(name, num_classes, in_channels)
    except Exception:
        model = build_model(name, num_classes, in_channels)
    return count_parameters(model)


def describe_models(num_classes: int = 10, in_channels: int = 3) -> list[dict[str, Any]]:
    """One dict per registered model, for tables such as ``fsam models``.

    Keys: ``name``, ``params`` (int, for the given ``num_classes`` / ``in_channels``),
    ``description`` (one line), ``paper`` (bool: a network of the F-SAM paper),
    ``kind`` (``"paper"``, ``"cpu"`` or ``"large"``), ``source`` (where the architecture comes from).
    Parameter counts are computed lazily on the meta device and cached.
    """
    _check_positive_int(num_classes, "num_classes")
    _check_positive_int(in_channels, "in_channels")
    rows = []
    for name in available_models():
        spec = _REGISTRY[name]
        rows.append(
            {
                "name": name,
                "params": _param_count(name, num_classes, in_channels),
                "description": spec.description,
                "paper": spec.paper,
                "kind": spec.kind,
                "source": spec.source,
            }
        )
    return rows
