"""Security headers on every answer (console, API, docs) and API docs pages that obey them.

`install(app)` is the whole wiring. The policy allows nothing inline: every script and style the
cloud serves is a file of its own, so an injected `<script>` or `onclick=` does not run even if a
template ever fails to escape something. FastAPI's /docs page starts Swagger UI with an inline
script, so it is replaced by a page whose start-up code is a static file (`static/`), with the
assets fastapi_offline installs, never a CDN.

/redoc now leads to /docs rather than being exempted: ReDoc styles itself by writing <style>
elements at run time (styled-components), runs its search in a worker made from a blob: URL and
loads its logo from its vendor's CDN, so it needs three holes in the policy (and the internet) to
show what /docs already shows.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from starlette.datastructures import MutableHeaders
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CONTENT_SECURITY_POLICY", "HSTS", "SecurityHeaders", "install"]

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "object-src 'none'",
    "base-uri 'none'",
    "frame-ancestors 'none'",
    "form-action 'self'",
])
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # The console links nowhere else; nothing about its URLs (ids, filters) should leave with a click.
    "Referrer-Policy": "no-referrer",
}
HSTS = "max-age=31536000"
"""One year, and no includeSubDomains: the cloud does not own the other hosts of the domain it runs on."""

STATIC = Path(__file__).parent / "static"
DOCS_ASSETS = "/static-offline-docs"
"""Where fastapi_offline serves Swagger UI's and ReDoc's files (its default `static_url`)."""


class SecurityHeaders:
    """ASGI middleware: `HEADERS` on every HTTP answer (a route may set its own value of one), HSTS
    only when the request came over TLS (uvicorn sets the scheme from X-Forwarded-Proto for a
    trusted proxy), since a browser ignores HSTS over plain http anyway."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tls = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers.setdefault(name, value)
                if tls:
                    headers.setdefault("Strict-Transport-Security", HSTS)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _page(title: str, root: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{escape(title)}</title>\n'
        f'<link rel="icon" href="{root}{DOCS_ASSETS}/favicon.png">\n{body}</html>\n'
    )


def _docs_routes(app: FastAPI) -> list[BaseRoute]:
    def swagger(request: Request) -> HTMLResponse:
        root = escape(request.scope.get("root_path", ""))
        return _page(f"{app.title} - API docs", root, (
            f'<link rel="stylesheet" href="{root}{DOCS_ASSETS}/swagger-ui.css">\n</head>\n<body>\n'
            f'<div id="swagger-ui" data-openapi-url="{root}{escape(app.openapi_url or "")}"></div>\n'
            f'<script src="{root}{DOCS_ASSETS}/swagger-ui-bundle.js"></script>\n'
            f'<script src="{root}/docs/swagger-init.js"></script>\n</body>\n'
        ))

    def swagger_init(_request: Request) -> FileResponse:
        return FileResponse(STATIC / "swagger-init.js", media_type="text/javascript")

    def redoc(request: Request) -> RedirectResponse:
        return RedirectResponse(f"{request.scope.get('root_path', '')}/docs")

    return [
        Route("/docs", swagger, methods=["GET"], include_in_schema=False),
        Route("/redoc", redoc, methods=["GET"], include_in_schema=False),
        Route("/docs/swagger-init.js", swagger_init, methods=["GET"], include_in_schema=False),
    ]


def install(app: FastAPI) -> None:
    """Add the headers to every answer and serve the docs pages that work under them."""
    app.add_middleware(SecurityHeaders)
    # fastapi_offline's pages carry inline scripts and styles: /docs is replaced at the same
    # address, /redoc leads to it (see above), the OAuth2 redirect page goes (no OAuth2 flow here).
    replaced = {"/docs", "/redoc", "/docs/oauth2-redirect"}
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) not in replaced]
    app.router.routes.extend(_docs_routes(app))
