"""Cloud configuration: one settings object read from `OMNISHELF_*` environment variables.

Built by `load_settings()` when a command starts, never at import time, so tests and the demo can
construct their own.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from broker import topics
from broker.client import BrokerAddress

__all__ = ["DEFAULT_BROKER_PASSWORD", "Settings", "SettingsError", "load_settings"]

DEFAULT_BROKER_PASSWORD = "omnishelf-dev"
"""The development password; production refuses to start with it."""


class SettingsError(ValueError):
    """The configuration is unusable; the message is one line naming the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OMNISHELF_", extra="ignore", frozen=True)

    DATABASE_URL: str = "sqlite:///var/omnishelf.db"
    BROKER_URL: str = "mqtt://127.0.0.1:1883"
    BROKER_USERNAME: str = "cloud-1"
    """Also this worker's host id (its MQTT client id and host-state topic)."""
    BROKER_PASSWORD: SecretStr = SecretStr(DEFAULT_BROKER_PASSWORD)
    ENV: Literal["development", "production"] = "development"
    # Boxes learn that this worker is gone (its retained state turns offline) within 1.5 x this.
    KEEPALIVE_S: int = Field(default=10, ge=5, le=300)
    WORKER_SESSION_EXPIRY_S: int = Field(default=300, ge=0)
    GAP_GRACE_S: float = Field(default=5.0, gt=0)
    BATCH_MAX: int = Field(default=500, ge=1, le=10_000)
    # 0 = group commit: a batch is whatever arrived while the previous one was being stored, so a
    # quiet bus commits each message at once and a busy one builds large batches by itself.
    # Measured: a fixed 5 ms linger raised p99 box->database at 500 msg/s from ~13 ms to ~23 ms.
    BATCH_WAIT_MS: float = Field(default=0, ge=0)
    # Console sign-in (cloud.access): lockout after repeated failures, session lifetime.
    LOGIN_MAX_FAILURES: int = Field(default=5, ge=1, le=100)
    LOGIN_LOCKOUT_S: int = Field(default=900, ge=1)
    SESSION_TTL_S: int = Field(default=12 * 3600, ge=60)
    COOKIE_SECURE: bool | None = None
    """Secure session cookies; default: on, except over plain http in development."""
    CATALOGUE_DIR: str = "var/catalogue"
    """Images, thumbnails, sync files (content-addressed) and import reports."""
    CATALOGUE_DELTA_KEEP: int = Field(default=16, ge=1, le=1000)
    """Deltas published with each catalogue version (from each of the previous N versions); a box
    further behind takes the snapshot."""
    CATALOGUE_POLL_S: float = Field(default=2.0, gt=0, le=3600)
    """How often the serving process looks for a new catalogue version to announce."""

    @field_validator("BROKER_URL")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        BrokerAddress.from_url(value)
        return value

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

    @model_validator(mode="after")
    def _production_secrets(self) -> Settings:
        if self.ENV == "production" and self.BROKER_PASSWORD.get_secret_value() in ("", DEFAULT_BROKER_PASSWORD):
            raise ValueError(
                "OMNISHELF_BROKER_PASSWORD is empty or the development default; production needs this "
                "worker's own broker password"
            )
        return self

    @property
    def broker_address(self) -> BrokerAddress:
        return BrokerAddress.from_url(self.BROKER_URL)


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment (and `overrides`); raise `SettingsError` with one clear line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = ".".join(str(x) for x in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise SettingsError(f"OMNISHELF_{field}: {msg}" if field else msg) from None
