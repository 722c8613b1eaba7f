"""Tables of cloud.catalogue: products, their GTINs, catalogue versions, imports, images and the
sync files the boxes download. (`products` was created by migration 0001 and extended by 0003.)"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from cloud.models import Base, BigId, UtcDateTime

__all__ = [
    "Artifact",
    "CatalogueEpoch",
    "CatalogueImport",
    "CatalogueVersion",
    "ImageFile",
    "Product",
    "product_gtins",
    "products",
]

class Product(Base):
    """One row per SKU, in every channel's catalogue.

    `version` is the catalogue version that last changed the row (deltas select on it); `row_hash`
    is the hash of the normalised input row, so re-importing an unchanged row is a no-op that
    creates no version. The importer writes through `products` (SQLAlchemy Core): batched upserts
    are ~10x faster than the ORM unit of work at 100,000 rows.
    """

    __tablename__ = "products"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), unique=True)
    gtin: Mapped[str | None] = mapped_column(String(14))
    """The primary GTIN (14 digits); all of them are in `gtins` and `product_gtins`."""
    name_en: Mapped[str] = mapped_column(String(200))
    name_zh: Mapped[str] = mapped_column(String(200))
    list_price: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    brand: Mapped[str | None] = mapped_column(String(200))
    category: Mapped[str | None] = mapped_column(String(500), index=True)
    desc_en: Mapped[str | None] = mapped_column(Text)
    desc_zh: Mapped[str | None] = mapped_column(Text)
    attributes: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    region_prices: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    images: Mapped[list[Any] | None] = mapped_column(JSON)
    gtins: Mapped[list[str] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), server_default=text("'active'"))
    serialised: Mapped[bool] = mapped_column(Boolean, server_default=false())
    version: Mapped[int] = mapped_column(BigInteger, server_default=text("0"), index=True)
    row_hash: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


products: Table = Product.__table__  # type: ignore[assignment]


product_gtins = Table(
    "product_gtins",
    Base.metadata,
    Column("gtin", String(14), primary_key=True),
    Column("product_id", Integer, ForeignKey("products.id", ondelete="CASCADE"), nullable=False, index=True),
)
"""Each GTIN belongs to one product (lookup and uniqueness across the catalogue)."""


class CatalogueVersion(Base):
    __tablename__ = "catalogue_versions"

    version: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    source: Mapped[str] = mapped_column(String(200))
    changed: Mapped[int] = mapped_column(Integer, default=0)
    removed: Mapped[int] = mapped_column(Integer, default=0)


class CatalogueImport(Base):
    __tablename__ = "catalogue_imports"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    file: Mapped[str] = mapped_column(String(1000))
    format: Mapped[str] = mapped_column(String(8))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    status: Mapped[str] = mapped_column(String(16), default="running")
    """running, done, failed"""
    rows_ok: Mapped[int] = mapped_column(Integer, default=0)
    rows_failed: Mapped[int] = mapped_column(Integer, default=0)
    rows_changed: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[int | None] = mapped_column(BigInteger)
    """The catalogue version this import created; null when nothing changed."""
    report_path: Mapped[str | None] = mapped_column(String(1000))
    detail: Mapped[str | None] = mapped_column(Text)


class ImageFile(Base):
    """A checked product image, stored by content hash, with its thumbnail."""

    __tablename__ = "catalogue_images"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    mime: Mapped[str] = mapped_column(String(32))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(BigInteger)
    thumb_sha256: Mapped[str] = mapped_column(String(64))
    thumb_size: Mapped[int] = mapped_column(BigInteger)


class Artifact(Base):
    """A generated sync file (snapshot of a version, or delta between two), content-addressed."""

    __tablename__ = "catalogue_artifacts"
    __table_args__ = (
        UniqueConstraint("kind", "from_version", "to_version"),
        Index("ix_catalogue_artifacts_to_version", "to_version"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))
    """snapshot or delta"""
    from_version: Mapped[int] = mapped_column(BigInteger)
    """0 for a snapshot."""
    to_version: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    rows: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class CatalogueEpoch(Base):
    """The catalogue's identity: one row, a random id made when the table was created. Versions
    count within an epoch; a box holding another epoch resyncs from the snapshot."""

    __tablename__ = "catalogue_epoch"

    epoch: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
