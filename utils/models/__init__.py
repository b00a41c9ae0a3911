"""Tagger models. Each architecture is one module here defining a BaseModel subclass."""

from __future__ import annotations

import importlib
import pkgutil

from utils.models.base_model import (
    BaseModel,
    GroupSpec,
    InputSpec,
    ModelInputError,
    registered_models,
)

__all__ = ["BaseModel", "GroupSpec", "InputSpec", "ModelInputError", "available_models",
           "get_model"]


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base_model" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def available_models() -> list[str]:
    """Registered model names (``--model-name`` values)."""
    _discover()
    return sorted(registered_models())


def get_model(name: str) -> type[BaseModel]:
    """The model class registered as ``name``."""
    _discover()
    models = registered_models()
    if name not in models:
        raise ModelInputError(f"--model-name {name!r} is unknown; available models are "
                              f"{sorted(models)}")
    return models[name]
