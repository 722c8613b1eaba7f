"""Tables of cloud.catalogue.

`products` was created by the foundation (0001) with the identity and names; the catalogue adds its
columns to that same table (`extend_existing`), so `cloud.models.Product` keeps working for the
seed and old readers while the importer writes whole rows through SQLAlchemy Core (batched upserts
are ~10x faster than the ORM unit of work at 100,000 rows).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
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
    "CatalogueImport",
    "CatalogueVersion",
    "ImageFile",
    "product_gtins",
    "products",
]

products = Table(
    "products",
    Base.metadata,
    Column("brand", String(200), nullable=True),
    Column("category", String(500), nullable=True, index=True),
    Column("desc_en", Text, nullable=True),
    Column("desc_zh", Text, nullable=True),
    Column("attributes", JSON, nullable=True),
    Column("region_prices", JSON, nullable=True),
    Column("images", JSON, nullable=True),
    Column("gtins", JSON, nullable=True),
    Column("status", String(16), nullable=False, server_default=text("'active'")),
    Column("serialised", Boolean, nullable=False, server_default=false()),
    Column("version", BigInteger, nullable=False, server_default=text("0"), index=True),
    Column("row_hash", String(64), nullable=True),
    Column("updated_at", UtcDateTime, nullable=True),
    extend_existing=True,
)
"""One row per SKU. `version` is the catalogue version that last changed the row (deltas select on
it); `row_hash` is the hash of the normalised input row, so a re-import of an unchanged row is a
no-op that creates no version."""

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
