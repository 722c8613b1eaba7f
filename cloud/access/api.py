"""REST endpoints of cloud.access: /me, /users (and unlock), /api-keys, /audit (admin / hq, audited)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from cloud.access import service
from cloud.access.models import NAME_MAX, USERNAME_MAX, ApiKey, AuditEntry, User
from cloud.access.scope import Perm, Principal, Role
from cloud.access.throttle import LockState
from cloud.access.web import PrincipalDep, error_responses, require, via

__all__ = ["router"]

# 400, 401 and 403 are declared on every operation by `cloud.access.web.document_error_answers`.
router = APIRouter(tags=["access"])
UsersAdmin = Annotated[Principal, Depends(require(Perm.USERS))]
AuditReader = Annotated[Principal, Depends(require(Perm.AUDIT))]
UNKNOWN = error_responses(status.HTTP_404_NOT_FOUND)

PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
"""No control characters: no name, code or filter has a use for them, and PostgreSQL refuses NUL in
text (a 500 from the driver instead of a 422 naming the field)."""
Code = Annotated[str, Field(min_length=1, max_length=32, pattern=PRINTABLE)]
Codes = Annotated[list[Code], Field(max_length=500)]
Filter = Annotated[str | None, Query(max_length=128, pattern=PRINTABLE)]
UsernamePath = Annotated[str, Path(min_length=1, max_length=USERNAME_MAX, pattern=PRINTABLE)]
KeyNamePath = Annotated[str, Path(min_length=1, max_length=NAME_MAX, pattern=PRINTABLE)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Me(BaseModel):
    kind: str
    name: str
    role: Role
    regions: list[str]
    stores: list[str]


class UserCreate(Strict):
    username: str = Field(min_length=1, max_length=USERNAME_MAX, pattern=service.USERNAME_RE.pattern,
                          description="lower-case letters, digits, '.', '_' and '-'")
    password: str = Field(min_length=service.PASSWORD_MIN, max_length=service.PASSWORD_MAX)
    role: Role
    regions: Codes = []
    stores: Codes = []


class UserUpdate(Strict):
    """Give `active`, or `role` (with `regions`/`stores`), or both."""

    active: bool | None = None
    role: Role | None = None
    regions: Codes = []
    stores: Codes = []


class UserPublic(BaseModel):
    username: str
    role: str
    active: bool
    regions: list[str]
    stores: list[str]
    locked_until: datetime | None
    """Sign-ins refused from every address until then (many failures from several addresses)."""
    locked_from: dict[str, datetime]
    """Address (an IPv6 client's /64) → until when sign-ins from there are refused."""
    created_at: datetime


class ApiKeyCreate(Strict):
    name: str = Field(min_length=1, max_length=NAME_MAX, pattern=PRINTABLE)
    role: Role
    regions: Codes = []
    stores: Codes = []
    expires_at: datetime | None = None


class ApiKeyPublic(BaseModel):
    name: str
    prefix: str
    role: str
    regions: list[str]
    stores: list[str]
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyPublic):
    secret: str
    """`osk_…`: send as `Authorization: Bearer <secret>`. Shown only in this answer."""


class AuditPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    actor: str
    action: str
    object_type: str
    object_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    detail: str | None
    via: str


def _user(u: User, lock: LockState | None) -> UserPublic:
    return UserPublic(
        username=u.username, role=u.role, active=u.active, regions=[r.code for r in u.regions],
        stores=[s.code for s in u.stores], locked_until=lock.everywhere_until if lock else None,
        locked_from=dict(lock.sources) if lock else {}, created_at=u.created_at,
    )


def _one(session: Session, u: User) -> UserPublic:
    return _user(u, service.lock_states(session, [u.username]).get(u.username))


def _key(k: ApiKey) -> dict[str, Any]:
    return {
        "name": k.name, "prefix": k.prefix, "role": k.role, "regions": [r.code for r in k.regions],
        "stores": [s.code for s in k.stores], "created_at": k.created_at, "created_by": k.created_by,
        "expires_at": k.expires_at, "revoked_at": k.revoked_at,
    }


@router.get("/me", response_model=Me)
def me(principal: PrincipalDep) -> Me:
    return Me(kind=principal.kind, name=principal.name, role=principal.role,
              regions=list(principal.region_codes), stores=list(principal.store_codes))


@router.get("/users", response_model=list[UserPublic])
def list_users(request: Request, _p: UsersAdmin) -> list[UserPublic]:
    with request.app.state.sessionmaker() as session:
        users = service.list_users(session)
        locks = service.lock_states(session, [u.username for u in users])
        return [_user(u, locks.get(u.username)) for u in users]


@router.post("/users", response_model=UserPublic, status_code=status.HTTP_201_CREATED)
def create_user(body: UserCreate, request: Request, principal: UsersAdmin) -> UserPublic:
    with service.write_session(request.app.state.engine) as session, session.begin():
        user = service.create_user(
            session, principal.actor, body.username, body.password, body.role.value,
            regions=body.regions, stores=body.stores, via=via(request),
        )
        return _one(session, user)


@router.patch("/users/{username}", response_model=UserPublic, responses=UNKNOWN)
def update_user(username: UsernamePath, body: UserUpdate, request: Request, principal: UsersAdmin) -> UserPublic:
    if body.active is None and body.role is None:
        raise service.InputError("active", "give active (true/false) and/or role (with regions or stores)")
    if body.role is None and (body.regions or body.stores):
        raise service.InputError("role", "regions and stores come with a role: give role too")
    with service.write_session(request.app.state.engine) as session, session.begin():
        user = service.get_user(session, username)
        if body.role is not None:
            user = service.set_user_role(session, principal.actor, username, body.role.value, regions=body.regions,
                                         stores=body.stores, via=via(request))
        if body.active is not None:
            user = service.set_user_active(session, principal.actor, username, body.active, via=via(request))
        return _one(session, user)


@router.post("/users/{username}/unlock", response_model=UserPublic, responses=UNKNOWN)
def unlock_user(username: UsernamePath, request: Request, principal: UsersAdmin) -> UserPublic:
    """Lift the user's sign-in locks, from each address and everywhere (audited as `user.unlock`)."""
    with service.write_session(request.app.state.engine) as session, session.begin():
        return _one(session, service.unlock_user(session, principal.actor, username, via=via(request)))


@router.get("/api-keys", response_model=list[ApiKeyPublic])
def list_keys(request: Request, _p: UsersAdmin) -> list[ApiKeyPublic]:
    with request.app.state.sessionmaker() as session:
        return [ApiKeyPublic(**_key(k)) for k in service.list_api_keys(session)]


@router.post("/api-keys", response_model=ApiKeyCreated, status_code=status.HTTP_201_CREATED)
def create_key(body: ApiKeyCreate, request: Request, principal: UsersAdmin) -> ApiKeyCreated:
    with service.write_session(request.app.state.engine) as session, session.begin():
        key, secret = service.create_api_key(
            session, principal.actor, body.name, body.role.value, regions=body.regions, stores=body.stores,
            expires_at=body.expires_at, via=via(request),
        )
        return ApiKeyCreated(**_key(key), secret=secret)


@router.delete("/api-keys/{name}", response_model=ApiKeyPublic, responses=UNKNOWN)
def revoke_key(name: KeyNamePath, request: Request, principal: UsersAdmin) -> ApiKeyPublic:
    with service.write_session(request.app.state.engine) as session, session.begin():
        return ApiKeyPublic(**_key(service.revoke_api_key(session, principal.actor, name, via=via(request))))


@router.get("/audit", response_model=list[AuditPublic])
def list_audit(
    request: Request,
    _p: AuditReader,
    actor: Annotated[Filter, Query(description="username, or user:NAME / key:NAME")] = None,
    object_type: Filter = None,
    object_id: Filter = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[AuditPublic]:
    with request.app.state.sessionmaker() as session:
        rows: list[AuditEntry] = list(service.list_audit(
            session, actor=actor, object_type=object_type, object_id=object_id, since=since, until=until, limit=limit
        ))
        return [AuditPublic.model_validate(r) for r in rows]
