"""The box configuration schema: one pydantic model tree, strict about unknown keys."""

from __future__ import annotations

import enum
import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal, get_args
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
    "SCAN_FORMATS",
    "BackoffConfig",
    "BrokerConfig",
    "CatalogueConfig",
    "DeviceConfig",
    "DisplayDevice",
    "KioskConfig",
    "LocalApiConfig",
    "NearbyStore",
    "NetworkConfig",
    "NodeConfig",
    "OutboxConfig",
    "PrinterDevice",
    "ScannerDevice",
    "SimulatorDevice",
    "StationConfig",
    "Synchronous",
    "WifiConfig",
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


ScannerSource = Literal["hid", "serial", "camera"]

ScanFormat = Literal["datamatrix", "qrcode", "ean13", "ean8", "upca", "upce", "code128", "databar", "databar_expanded", "itf"]
SCAN_FORMATS: tuple[str, ...] = get_args(ScanFormat)
"""Symbologies a camera scanner may be told to look for (the decoder looks for no others)."""


class ScannerDevice(_Strict):
    """A code scanner feeding the scanning station (`station:`).

    - `hid`: a keyboard-wedge scanner, read from its Linux input device (`path`: /dev/input/event*
      or /dev/input/by-id/…; a file of the same records works too), one code per Enter;
    - `serial`: a scanner on a serial port (or any file of lines: demos and tests), one code per line;
    - `camera`: frames from `path` (a video device or a video file) or `camera` (an index), decoded
      with zxing-cpp restricted to `formats`.
    A scanner that sends an AIM symbology identifier (`]d2`, `]Q3`, `]C1`, `]e0`, …) has it kept."""

    kind: Literal["scanner"]
    name: Name = "scanner"
    source: ScannerSource = "hid"
    path: Path | None = None
    """The input device, serial port or video; default (hid, serial): the first one found. A relative
    path is relative to the config file."""
    baud: Annotated[int, Field(ge=1200, le=921_600)] = 9600
    camera: Annotated[int, Field(ge=0, le=63)] | None = None
    """camera: the capture index (`/dev/video<N>`) when no `path` is given."""
    formats: Annotated[tuple[ScanFormat, ...], Field(min_length=1, max_length=10)] = ("datamatrix", "qrcode", "ean13", "code128")
    """camera: the symbologies to look for; fewer is faster and avoids false reads."""
    try_rotate: bool = False
    """camera: also look for codes turned 90°/270° (slower)."""
    try_invert: bool = False
    """camera: also look for light-on-dark codes (slower)."""
    fallback_1d: bool = False
    """camera: when zxing-cpp finds nothing, ask pyzbar (libzbar0) for the 1-D `formats` too."""
    debounce_s: Annotated[float, Field(ge=0, le=3600)] = 2.0
    """The same code seen again within this long of its last sighting is the same scan (a code held
    in front of a camera, a double trigger)."""
    max_fps: Annotated[float, Field(gt=0, le=240)] | None = None
    """camera: decode at most this many frames per second (None: as fast as frames come)."""
    loop: bool = False
    """camera reading a video file: start again at its end (demos)."""
    purpose: Literal["verify", "receive", "sell", "return"] = "verify"
    """What this scanner's scans are for, unless the station is told otherwise."""

    @model_validator(mode="after")
    def _camera_source(self) -> ScannerDevice:
        if self.source == "camera" and self.path is None and self.camera is None:
            raise ValueError("a camera scanner needs 'path' (a video device or file) or 'camera' (a capture index)")
        if self.source != "camera" and self.camera is not None:
            raise ValueError(f"'camera' is for source: camera, not source: {self.source}")
        return self


PrinterConnection = Literal["network", "usb", "serial", "file"]


class PrinterDevice(_Strict):
    """An ESC/POS receipt or label printer, fed from the station's durable print queue."""

    kind: Literal["printer"]
    name: Name = "printer"
    connection: PrinterConnection = "network"
    host: Name | None = None
    """network: the printer's address."""
    port: Annotated[int, Field(ge=1, le=65535)] = 9100
    profile: Literal["escpos-58mm", "escpos-80mm", "zpl-203dpi", "zpl-300dpi"] = "escpos-80mm"
    usb_vendor: Annotated[int, Field(ge=0, le=0xFFFF)] | None = None
    """usb: the vendor id (e.g. 0x04b8)."""
    usb_product: Annotated[int, Field(ge=0, le=0xFFFF)] | None = None
    path: Path | None = None
    """serial: the port (/dev/ttyUSB0); file: where the bytes are written (tests, spooling)."""
    baud: Annotated[int, Field(ge=1200, le=921_600)] = 9600
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 5.0
    """Connecting, sending and waiting for a status answer each give up after this long."""
    status_query: bool = True
    """Ask the printer (DLE EOT) whether it is online and has paper before each job; turn off for a
    printer that does not answer status queries (the job is then sent blind)."""

    @model_validator(mode="after")
    def _connection_fields(self) -> PrinterDevice:
        needs = {"network": ("host", self.host), "serial": ("path", self.path), "file": ("path", self.path),
                 "usb": ("usb_vendor", self.usb_vendor)}
        field, value = needs[self.connection]
        if value is None:
            raise ValueError(f"a {self.connection} printer needs '{field}'")
        if self.connection == "usb" and self.usb_product is None:
            raise ValueError("a usb printer needs 'usb_product' as well as 'usb_vendor'")
        return self


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


class StationConfig(_Strict):
    """The scanning station: scans go to the cloud for a verdict (answered from the box's cache,
    marked provisional, while the cloud is unreachable); receipts and labels print from a durable queue."""

    enabled: bool = False
    path: Path | None = None
    """Default: <data_dir>/edge/<node_id>/station.db; a relative path is relative to the config file."""
    final_wait_s: Annotated[float, Field(ge=0, le=60)] = 2.0
    """With the cloud online, a scan without its verdict after this long gets a provisional one from
    the cache meanwhile (0: only when the cloud is offline)."""
    keep_verdicts: Annotated[int, Field(ge=100, le=10_000_000)] = 100_000
    """Scans and verdicts kept for the local API; the oldest are dropped beyond it."""
    print_jobs_keep: Annotated[int, Field(ge=10, le=1_000_000)] = 10_000
    """Printed jobs kept for the local API (pending ones are never dropped)."""
    receipt_header: Annotated[str, StringConstraints(max_length=200)] = ""
    """The first line of every receipt and label (the store's name)."""
    auto_print: bool = False
    """Print a receipt for each final `genuine` sale and a label for each received unit, without a
    request on the local API."""
    printer: Name | None = None
    """The printer device (by name) jobs go to; default: the first printer in `devices`."""


class OrderDeskConfig(_Strict):
    """The store's order desk: orders the cloud assigns to this store, and the staff's steps on them
    (accept, pick, pack, ship or ready for pickup, handed over) through the local API."""

    enabled: bool = False
    path: Path | None = None
    """Default: <data_dir>/edge/<node_id>/orders.db; a relative path is relative to the config file."""


class ClerksConfig(_Strict):
    """Clerks' PIN sign-in on this box, from the store's roster the cloud sends (works offline)."""

    enabled: bool | None = None
    """None: on a box where clerks work (with the scanning station or the order desk); true or false
    to say so."""
    path: Path | None = None
    """Default: <data_dir>/edge/<node_id>/clerks.db; a relative path is relative to the config file."""
    max_failures: Annotated[int, Field(ge=1, le=20)] = 5
    """Wrong PINs in a row after which the clerk is locked out."""
    lock_s: Annotated[float, Field(ge=1, le=86_400)] = 60.0
    """The first lockout; each further one in a row doubles it, up to `lock_max_s`."""
    lock_max_s: Annotated[float, Field(ge=1, le=7 * 86_400)] = 3600.0
    session_ttl_s: Annotated[float, Field(ge=60, le=7 * 86_400)] = 12 * 3600.0
    """How long a sign-in lasts (a shift), unless the clerk signs out first."""
    require_sign_in: bool = False
    """True: the local API's clerk actions (scans, order steps, stock adjustments, reprints) are
    refused (401) without a signed-in clerk's `X-Clerk-Session`; false: allowed unattributed."""

    @model_validator(mode="after")
    def _lock_order(self) -> ClerksConfig:
        if self.lock_max_s < self.lock_s:
            raise ValueError(f"lock_max_s ({self.lock_max_s}) is shorter than lock_s ({self.lock_s}): expected at least lock_s")
        return self


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


class SignageScreenConfig(_Strict):
    """One screen the box drives (e.g. the kiosk's attract loop, a signage screen by the door)."""

    name: Name
    """As HQ names it (`PATCH /signage/screens/{node}`): its tags and timeline are its own."""


class SignageConfig(_Strict):
    """The signage player: plays the timeline the cloud publishes for each of this box's screens."""

    cloud_url: str | None = None
    """Where media files are fetched (http[s]://host[:port]); None: no player on this box."""
    path: Path | None = None
    """Default: <data_dir>/edge/<node_id>/signage (the schedule, the media cache, the screen log);
    a relative path is relative to the config file."""
    screen: Name = "main"
    media_budget_mb: Annotated[float, Field(ge=1, le=1_000_000)] = 2048
    """Disk the media cache may use; least recently used files not needed soon are evicted beyond it."""
    fetch_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30
    prefetch_h: Annotated[float, Field(gt=0, le=240)] = 48
    """Media needed within this many hours is downloaded ahead of time."""
    screens: Annotated[tuple[SignageScreenConfig, ...], Field(max_length=16)] = ()
    """Several screens, one timeline each; empty: one screen named `screen`. The first is the
    default (the one `GET /signage/now` answers for when no screen is named)."""

    @field_validator("cloud_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return CatalogueConfig._http_url(value)

    @field_validator("screens")
    @classmethod
    def _distinct(cls, value: tuple[SignageScreenConfig, ...]) -> tuple[SignageScreenConfig, ...]:
        names = [s.name for s in value]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"screen names must be distinct, {', '.join(dup)} is listed twice")
        return value

    def screen_names(self) -> tuple[str, ...]:
        """The screens this box drives, the default first."""
        return tuple(s.name for s in self.screens) or (self.screen,)


class NearbyStore(_Strict):
    """A store the kiosk may name in "at <store> 2.4 km away" (its code is the cloud's location code)."""

    code: Name
    name: Name
    km: Annotated[float, Field(ge=0, le=20_000)]


class KioskConfig(_Strict):
    """The cloud shelf's box side: catalogue paging and pinyin search, availability, kiosk orders."""

    enabled: bool = False
    path: Path | None = None
    """Default: <data_dir>/edge/<node_id>/kiosk.db (the search index, the stock figures last seen,
    the orders placed); a relative path is relative to the config file."""
    stock_url: str | None = None
    """The cloud API asked for stock figures (http[s]://host[:port], its `GET /stock`); None: only
    the figures already held."""
    stock_api_key: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    """An API key with read access to stock (sent as a bearer token)."""
    nearby: tuple[NearbyStore, ...] = ()
    """Other stores shown with their distance when this one has none."""
    warehouse: Name = "wh"
    """The location code of the warehouse that ships to this store's shoppers."""
    warehouse_days: Annotated[int, Field(ge=0, le=60)] = 2
    confirm_url: Annotated[str, StringConstraints(min_length=1, max_length=500)] = "https://shop.example/o/{order_id}"
    """The link on the confirmation QR code; `{order_id}` is replaced by the order number."""
    refresh_s: Annotated[float, Field(gt=0, le=86_400)] = 300
    """How often this store's stock figures are fetched while the cloud is reachable."""
    stock_timeout_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    """A product page waits this long for the cloud's figures before answering from the cache."""

    @field_validator("stock_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return CatalogueConfig._http_url(value)

    @field_validator("confirm_url")
    @classmethod
    def _confirm(cls, value: str) -> str:
        if "{order_id}" not in value or urlsplit(value).scheme not in ("http", "https"):
            raise ValueError(f"{value!r} is not a confirmation link: expected an http[s] URL with {{order_id}} in it")
        return value


_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def _host_name(value: str) -> bool:
    """A DNS host name (RFC 1123): dot-separated labels of a-z, 0-9 and '-', at most 253 characters."""
    return len(value) <= 253 and all(_LABEL.match(label) for label in value.lower().split("."))


def _ipv4(value: str, what: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not {what}: expected an IPv4 address such as 192.168.1.1") from None


class WifiConfig(_Strict):
    """The Wi-Fi network the box joins (WPA2/WPA3 personal) instead of its wired port."""

    ssid: Annotated[str, StringConstraints(min_length=1)]
    psk_file: Path
    """A file on the box holding only the passphrase, relative to the config file's directory. Never
    the passphrase itself: a config is pushed through the bus and shown in the console."""
    country: str | None = None
    """The regulatory domain (ISO 3166 code, e.g. GB): Raspberry Pi OS keeps Wi-Fi off until it is set."""

    @field_validator("ssid")
    @classmethod
    def _ssid(cls, value: str) -> str:
        if len(value.encode()) > 32:
            raise ValueError(f"{value!r} is {len(value.encode())} bytes: an SSID has at most 32")
        return value

    @field_validator("country")
    @classmethod
    def _country(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Z]{2}", value):
            raise ValueError(f"{value!r} is not a country code: expected two capital letters (ISO 3166), e.g. GB")
        return value


class NetworkConfig(_Strict):
    """How the box is on the store LAN: its host name, wired or Wi-Fi, DHCP or a fixed address, and
    the time servers it keeps its clock with (scans and orders carry the box's clock)."""

    hostname: str | None = None
    """None: the one the image gave it."""
    wifi: WifiConfig | None = None
    """None: the wired port."""
    ipv4: Literal["dhcp", "static"] = "dhcp"
    address: str | None = None
    """static: the box's address with its prefix length, e.g. 192.168.1.20/24."""
    gateway: str | None = None
    """static: the router, inside `address`'s network."""
    dns: Annotated[tuple[str, ...], Field(max_length=3)] = ()
    """static: one to three name servers (DHCP gives them otherwise)."""
    ntp: Annotated[tuple[str, ...], Field(max_length=4)] = ()
    """Time servers (host names or IPv4 addresses); empty: the image's (or DHCP's)."""

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str | None) -> str | None:
        if value is not None and not _LABEL.match(value):
            raise ValueError(f"{value!r} is not a host name: expected 1-63 characters of a-z, 0-9 and '-', "
                             "not starting or ending with '-'")
        return value

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            iface = ipaddress.IPv4Interface(value)
        except ValueError:
            iface = None
        if iface is None or "/" not in value:
            raise ValueError(f"{value!r} is not an address with its prefix length: expected e.g. 192.168.1.20/24")
        if iface.network.prefixlen < 31 and iface.ip in (iface.network.network_address, iface.network.broadcast_address):
            raise ValueError(f"{value!r} is the network's {'own' if iface.ip == iface.network.network_address else 'broadcast'} "
                             "address: expected a host's address")
        return str(iface)

    @field_validator("gateway")
    @classmethod
    def _gateway(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        gateway = _ipv4(value, "a gateway")
        address = info.data.get("address")  # absent when the address itself was refused
        if isinstance(address, str):
            iface = ipaddress.IPv4Interface(address)
            if gateway not in iface.network or gateway == iface.ip:
                raise ValueError(f"{value} is not another host of {iface.network}: expected the router's address there")
        return str(gateway)

    @field_validator("dns")
    @classmethod
    def _dns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(_ipv4(v, "a name server's address")) for v in value)

    @field_validator("ntp")
    @classmethod
    def _ntp(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for v in value:
            if not _host_name(v):
                raise ValueError(f"{v!r} is not a time server: expected a host name or an IPv4 address")
        return value

    @model_validator(mode="after")
    def _addressing(self) -> NetworkConfig:
        given = [f for f in ("address", "gateway") if getattr(self, f) is not None] + (["dns"] if self.dns else [])
        if self.ipv4 == "dhcp":
            if given:
                raise ValueError(f"{', '.join(given)} given with ipv4: dhcp: expected ipv4: static, or none of them")
            return self
        missing = [f for f in ("address", "gateway", "dns") if f not in given]
        if missing:
            raise ValueError(f"ipv4: static needs {', '.join(missing)}")
        return self


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
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] | None = None
    """The agent's log level (a config push can turn a box's logging up and down); None: the
    command line's (`omnishelf --log-level`, INFO by default)."""
    broker: BrokerConfig
    outbox: OutboxConfig = OutboxConfig()
    backoff: BackoffConfig = BackoffConfig()
    devices: tuple[DeviceConfig, ...] = ()
    catalogue: CatalogueConfig = CatalogueConfig()
    orders: OrderDeskConfig = OrderDeskConfig()
    local_api: LocalApiConfig = LocalApiConfig()
    station: StationConfig = StationConfig()
    signage: SignageConfig = SignageConfig()
    clerks: ClerksConfig = ClerksConfig()
    kiosk: KioskConfig = KioskConfig()
    network: NetworkConfig = NetworkConfig()

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
