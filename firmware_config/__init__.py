"""The store box configuration schema, validated on the box and in the cloud.

Imports nothing else of omnishelf (pydantic and PyYAML only), so both ends can depend on it.
"""

from firmware_config.hashing import config_hash
from firmware_config.loader import PASSWORD_ENV, ConfigError, load_config, parse_config
from firmware_config.models import (
    SCAN_FORMATS,
    BackoffConfig,
    BrokerConfig,
    CatalogueConfig,
    ClerksConfig,
    DeviceConfig,
    DisplayDevice,
    KioskConfig,
    LocalApiConfig,
    NearbyStore,
    NetworkConfig,
    NodeConfig,
    OrderDeskConfig,
    OutboxConfig,
    PrinterDevice,
    ScannerDevice,
    SignageConfig,
    SignageScreenConfig,
    SimulatorDevice,
    StationConfig,
    Synchronous,
    WifiConfig,
)
from firmware_config.paths import DATA_DIR_ENV, BoxPaths, PathError, resolve_paths
from firmware_config.profiles import PROFILES
from firmware_config.writer import render_config, write_config

__all__ = [
    "DATA_DIR_ENV",
    "PASSWORD_ENV",
    "PROFILES",
    "SCAN_FORMATS",
    "BackoffConfig",
    "BoxPaths",
    "BrokerConfig",
    "CatalogueConfig",
    "ClerksConfig",
    "ConfigError",
    "DeviceConfig",
    "DisplayDevice",
    "KioskConfig",
    "LocalApiConfig",
    "NearbyStore",
    "NetworkConfig",
    "NodeConfig",
    "OrderDeskConfig",
    "OutboxConfig",
    "PathError",
    "PrinterDevice",
    "ScannerDevice",
    "SignageConfig",
    "SignageScreenConfig",
    "SimulatorDevice",
    "StationConfig",
    "Synchronous",
    "WifiConfig",
    "config_hash",
    "load_config",
    "parse_config",
    "render_config",
    "resolve_paths",
    "write_config",
]
