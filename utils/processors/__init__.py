"""Coffea processors, selected by the config's ``processor`` name."""

from __future__ import annotations

import importlib

# name -> "module:Class"; modules are imported only when used (coffea is heavy to import)
PROCESSORS = {
    "jet_tuple": "utils.processors.jet_tuple:JetTupleProcessor",
    "nanoaod": "utils.processors.nanoaod:NanoAODProcessor",
}


def get_processor(name: str) -> type:
    """The processor class registered as ``name``."""
    if name not in PROCESSORS:
        from utils.config import ConfigError

        raise ConfigError(f"unknown processor {name!r}; registered processors are "
                         f"{sorted(PROCESSORS)}")
    module, cls = PROCESSORS[name].split(":")
    return getattr(importlib.import_module(module), cls)
