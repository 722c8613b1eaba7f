"""FastAPI glue: who is asking (bearer API key or console session cookie), permissions, errors.

Routers depend on `PrincipalDep` (any signed-in principal) or `require(Perm.X)`, then pass
`principal.scope` to the service layer. Cookie-authenticated requests that change something must
carry the session's CSRF token (form field `csrf_token` or header `X-CSRF-Token`); bearer requests
need none, since a browser never attaches them by itself.
"""

from __future__ import annotations

import hmac
import inspect
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Security, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from sqlalchemy.orm import Session

from cloud.access import service
from cloud.access.scope import Forbidden, NotFound, Perm, Principal

__all__ = [
    "COOKIE",
    "PrincipalDep",
    "Problem",
    "check_csrf",
    "document_error_answers",
    "error_responses",
    "install_error_handlers",
    "optional_principal",
    "policy",
    "require",
    "require_principal",
]

COOKIE = "omnishelf_session"
# Declared so the OpenAPI document marks every protected endpoint with the two ways in (either one
# will do) and /docs offers "Authorize"; the credentials themselves are read in
# `optional_principal` (auto_error off: a request may carry the other one).
bearer_scheme = HTTPBearer(auto_error=False, scheme_name="apiKey", description="An API key: `osk_…`")
Bearer = Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]
session_scheme = APIKeyCookie(
    name=COOKIE, auto_error=False, scheme_name="session",
    description="A console session (sign in at /console/login); a change also needs the session's CSRF "
                "token in the `X-CSRF-Token` header. Sent with an API key, the key is used.",
)
SessionCookie = Annotated[str | None, Security(session_scheme)]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Problem(BaseModel):
    """The body of every error answer but 422: one sentence naming what was wrong."""

    detail: str


_ERRORS: dict[int, str] = {
    status.HTTP_400_BAD_REQUEST: "the body could not be read (not JSON, or not UTF-8)",
    status.HTTP_401_UNAUTHORIZED: "no valid credentials: a missing, wrong, expired or revoked API key or session",
    status.HTTP_403_FORBIDDEN: "the role may not use this endpoint, or a cookie request lacks its CSRF token",
    status.HTTP_404_NOT_FOUND: "unknown, or outside the caller's scope (the same answer on purpose)",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: the error answers it can give, with their real body (`Problem`)."""
    return {code: {"model": Problem, "description": _ERRORS[code]} for code in codes}


class NotSignedIn(Exception):
    """No valid credentials; the console turns this into a redirect, the API into a 401."""


def policy(request: Request) -> service.Policy:
    p: service.Policy = getattr(request.app.state, "access_policy", None) or service.Policy()
    return p


def optional_principal(request: Request) -> Principal | None:
    """The principal of this request, or None; cached on the request (one lookup per request)."""
    if hasattr(request.state, "principal"):
        cached: Principal | None = request.state.principal
        return cached
    principal: Principal | None = None
    auth = request.headers.get("authorization", "")
    with request.app.state.sessionmaker() as session:
        if auth:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                principal = service.principal_for_key(session, token.strip())
            request.state.via = "api"
        else:
            cookie = request.cookies.get(COOKIE)
            if cookie:
                principal = service.principal_for_session(session, cookie)
            request.state.via = "console"
    request.state.principal = principal
    return principal


def require_principal(request: Request, _bearer: Bearer = None, _session: SessionCookie = None) -> Principal:
    principal = optional_principal(request)
    if principal is None:
        raise NotSignedIn()
    if request.method not in SAFE_METHODS and principal.kind == "user":
        # The API is also reachable with the console cookie: a state change then needs the token.
        check_csrf(principal, request.headers.get("x-csrf-token"))
    return principal


def check_csrf(principal: Principal, token: str | None) -> None:
    expected = principal.csrf_token or ""
    if not token or not expected or not hmac.compare_digest(token.encode(), expected.encode()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "CSRF token missing or wrong: reload the page and try again")


def require(perm: Perm) -> Callable[..., Principal]:
    """A dependency: the principal, if its role has `perm` (else 403)."""

    def dep(request: Request, _bearer: object = None, _session: object = None) -> Principal:
        principal = require_principal(request)
        principal.require(perm)
        return principal

    # The permission goes into the OpenAPI document as the security requirement's role (OpenAPI
    # 3.1 allows role names for non-OAuth schemes), so a client reads there what each operation
    # needs. The annotations carry a per-call value, hence a signature built here rather than
    # written (FastAPI reads `__signature__`).
    roles = [perm.value]
    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    dep.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
        inspect.Parameter("request", keyword, annotation=Request),
        inspect.Parameter("_bearer", keyword, default=None, annotation=Annotated[
            HTTPAuthorizationCredentials | None, Security(bearer_scheme, scopes=roles)]),
        inspect.Parameter("_session", keyword, default=None, annotation=Annotated[
            str | None, Security(session_scheme, scopes=roles)]),
    ], return_annotation=Principal)
    dep.__name__ = f"require_{perm.value}"
    return dep


def document_error_answers(app: FastAPI) -> None:
    """Declare, on every operation of the OpenAPI document, the error answers this module gives
    there, each with its real body (`Problem`): 401 where credentials are needed, 403 where a role
    is required (a role in the security requirement, see `require`) or a cookie request needs its
    CSRF token, 400 where a body is read. Routes declare only their own (404): nobody has to
    remember these, and the document cannot drift from what the handlers answer."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = generate()
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas.setdefault("Problem", Problem.model_json_schema())
        for item in doc.get("paths", {}).values():
            for method, op in item.items():
                codes = []
                security: list[dict[str, list[str]]] = op.get("security", [])
                if security:
                    codes.append(status.HTTP_401_UNAUTHORIZED)
                    if method.upper() not in SAFE_METHODS or any(roles for req in security for roles in req.values()):
                        codes.append(status.HTTP_403_FORBIDDEN)
                if "requestBody" in op:
                    codes.append(status.HTTP_400_BAD_REQUEST)
                for code in codes:
                    op.setdefault("responses", {}).setdefault(str(code), {
                        "description": _ERRORS[code],
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
                    })
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


PrincipalDep = Annotated[Principal, Depends(require_principal)]


def via(request: Request) -> str:
    v: str = getattr(request.state, "via", "api")
    return v


def write_session(request: Request) -> Session:
    return service.write_session(request.app.state.engine)


def _problem(code: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=code, headers=headers)


def install_error_handlers(app: FastAPI, *, console_prefix: str = "/console") -> None:
    """Map the service layer's errors to HTTP answers (once, for API and console alike)."""
    from fastapi.responses import RedirectResponse

    async def not_signed_in(request: Request, _exc: Exception) -> Any:
        if request.url.path.startswith(console_prefix):
            return RedirectResponse(f"{console_prefix}/login?next={request.url.path}", status.HTTP_303_SEE_OTHER)
        return _problem(
            status.HTTP_401_UNAUTHORIZED,
            "Not authenticated: send 'Authorization: Bearer osk_…' with a valid, unrevoked, unexpired API key",
            {"WWW-Authenticate": "Bearer"},
        )

    async def not_found(_request: Request, exc: Exception) -> Any:
        return _problem(status.HTTP_404_NOT_FOUND, str(exc))

    async def forbidden(request: Request, exc: Exception) -> Any:
        if request.url.path.startswith(console_prefix):
            from html import escape

            from fastapi.responses import HTMLResponse

            body = (f'<!doctype html><title>Not allowed</title><link rel="icon" href="{console_prefix}/static/favicon.svg">'
                    f'<link rel="stylesheet" href="{console_prefix}/static/console.css">'
                    f'<main><h1>Not allowed</h1><p class="error">{escape(str(exc))}</p>'
                    f'<p><a href="{console_prefix}/">Back to the console</a></p></main>')
            return HTMLResponse(body, status_code=status.HTTP_403_FORBIDDEN)
        return _problem(status.HTTP_403_FORBIDDEN, str(exc))

    async def bad_input(_request: Request, exc: Exception) -> Any:
        assert isinstance(exc, service.InputError)
        return _problem(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"loc": [exc.location, exc.field], "msg": exc.message, "type": "value_error"}],
        )

    async def invalid_request(_request: Request, exc: Exception) -> Any:
        assert isinstance(exc, RequestValidationError)
        # FastAPI's own answer repeats every refused value ("input"): a PIN or a password that
        # failed a length check would come back in the response, and in any proxy's log of it.
        # Where and why is what a caller needs.
        errors = [{k: e[k] for k in ("loc", "msg", "type") if k in e} for e in exc.errors()]
        return JSONResponse(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, content={"detail": jsonable_encoder(errors)})

    document_error_answers(app)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(NotSignedIn, not_signed_in)
    app.add_exception_handler(NotFound, not_found)
    app.add_exception_handler(Forbidden, forbidden)
    app.add_exception_handler(service.InputError, bad_input)
