"""Configuration: Bifrost's ``config.json`` shape read into frozen dataclasses.

:mod:`.schema` is the shape, :mod:`.reader` the typed JSON reader,
:mod:`.loading` the file (or the defaults) read and validated.
"""

from .loading import load_config, local_model_installed, parse_config
from .schema import (
    DEFAULT_BASE_URLS,
    HOSTED_UPLOAD_LIMIT_MB,
    MIB,
    AzureKeyConfig,
    BudgetConfig,
    CacheSettings,
    CacheStoreKind,
    ChunkingSettings,
    ClientConfig,
    Config,
    ConfigError,
    GovernanceConfig,
    JwtConfig,
    KeyConfig,
    LocalSettings,
    ModelPrice,
    NetworkConfig,
    ProviderConfig,
    ProviderKind,
    ProxySettings,
    RateLimitConfig,
    RealtimeSettings,
    VirtualKeyConfig,
)
from .sections import parse_duration

__all__ = [
    "DEFAULT_BASE_URLS",
    "HOSTED_UPLOAD_LIMIT_MB",
    "MIB",
    "AzureKeyConfig",
    "BudgetConfig",
    "CacheSettings",
    "CacheStoreKind",
    "ChunkingSettings",
    "ClientConfig",
    "Config",
    "ConfigError",
    "GovernanceConfig",
    "JwtConfig",
    "KeyConfig",
    "LocalSettings",
    "ModelPrice",
    "NetworkConfig",
    "ProviderConfig",
    "ProviderKind",
    "ProxySettings",
    "RateLimitConfig",
    "RealtimeSettings",
    "VirtualKeyConfig",
    "load_config",
    "local_model_installed",
    "parse_config",
    "parse_duration",
]
