"""Console pages of the catalogue: product list (search, filters), product page, import history.

Built on the console framework (`cloud.console`): its base layout, navigation and sign-in. The
data comes from the same functions as the JSON API, so both always agree.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse

from cloud.access.scope import Perm, Principal
from cloud.catalogue import api
from cloud.console.pages import console_user, render

__all__ = ["router"]

router = APIRouter(prefix="/console/catalogue", include_in_schema=False)

Reader = Annotated[Principal, Depends(console_user(Perm.BUSINESS))]
Text = Annotated[str, Query(max_length=200)]
PAGE = 50


@router.get("", response_class=HTMLResponse)
def products_page(
    request: Request, principal: Reader, q: Text = "", category: Annotated[str, Query(max_length=500)] = "",
    brand: Text = "", status: Annotated[str, Query(pattern="^(|active|discontinued)$")] = "",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> HTMLResponse:
    engine = request.app.state.engine
    result = api.list_products(engine, q or None, category or None, brand or None, status or None, PAGE, (page - 1) * PAGE)
    return render(
        request, "catalogue_products.html", principal, active="catalogue", result=result,
        filters={"q": q, "category": category, "brand": brand, "status": status}, page=page,
        pages=max(1, -(-result.total // PAGE)), categories=api.categories(engine), version=api.version(engine)["version"],
    )


@router.get("/products/{sku:path}", response_class=HTMLResponse)
def product_page(request: Request, principal: Reader, sku: str) -> HTMLResponse:
    try:
        product = api.get_product(request.app.state.engine, sku)
    except HTTPException as exc:
        return render(request, "error.html", principal, status_code=exc.status_code, active="catalogue",
                      message=str(exc.detail), title="Product not found")
    return render(request, "catalogue_product.html", principal, active="catalogue", p=product)


@router.get("/imports", response_class=HTMLResponse)
def imports_page(request: Request, principal: Reader) -> HTMLResponse:
    return render(request, "catalogue_imports.html", principal, active="catalogue",
                  imports=api.imports(request.app.state.engine, 100))
