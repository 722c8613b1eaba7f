"""The catalogue's routes on the box's local API, served from the local copy (no link needed).

    GET /products?category=&limit=&offset=
    GET /products/{sku}
    GET /categories
    GET /search?q=&limit=
    GET /images/{sha256}      only verified, cached files; 404 (and a fetch soon) otherwise
"""

from __future__ import annotations

import re
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from edge.catalogue.store import CatalogueStore
from edge.localapi import ApiError, Request, Response, Route, integer, text

__all__ = ["catalogue_routes"]

_SHA = re.compile(r"[0-9a-f]{64}")
_SKU = re.compile(r"[A-Za-z0-9._\-/]{1,64}")


def _image_type(data: bytes) -> str:
    if data[:2] == b"\xff\xd8":
        return "image/jpeg"
    if data[:4] == b"\x89PNG":
        return "image/png"
    return "application/octet-stream"


def catalogue_routes(store: CatalogueStore, on_missing_image: Callable[[str], None] | None = None,
                     on_image_served: Callable[[str], None] | None = None) -> tuple[Route, ...]:
    """`on_image_served`: an image was shown (the file cache's least-recently-used order)."""

    def products(req: Request) -> Any:
        category = req.params["category"]
        assert isinstance(category, str | None)
        return store.products(category=category or None, limit=int(req.params["limit"] or 0),
                              offset=int(req.params["offset"] or 0))

    def product(req: Request) -> Any:
        sku = req.args["sku"]
        if not _SKU.fullmatch(sku):
            raise ApiError(HTTPStatus.BAD_REQUEST,
                           f"{sku[:80]!r} is not a SKU: expected 1-64 characters of A-Z, a-z, 0-9, '.', '_', '-', '/'")
        found = store.product(sku)
        if found is None:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no product with SKU {sku!r} in this box's catalogue")
        return found

    def categories(_req: Request) -> Any:
        return store.categories()

    def search(req: Request) -> Any:
        q = req.params["q"]
        assert isinstance(q, str)
        return store.search(q, int(req.params["limit"] or 0))

    def image(req: Request) -> Response:
        sha = req.args["sha256"]
        if not _SHA.fullmatch(sha):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"{sha[:80]!r} is not an image id: expected 64 lowercase hex digits")
        if not store.image_ok(sha):
            if on_missing_image is not None:
                on_missing_image(sha)
            raise ApiError(HTTPStatus.NOT_FOUND, f"image {sha} is not on this box yet")
        try:
            data = store.image_path(sha).read_bytes()
        except FileNotFoundError:
            store.image_forget(sha)
            raise ApiError(HTTPStatus.NOT_FOUND, f"image {sha} is not on this box yet") from None
        if on_image_served is not None:
            on_image_served(sha)
        return Response(data, content_type=_image_type(data), headers={"Cache-Control": "public, max-age=31536000, immutable"})

    return (
        Route("GET", "/products", products,
              params=(text("category", max_len=500), integer("limit", 50, 1, 500), integer("offset", 0, 0, 10**9))),
        Route("GET", "/products/{sku...}", product),  # SKUs may contain '/'
        Route("GET", "/categories", categories),
        Route("GET", "/search", search, params=(text("q", required=True, max_len=200), integer("limit", 20, 1, 200))),
        Route("GET", "/images/{sha256}", image),
    )
