"""Console pages of the access engine: users (create, edit role and scope, password, unlock,
enable/disable), API keys (create, revoke) and the audit log. Built on the console shell
(`cloud.console.pages`): its layout, navigation and sign-in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from cloud.access import service
from cloud.access.models import NAME_MAX, USERNAME_MAX
from cloud.access.scope import NotFound, Perm, Principal, Role, visible_regions, visible_stores
from cloud.console.pages import console_user, form_user, render

__all__ = ["router"]

router = APIRouter(prefix="/console", include_in_schema=False)
UsersAdmin = Annotated[Principal, Depends(console_user(Perm.USERS))]
AuditReader = Annotated[Principal, Depends(console_user(Perm.AUDIT))]
UsersForm = Annotated[Principal, Depends(form_user(Perm.USERS))]
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


