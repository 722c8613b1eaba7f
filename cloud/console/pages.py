"""Console pages of the shell: sign-in/out and the home redirect (engines bring the others).

Every handler gets its principal from `console_user(perm)` and its rows from the service layer;
every form post checks the session's CSRF token before anything else (`form_user`). Engines'
pages use `console_user`, `form_user` and `render` from here.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from cloud.access import service
from cloud.access.models import USERNAME_MAX
from cloud.access.scope import (
    Perm,
    Principal,
)
from cloud.access.web import COOKIE, check_csrf, optional_principal, policy, require
from cloud.console import nav

__all__ = ["console_user", "form_user", "render", "router"]

router = APIRouter(prefix="/console", include_in_schema=False)
LOGIN_CSRF_COOKIE = "omnishelf_login_csrf"


def _templates(request: Request) -> Jinja2Templates:
    templates: Jinja2Templates = request.app.state.templates
    return templates


def console_user(perm: Perm) -> Callable[..., Principal]:
    """Dependency for a console page: the signed-in user allowed `perm` (else redirect / 403)."""
    return require(perm)


def render(request: Request, template: str, principal: Principal, status_code: int = 200, **context: Any) -> HTMLResponse:
    context |= {"me": principal, "nav": nav.visible(request.app.state.nav, principal), "csrf": principal.csrf_token or ""}
    return _templates(request).TemplateResponse(request, template, context, status_code=status_code)


def _secure(request: Request) -> bool:
    settings = getattr(request.app.state, "settings", None)
    if settings is not None and settings.COOKIE_SECURE is not None:
        return bool(settings.COOKIE_SECURE)
    development = settings is None or settings.ENV == "development"
    return not (development and request.url.scheme == "http")


def form_user(perm: Perm) -> Callable[..., Principal]:
    """A form post's principal: signed in, allowed `perm`, and the form's CSRF token is the session's."""
    def check(request: Request, csrf_token: Annotated[str, Form(max_length=200)] = "") -> Principal:
        principal = optional_principal(request)
        if principal is None or principal.kind != "user":
            from cloud.access.web import NotSignedIn

            raise NotSignedIn()
        check_csrf(principal, csrf_token)
        principal.require(perm)
        return principal

    return check


AnyForm = Annotated[Principal, Depends(form_user(Perm.FLEET))]


# -- sign-in -----------------------------------------------------------------------------------------


@router.get("", response_class=RedirectResponse)
@router.get("/", response_class=RedirectResponse)
def home(request: Request) -> Response:
    principal = optional_principal(request)
    if principal is None:
        return RedirectResponse("/console/login", status.HTTP_303_SEE_OTHER)
    first = nav.visible(request.app.state.nav, principal)
    return RedirectResponse(first[0].path if first else "/console/login", status.HTTP_303_SEE_OTHER)


def _login_page(request: Request, *, error: str | None = None, next_: str = "", code: int = 200) -> HTMLResponse:
    token = secrets.token_urlsafe(32)
    response = _templates(request).TemplateResponse(
        request, "login.html", {"login_csrf": token, "error": error, "next": next_}, status_code=code
    )
    # Login CSRF: the form's token must equal this cookie (double submit), so another site cannot
    # sign a victim in to an account of its choosing.
    response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=_secure(request),
                        path="/console/login")
    return response


def _safe_next(next_: str) -> str:
    return next_ if next_.startswith("/console/") and not next_.startswith("//") else "/console/"


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: Annotated[str, Query(max_length=500)] = "") -> HTMLResponse:
    return _login_page(request, next_=next)


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    username: Annotated[str, Form(max_length=USERNAME_MAX)] = "",
    password: Annotated[str, Form(max_length=service.PASSWORD_MAX)] = "",
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not csrf_token or not cookie or not secrets.compare_digest(csrf_token, cookie):
        return _login_page(request, error="The form expired or was not sent by this page: please sign in again.",
                           next_=next, code=status.HTTP_403_FORBIDDEN)
    pol = policy(request)
    # The client address as uvicorn reports it: behind a reverse proxy, the X-Forwarded-For address
    # when the proxy is trusted (--forwarded-allow-ips; see docs/hq.md).
    source = request.client.host if request.client else None
    try:
        token = service.sign_in(request.app.state.engine, username.strip(), password, source, pol)
    except service.Throttled as exc:
        page = _login_page(request, error=f"{str(exc).capitalize()}.", next_=next, code=status.HTTP_429_TOO_MANY_REQUESTS)
        page.headers["Retry-After"] = str(max(1, math.ceil((exc.until - datetime.now(UTC)).total_seconds())))
        return page
    if token is None:
        # One answer for an unknown name, a wrong password, a disabled user and a locked account.
        minutes = math.ceil(pol.lockout.total_seconds() / 60)
        error = (f"Wrong username or password, or too many failed attempts: after repeated failures wait "
                 f"{minutes} minutes or ask an admin to unlock the account.")
        return _login_page(request, error=error, next_=next, code=status.HTTP_401_UNAUTHORIZED)
    response = RedirectResponse(_safe_next(next), status.HTTP_303_SEE_OTHER)
    response.set_cookie(COOKIE, token, max_age=int(pol.session_ttl.total_seconds()), httponly=True, samesite="lax",
                        secure=_secure(request), path="/")
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/console/login")
    return response


@router.post("/logout")
def logout(request: Request, principal: AnyForm) -> Response:
    with service.write_session(request.app.state.engine) as session, session.begin():
        service.end_session(session, principal)
    response = RedirectResponse("/console/login", status.HTTP_303_SEE_OTHER)
    response.delete_cookie(COOKIE, path="/")
    return response


def login_url(next_path: str) -> str:
    return f"/console/login?next={quote(next_path)}"
