"""Catalogue reads for the JSON API, the console and the command line: products (search and
filters), categories, imports and their error reports, the catalogue version.

The only module of the catalogue's web side that runs SQL: routes and pages call these functions,
so the API and the console always show the same data. Unknown things raise `NotFound` (404).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import ColumnElement, Engine, func, or_, select
from sqlalchemy.orm import Session

import gs1
from cloud.access.scope import NotFound
from cloud.catalogue.models import CatalogueImport, product_gtins, products
from cloud.catalogue.sync import latest_version, product_record

__all__ = [
    "DB_INT_MAX",
    "CategoryOut",
    "ImportOut",
    "NotFound",
    "ProductOut",
    "ProductPage",
    "ProductQuery",
    "VersionOut",
    "catalogue_version",
    "categories",
    "get_product",
    "import_report",
    "imports",
    "list_products",
]

DB_INT_MAX = 2**63 - 1
"""The largest integer both databases take (a signed 64-bit BIGINT; SQLite's INTEGER is as wide)."""


class ProductQuery(BaseModel):
    """Search and filters of the product list; every bound is checked before any SQL runs."""

    # Unknown query parameters are ignored, as they always were by this API.
    model_config = ConfigDict(frozen=True)

    q: str | None = Field(None, max_length=200, description="SKU, GTIN, or part of a name (English or Chinese)")
    category: str | None = Field(None, max_length=500, description="a category and its sub-categories, e.g. 'Food > Tea'")
    brand: str | None = Field(None, max_length=200)
    status: Literal["active", "discontinued"] | None = None
    limit: int = Field(50, ge=1, le=500)
    offset: int = Field(0, ge=0, le=DB_INT_MAX)


class ProductOut(BaseModel):
    sku: str
    gtins: list[str]
    name_en: str
    name_zh: str
    desc_en: str | None
    desc_zh: str | None
    brand: str | None
    category: str | None
    attributes: dict[str, str]
    list_price: Decimal
    prices: dict[str, Decimal]
    images: list[dict[str, str]]
    serialised: bool
    status: str
    version: int
    """The catalogue version that last changed the product."""


class ProductPage(BaseModel):
    total: int
    items: list[ProductOut]


class CategoryOut(BaseModel):
    path: str
    products: int
    """Active products filed directly under this path."""


class ImportOut(BaseModel):
    id: int
    file: str
    format: str
    status: str
    rows_ok: int
    rows_failed: int
    rows_changed: int
    version: int | None
    started_at: str
    finished_at: str | None
    detail: str | None
    report: str | None
    """URL path of the error report (CSV), when the import wrote one."""


class VersionOut(BaseModel):
    version: int
    """The newest catalogue version; 0 while the catalogue is empty."""


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _conditions(query: ProductQuery) -> list[ColumnElement[bool]]:
    cond: list[ColumnElement[bool]] = []
    if query.q and query.q.strip():
        text = query.q.strip()
        like = f"%{_like_escape(text)}%"
        ors: list[ColumnElement[bool]] = [
            products.c.sku == text,
            products.c.name_en.ilike(like, escape="\\"),
            products.c.name_zh.like(like, escape="\\"),
        ]
        if gs1.is_valid_gtin(text):
            gtin = gs1.normalise_gtin(text)
            ors.append(products.c.id.in_(select(product_gtins.c.product_id).where(product_gtins.c.gtin == gtin)))
        cond.append(or_(*ors))
    if query.category and query.category.strip():
        path = query.category.strip()
        # "Food > Tea" holds "Food > Tea > Green", not "Food > Teapots".
        cond.append(or_(products.c.category == path, products.c.category.like(f"{_like_escape(path)} > %", escape="\\")))
    if query.brand:
        cond.append(products.c.brand == query.brand)
    if query.status:
        cond.append(products.c.status == query.status)
    return cond


def _product_out(row: Any) -> ProductOut:
    return ProductOut(**product_record(row), status=row.status, version=row.version)


def list_products(engine: Engine, query: ProductQuery) -> ProductPage:
    """One page of the products matching `query`, ordered by SKU, with the total match count."""
    cond = _conditions(query)
    with engine.connect() as conn:
        total = conn.scalar(select(func.count()).select_from(products).where(*cond)) or 0
        rows = conn.execute(
            select(products).where(*cond).order_by(products.c.sku).limit(query.limit).offset(query.offset)
        ).all()
    return ProductPage(total=total, items=[_product_out(r) for r in rows])


def get_product(engine: Engine, sku: str) -> ProductOut:
    with engine.connect() as conn:
        row = conn.execute(select(products).where(products.c.sku == sku)).first()
    if row is None:
        raise NotFound(f"no product with SKU {sku!r}")
    return _product_out(row)


def categories(engine: Engine) -> list[CategoryOut]:
    """Category paths of the active products, with their counts."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(products.c.category, func.count()).where(products.c.status == "active")
            .group_by(products.c.category).order_by(products.c.category)
        ).all()
    return [CategoryOut(path=c, products=n) for c, n in rows if c]


def imports(engine: Engine, limit: int = 50) -> list[ImportOut]:
    """The latest imports, newest first."""
    with Session(engine) as session:
        rows = session.scalars(select(CatalogueImport).order_by(CatalogueImport.id.desc()).limit(limit)).all()
    return [
        ImportOut(
            id=r.id, file=r.file, format=r.format, status=r.status, rows_ok=r.rows_ok, rows_failed=r.rows_failed,
            rows_changed=r.rows_changed, version=r.version, started_at=r.started_at.isoformat(),
            finished_at=r.finished_at.isoformat() if r.finished_at else None, detail=r.detail,
            report=f"/catalogue/imports/{r.id}/report" if r.report_path else None,
        )
        for r in rows
    ]


def import_report(engine: Engine, import_id: int) -> Path:
    """The error report (CSV) of import `import_id`."""
    with engine.connect() as conn:
        found = conn.execute(select(CatalogueImport.report_path).where(CatalogueImport.id == import_id)).first()
    if found is None:
        raise NotFound(f"no import with id {import_id}")
    path = found.report_path
    if path is None or not Path(path).is_file():
        raise NotFound(f"import {import_id} has no error report (none was written, or the file has been removed)")
    return Path(path)


def catalogue_version(engine: Engine) -> VersionOut:
    return VersionOut(version=latest_version(engine))
