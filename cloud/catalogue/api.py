"""Catalogue HTTP API: products, imports and their reports, and the content-addressed sync files.

`/catalogue/files/{sha256}` is deliberately a plain GET: the catalogue is public product data, and
a box trusts a file only when its bytes hash to the value announced on the authenticated bus.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from cloud.access.scope import Perm
from cloud.access.web import require
from cloud.api.deps import EngineDep
from cloud.catalogue.files import FileStore
from cloud.catalogue.models import CatalogueImport, product_gtins, products
from cloud.catalogue.schema import GTIN_RE
from cloud.catalogue.sync import latest_version, product_record

__all__ = ["router"]

router = APIRouter(prefix="/catalogue", tags=["catalogue"])
"""Public: only the content-addressed sync files and images (boxes have no HTTP credentials)."""
managed = APIRouter(tags=["catalogue"], dependencies=[Depends(require(Perm.BUSINESS))])
"""Products, categories, imports: for signed-in users and API keys whose role has BUSINESS."""


def catalogue_dir(request: Request) -> Path:
    return Path(getattr(request.app.state, "catalogue_dir", "var/catalogue"))


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


class ProductPage(BaseModel):
    total: int
    items: list[ProductOut]


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


def _out(row: Any) -> ProductOut:
    rec = product_record(row)
    return ProductOut(**rec, status=row.status, version=row.version)


@managed.get("/version")
def version(engine: EngineDep) -> dict[str, int]:
    return {"version": latest_version(engine)}


@managed.get("/products")
def list_products(
    engine: EngineDep,
    q: Annotated[str | None, Query(max_length=200, description="SKU, GTIN, or part of a name")] = None,
    category: Annotated[str | None, Query(max_length=500, description="category path prefix, e.g. 'Food > Tea'")] = None,
    brand: Annotated[str | None, Query(max_length=200)] = None,
    status: Annotated[str | None, Query(pattern="^(active|discontinued)$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> ProductPage:
    cond = []
    if q:
        text = q.strip()
        like = f"%{text.replace('%', '').replace('_', '')}%"
        ors = [products.c.sku == text, products.c.name_en.ilike(like), products.c.name_zh.like(like)]
        if GTIN_RE.match(text):
            ors.append(products.c.id.in_(select(product_gtins.c.product_id).where(product_gtins.c.gtin == text.zfill(14))))
        cond.append(or_(*ors))
    if category:
        cond.append(products.c.category.like(f"{category.strip()}%"))
    if brand:
        cond.append(products.c.brand == brand)
    if status:
        cond.append(products.c.status == status)
    with engine.connect() as conn:
        total = conn.scalar(select(func.count()).select_from(products).where(*cond)) or 0
        rows = conn.execute(
            select(products).where(*cond).order_by(products.c.sku).limit(limit).offset(offset)
        ).all()
    return ProductPage(total=total, items=[_out(r) for r in rows])


@managed.get("/products/{sku}")
def get_product(engine: EngineDep, sku: str) -> ProductOut:
    with engine.connect() as conn:
        row = conn.execute(select(products).where(products.c.sku == sku)).first()
    if row is None:
        raise HTTPException(404, f"no product with SKU {sku!r}")
    return _out(row)


@managed.get("/categories")
def categories(engine: EngineDep) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(products.c.category, func.count()).where(products.c.status == "active")
            .group_by(products.c.category).order_by(products.c.category)
        ).all()
    return [{"path": c, "products": n} for c, n in rows if c]


@managed.get("/imports")
def imports(engine: EngineDep, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[ImportOut]:
    with Session(engine) as conn:
        rows = conn.scalars(select(CatalogueImport).order_by(CatalogueImport.id.desc()).limit(limit)).all()
    return [
        ImportOut(
            id=r.id, file=r.file, format=r.format, status=r.status, rows_ok=r.rows_ok, rows_failed=r.rows_failed,
            rows_changed=r.rows_changed, version=r.version, started_at=r.started_at.isoformat(),
            finished_at=r.finished_at.isoformat() if r.finished_at else None, detail=r.detail,
            report=f"/catalogue/imports/{r.id}/report" if r.report_path else None,
        )
        for r in rows
    ]


@managed.get("/imports/{import_id}/report", response_class=FileResponse)
def import_report(engine: EngineDep, import_id: int) -> FileResponse:
    with engine.connect() as conn:
        path = conn.scalar(select(CatalogueImport.report_path).where(CatalogueImport.id == import_id))
    if path is None or not Path(path).is_file():
        raise HTTPException(404, f"import {import_id} has no report")
    return FileResponse(path, media_type="text/csv", filename=f"import-{import_id}-errors.csv")


@router.get("/files/{sha256}", response_class=FileResponse)
def file(request: Request, sha256: str) -> FileResponse:
    try:
        path = FileStore(catalogue_dir(request)).path(sha256)
    except ValueError:
        raise HTTPException(400, f"{sha256!r} is not a sha256 hex digest") from None
    if not path.is_file():
        raise HTTPException(404, f"no catalogue file {sha256}")
    # Content-addressed: the bytes behind a name never change.
    return FileResponse(path, media_type="application/octet-stream", headers={"Cache-Control": "public, max-age=31536000, immutable"})


router.include_router(managed)
