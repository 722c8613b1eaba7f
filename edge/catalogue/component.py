"""The catalogue as a box component: local copy and search, sync from the cloud, its API routes."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from broker.client import JitteredBackoff
from broker.envelope import Envelope, MessageType
from broker.payloads import CatalogData
from edge.catalogue.api import catalogue_routes
from edge.catalogue.store import CatalogueStore
from edge.catalogue.sync import CatalogueSync
from edge.component import BackgroundTask, CommandHandler, CommandRefused, Component, ComponentContext, ComponentError
from edge.localapi import Route

__all__ = ["CatalogueComponent"]


class CatalogueComponent(Component):
    name = "catalogue"

    def __init__(self, ctx: ComponentContext) -> None:
        cfg = ctx.config.catalogue
        assert cfg.cloud_url is not None
        try:
            self.store = CatalogueStore(ctx.paths.catalogue)
        except (OSError, sqlite3.Error) as exc:
            raise ComponentError(f"catalogue.path {ctx.paths.catalogue}: cannot open the catalogue ({exc})") from None
        self.sync = CatalogueSync(
            self.store,
            cfg.cloud_url,
            image_budget_bytes=int(cfg.image_budget_mb * 1024 * 1024),
            timeout=cfg.fetch_timeout_s,
            backoff=JitteredBackoff(ctx.config.backoff.base_s, ctx.config.backoff.cap_s),
        )

    def commands(self) -> Mapping[MessageType, CommandHandler]:
        return {MessageType.CATALOG: self._on_catalog}

    async def _on_catalog(self, env: Envelope) -> str:
        if not isinstance(env.data, CatalogData):
            raise CommandRefused(f"a catalog command carries CatalogData, got {type(env.data).__name__}")
        return await self.sync.accept(env.data)

    def routes(self) -> Sequence[Route]:
        return catalogue_routes(self.store, self.sync.request_image, self.sync.images.touch)

    def tasks(self) -> Sequence[BackgroundTask]:
        return (BackgroundTask("catalogue-sync", self.sync.run),)

    def status(self) -> Mapping[str, Any]:
        s, store, latest = self.sync.stats, self.store, self.sync.latest
        return {
            "version": store.version, "epoch": store.epoch, "region": store.region, "products": store.count(),
            "announced": latest.version if latest else None, "announced_epoch": latest.epoch if latest else None,
            "images": store.image_counts(), "image_bytes": store.image_bytes_used(),
            "applied": s.applied, "snapshots": s.snapshots, "rejected": s.rejected, "fetch_errors": s.fetch_errors,
            "images_stored": s.images_stored, "images_rejected": s.images_rejected,
            "images_evicted": s.images_evicted, "last_error": s.last_error,
        }

    async def stop(self) -> None:
        await self.sync.stop()

    def close(self) -> None:
        self.store.close()
