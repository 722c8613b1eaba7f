"""Cloud configuration: one settings object read from `OMNISHELF_*` environment variables.

Built by `load_settings()` when a command starts, never at import time, so tests and the demo can
construct their own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from broker import topics
from broker.client import BrokerAddress, TlsSetupError, read_certificates

__all__ = ["DEFAULT_BROKER_PASSWORD", "Settings", "SettingsError", "default_data_dir", "load_settings"]

DEFAULT_BROKER_PASSWORD = "omnishelf-dev"
"""The development password; production refuses to start with it."""


def default_data_dir() -> Path:
    """$STATE_DIRECTORY (systemd's StateDirectory=) or ~/.local/state/omnishelf."""
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state) if state else Path.home() / ".local" / "state" / "omnishelf"


class SettingsError(ValueError):
    """The configuration is unusable; the message is one line naming the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OMNISHELF_", extra="ignore", frozen=True)

    DATA_DIR: str = ""
    """Where the cloud keeps its files when no other place is given: the SQLite database and the
    catalogue files. Default: $STATE_DIRECTORY (set by systemd's StateDirectory=), else
    ~/.local/state/omnishelf. Never the current directory: a command run from another folder must
    find the same data."""
    DATABASE_URL: str = ""
    """Default: sqlite:///<DATA_DIR>/omnishelf.db."""
    BROKER_URL: str = "mqtt://127.0.0.1:1883"
    BROKER_USERNAME: str = "cloud-1"
    """Also this worker's host id (its MQTT client id and host-state topic)."""
    BROKER_PASSWORD: SecretStr = SecretStr(DEFAULT_BROKER_PASSWORD)
    BROKER_CA_FILE: str = ""
    """mqtts:// only: the PEM file of the CA(s) that signed the broker's certificate; only those are
    trusted then. Empty: the system's CA store. The broker's host name is checked either way."""
    ENV: Literal["development", "production"] = "development"
    # Boxes learn that this worker is gone (its retained state turns offline) within 1.5 x this.
    KEEPALIVE_S: int = Field(default=10, ge=5, le=300)
    WORKER_SESSION_EXPIRY_S: int = Field(default=300, ge=0)
    GAP_GRACE_S: float = Field(default=5.0, gt=0)
    REBIRTH_MAX: int = Field(default=8, ge=1, le=1000)
    """Rebirths sent for one gap (with exponential backoff) before the cloud gives up and alerts."""
    REBIRTH_BACKOFF_CAP_S: float = Field(default=300.0, gt=0)
    INGEST_STALL_S: float = Field(default=30.0, gt=0)
    """/health turns unhealthy when a received message has waited this long without a commit."""
    DOWNLINK_POLL_S: float = Field(default=0.5, gt=0, le=3600)
    """How often the relay looks for due commands when nothing woke it."""
    FOLLOWER_POLL_S: float = Field(default=1.0, gt=0, le=3600)
    BATCH_MAX: int = Field(default=500, ge=1, le=10_000)
    # 0 = group commit: a batch is whatever arrived while the previous one was being stored, so a
    # quiet bus commits each message at once and a busy one builds large batches by itself.
    # Measured: a fixed 5 ms linger raised p99 box->database at 500 msg/s from ~13 ms to ~23 ms.
    BATCH_WAIT_MS: float = Field(default=0, ge=0)
    # Console sign-in (cloud.access): lockout after repeated failures, session lifetime.
    LOGIN_MAX_FAILURES: int = Field(default=5, ge=1, le=100)
    LOGIN_LOCKOUT_S: int = Field(default=900, ge=1)
    SESSION_TTL_S: int = Field(default=12 * 3600, ge=60)
    PASSWORD_HASH: Literal["rfc9106-low-memory", "test-only-cheapest"] = "rfc9106-low-memory"
    """argon2id parameters for new password hashes (stored hashes carry their own). The default is
    RFC 9106's second recommendation (t=3, 64 MiB, p=4: about 0.1-0.4 s a hash here).
    `test-only-cheapest` exists for test suites that create and sign in hundreds of users (the suite
    runs production-mode processes too, so it is not refused there: the name says what it is for)."""
    COOKIE_SECURE: bool | None = None
    """Secure session cookies; default: on, except over plain http in development."""
    CATALOGUE_DIR: str = ""
    """Images, thumbnails, sync files (content-addressed) and import reports. Default: <DATA_DIR>/catalogue."""
    CATALOGUE_DELTA_KEEP: int = Field(default=16, ge=1, le=1000)
    """Deltas published with each catalogue version (from each of the previous N versions); a box
    further behind takes the snapshot."""
    CATALOGUE_POLL_S: float = Field(default=2.0, gt=0, le=3600)
    """How often the serving process looks for a new catalogue version to announce."""

    BROKER_ADMIN_SECRET_FILE: str = ""
    """The broker's dynamic-security admin password file (`dynsec-admin.secret` in the broker's data
    directory): with it the fleet engine grants, revokes and retires box credentials at run time.
    Empty: boxes cannot be claimed or revoked from the cloud (say so, one line, when asked to)."""
    BROKER_ADMIN_URL: str = ""
    """Where the cloud reaches the broker as its admin. Default: OMNISHELF_BROKER_URL."""
    PROVISION_BROKER_URL: str = ""
    """The broker URL written into a claimed box's config (what the store LAN reaches). Default:
    OMNISHELF_BROKER_URL."""
    PROVISION_CA_FILE: str = ""
    """The CA a claimed box trusts for an mqtts:// broker. Default: OMNISHELF_BROKER_CA_FILE."""
    PROVISION_LOCAL_API_PORT: int = Field(default=8480, ge=0, le=65535)
    """The local API port in a claimed box's first config (0: any free port, for several simulated
    boxes on one host)."""
    ENROL_TOKEN_TTL_S: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    """How long an enrolment token made without an explicit lifetime stays usable."""
    REVOKE_SYNC_S: float = Field(default=2.0, gt=0, le=3600)
    """How often the bus retries credential changes the broker has not confirmed (a broker that was
    down when a box was revoked): a revocation bites within this once the broker is back."""

    @model_validator(mode="before")
    @classmethod
    def _defaults_from_data_dir(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        data_dir = Path(values.get("DATA_DIR") or default_data_dir()).expanduser().absolute()
        values["DATA_DIR"] = str(data_dir)
        if not values.get("DATABASE_URL"):
            values["DATABASE_URL"] = f"sqlite:///{data_dir / 'omnishelf.db'}"
        if not values.get("CATALOGUE_DIR"):
            values["CATALOGUE_DIR"] = str(data_dir / "catalogue")
        return values

    @field_validator("BROKER_URL")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        BrokerAddress.from_url(value)
        return value

    @field_validator("BROKER_CA_FILE")
    @classmethod
    def _ca_file(cls, value: str, info: ValidationInfo) -> str:
        if not value:
            return value
        url = info.data.get("BROKER_URL")  # absent when the URL itself was refused
        if isinstance(url, str) and not BrokerAddress.from_url(url).tls:
            raise ValueError(f"a CA file is set but OMNISHELF_BROKER_URL {url!r} is plain MQTT: expected an mqtts:// URL")
        path = str(Path(value).expanduser().absolute())
        try:
            read_certificates(path)
        except TlsSetupError as exc:
            raise ValueError(str(exc)) from None
        return path

    @field_validator("BROKER_USERNAME")
    @classmethod
    def _host_id(cls, value: str) -> str:
        try:
            return topics.check_id(value, "broker username (host id)")
        except topics.TopicError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("DATABASE_URL")
    @classmethod
    def _database_url(cls, value: str) -> str:
        # Imported here: the URL rules live with the engine factory.
        from cloud.db import normalize_url

        normalize_url(value)
        return value

    def check_bus_secret(self) -> None:
        """Processes that run the cloud bus need this host's own broker password in production (an
        API-only `serve --no-worker` never connects to the broker, so it is not asked for one)."""
        if self.ENV == "production" and self.BROKER_PASSWORD.get_secret_value() in ("", DEFAULT_BROKER_PASSWORD):
            raise SettingsError(
                "OMNISHELF_BROKER_PASSWORD is empty or the development default; production needs this "
                "host's own broker password"
            )

    @property
    def broker_address(self) -> BrokerAddress:
        return BrokerAddress.from_url(self.BROKER_URL, self.BROKER_CA_FILE or None)


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment (and `overrides`); raise `SettingsError` with one clear line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = ".".join(str(x) for x in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise SettingsError(f"OMNISHELF_{field}: {msg}" if field else msg) from None
