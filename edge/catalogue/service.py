"""The catalogue as one unit of the agent: local store, sync from the cloud, local API."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import Any

from broker.client import JitteredBackoff
from broker.envelope import Envelope
from broker.payloads import CatalogData
from edge.catalogue.localapi import LocalApi
from edge.catalogue.store import CatalogueStore
from edge.catalogue.sync import CatalogueSync
from firmware_config import NodeConfig

__all__ = ["CatalogueService"]

log = logging.getLogger(__name__)


class CatalogueService:
    def __init__(self, cfg: NodeConfig) -> None:
        from edge.agent import AgentConfigError  # the agent imports this module lazily

        assert cfg.catalogue.cloud_url is not None
        try:
            self.store = CatalogueStore(cfg.catalogue_path)
        except (OSError, sqlite3.Error) as exc:
            raise AgentConfigError(f"catalogue.path {cfg.catalogue_path}: cannot open the catalogue ({exc})") from None
        self.sync = CatalogueSync(
            self.store,
            cfg.catalogue.cloud_url,
            image_budget_bytes=int(cfg.catalogue.image_budget_mb * 1024 * 1024),
            timeout=cfg.catalogue.fetch_timeout_s,
            backoff=JitteredBackoff(cfg.backoff.base_s, cfg.backoff.cap_s),
        )
        self.api: LocalApi | None = None
        if cfg.local_api.enabled:
            try:
                self.api = LocalApi(
                    self.store, cfg.local_api.host, cfg.local_api.port,
                    status=self._status, on_missing_image=self.sync.request_image,
                )
            except OSError as exc:
                raise AgentConfigError(
                    f"local_api: cannot listen on {cfg.local_api.host}:{cfg.local_api.port} ({exc.strerror}); "
                    "choose a free local_api.port or set local_api.enabled: false"
                ) from None

    @classmethod
    def from_config(cls, cfg: NodeConfig) -> CatalogueService | None:
        """None when the box has no catalogue (no `catalogue.cloud_url`)."""
        return cls(cfg) if cfg.catalogue.cloud_url else None

    def _status(self) -> dict[str, Any]:
        s = self.sync.stats
        return {
            "announced": self.sync.latest.version if self.sync.latest else None,
            "applied": s.applied, "rejected": s.rejected, "fetch_errors": s.fetch_errors,
            "images_stored": s.images_stored, "images_rejected": s.images_rejected,
            "images_evicted": s.images_evicted, "last_error": s.last_error,
        }

    def on_command(self, env: Envelope) -> None:
        if isinstance(env.data, CatalogData):
            self.sync.on_announcement(env.data)

    async def run(self) -> None:
        if self.api is not None:
            self.api.start()
            log.info("local API on %s (catalogue version %d)", self.api.url, self.store.version)
        try:
            await self.sync.run()
        finally:
            if self.api is not None:
                await asyncio.to_thread(self.api.stop)
            self.store.close()

    async def stop(self) -> None:
        await self.sync.stop()
