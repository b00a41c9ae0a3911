"""Configuration schema and loader (law-free)."""

from utils.config.loader import available_configs, config_dir, load_config
from utils.config.schema import Config, ConfigError, Derived, FeatureGroup, Process

__all__ = [
    "Config", "ConfigError", "Derived", "FeatureGroup", "Process",
    "available_configs", "config_dir", "load_config",
]
