"""Console pages of the shell: sign-in/out and the home redirect; users, API keys and audit.

Every handler gets its principal from `console_user(perm)` and its rows from the service layer;
every form post checks the session's CSRF token before anything else (`form_user`). Engines'
pages use `console_user`, `form_user` and `render` from here.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from cloud.access import service
from cloud.access.models import NAME_MAX, USERNAME_MAX
from cloud.access.scope import (
    NotFound,
    Perm,
    Principal,
    Role,
    visible_regions,
    visible_stores,
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


Fleet = Annotated[Principal, Depends(console_user(Perm.FLEET))]
Business = Annotated[Principal, Depends(console_user(Perm.BUSINESS))]
UsersAdmin = Annotated[Principal, Depends(console_user(Perm.USERS))]
AuditReader = Annotated[Principal, Depends(console_user(Perm.AUDIT))]
UsersForm = Annotated[Principal, Depends(form_user(Perm.USERS))]
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


FilterStr = Annotated[str, Query(max_length=100)]


# -- users and API keys ------------------------------------------------------------------------------


def _users_page(request: Request, principal: Principal, *, error: str | None = None, code: int = 200,
                form: dict[str, Any] | None = None) -> HTMLResponse:
    with request.app.state.sessionmaker() as session:
        users = service.list_users(session)
        return render(request, "users.html", principal, status_code=code, users=users,
                      locks=service.lock_states(session, [u.username for u in users]),
                      regions=visible_regions(session, principal.scope),
                      stores=visible_stores(session, principal.scope), roles=list(Role), error=error, form=form or {})


@router.get("/users", response_class=HTMLResponse)
def users(request: Request, principal: UsersAdmin) -> HTMLResponse:
    return _users_page(request, principal)


@router.post("/users", response_class=HTMLResponse)
def users_create(
    request: Request,
    principal: UsersForm,
    username: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    role: Annotated[str, Form()] = "",
    regions: Annotated[list[str] | None, Form()] = None,
    stores: Annotated[list[str] | None, Form()] = None,
) -> Response:
    form = {"username": username[:200], "role": role[:20], "regions": regions or [], "stores": stores or []}
    try:
        with service.write_session(request.app.state.engine) as session, session.begin():
            service.create_user(session, principal.actor, username.strip(), password, role, regions=regions or [],
                                stores=stores or [], via="console")
    except service.InputError as exc:
        return _users_page(request, principal, error=str(exc), code=422, form=form)
    return RedirectResponse("/console/users", status.HTTP_303_SEE_OTHER)


def _user_page(request: Request, principal: Principal, username: str, *, error: str | None = None,
               code: int = 200, saved: str | None = None) -> HTMLResponse:
    with request.app.state.sessionmaker() as session:
        try:
            user = service.get_user(session, username[:USERNAME_MAX + 1])
        except NotFound as exc:
            return render(request, "error.html", principal, status_code=404, message=str(exc))
        return render(request, "user.html", principal, status_code=code, user=user, roles=list(Role),
                      regions=visible_regions(session, principal.scope), stores=visible_stores(session, principal.scope),
                      lock=service.lock_states(session, [user.username]).get(user.username), error=error, saved=saved)


@router.get("/users/{username}", response_class=HTMLResponse)
def user_page(request: Request, principal: UsersAdmin, username: str) -> HTMLResponse:
    return _user_page(request, principal, username)


@router.post("/users/{username}", response_class=HTMLResponse)
def user_update(
    request: Request,
    principal: UsersForm,
    username: str,
    role: Annotated[str, Form(max_length=20)] = "",
    regions: Annotated[list[str] | None, Form()] = None,
    stores: Annotated[list[str] | None, Form()] = None,
    password: Annotated[str, Form()] = "",
) -> HTMLResponse:
    try:
        with service.write_session(request.app.state.engine) as session, session.begin():
            service.set_user_role(session, principal.actor, username[:USERNAME_MAX + 1], role, regions=regions or [],
                                  stores=stores or [], via="console")
            if password:
                service.set_password(session, principal.actor, username, password, via="console")
    except service.InputError as exc:
        return _user_page(request, principal, username, error=str(exc), code=422)
    except NotFound as exc:
        return render(request, "error.html", principal, status_code=404, message=str(exc))
    return _user_page(request, principal, username, saved=f"Saved. {username} must sign in again.")


@router.post("/users/{username}/unlock", response_class=HTMLResponse)
def user_unlock(request: Request, principal: UsersForm, username: str) -> HTMLResponse:
    try:
        with service.write_session(request.app.state.engine) as session, session.begin():
            service.unlock_user(session, principal.actor, username[:USERNAME_MAX + 1], via="console")
    except NotFound as exc:
        return render(request, "error.html", principal, status_code=404, message=str(exc))
    return _user_page(request, principal, username, saved=f"Unlocked: {username} can sign in again from every address.")


@router.post("/users/{username}/active", response_class=HTMLResponse)
def users_active(request: Request, principal: UsersForm, username: str,
                 active: Annotated[str, Form(max_length=5)] = "") -> Response:
    try:
        with service.write_session(request.app.state.engine) as session, session.begin():
            service.set_user_active(session, principal.actor, username[:USERNAME_MAX + 1], active == "1", via="console")
    except NotFound as exc:
        return _users_page(request, principal, error=str(exc), code=404)
    except service.InputError as exc:
        return _users_page(request, principal, error=str(exc), code=422)
    return RedirectResponse("/console/users", status.HTTP_303_SEE_OTHER)


def _keys_page(request: Request, principal: Principal, *, error: str | None = None, code: int = 200,
               secret: str | None = None, created: str | None = None) -> HTMLResponse:
    with request.app.state.sessionmaker() as session:
        return render(request, "api_keys.html", principal, status_code=code, keys=service.list_api_keys(session),
                      regions=visible_regions(session, principal.scope), stores=visible_stores(session, principal.scope),
                      roles=[r for r in Role if r is not Role.ADMIN], error=error, secret=secret, created=created)


@router.get("/api-keys", response_class=HTMLResponse)
def api_keys(request: Request, principal: UsersAdmin) -> HTMLResponse:
    return _keys_page(request, principal)


@router.post("/api-keys", response_class=HTMLResponse)
def api_keys_create(
    request: Request,
    principal: UsersForm,
    name: Annotated[str, Form()] = "",
    role: Annotated[str, Form()] = "",
    regions: Annotated[list[str] | None, Form()] = None,
    stores: Annotated[list[str] | None, Form()] = None,
    expires_days: Annotated[str, Form(max_length=10)] = "",
) -> HTMLResponse:
    try:
        expires = None
        days = expires_days.strip()
        if days:
            # ASCII digits only: str.isdigit() also accepts '²', which int() refuses.
            if not days.isascii() or not days.isdigit() or not 1 <= int(days) <= service.KEY_EXPIRY_MAX_DAYS:
                raise service.InputError("expires_days", f"{expires_days!r} is not a whole number of days from 1 to "
                                                         f"{service.KEY_EXPIRY_MAX_DAYS} (leave it empty for no expiry)")
            expires = datetime.now(UTC) + timedelta(days=int(days))
        with service.write_session(request.app.state.engine) as session, session.begin():
            _key, secret = service.create_api_key(session, principal.actor, name, role, regions=regions or [],
                                                  stores=stores or [], expires_at=expires, via="console")
    except service.InputError as exc:
        return _keys_page(request, principal, error=str(exc), code=422)
    # The secret is shown in this one answer and never again (only its hash is stored).
    response = _keys_page(request, principal, secret=secret, created=name.strip())
    response.headers["Cache-Control"] = "no-store"
    return response


@router.post("/api-keys/{name}/revoke", response_class=HTMLResponse)
def api_keys_revoke(request: Request, principal: UsersForm, name: str) -> Response:
    try:
        with service.write_session(request.app.state.engine) as session, session.begin():
            service.revoke_api_key(session, principal.actor, name[:NAME_MAX + 1], via="console")
    except NotFound as exc:
        return _keys_page(request, principal, error=str(exc), code=404)
    return RedirectResponse("/console/api-keys", status.HTTP_303_SEE_OTHER)


# -- audit -------------------------------------------------------------------------------------------


def _when(value: str, field: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise service.InputError(field, f"{value!r} is not a date/time like 2026-11-24T09:00") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@router.get("/audit", response_class=HTMLResponse)
def audit(
    request: Request, principal: AuditReader, actor: FilterStr = "", object_type: FilterStr = "",
    object_id: FilterStr = "", since: FilterStr = "", until: FilterStr = "",
) -> HTMLResponse:
    filters = {"actor": actor, "object_type": object_type, "object_id": object_id, "since": since, "until": until}
    with request.app.state.sessionmaker() as session:
        try:
            start, end = _when(since, "since"), _when(until, "until")
            entries = service.list_audit(session, actor=actor or None, object_type=object_type or None,
                                         object_id=object_id or None, since=start, until=end)
        except service.InputError as exc:
            return render(request, "audit.html", principal, status_code=422, entries=[], filters=filters, error=str(exc))
        return render(request, "audit.html", principal, entries=entries, filters=filters, error=None)


def login_url(next_path: str) -> str:
    return f"/console/login?next={quote(next_path)}"
