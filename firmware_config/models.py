"""The box configuration schema: one pydantic model tree, strict about unknown keys."""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from firmware_config.profiles import PROFILES

__all__ = [
    "BackoffConfig",
    "BrokerConfig",
    "CatalogueConfig",
    "DeviceConfig",
    "DisplayDevice",
    "LocalApiConfig",
    "NodeConfig",
    "OutboxConfig",
    "PrinterDevice",
    "ScannerDevice",
    "SimulatorDevice",
    "Synchronous",
]

_NODE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BrokerConfig(_Strict):
    url: str
    password: Annotated[str, StringConstraints(min_length=1)] | None = None
    password_file: Path | None = None
    """Relative to the config file's directory. With neither `password` nor `password_file`, the
    agent reads the password from the environment (`OMNISHELF_EDGE_PASSWORD`) when it starts."""
    keepalive_s: Annotated[int, Field(ge=5, le=300)] = 30
    """The liveness promise: if the box goes silent, the cloud marks it offline within 1.5 x this."""
    keepalive_check_slack_s: Annotated[float, Field(ge=0, le=60)] = 6.5
    """How late the broker may act on an expired MQTT keep alive. Mosquitto 2.0.x sweeps about every
    5 s (up to ~6 s late); 0 for a broker that enforces the deadline exactly."""
    session_expiry_s: Annotated[int, Field(ge=0, le=2**32 - 1)] = 7 * 24 * 3600
    ca_file: Path | None = None
    """mqtts:// only: the PEM file of the CA(s) that signed the broker's certificate, relative to the
    config file's directory; the box then trusts only those. Without it an mqtts:// broker must have
    a certificate from a CA in the system's store. The broker's host name is checked either way."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"{value!r} is not a broker URL: expected mqtt://host[:port] or mqtts://host[:port]")
        try:
            parts.port  # noqa: B018 - urllib validates the port lazily
        except ValueError:
            raise ValueError(f"{value!r} has a bad port: expected a number from 1 to 65535") from None
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{value!r} has a path or query: expected only mqtt[s]://host[:port]")
        return value

    @field_validator("ca_file")
    @classmethod
    def _ca_needs_tls(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        url = info.data.get("url")  # absent when the URL itself was refused
        if value is not None and isinstance(url, str) and urlsplit(url).scheme != "mqtts":
            raise ValueError(
                f"a CA file is given but broker.url {url!r} is plain MQTT: expected an mqtts:// URL "
                "(or no ca_file)"
            )
        return value

    @model_validator(mode="after")
    def _one_secret(self) -> BrokerConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError(
                "give at most one of 'password' and 'password_file' (got both); "
                "with neither, the password comes from OMNISHELF_EDGE_PASSWORD"
            )
        return self


class Synchronous(enum.StrEnum):
    FULL = "FULL"
    """fsync on every commit: nothing accepted is lost on power loss."""
    NORMAL = "NORMAL"
    """fsync at WAL checkpoints only: a power cut may lose the last commits (never corrupts)."""


class OutboxConfig(_Strict):
    path: Path | None = None
    """Default: <data_dir>/edge/<node_id>/outbox.db; a relative path is relative to the config file."""
    max_pending: Annotated[int, Field(ge=1)] = 200_000
    retain_acked: Annotated[int, Field(ge=0)] = 10_000
    synchronous: Synchronous = Synchronous.FULL


class BackoffConfig(_Strict):
    base_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    cap_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    auth_failure_s: Annotated[float, Field(gt=0, le=86_400)] = 300.0

    @model_validator(mode="after")
    def _ordered(self) -> BackoffConfig:
        if self.base_s > self.cap_s:
            raise ValueError(f"base_s ({self.base_s}) must not exceed cap_s ({self.cap_s})")
        return self


class SimulatorDevice(_Strict):
    """Synthetic traffic for demos, tests and benchmarks."""

    kind: Literal["simulator"]
    name: Name = "sim"
    scans_per_s: Annotated[float, Field(ge=0, le=10_000)] = 0.5
    orders_per_min: Annotated[float, Field(ge=0, le=10_000)] = 1.0
    stock_every_s: Annotated[float, Field(ge=0, le=86_400)] = 300.0
    """A stock snapshot this often; 0 disables it."""
    burst: Annotated[int, Field(ge=0, le=10_000_000)] = 0
    """Scans enqueued at start as fast as the outbox takes them."""


class ScannerDevice(_Strict):
    kind: Literal["scanner"]
    name: Name = "scanner"
    source: Literal["hid", "serial"] = "hid"
    path: Path | None = None
    """The input device or serial port; default: the first one found."""
    baud: Annotated[int, Field(ge=1200, le=921_600)] = 9600


class PrinterDevice(_Strict):
    kind: Literal["printer"]
    name: Name = "printer"
    host: Name
    port: Annotated[int, Field(ge=1, le=65535)] = 9100
    profile: Literal["escpos-58mm", "escpos-80mm", "zpl-203dpi", "zpl-300dpi"] = "escpos-80mm"


class DisplayDevice(_Strict):
    kind: Literal["display"]
    name: Name = "display"
    width: Annotated[int, Field(ge=64, le=16_384)] = 1920
    height: Annotated[int, Field(ge=64, le=16_384)] = 1080
    rotation: Literal[0, 90, 180, 270] = 0


class CatalogueConfig(_Strict):
    """The box's local copy of the product catalogue (synced from the cloud)."""

    cloud_url: str | None = None
    """Where sync files and images are fetched (http[s]://host[:port]); None: no catalogue on this box."""
    path: Path | None = None
    """Default: <data_dir>/edge/<node_id>/catalogue (database and image cache); a relative path is
    relative to the config file."""
    image_budget_mb: Annotated[float, Field(ge=0, le=1_000_000)] = 512
    """Disk the image cache may use; least recently used images are evicted beyond it. 0: no images."""
    fetch_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30

    @field_validator("cloud_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not a cloud URL: expected http[s]://host[:port]")
        try:
            parts.port  # noqa: B018 - urllib validates the port lazily
        except ValueError:
            raise ValueError(f"{value!r} has a bad port: expected a number from 1 to 65535") from None
        return value.rstrip("/")


class OrderDeskConfig(_Strict):
    """The store's order desk: orders the cloud assigns to this store, and the staff's steps on them
    (accept, pick, pack, ship or ready for pickup, handed over) through the local API."""

    enabled: bool = False
    path: Path | None = None
    """Default: <data_dir>/edge/<node_id>/orders.db; a relative path is relative to the config file."""


class LocalApiConfig(_Strict):
    """The box's one HTTP API for the kiosk UI and local tools (`/status`, and what the box's
    components add: catalogue products, categories, search, images)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8480
    """0: any free port (tests)."""
    workers: Annotated[int, Field(ge=1, le=64)] = 4
    """Threads that run requests; idle and half-sent connections never hold one."""
    max_connections: Annotated[int, Field(ge=1, le=10_000)] = 64
    """Open connections kept; beyond it the longest-idle one is closed to make room."""
    idle_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    """A connection that sends nothing for this long is closed."""
    request_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    """A request must arrive whole (head and body) within this long of its first byte (slow-loris)."""
    max_body_bytes: Annotated[int, Field(ge=0, le=16 * 1024**2)] = 64 * 1024


DeviceConfig = Annotated[SimulatorDevice | ScannerDevice | PrinterDevice | DisplayDevice, Field(discriminator="kind")]


class NodeConfig(_Strict):
    node_id: str
    store_id: Name
    profile: str | None = None
    data_dir: Path | None = None
    """Where the box keeps its state (outbox, catalogue) unless `outbox.path` / `catalogue.path`
    say otherwise, under `<data_dir>/edge/<node_id>/`. Default: $OMNISHELF_DATA_DIR, else
    $STATE_DIRECTORY (systemd's StateDirectory=), else ~/.local/state/omnishelf."""
    telemetry_every_s: Annotated[float, Field(ge=0, le=86_400)] = 60.0
    """Box health and device states this often; 0 disables telemetry."""
    broker: BrokerConfig
    outbox: OutboxConfig = OutboxConfig()
    backoff: BackoffConfig = BackoffConfig()
    devices: tuple[DeviceConfig, ...] = ()
    catalogue: CatalogueConfig = CatalogueConfig()
    orders: OrderDeskConfig = OrderDeskConfig()
    local_api: LocalApiConfig = LocalApiConfig()

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, value: str) -> str:
        if not _NODE_ID.match(value):
            raise ValueError(
                f"{value!r} is not a node id: expected 1-63 characters of a-z, 0-9 and '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str | None) -> str | None:
        if value is not None and value not in PROFILES:
            raise ValueError(f"unknown profile {value!r}: expected one of {', '.join(sorted(PROFILES))}")
        return value

    _base_dir: Path | None = PrivateAttr(default=None)

    @property
    def base_dir(self) -> Path | None:
        """The directory of the file this config was loaded from: relative paths resolve against it
        (None for a config built in code). Not part of the config's content or hash."""
        return self._base_dir
