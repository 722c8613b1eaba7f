"""Query parameters that take one value refuse several.

FastAPI reads `?actor=a&actor=b` for a `str` parameter as `b` and says nothing: a client that
meant both gets an answer about one, and a filter silently narrows. Every route's single-valued
query parameters are therefore checked before the route runs; a repeated one is answered 422 in
the same shape as FastAPI's own validation errors, naming the parameter. List parameters
(`list[str]` and the like) still take as many values as they are given. Pages left out of the
OpenAPI document (the console's) are not checked: their forms send each field once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from starlette.routing import compile_path
from starlette.types import ASGIApp

__all__ = ["install"]

Scope = MutableMapping[str, Any]


def _takes_many(schema: dict[str, Any]) -> bool:
    if schema.get("type") == "array":
        return True
    return any(_takes_many(s) for s in [*schema.get("anyOf", ()), *schema.get("oneOf", ())])


def _table(document: dict[str, Any]) -> list[tuple[str, re.Pattern[str], frozenset[str]]]:
    """(method, path pattern, single-valued query parameters) of every documented operation: the
    OpenAPI document is the one description of the routes that FastAPI keeps stable."""
    out = []
    for path, operations in document.get("paths", {}).items():
        pattern = compile_path(path)[0]
        for method, op in operations.items():
            single = frozenset(p["name"] for p in op.get("parameters", ())
                               if p.get("in") == "query" and not _takes_many(p.get("schema", {})))
            if single:
                out.append((method.upper(), pattern, single))
    return out


class _RepeatedScalars:
    def __init__(self, app: ASGIApp, document: Callable[[], dict[str, Any]]) -> None:
        self.app = app
        self.document = document
        self.table: list[tuple[str, re.Pattern[str], frozenset[str]]] | None = None

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http" or b"&" not in scope.get("query_string", b""):
            await self.app(scope, receive, send)
            return
        repeated = self._repeated(scope)
        if not repeated:
            await self.app(scope, receive, send)
            return
        body = json.dumps({"detail": [
            {"loc": ["query", name], "msg": f"given {n} times; this parameter takes one value", "type": "value_error"}
            for name, n in repeated
        ]}).encode()
        await send({"type": "http.response.start", "status": 422,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def _repeated(self, scope: Scope) -> list[tuple[str, int]]:
        if self.table is None:
            self.table = _table(self.document())
        for method, pattern, single in self.table:
            if method == scope["method"] and pattern.match(scope["path"]):
                counts: dict[str, int] = {}
                for name, _value in parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True):
                    if name in single:
                        counts[name] = counts.get(name, 0) + 1
                return sorted((name, n) for name, n in counts.items() if n > 1)
        return []


def install(app: Any) -> None:
    """Check every documented operation of `app` (the table is built at the first request that has
    a repeated parameter, once every engine's routes are in)."""
    app.add_middleware(_RepeatedScalars, document=app.openapi)
