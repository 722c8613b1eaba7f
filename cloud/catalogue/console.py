"""Console pages of the catalogue: product list (search, filters), product page, import history.

Built on the console framework (`cloud.console`): its base layout, navigation and sign-in. The
data comes from `cloud.catalogue.service`, as the JSON API's does, so both always agree.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse

from cloud.access.scope import NotFound, Perm, Principal
from cloud.api.deps import EngineDep
from cloud.catalogue import service
from cloud.console.pages import console_user, render

__all__ = ["router"]

router = APIRouter(prefix="/console/catalogue", include_in_schema=False)

Reader = Annotated[Principal, Depends(console_user(Perm.BUSINESS))]
Text = Annotated[str, Query(max_length=200)]
PAGE = 50
MAX_PAGE = 100_000


@router.get("", response_class=HTMLResponse)
def products_page(
    request: Request, principal: Reader, engine: EngineDep, q: Text = "",
    category: Annotated[str, Query(max_length=500)] = "", brand: Text = "",
    status: Annotated[str, Query(pattern="^(|active|discontinued)$")] = "",
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
) -> HTMLResponse:
    query = service.ProductQuery.model_validate({
        "q": q or None, "category": category or None, "brand": brand or None, "status": status or None,
        "limit": PAGE, "offset": (page - 1) * PAGE,
    })
    result = service.list_products(engine, query)
    return render(
        request, "catalogue_products.html", principal, active="catalogue", result=result,
        filters={"q": q, "category": category, "brand": brand, "status": status}, page=page,
        pages=max(1, -(-result.total // PAGE)), categories=service.categories(engine),
        version=service.catalogue_version(engine).version,
    )


@router.get("/products/{sku:path}", response_class=HTMLResponse)
def product_page(request: Request, principal: Reader, engine: EngineDep, sku: str) -> HTMLResponse:
    try:
        product = service.get_product(engine, sku)
    except NotFound as exc:
        return render(request, "error.html", principal, status_code=404, active="catalogue",
                      message=str(exc), title="Product not found")
    return render(request, "catalogue_product.html", principal, active="catalogue", p=product)


@router.get("/imports", response_class=HTMLResponse)
def imports_page(request: Request, principal: Reader, engine: EngineDep) -> HTMLResponse:
    return render(request, "catalogue_imports.html", principal, active="catalogue", imports=service.imports(engine, 100))
