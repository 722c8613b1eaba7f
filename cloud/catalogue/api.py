"""Catalogue HTTP API: products, categories, imports and their reports, and the content-addressed
sync files. Each route states what it needs and calls `cloud.catalogue.service`.

`/catalogue/files/{sha256}` is deliberately a plain GET: the catalogue is public product data, and
a box trusts a file only when its bytes hash to the value announced on the authenticated bus.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import BaseModel

from cloud.access.scope import Perm
from cloud.access.web import require
from cloud.api.deps import EngineDep
from cloud.api.schemas import Problem
from cloud.catalogue import service
from cloud.catalogue.files import FileStore
from cloud.catalogue.service import CategoryOut, ImportOut, ProductOut, ProductPage, ProductQuery, VersionOut

__all__ = ["managed", "router"]


class FieldProblem(BaseModel):
    loc: list[str | int]
    """Where: ["query", "offset"], ["path", "import_id"], …"""
    msg: str
    """What was expected, e.g. "Input should be less than or equal to 9223372036854775807"."""
    type: str
    input: Any = None
    """What was found."""


class ValidationProblem(BaseModel):
    detail: list[FieldProblem]


def _answers(*codes: int) -> dict[int | str, dict[str, Any]]:
    described: dict[int, dict[str, Any]] = {
        400: {"model": Problem, "description": "Not a sha256 hex digest"},
        401: {"model": Problem, "description": "Not signed in, and no valid API key"},
        403: {"model": Problem, "description": "The role has no business access"},
        404: {"model": Problem, "description": "Unknown; `detail` names what was looked for"},
        422: {"model": ValidationProblem, "description": "A parameter is malformed or out of range; `detail` names it"},
    }
    return {code: described[code] for code in codes}


router = APIRouter(prefix="/catalogue", tags=["catalogue"])
"""Public: only the content-addressed sync files and images (boxes have no HTTP credentials)."""
managed = APIRouter(tags=["catalogue"], dependencies=[Depends(require(Perm.BUSINESS))], responses=_answers(401, 403))
"""Products, categories, imports: for signed-in users and API keys whose role has BUSINESS."""


def catalogue_dir(request: Request) -> Path:
    return Path(getattr(request.app.state, "catalogue_dir", "var/catalogue"))


CatalogueDir = Annotated[Path, Depends(catalogue_dir)]
ProductFilters = Annotated[ProductQuery, Query()]
ImportId = Annotated[int, PathParam(ge=1, le=service.DB_INT_MAX, description="an import's id (see /catalogue/imports)")]
ImportLimit = Annotated[int, Query(ge=1, le=500, description="how many of the latest imports")]


@managed.get("/version")
def version(engine: EngineDep) -> VersionOut:
    return service.catalogue_version(engine)


@managed.get("/products", responses=_answers(422))
def list_products(filters: ProductFilters, engine: EngineDep) -> ProductPage:
    return service.list_products(engine, filters)


# `:path`, because a SKU may contain '/'.
@managed.get("/products/{sku:path}", responses=_answers(404))
def get_product(sku: str, engine: EngineDep) -> ProductOut:
    return service.get_product(engine, sku)


@managed.get("/categories")
def categories(engine: EngineDep) -> list[CategoryOut]:
    return service.categories(engine)


@managed.get("/imports", responses=_answers(422))
def imports(engine: EngineDep, limit: ImportLimit = 50) -> list[ImportOut]:
    return service.imports(engine, limit)


@managed.get("/imports/{import_id}/report", response_class=FileResponse, responses=_answers(404, 422))
def import_report(import_id: ImportId, engine: EngineDep) -> FileResponse:
    path = service.import_report(engine, import_id)
    return FileResponse(path, media_type="text/csv", filename=f"import-{import_id}-errors.csv")


@router.get("/files/{sha256}", response_class=FileResponse, responses=_answers(400, 404))
def file(sha256: str, directory: CatalogueDir) -> FileResponse:
    try:
        path = FileStore(directory).path(sha256)
    except ValueError:
        raise HTTPException(400, f"{sha256!r} is not a sha256 hex digest (expected 64 characters 0-9 a-f)") from None
    if not path.is_file():
        raise HTTPException(404, f"no catalogue file {sha256}")
    # Content-addressed: the bytes behind a name never change.
    return FileResponse(path, media_type="application/octet-stream", headers={"Cache-Control": "public, max-age=31536000, immutable"})


router.include_router(managed)
