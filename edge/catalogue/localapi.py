"""The box's local HTTP API for the kiosk UI, served from the local catalogue copy (no link needed).

The standard library's HTTP server with a small thread pool: the agent must stay small (idle RSS budget 60 MB on a
Pi-class box), and a web framework plus an ASGI server would cost more than the whole agent does.

    GET /status                        catalogue version, product count, image cache
    GET /products?category=&limit=&offset=
    GET /products/{sku}
    GET /categories
    GET /search?q=&limit=
    GET /images/{sha256}               only verified, cached files; 404 (and a fetch soon) otherwise
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from edge.catalogue.store import CatalogueStore

__all__ = ["LocalApi"]

log = logging.getLogger(__name__)

_SHA = re.compile(r"^[0-9a-f]{64}$")


class _ApiError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def _int(params: dict[str, list[str]], name: str, default: int, lo: int, hi: int) -> int:
    raw = params.get(name, [str(default)])[-1]
    try:
        value = int(raw)
    except ValueError:
        raise _ApiError(HTTPStatus.BAD_REQUEST, f"{name}={raw!r} is not a whole number") from None
    if not lo <= value <= hi:
        raise _ApiError(HTTPStatus.BAD_REQUEST, f"{name}={value} is outside {lo}..{hi}")
    return value


class _PooledHTTPServer(HTTPServer):
    """Requests handled by a few long-lived threads: each keeps its SQLite connection (and page
    cache) across requests, where a thread per request would open a fresh connection every time."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], workers: int = 4) -> None:
        super().__init__(address, handler)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="local-api")

    def process_request(self, request: Any, client_address: Any) -> None:
        self.pool.submit(self._handle, request, client_address)

    def _handle(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)


class LocalApi:
    def __init__(
        self,
        store: CatalogueStore,
        host: str = "127.0.0.1",
        port: int = 8480,
        *,
        status: Callable[[], dict[str, Any]] | None = None,
        on_missing_image: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.status_extra = status
        self.on_missing_image = on_missing_image
        api = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "omnishelf-box"

            def do_GET(self) -> None:
                api._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("local api: " + format, *args)

        self.server = _PooledHTTPServer((host, port), Handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        host = self.server.server_address[0]
        return f"http://{host if isinstance(host, str) else host.decode()}:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self.server.serve_forever, name="local-api", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.server.pool.shutdown(wait=False, cancel_futures=True)
        if self._thread is not None:
            self._thread.join(5)

    # -- routing -----------------------------------------------------------------------------------

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        try:
            parts = urlsplit(req.path)
            params = parse_qs(parts.query)
            segs = [unquote(s) for s in parts.path.strip("/").split("/") if s]
            if segs[:1] == ["images"] and len(segs) == 2:
                self._image(req, segs[1])
                return
            body = self._route(segs, params)
            self._json(req, HTTPStatus.OK, body)
        except _ApiError as exc:
            self._json(req, exc.status, {"error": str(exc)})
        except Exception:
            log.exception("local api: %s failed", req.path)
            self._json(req, HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error; see the box log"})

    def _route(self, segs: list[str], params: dict[str, list[str]]) -> Any:
        store = self.store
        if segs == ["status"]:
            out: dict[str, Any] = {"version": store.version, "region": store.region, "products": store.count(),
                                   "images": store.image_counts(), "image_bytes": store.image_bytes_used()}
            if self.status_extra is not None:
                out.update(self.status_extra())
            return out
        if segs == ["products"]:
            category = params.get("category", [None])[-1]
            return store.products(
                category=category, limit=_int(params, "limit", 50, 1, 500), offset=_int(params, "offset", 0, 0, 10**9)
            )
        if len(segs) >= 2 and segs[0] == "products":
            sku = "/".join(segs[1:])  # SKUs may contain '/'
            product = store.product(sku)
            if product is None:
                raise _ApiError(HTTPStatus.NOT_FOUND, f"no product with SKU {sku!r} in this box's catalogue")
            return product
        if segs == ["categories"]:
            return store.categories()
        if segs == ["search"]:
            q = params.get("q", [""])[-1]
            if not q.strip():
                raise _ApiError(HTTPStatus.BAD_REQUEST, "search needs a query: /search?q=...")
            if len(q) > 200:
                raise _ApiError(HTTPStatus.BAD_REQUEST, "the query is longer than 200 characters")
            return store.search(q, _int(params, "limit", 20, 1, 200))
        raise _ApiError(HTTPStatus.NOT_FOUND, "unknown path: try /status, /products, /categories, /search?q=")

    def _image(self, req: BaseHTTPRequestHandler, sha: str) -> None:
        if not _SHA.match(sha):
            raise _ApiError(HTTPStatus.BAD_REQUEST, f"{sha!r} is not an image id (64 hex digits)")
        path = self.store.image_path(sha)
        if not self.store.image_ok(sha):
            if self.on_missing_image is not None:
                self.on_missing_image(sha)
            raise _ApiError(HTTPStatus.NOT_FOUND, f"image {sha} is not on this box yet")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self.store.image_forget(sha)
            raise _ApiError(HTTPStatus.NOT_FOUND, f"image {sha} is not on this box yet") from None
        req.send_response(HTTPStatus.OK)
        req.send_header("Content-Type", "image/jpeg" if data[:2] == b"\xff\xd8" else "image/png" if data[:4] == b"\x89PNG" else "application/octet-stream")
        req.send_header("Content-Length", str(len(data)))
        req.send_header("Cache-Control", "public, max-age=31536000, immutable")
        req.end_headers()
        req.wfile.write(data)

    @staticmethod
    def _json(req: BaseHTTPRequestHandler, status: HTTPStatus, body: Any) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json; charset=utf-8")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)
