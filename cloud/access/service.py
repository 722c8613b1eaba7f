"""Users, sign-in with lockout, console sessions, API keys and the audit log (the service layer).

Every function that changes something takes the caller's `Session` inside its transaction and
writes its audit entry in that same transaction, so a change and its record commit together or not
at all. Bad input raises `InputError` naming the field before anything is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session, selectinload

from cloud.access.models import NAME_MAX, USERNAME_MAX, ApiKey, AuditEntry, User, WebSession
from cloud.access.scope import NotFound, Principal, Role, Scope
from cloud.models import Region, Store
from cloud.settings import Settings

__all__ = [
    "API_KEY_PREFIX",
    "InputError",
    "LockedOut",
    "Policy",
    "access_policy",
    "audit",
    "authenticate",
    "create_api_key",
    "create_user",
    "end_session",
    "list_api_keys",
    "list_audit",
    "list_users",
    "principal_for_key",
    "principal_for_session",
    "revoke_api_key",
    "set_password",
    "set_user_active",
    "set_user_role",
    "start_session",
    "write_session",
]

API_KEY_PREFIX = "osk_"
PASSWORD_MIN = 10
PASSWORD_MAX = 256
KEY_EXPIRY_MAX_DAYS = 3650
"""Longest expiry offered in days (CLI, console); longer-lived keys are keys that do not expire."""
USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
# PostgreSQL refuses NUL in text: an id holding a control character is refused (or unknown) here,
# before it reaches a query, instead of failing in the driver.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_hasher = PasswordHasher()
# Verified against when the username is unknown, so a miss costs as much time as a wrong password.
_DUMMY_HASH = _hasher.hash("not a password of anyone")


class InputError(ValueError):
    """Bad input; `field` names it (for a 422 body or one CLI line), `location` says where it was
    sent (`body` or `query`, as in FastAPI's own 422 answers)."""

    def __init__(self, field: str, message: str, *, location: str = "body") -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.location = location


def as_utc(value: datetime, field: str, *, location: str = "body") -> datetime:
    """`value` in UTC (a time without a zone is taken as UTC); an instant outside the years 1-9999
    once in UTC (e.g. 0001-01-01T00:00+14:00) is an `InputError`, not an OverflowError later."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise InputError(field, f"{value.isoformat()} is outside the years 1 to 9999 in UTC", location=location) from None


class LockedOut(PermissionError):
    """Too many failed sign-ins; `until` says when the next attempt is allowed."""

    def __init__(self, until: datetime) -> None:
        super().__init__(f"too many failed sign-ins: try again after {until:%H:%M} UTC")
        self.until = until


@dataclass(frozen=True, slots=True)
class Policy:
    max_failures: int = 5
    lockout: timedelta = timedelta(minutes=15)
    session_ttl: timedelta = timedelta(hours=12)


def access_policy(settings: Settings) -> Policy:
    return Policy(
        max_failures=settings.LOGIN_MAX_FAILURES,
        lockout=timedelta(seconds=settings.LOGIN_LOCKOUT_S),
        session_ttl=timedelta(seconds=settings.SESSION_TTL_S),
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def write_session(engine: Engine) -> Session:
    """A session whose transaction takes SQLite's write lock up front (see cloud.db)."""
    return Session(engine.execution_options(omnishelf_write=True), expire_on_commit=False)


# -- audit -------------------------------------------------------------------------------------------


def audit(
    session: Session,
    actor: str,
    action: str,
    object_type: str,
    object_id: str,
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    via: str = "api",
    detail: str | None = None,
) -> None:
    session.add(
        AuditEntry(
            at=_now(), actor=actor[: NAME_MAX + 8], action=action, object_type=object_type, object_id=object_id[:128],
            before=before, after=after, via=via, detail=detail,
        )
    )


def list_audit(
    session: Session,
    *,
    actor: str | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 200,
) -> Sequence[AuditEntry]:
    # A time without a zone in a filter means UTC (the log's own zone).
    since = as_utc(since, "since", location="query") if since else None
    until = as_utc(until, "until", location="query") if until else None
    stmt = select(AuditEntry)
    if actor:
        # "alice" finds user:alice; "key:erp" finds exactly that key ('%' and '_' in a name are literal).
        literal = actor.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        stmt = stmt.where(AuditEntry.actor == actor if ":" in actor else AuditEntry.actor.like(f"%:{literal}", escape="\\"))
    if object_type:
        stmt = stmt.where(AuditEntry.object_type == object_type)
    if object_id:
        stmt = stmt.where(AuditEntry.object_id == object_id)
    for field, value in (("actor", actor), ("object_type", object_type), ("object_id", object_id)):
        if value and _CONTROL.search(value):
            raise InputError(field, f"{value!r} holds a control character", location="query")
    if since:
        stmt = stmt.where(AuditEntry.at >= since)
    if until:
        stmt = stmt.where(AuditEntry.at <= until)
    return session.scalars(stmt.order_by(AuditEntry.id.desc()).limit(limit)).all()


# -- users -------------------------------------------------------------------------------------------


def _role(value: str, field: str = "role") -> Role:
    try:
        return Role(value)
    except ValueError:
        raise InputError(field, f"{value!r} is not a role; use one of {', '.join(r.value for r in Role)}") from None


def _grants(session: Session, role: Role, regions: Sequence[str], stores: Sequence[str]) -> tuple[list[Region], list[Store]]:
    # A code with a control character cannot exist: it is reported unknown without a query.
    wanted = [c for c in regions if not _CONTROL.search(c)]
    found_regions = list(session.scalars(select(Region).where(Region.code.in_(wanted)))) if wanted else []
    missing = sorted(set(regions) - {r.code for r in found_regions})
    if missing:
        raise InputError("regions", f"unknown region code(s): {', '.join(map(_shown, missing))}")
    wanted = [c for c in stores if not _CONTROL.search(c)]
    found_stores = list(session.scalars(select(Store).where(Store.code.in_(wanted)))) if wanted else []
    missing = sorted(set(stores) - {s.code for s in found_stores})
    if missing:
        raise InputError("stores", f"unknown store code(s): {', '.join(map(_shown, missing))}")
    if role is Role.REGIONAL and not found_regions:
        raise InputError("regions", "a regional user needs at least one region")
    if role is Role.STORE and not found_stores:
        raise InputError("stores", "a store user needs at least one store")
    if role is Role.STORE and found_regions:
        raise InputError("regions", "a store user is scoped by stores only; give no regions")
    if role in (Role.ADMIN, Role.HQ) and (found_regions or found_stores):
        raise InputError("regions" if found_regions else "stores",
                         f"role {role.value!r} sees every region; give no regions or stores")
    return found_regions, found_stores


def _shown(code: str) -> str:
    """A code as the user typed it, quoted only when it holds something invisible."""
    return repr(code) if _CONTROL.search(code) or not code.strip() else code


def check_password(password: str, field: str = "password") -> None:
    if len(password) < PASSWORD_MIN:
        raise InputError(field, f"at least {PASSWORD_MIN} characters are needed")
    if len(password) > PASSWORD_MAX:
        raise InputError(field, f"at most {PASSWORD_MAX} characters")


def user_view(user: User) -> dict[str, Any]:
    return {
        "username": user.username,
        "role": user.role,
        "active": user.active,
        "regions": [r.code for r in user.regions],
        "stores": [s.code for s in user.stores],
    }


def create_user(
    session: Session,
    actor: str,
    username: str,
    password: str,
    role: str,
    *,
    regions: Sequence[str] = (),
    stores: Sequence[str] = (),
    via: str = "api",
) -> User:
    if not 1 <= len(username) <= USERNAME_MAX:
        raise InputError("username", f"1 to {USERNAME_MAX} characters")
    if not USERNAME_RE.match(username):
        raise InputError("username", f"{username!r}: use lower-case letters, digits, '.', '_' and '-'")
    check_password(password)
    r = _role(role)
    found_regions, found_stores = _grants(session, r, regions, stores)
    if session.scalars(select(User.id).where(User.username == username)).first() is not None:
        raise InputError("username", f"{username!r} already exists")
    user = User(
        username=username, password_hash=_hasher.hash(password), role=r.value, active=True, failed_logins=0,
        created_at=_now(), regions=found_regions, stores=found_stores,
    )
    session.add(user)
    session.flush()
    audit(session, actor, "user.create", "user", username, after=user_view(user), via=via)
    return user


def get_user(session: Session, username: str) -> User:
    if _CONTROL.search(username):
        raise NotFound(f"No user {username!r}")
    user = session.scalars(
        select(User).options(selectinload(User.regions), selectinload(User.stores)).where(User.username == username)
    ).one_or_none()
    if user is None:
        raise NotFound(f"No user {username!r}")
    return user


def list_users(session: Session) -> Sequence[User]:
    return session.scalars(
        select(User).options(selectinload(User.regions), selectinload(User.stores)).order_by(User.username)
    ).all()


def set_password(session: Session, actor: str, username: str, password: str, *, via: str = "api") -> None:
    check_password(password)
    user = get_user(session, username)
    user.password_hash = _hasher.hash(password)
    user.failed_logins = 0
    user.locked_until = None
    # A new password ends every existing sign-in of that user.
    for ws in session.scalars(select(WebSession).where(WebSession.user_id == user.id)):
        session.delete(ws)
    audit(session, actor, "user.password", "user", username, via=via)


def set_user_active(session: Session, actor: str, username: str, active: bool, *, via: str = "api") -> User:
    user = get_user(session, username)
    before = user_view(user)
    user.active = active
    if not active:
        for ws in session.scalars(select(WebSession).where(WebSession.user_id == user.id)):
            session.delete(ws)
    audit(session, actor, "user.enable" if active else "user.disable", "user", username, before=before,
          after=user_view(user), via=via)
    return user


def set_user_role(
    session: Session,
    actor: str,
    username: str,
    role: str,
    *,
    regions: Sequence[str] = (),
    stores: Sequence[str] = (),
    via: str = "api",
) -> User:
    """Change a user's role and scope; their sign-ins end, so the new scope applies at once."""
    r = _role(role)
    found_regions, found_stores = _grants(session, r, regions, stores)
    user = get_user(session, username)
    before = user_view(user)
    user.role, user.regions, user.stores = r.value, found_regions, found_stores
    session.execute(delete(WebSession).where(WebSession.user_id == user.id))
    audit(session, actor, "user.role", "user", username, before=before, after=user_view(user), via=via)
    return user


def authenticate(session: Session, username: str, password: str, policy: Policy, *, via: str = "console") -> User | None:
    """The user if the password is right; None otherwise. Raises `LockedOut` while locked.

    Failures are counted per user; after `policy.max_failures` the account is locked for
    `policy.lockout` (even a right password is refused then, or the lock would be no lock).
    """
    now = _now()
    user = session.scalars(select(User).where(User.username == username[:USERNAME_MAX])).one_or_none()
    if user is None:
        with contextlib.suppress(VerificationError):
            _hasher.verify(_DUMMY_HASH, password[:PASSWORD_MAX])
        return None
    if user.locked_until is not None and user.locked_until > now:
        raise LockedOut(user.locked_until)
    ok: bool
    try:
        ok = _hasher.verify(user.password_hash, password[:PASSWORD_MAX])
    except (VerificationError, InvalidHashError):
        ok = False
    if ok and user.active:
        user.failed_logins = 0
        user.locked_until = None
        if _hasher.check_needs_rehash(user.password_hash):
            user.password_hash = _hasher.hash(password)
        return user
    if not ok:
        user.failed_logins += 1
        if user.failed_logins >= policy.max_failures:
            user.locked_until = now + policy.lockout
            user.failed_logins = 0
            audit(session, f"user:{username}", "user.lockout", "user", username, via=via,
                  detail=f"{policy.max_failures} failed sign-ins; locked until {user.locked_until.isoformat()}")
    return None


def _principal_for_user(user: User, **kw: Any) -> Principal:
    role = Role(user.role)
    return Principal(
        kind="user", id=user.id, name=user.username, role=role,
        scope=Scope.for_role(role, (r.id for r in user.regions), (s.id for s in user.stores)),
        region_codes=tuple(r.code for r in user.regions), store_codes=tuple(s.code for s in user.stores), **kw,
    )


def start_session(session: Session, user: User, policy: Policy) -> str:
    """Record a sign-in; return the cookie value (only its hash is stored)."""
    token = secrets.token_urlsafe(32)
    now = _now()
    # Expired sign-ins of this user are useless rows: drop them here rather than in a sweeper.
    session.execute(delete(WebSession).where(WebSession.user_id == user.id, WebSession.expires_at <= now))
    session.add(
        WebSession(token_hash=_sha256(token), user_id=user.id, csrf_token=secrets.token_urlsafe(32),
                   created_at=now, expires_at=now + policy.session_ttl)
    )
    audit(session, f"user:{user.username}", "session.start", "user", user.username, via="console")
    return token


def principal_for_session(session: Session, token: str) -> Principal | None:
    ws = session.scalars(
        select(WebSession)
        .options(selectinload(WebSession.user).selectinload(User.regions), selectinload(WebSession.user).selectinload(User.stores))
        .where(WebSession.token_hash == _sha256(token))
    ).one_or_none()
    if ws is None or ws.expires_at <= _now() or not ws.user.active:
        return None
    return _principal_for_user(ws.user, csrf_token=ws.csrf_token, session_id=ws.id)


def end_session(session: Session, principal: Principal) -> None:
    if principal.session_id is not None:
        ws = session.get(WebSession, principal.session_id)
        if ws is not None:
            session.delete(ws)
            audit(session, principal.actor, "session.end", "user", principal.name, via="console")


# -- API keys ----------------------------------------------------------------------------------------


def key_view(key: ApiKey) -> dict[str, Any]:
    return {
        "name": key.name,
        "prefix": key.prefix,
        "role": key.role,
        "regions": [r.code for r in key.regions],
        "stores": [s.code for s in key.stores],
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
    }


def create_api_key(
    session: Session,
    actor: str,
    name: str,
    role: str,
    *,
    regions: Sequence[str] = (),
    stores: Sequence[str] = (),
    expires_at: datetime | None = None,
    via: str = "api",
) -> tuple[ApiKey, str]:
    """A new key and its secret (`osk_<prefix>_<secret>`), which is shown once and never stored."""
    name = name.strip()
    if not 1 <= len(name) <= NAME_MAX:
        raise InputError("name", f"1 to {NAME_MAX} characters")
    if _CONTROL.search(name):
        raise InputError("name", f"{name!r} holds a control character")
    r = _role(role)
    if r is Role.ADMIN:
        raise InputError("role", "API keys cannot be admin; use hq, regional, store or technician")
    if expires_at is not None and expires_at.tzinfo is None:
        raise InputError("expires_at", "give a time zone, e.g. 2027-01-31T00:00:00Z")
    if expires_at is not None:
        expires_at = as_utc(expires_at, "expires_at")
        if expires_at <= _now():
            raise InputError("expires_at", f"{expires_at.isoformat()} is not in the future")
    found_regions, found_stores = _grants(session, r, regions, stores)
    if session.scalars(select(ApiKey.id).where(ApiKey.name == name)).first() is not None:
        raise InputError("name", f"an API key named {name!r} already exists")
    prefix = secrets.token_hex(4)
    secret = f"{API_KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey(
        name=name, prefix=prefix, key_hash=_sha256(secret), role=r.value, created_at=_now(), created_by=actor,
        expires_at=expires_at, regions=found_regions, stores=found_stores,
    )
    session.add(key)
    session.flush()
    audit(session, actor, "api_key.create", "api_key", name, after=key_view(key), via=via)
    return key, secret


def list_api_keys(session: Session) -> Sequence[ApiKey]:
    return session.scalars(
        select(ApiKey).options(selectinload(ApiKey.regions), selectinload(ApiKey.stores)).order_by(ApiKey.name)
    ).all()


def revoke_api_key(session: Session, actor: str, name: str, *, via: str = "api") -> ApiKey:
    if _CONTROL.search(name):
        raise NotFound(f"No API key {name!r}")
    key = session.scalars(
        select(ApiKey).options(selectinload(ApiKey.regions), selectinload(ApiKey.stores)).where(ApiKey.name == name)
    ).one_or_none()
    if key is None:
        raise NotFound(f"No API key {name!r}")
    before = key_view(key)
    if key.revoked_at is None:
        key.revoked_at = _now()
    audit(session, actor, "api_key.revoke", "api_key", name, before=before, after=key_view(key), via=via)
    return key


def principal_for_key(session: Session, secret: str) -> Principal | None:
    if not secret.startswith(API_KEY_PREFIX) or len(secret) > 200:
        return None
    key = session.scalars(
        select(ApiKey).options(selectinload(ApiKey.regions), selectinload(ApiKey.stores))
        .where(ApiKey.key_hash == _sha256(secret))
    ).one_or_none()
    # The lookup is by hash, so the comparison below only guards against a hash-index collision.
    if key is None or not hmac.compare_digest(key.key_hash, _sha256(secret)):
        return None
    now = _now()
    if key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now):
        return None
    role = Role(key.role)
    return Principal(
        kind="key", id=key.id, name=key.name, role=role,
        scope=Scope.for_role(role, (r.id for r in key.regions), (s.id for s in key.stores)),
        region_codes=tuple(r.code for r in key.regions), store_codes=tuple(s.code for s in key.stores),
    )
