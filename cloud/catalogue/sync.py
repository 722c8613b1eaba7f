"""Catalogue sync files and their announcement to the boxes.

For the newest version V the cloud writes a snapshot (every active product) and one delta from each
of the previous `keep` versions (products whose `version` is in (A, V]: upserts, and deletions for
discontinued ones). Files are gzip'd JSON lines in the format of `broker.syncfile`, stored by sha256
and served by a plain GET: the catalogue is public data, and the box checks the bytes against the
hash from the authenticated bus.

The announcement is a retained `catalog` command per box, sent through the durable downlink (so
the box acknowledges it, and an undelivered older one is superseded by a newer one). Each is keyed
by (box, epoch, version, region), so any number of cloud hosts may run the announcer at once: the
first to write the key wins, the others write nothing.

A catalogue's identity is its epoch (random, created with the database): versions count within
one epoch, so a box holding another epoch's catalogue resyncs from the snapshot whatever the
numbers say (a new database, a switch of databases).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, insert, select
from sqlalchemy.orm import Session

from broker.envelope import MessageType
from broker.payloads import CatalogData, CatalogFile
from broker.syncfile import DelLine, ProductRecord, PutLine, SyncHeader, encode_header, encode_line
from cloud.bus import downlink
from cloud.catalogue.files import FileStore
from cloud.catalogue.models import Artifact, CatalogueEpoch, CatalogueVersion, products
from cloud.db import write_transaction
from cloud.engine import TaskContext
from cloud.models import DownlinkCommand, Node, Region, Store

__all__ = [
    "Announcement",
    "announce",
    "announcer",
    "catalogue_epoch",
    "ensure_artifacts",
    "latest_version",
    "product_record",
]

log = logging.getLogger(__name__)

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


def _lines(engine: Engine, kind: str, from_version: int, to_version: int) -> Iterator[PutLine | DelLine]:
    query = select(*_COLS).order_by(products.c.id)
    if kind == "snapshot":
        query = query.where(and_(products.c.version <= to_version, products.c.status == "active"))
    else:
        query = query.where(and_(products.c.version > from_version, products.c.version <= to_version))
    with engine.connect() as conn:
        for row in conn.execution_options(yield_per=2000).execute(query):
            if row.status == "active":
                yield PutLine(p=ProductRecord.model_validate(product_record(row)))
            else:
                yield DelLine(sku=row.sku)


def catalogue_epoch(conn: Connection | Engine) -> str:
    """This database's catalogue identity (created by the migration that added it)."""
    if isinstance(conn, Engine):
        with conn.connect() as c:
            return catalogue_epoch(c)
    return str(conn.execute(select(CatalogueEpoch.epoch)).scalar_one())


def _build(engine: Engine, store: FileStore, kind: str, from_version: int, to_version: int) -> tuple[str, int, int]:
    header = SyncHeader(kind=kind, from_version=from_version, to_version=to_version, epoch=catalogue_epoch(engine))
    body = [encode_header(header)]
    body.extend(encode_line(line) for line in _lines(engine, kind, from_version, to_version))
    # mtime=0: the same content gives the same bytes, hence the same hash, on every cloud host.
    data = gzip.compress(("\n".join(body) + "\n").encode(), compresslevel=6, mtime=0)
    return store.put(data), len(data), len(body) - 1


@dataclass(frozen=True, slots=True)
class Announcement:
    epoch: str
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
        catalogue_epoch(engine),
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


def _node_regions(conn: Connection) -> dict[str, str | None]:
    rows = conn.execute(
        select(Node.id, Region.code)
        .select_from(Node)
        .outerjoin(Store, Store.id == Node.store_id)
        .outerjoin(Region, Region.id == Store.region_id)
        .where(Node.retired_at.is_(None))
    ).all()
    return {node: region for node, region in rows}


def _key(node: str, ann: Announcement, region: str | None) -> str:
    return f"catalog:{node}:{ann.epoch}:{ann.version}:{region or '-'}"


def announce(engine: Engine, ann: Announcement) -> int:
    """Queue the announcement of `ann` for every box that has not had it (for its store's region);
    return how many were queued. Safe to run on several hosts at once (keyed commands)."""
    with write_transaction(engine) as conn:
        regions = _node_regions(conn)
        wanted = {_key(node, ann, region): (node, region) for node, region in regions.items()}
        done = set(conn.execute(select(DownlinkCommand.key).where(DownlinkCommand.key.in_(list(wanted)))).scalars())
        queued = 0
        for key, (node, region) in wanted.items():
            if key in done:
                continue
            data = CatalogData(version=ann.version, epoch=ann.epoch, region=region, snapshot=ann.snapshot,
                               deltas=ann.deltas)
            # Retained, so a box that reconnects sees the newest one; no expiry: it stands until a
            # newer version supersedes it.
            downlink.send(conn, node, MessageType.CATALOG, data, engine="catalogue", retain=True, expires_in=None,
                          key=key)
            queued += 1
    if queued:
        log.info("catalogue version %d (epoch %s…) queued for %d box(es)", ann.version, ann.epoch[:8], queued)
    return queued


async def announcer(ctx: TaskContext) -> None:
    """The catalogue engine's background task: build the newest version's files and announce them,
    on start, whenever a version appears and whenever a box appears or changes region."""
    catalogue_dir = Path(ctx.settings.CATALOGUE_DIR)
    keep = ctx.settings.CATALOGUE_DELTA_KEEP
    while True:
        try:
            ann = await asyncio.to_thread(ensure_artifacts, ctx.engine, catalogue_dir, keep)
            if ann is not None and await asyncio.to_thread(announce, ctx.engine, ann) > 0:
                ctx.wake_relay()
        except Exception:
            log.exception("catalogue announcement round failed; retrying in %.1f s", ctx.settings.CATALOGUE_POLL_S)
        await asyncio.sleep(ctx.settings.CATALOGUE_POLL_S)

