"""Find and load configuration modules from ``config/``."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
from pathlib import Path

from utils.config.schema import Config, ConfigError


def config_dir() -> Path:
    """The directory holding the configuration modules (``$B_HIVE_DIR/config``)."""
    root = os.environ.get("B_HIVE_DIR")
    base = Path(root) if root else Path(__file__).resolve().parents[2]
    return base / "config"


YAML_SUFFIXES = (".yml", ".yaml")


def available_configs() -> list[str]:
    """Names of the configurations in ``config/``: modules defining ``config`` and the
    original b-hive's YAML files."""
    modules = {p.stem for p in config_dir().glob("*.py")
               if not p.stem.startswith("_") and "config = " in p.read_text()}
    yamls = {p.stem for suffix in YAML_SUFFIXES for p in config_dir().glob(f"*{suffix}")}
    return sorted(modules | yamls)


@functools.cache
def load_config(name: str) -> Config:
    """Load configuration ``name``: a module in ``config/``, a path to a ``.py`` file, or an
    original b-hive YAML file (a ``.yml``/``.yaml`` path, or ``config/<name>.yml`` when
    there is no ``config/<name>.py``; see :mod:`utils.config.legacy`).

    Raises :class:`ConfigError` naming the file and key for any invalid value.
    """
    yaml_file = _yaml_file(name)
    if yaml_file is not None:
        from utils.config.legacy import read_yaml_config

        return read_yaml_config(yaml_file)
    if name.endswith(".py") or os.sep in name:
        path = Path(name).resolve()
        if not path.is_file():
            raise ConfigError(f"config file {name!r} does not exist")
        module_name = f"_bhive_user_config_{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        label = str(path)
    else:
        if not name.isidentifier():
            raise ConfigError(f"invalid config name {name!r}; use a module name from "
                              f"{config_dir()} such as {available_configs()}")
        path = config_dir() / f"{name}.py"
        if not path.is_file():
            raise ConfigError(f"unknown config {name!r}: {path} does not exist; available "
                              f"configs are {available_configs()}")
        module_name = f"config.{name}"
        spec = None
        label = f"config/{name}.py"
    try:
        if spec is None:
            module = importlib.import_module(module_name)
        else:
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{label} failed to load: {type(exc).__name__}: {exc}") from exc
    config = getattr(module, "config", None)
    if not isinstance(config, Config):
        raise ConfigError(f"{label}: key 'config': the module must define "
                          f"`config = Config(...)`, found {type(config).__name__}")
    stem = Path(name).stem
    return config if config.name == stem else config.replace(name=stem)


def _yaml_file(name: str) -> Path | None:
    """The YAML file ``name`` selects, if any."""
    if name.endswith(YAML_SUFFIXES):
        path = Path(name)
        if not path.is_absolute() and not path.is_file() and (config_dir() / path).is_file():
            path = config_dir() / path
        if not path.is_file():
            raise ConfigError(f"config file {name!r} does not exist")
        return path.resolve()
    if name.isidentifier() and not (config_dir() / f"{name}.py").is_file():
        for suffix in YAML_SUFFIXES:
            if (config_dir() / f"{name}{suffix}").is_file():
                return config_dir() / f"{name}{suffix}"
    return None
