"""Configuration schema and loader (law-free)."""

from utils.config.loader import available_configs, config_dir, load_config
from utils.config.schema import (
    Config,
    ConfigError,
    Derived,
    FeatureGroup,
    Process,
    Reweighting,
    label_to_class,
    mapping_text,
)

__all__ = [
    "Config", "ConfigError", "Derived", "FeatureGroup", "Process", "Reweighting",
    "available_configs", "config_dir", "label_to_class", "load_config",
    "mapping_text",
]
