"""The store box configuration schema, validated on the box and in the cloud.

Imports nothing else of omnishelf (pydantic and PyYAML only), so both ends can depend on it.
"""

from firmware_config.hashing import config_hash
from firmware_config.loader import PASSWORD_ENV, ConfigError, load_config, parse_config
from firmware_config.models import (
    BackoffConfig,
    BrokerConfig,
    DeviceConfig,
    DisplayDevice,
    NodeConfig,
    OutboxConfig,
    PrinterDevice,
    ScannerDevice,
    SimulatorDevice,
    Synchronous,
)
from firmware_config.profiles import PROFILES

__all__ = [
    "PASSWORD_ENV",
    "PROFILES",
    "BackoffConfig",
    "BrokerConfig",
    "ConfigError",
    "DeviceConfig",
    "DisplayDevice",
    "NodeConfig",
    "OutboxConfig",
    "PrinterDevice",
    "ScannerDevice",
    "SimulatorDevice",
    "Synchronous",
    "config_hash",
    "load_config",
    "parse_config",
]
