"""Configuration: ``load_config(path) -> Config`` and the immutable data model."""

from .errors import ConfigError
from .loader import load_config, load_config_sources, load_config_text
from .model import (
    DEFAULT_CONCURRENCY_LIMIT,
    DEFAULT_GROUP_ID,
    Config,
    Filters,
    GroupConfig,
    MatrixConfig,
    MatrixSet,
    ModelConfig,
    PeerConfig,
    PerformanceConfig,
    ProfileConfig,
    SelectorConfig,
    Timeouts,
    freeze,
    thaw,
)

__all__ = [
    "ConfigError",
    "load_config",
    "load_config_sources",
    "load_config_text",
    "Config",
    "ModelConfig",
    "GroupConfig",
    "MatrixConfig",
    "MatrixSet",
    "PeerConfig",
    "Filters",
    "Timeouts",
    "PerformanceConfig",
    "ProfileConfig",
    "SelectorConfig",
    "freeze",
    "thaw",
    "DEFAULT_GROUP_ID",
    "DEFAULT_CONCURRENCY_LIMIT",
]
