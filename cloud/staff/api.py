"""REST endpoints of the clerks: /staff/clerks.

Thin: each route states who may call it in one line and calls `cloud.staff.service` (reads go
through the caller's scope there; changes are audited and sent to the store's boxes there). A PIN
goes in, never out.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, status
from sqlalchemy.orm import Session

from cloud.access.scope import Perm, Principal
from cloud.access.service import write_session
from cloud.access.web import require, via
from cloud.staff import service
from cloud.staff.models import Clerk
from cloud.staff.schemas import ClerkCreate, ClerkPublic, ClerkUpdate, PinReset

__all__ = ["public", "router"]

router = APIRouter(prefix="/staff", tags=["staff"])
Manager = Annotated[Principal, Depends(require(Perm.BUSINESS))]
Id = Annotated[int, Path(ge=1, le=2**31 - 1)]
Problem: dict[int | str, dict[str, Any]] = {
    status.HTTP_404_NOT_FOUND: {"description": "unknown, or outside your scope"},
    422: {"description": "invalid input (the field and the reason; a weak PIN says which rule)"},
}


def _session(request: Request) -> Session:
    s: Session = request.app.state.sessionmaker()
    return s


def public(c: Clerk) -> ClerkPublic:
    return ClerkPublic(id=c.id, store=c.store.code, name=c.name, staff_number=c.staff_number, active=c.active,
                       pin_set_at=c.pin_set_at, created_at=c.created_at, created_by=c.created_by, updated_at=c.updated_at)


@router.get("/clerks", response_model=list[ClerkPublic], responses=Problem)
def list_clerks(request: Request, principal: Manager,
                store: Annotated[str | None, Query(min_length=1, max_length=32)] = None,
                active: bool | None = None) -> list[ClerkPublic]:
    with _session(request) as session:
        return [public(c) for c in service.list_clerks(session, principal.scope, store=store, active=active)]


@router.get("/clerks/{clerk_id}", response_model=ClerkPublic, responses=Problem)
def get_clerk(clerk_id: Id, request: Request, principal: Manager) -> ClerkPublic:
    with _session(request) as session:
        return public(service.get_clerk(session, principal.scope, clerk_id))


@router.post("/clerks", response_model=ClerkPublic, status_code=201, responses=Problem)
def create_clerk(body: ClerkCreate, request: Request, principal: Manager) -> ClerkPublic:
    with write_session(request.app.state.engine) as session, session.begin():
        return public(service.create_clerk(session, principal, body.store, body.name, body.pin,
                                           staff_number=body.staff_number, via=via(request)))


@router.patch("/clerks/{clerk_id}", response_model=ClerkPublic, responses=Problem)
def update_clerk(clerk_id: Id, body: ClerkUpdate, request: Request, principal: Manager) -> ClerkPublic:
    with write_session(request.app.state.engine) as session, session.begin():
        return public(service.update_clerk(session, principal, clerk_id, name=body.name,
                                           staff_number=body.staff_number, via=via(request)))


@router.post("/clerks/{clerk_id}/pin", response_model=ClerkPublic, responses=Problem)
def reset_pin(clerk_id: Id, body: PinReset, request: Request, principal: Manager) -> ClerkPublic:
    with write_session(request.app.state.engine) as session, session.begin():
        return public(service.reset_pin(session, principal, clerk_id, body.pin, via=via(request)))


@router.post("/clerks/{clerk_id}/deactivate", response_model=ClerkPublic, responses=Problem)
def deactivate(clerk_id: Id, request: Request, principal: Manager) -> ClerkPublic:
    with write_session(request.app.state.engine) as session, session.begin():
        return public(service.set_active(session, principal, clerk_id, False, via=via(request)))


@router.post("/clerks/{clerk_id}/activate", response_model=ClerkPublic, responses=Problem)
def activate(clerk_id: Id, request: Request, principal: Manager) -> ClerkPublic:
    with write_session(request.app.state.engine) as session, session.begin():
        return public(service.set_active(session, principal, clerk_id, True, via=via(request)))
