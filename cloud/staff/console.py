"""The console's Clerks page: a store's clerks, adding one, renaming, resetting a PIN, deactivating
and reactivating. Plain forms (CSRF token in each), no script; a refused change shows the page
again with the reason next to the form, and nothing typed as a PIN is ever echoed back."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from cloud.access.scope import NotFound, Perm, Principal, visible_stores
from cloud.access.service import InputError, write_session
from cloud.console.pages import console_user, form_user, render
from cloud.staff import service

__all__ = ["router"]

router = APIRouter(include_in_schema=False)
Reader = Annotated[Principal, Depends(console_user(Perm.BUSINESS))]
Poster = Annotated[Principal, Depends(form_user(Perm.BUSINESS))]
StoreForm = Annotated[str, Form(min_length=1, max_length=32)]
PinForm = Annotated[str, Form(min_length=1, max_length=32)]


def _page(request: Request, principal: Principal, store: str, *, problem: str | None = None,
          problem_at: str | None = None, status_code: int = 200) -> HTMLResponse:
    with request.app.state.sessionmaker() as s:
        stores = visible_stores(s, principal.scope)
        chosen = store or (stores[0].code if stores else "")
        try:
            clerks = service.list_clerks(s, principal.scope, store=chosen) if chosen else []
        except NotFound as exc:
            clerks, problem, problem_at, status_code = [], str(exc), "store", 404
        return render(request, "staff.html", principal, status_code=status_code, active="staff", stores=stores,
                      store=chosen, clerks=clerks, problem=problem, problem_at=problem_at)


def _back(store: str) -> RedirectResponse:
    return RedirectResponse(f"/console/staff?store={store}", status_code=303)


@router.get("/console/staff", response_class=HTMLResponse)
def staff_page(request: Request, principal: Reader, store: Annotated[str, Query(max_length=32)] = "") -> HTMLResponse:
    return _page(request, principal, store)


@router.post("/console/staff/clerks")
def add_clerk(request: Request, principal: Poster, store: StoreForm, name: Annotated[str, Form(min_length=1, max_length=200)],
              pin: PinForm, staff_number: Annotated[str, Form(max_length=32)] = "") -> Response:
    try:
        with write_session(request.app.state.engine) as s, s.begin():
            service.create_clerk(s, principal, store, name, pin, staff_number=staff_number or None, via="console")
    except (InputError, NotFound) as exc:
        return _page(request, principal, store, problem=str(exc), problem_at="add", status_code=422)
    return _back(store)


@router.post("/console/staff/clerks/{clerk_id}/update")
def update_clerk(request: Request, principal: Poster, clerk_id: int, store: StoreForm,
                 name: Annotated[str, Form(min_length=1, max_length=200)],
                 staff_number: Annotated[str, Form(max_length=32)] = "") -> Response:
    try:
        with write_session(request.app.state.engine) as s, s.begin():
            service.update_clerk(s, principal, clerk_id, name=name, staff_number=staff_number, via="console")
    except (InputError, NotFound) as exc:
        return _page(request, principal, store, problem=str(exc), problem_at=str(clerk_id), status_code=422)
    return _back(store)


@router.post("/console/staff/clerks/{clerk_id}/pin")
def reset_pin(request: Request, principal: Poster, clerk_id: int, store: StoreForm, pin: PinForm) -> Response:
    try:
        with write_session(request.app.state.engine) as s, s.begin():
            service.reset_pin(s, principal, clerk_id, pin, via="console")
    except (InputError, NotFound) as exc:
        return _page(request, principal, store, problem=str(exc), problem_at=str(clerk_id), status_code=422)
    return _back(store)


@router.post("/console/staff/clerks/{clerk_id}/active")
def set_active(request: Request, principal: Poster, clerk_id: int, store: StoreForm,
               active: Annotated[bool, Form()]) -> Response:
    try:
        with write_session(request.app.state.engine) as s, s.begin():
            service.set_active(s, principal, clerk_id, active, via="console")
    except NotFound as exc:
        return _page(request, principal, store, problem=str(exc), problem_at=str(clerk_id), status_code=404)
    return _back(store)
