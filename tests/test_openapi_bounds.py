"""The class test for integer overflow: every integer the API accepts is bounded in its schema.

An unbounded integer reaches the database (or `timedelta`) as given, and 9223372036854775808 there
is a 500 instead of a 422. Walking the app's own OpenAPI document catches every route, including
those added after this test was written.
"""

from __future__ import annotations

from typing import Any

from cloud.api import create_app
from cloud.settings import Settings

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        target: Any = doc
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        schema = target
    return schema


def _unbounded(doc: dict[str, Any], schema: dict[str, Any], where: str, seen: frozenset[str] = frozenset()) -> list[str]:
    """`where` for each integer in `schema` (through anyOf/oneOf/allOf, arrays, objects) lacking a bound."""
    ref = schema.get("$ref")
    if ref in seen:
        return []
    seen = seen | {ref} if ref else seen
    schema = _resolve(doc, schema)
    found: list[str] = []
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key, []):
            found += _unbounded(doc, sub, where, seen)
    types = schema.get("type")
    if types == "integer" or (isinstance(types, list) and "integer" in types):
        missing = [side for side, keys in (("minimum", ("minimum", "exclusiveMinimum")),
                                           ("maximum", ("maximum", "exclusiveMaximum")))
                   if not any(k in schema for k in keys)]
        if missing:
            found.append(f"{where} (integer) has no {' and no '.join(missing)}")
    if "items" in schema:
        found += _unbounded(doc, schema["items"], f"{where}[]", seen)
    for name, prop in schema.get("properties", {}).items():
        found += _unbounded(doc, prop, f"{where}.{name}", seen)
    return found


def unbounded_integers(doc: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for path, item in doc["paths"].items():
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            for param in [*item.get("parameters", []), *op.get("parameters", [])]:
                param = _resolve(doc, param)
                where = f"{method.upper()} {path}: {param['in']} parameter {param['name']!r}"
                problems += _unbounded(doc, param.get("schema", {}), where)
            for media, content in _resolve(doc, op.get("requestBody", {})).get("content", {}).items():
                problems += _unbounded(doc, content.get("schema", {}), f"{method.upper()} {path}: {media} body")
    return problems


def test_every_integer_parameter_and_body_field_has_a_minimum_and_a_maximum() -> None:
    app = create_app(Settings(DATABASE_URL="sqlite:///:memory:"), run_worker=False)
    problems = unbounded_integers(app.openapi())
    assert not problems, "unbounded integers in the API (bound them with ge=/le=):\n" + "\n".join(problems)


def test_the_walk_finds_what_it_is_meant_to_find() -> None:
    """The checker itself: a path, a query (inside anyOf) and a body field (through $ref) without bounds."""
    doc = {
        "paths": {
            "/a/{n}": {"get": {"parameters": [
                {"in": "path", "name": "n", "schema": {"type": "integer", "minimum": 0}},
                {"in": "query", "name": "k", "schema": {"anyOf": [{"type": "integer"}, {"type": "null"}]}},
                {"in": "query", "name": "ok", "schema": {"type": "integer", "minimum": 1, "maximum": 9}},
            ]}},
            "/b": {"post": {"requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/B"}}}}}},
        },
        "components": {"schemas": {"B": {"type": "object", "properties": {
            "items": {"type": "array", "items": {"type": "integer", "exclusiveMaximum": 5}},
            "me": {"$ref": "#/components/schemas/B"},
        }}}},
    }
    assert unbounded_integers(doc) == [
        "GET /a/{n}: path parameter 'n' (integer) has no maximum",
        "GET /a/{n}: query parameter 'k' (integer) has no minimum and no maximum",
        "POST /b: application/json body.items[] (integer) has no minimum",
    ]
