"""Catalogue sync files and their announcement to the boxes.

For the newest version V the cloud writes a snapshot (every active product) and one delta from each
of the previous `keep` versions (products whose `version` is in (A, V]: upserts, and deletions for
discontinued ones). Files are gzip'd JSON lines, stored by sha256 and served by a plain GET: the
catalogue is public data, and the box checks the bytes against the hash from the authenticated bus.

The announcement (`dn/{node}/catalog`, QoS 1, retained, so a box that was away sees the newest one
on reconnect) goes to every known node; it differs per node only by the store's region.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, delete, func, insert, select
from sqlalchemy.orm import Session

from broker import topics
from broker.client import BusError, MqttConnection
from broker.envelope import Envelope, MessageType, encode
from broker.payloads import CatalogData, CatalogFile
from cloud.catalogue.files import FileStore
from cloud.catalogue.models import Artifact, CatalogueVersion, products
from cloud.db import write_transaction
from cloud.ingest import IngestWorker
from cloud.models import Node, Region, Store
from cloud.settings import Settings

__all__ = [
    "FORMAT",
    "Announcement",
    "CataloguePublisher",
    "announcement",
    "ensure_artifacts",
    "latest_version",
    "product_record",
    "start_publisher",
]

log = logging.getLogger(__name__)

FORMAT = 1
"""Version of the sync file format (first line of every file)."""

_COLS = (
    products.c.sku, products.c.gtins, products.c.name_en, products.c.name_zh, products.c.desc_en,
    products.c.desc_zh, products.c.brand, products.c.category, products.c.attributes, products.c.list_price,
    products.c.region_prices, products.c.images, products.c.serialised, products.c.status, products.c.gtin,
)


def product_record(row: Any) -> dict[str, Any]:
    """The wire form of one product (what a box stores)."""
    gtins = row.gtins if row.gtins is not None else ([row.gtin] if row.gtin else [])
    return {
        "sku": row.sku,
        "gtins": gtins,
        "name_en": row.name_en,
        "name_zh": row.name_zh,
        "desc_en": row.desc_en,
        "desc_zh": row.desc_zh,
        "brand": row.brand,
        "category": row.category,
        "attributes": row.attributes or {},
        "list_price": str(row.list_price),
        "prices": row.region_prices or {},
        "images": row.images or [],
        "serialised": bool(row.serialised),
    }


def latest_version(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.max(CatalogueVersion.version))) or 0)


def _lines(engine: Engine, kind: str, from_version: int, to_version: int) -> Iterator[dict[str, Any]]:
    query = select(*_COLS).order_by(products.c.id)
    if kind == "snapshot":
        query = query.where(and_(products.c.version <= to_version, products.c.status == "active"))
    else:
        query = query.where(and_(products.c.version > from_version, products.c.version <= to_version))
    with engine.connect() as conn:
        for row in conn.execution_options(yield_per=2000).execute(query):
            if row.status == "active":
                yield {"op": "put", "p": product_record(row)}
            else:
                yield {"op": "del", "sku": row.sku}


def _build(engine: Engine, store: FileStore, kind: str, from_version: int, to_version: int) -> tuple[str, int, int]:
    body = [json.dumps({"format": FORMAT, "kind": kind, "from": from_version, "to": to_version}, separators=(",", ":"))]
    body.extend(json.dumps(line, ensure_ascii=False, separators=(",", ":")) for line in _lines(engine, kind, from_version, to_version))
    # mtime=0: the same content gives the same bytes, hence the same hash, on every cloud host.
    data = gzip.compress(("\n".join(body) + "\n").encode(), compresslevel=6, mtime=0)
    return store.put(data), len(data), len(body) - 1


@dataclass(frozen=True, slots=True)
class Announcement:
    version: int
    snapshot: CatalogFile
    deltas: tuple[CatalogFile, ...]


def _ref(a: Artifact) -> CatalogFile:
    return CatalogFile(path=f"/catalogue/files/{a.sha256}", sha256=a.sha256, size=a.size, from_version=a.from_version)


def ensure_artifacts(engine: Engine, catalogue_dir: Path, keep: int = 16, version: int | None = None) -> Announcement | None:
    """Make sure the snapshot and deltas of `version` (default: the newest) exist; None if no version."""
    version = latest_version(engine) if version is None else version
    if version == 0:
        return None
    store = FileStore(catalogue_dir)
    with Session(engine) as conn:
        previous = [
            int(v)
            for v in conn.scalars(
                select(CatalogueVersion.version).where(CatalogueVersion.version < version)
                .order_by(CatalogueVersion.version.desc()).limit(keep)
            )
        ]
        have = {
            (a.kind, a.from_version): a
            for a in conn.scalars(select(Artifact).where(Artifact.to_version == version))
            if store.path(a.sha256).exists()
        }
    wanted = [("snapshot", 0)] + [("delta", v) for v in previous]
    missing = [w for w in wanted if w not in have]
    if missing:
        now = datetime.now(UTC)
        built = {w: _build(engine, store, w[0], w[1], version) for w in missing}
        with write_transaction(engine) as conn:
            for (kind, frm), (sha, size, rows) in built.items():
                # Another host may have built the same file (same bytes, same hash) meanwhile.
                conn.execute(
                    delete(Artifact).where(
                        and_(Artifact.kind == kind, Artifact.from_version == frm, Artifact.to_version == version)
                    )
                )
                conn.execute(
                    insert(Artifact).values(
                        kind=kind, from_version=frm, to_version=version, sha256=sha, size=size, rows=rows, created_at=now
                    )
                )
        with Session(engine) as conn:
            have = {(a.kind, a.from_version): a for a in conn.scalars(select(Artifact).where(Artifact.to_version == version))}
        log.info("catalogue version %d: built %d sync file(s)", version, len(missing))
        _prune(engine, store, version)
    return Announcement(
        version,
        _ref(have[("snapshot", 0)]),
        tuple(_ref(have[("delta", v)]) for v in previous),
    )


def _prune(engine: Engine, store: FileStore, version: int) -> None:
    """Drop the sync files of versions before the previous one (a box may still be downloading
    those of the previous announcement); a file still named by a kept artifact stays."""
    with write_transaction(engine) as conn:
        old = conn.execute(
            select(Artifact.id, Artifact.sha256).where(Artifact.to_version < version - 1)
        ).all()
        if not old:
            return
        conn.execute(delete(Artifact).where(Artifact.id.in_([row.id for row in old])))
        kept = set(conn.scalars(select(Artifact.sha256)))
    for sha in {row.sha256 for row in old} - kept:
        with contextlib.suppress(FileNotFoundError):
            store.path(sha).unlink()


def announcement(ann: Announcement, node: str, region: str | None) -> Envelope:
    data = CatalogData(version=ann.version, region=region, snapshot=ann.snapshot, deltas=ann.deltas)
    return Envelope(type=MessageType.CATALOG, node=node, session=0, seq=0, data=data)


def _node_regions(engine: Engine) -> dict[str, str | None]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(Node.id, Region.code)
            .select_from(Node)
            .outerjoin(Store, Store.id == Node.store_id)
            .outerjoin(Region, Region.id == Store.region_id)
        ).all()
    return {node: region for node, region in rows}


class CataloguePublisher:
    """Announces the newest catalogue version to every node, and to each new node as it appears.

    It publishes through a connection it is handed (the ingest worker's), because a second
    connection under the same broker username would take over the worker's session.
    """

    def __init__(
        self,
        engine: Engine,
        catalogue_dir: Path,
        connection: Callable[[], MqttConnection | None],
        *,
        keep: int = 16,
        poll_s: float = 2.0,
    ) -> None:
        self.engine = engine
        self.catalogue_dir = catalogue_dir
        self.connection = connection
        self.keep = keep
        self.poll_s = poll_s
        self.sent: dict[str, int] = {}
        """Node → version announced to it by this process."""
        self.announced = asyncio.Event()
        """Set after each round that published something (tests, diagnostics)."""
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Look for a new version now (after an import in this process)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("catalogue announcement round failed; retrying in %.1f s", self.poll_s)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)

    async def round(self) -> int:
        """Announce where needed; return how many announcements were published."""
        conn = self.connection()
        if conn is None or not conn.is_connected:
            return 0
        ann = await asyncio.to_thread(ensure_artifacts, self.engine, self.catalogue_dir, self.keep)
        if ann is None:
            return 0
        nodes = await asyncio.to_thread(_node_regions, self.engine)
        sent = 0
        for node, region in nodes.items():
            if self.sent.get(node) == ann.version:
                continue
            try:
                env = announcement(ann, node, region)
                await asyncio.wait_for(
                    conn.publish(topics.dn(node, MessageType.CATALOG), encode(env), retain=True), 10
                )
            except (BusError, TimeoutError, topics.TopicError, ValueError) as exc:
                log.warning("catalogue version %d not announced to %s: %s", ann.version, node, exc)
                continue
            self.sent[node] = ann.version
            sent += 1
        if sent:
            log.info("catalogue version %d announced to %d node(s)", ann.version, sent)
            self.announced.set()
        return sent


def start_publisher(app: Any, settings: Settings, engine: Engine, worker: IngestWorker) -> asyncio.Task[None]:
    """Run a publisher for the app's lifetime, publishing over the worker's connection."""
    publisher = CataloguePublisher(
        engine,
        Path(settings.CATALOGUE_DIR),
        # The worker reconnects on its own; the publisher takes whatever connection is current.
        lambda: worker.connection,
        keep=settings.CATALOGUE_DELTA_KEEP,
        poll_s=settings.CATALOGUE_POLL_S,
    )
    app.state.catalogue_publisher = publisher
    return asyncio.create_task(publisher.run(), name="catalogue-publisher")
