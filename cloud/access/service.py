"""Users, sign-in with lockout, console sessions, API keys and the audit log (the service layer).

Every function that changes something takes the caller's `Session` inside its transaction and
writes its audit entry in that same transaction, so a change and its record commit together or not
at all. Bad input raises `InputError` naming the field before anything is written.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from argon2 import PasswordHasher, profiles
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session, selectinload

from cloud.access import throttle
from cloud.access.models import NAME_MAX, USERNAME_MAX, ApiKey, AuditEntry, User, WebSession
from cloud.access.scope import NotFound, Principal, Role, Scope
from cloud.access.throttle import LockState
from cloud.models import Region, Store
from cloud.settings import Settings, load_settings

__all__ = [
    "API_KEY_PREFIX",
    "InputError",
    "Policy",
    "Throttled",
    "access_policy",
    "audit",
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
    "sign_in",
    "start_session",
    "unlock_user",
    "verify_password",
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

_PROFILES = {"rfc9106-low-memory": profiles.RFC_9106_LOW_MEMORY, "test-only-cheapest": profiles.CHEAPEST}


@functools.cache
def _hasher() -> PasswordHasher:
    # Chosen on first use, not at import: every `omnishelf` command imports this module, and an
    # argon2 hash costs a few hundred milliseconds of CPU here.
    return PasswordHasher.from_parameters(_PROFILES[load_settings().PASSWORD_HASH])


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the username is unknown, so a miss costs as much time as a wrong password."""
    return _hasher().hash("not a password of anyone")


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


class Throttled(PermissionError):
    """Too many failed sign-ins from the caller's address, whatever the accounts: the answer is
    about the address only and says nothing about any account."""

    def __init__(self, until: datetime) -> None:
        super().__init__(f"too many failed sign-ins from your network address: try again after {until:%H:%M} UTC")
        self.until = until


@dataclass(frozen=True, slots=True)
class Policy:
    max_failures: int = 5
    """Failed sign-ins to one account from one address before that pair is locked."""
    lockout: timedelta = timedelta(minutes=15)
    session_ttl: timedelta = timedelta(hours=12)
    source_max_failures: int = 50
    """From one address across accounts before the address is throttled (an office behind one
    NAT makes a few typos; a sprayer makes thousands)."""
    account_max_failures: int = 100
    """On one account across addresses before it is locked for everyone: high, because such a
    lock also locks out the owner, and reaching it takes twenty addresses at the default."""

    @property
    def limits(self) -> throttle.Limits:
        return throttle.Limits(self.max_failures, self.source_max_failures, self.account_max_failures, self.lockout)


def access_policy(settings: Settings) -> Policy:
    # The address and account limits scale with the per-pair one (x10, x20).
    return Policy(
        max_failures=settings.LOGIN_MAX_FAILURES,
        lockout=timedelta(seconds=settings.LOGIN_LOCKOUT_S),
        session_ttl=timedelta(seconds=settings.SESSION_TTL_S),
        source_max_failures=10 * settings.LOGIN_MAX_FAILURES,
        account_max_failures=20 * settings.LOGIN_MAX_FAILURES,
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
        username=username, password_hash=_hasher().hash(password), role=r.value, active=True,
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
    user.password_hash = _hasher().hash(password)
    throttle.clear_account(session, username)
    # A new password ends every existing sign-in of that user.
    for ws in session.scalars(select(WebSession).where(WebSession.user_id == user.id)):
        session.delete(ws)
    audit(session, actor, "user.password", "user", username, via=via)


def _keep_an_admin(session: Session, user: User, field: str) -> None:
    """Refuse to disable or demote the last active admin: nobody could then manage users or lift a
    lockout from the console or the API (only `omnishelf users` on the cloud host could)."""
    if user.role != Role.ADMIN.value or not user.active:
        return
    others = session.scalars(
        select(User.id).where(User.role == Role.ADMIN.value, User.active.is_(True), User.id != user.id)).first()
    if others is None:
        raise InputError(field, f"{user.username!r} is the last active admin: make another user admin first")


def set_user_active(session: Session, actor: str, username: str, active: bool, *, via: str = "api") -> User:
    user = get_user(session, username)
    if not active:
        _keep_an_admin(session, user, "active")
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
    if r is not Role.ADMIN:
        _keep_an_admin(session, user, "role")
    before = user_view(user)
    user.role, user.regions, user.stores = r.value, found_regions, found_stores
    session.execute(delete(WebSession).where(WebSession.user_id == user.id))
    audit(session, actor, "user.role", "user", username, before=before, after=user_view(user), via=via)
    return user


def verify_password(session: Session, username: str, password: str) -> User | None:
    """The active user if `password` is theirs, else None; costs one hash either way. Counts
    nothing: sign-ins go through `sign_in`."""
    user = None if _CONTROL.search(username) else session.scalars(
        select(User).where(User.username == username[:USERNAME_MAX])).one_or_none()
    if user is None:
        with contextlib.suppress(VerificationError):
            _hasher().verify(_dummy_hash(), password[:PASSWORD_MAX])
        return None
    ok: bool
    try:
        ok = _hasher().verify(user.password_hash, password[:PASSWORD_MAX])
    except (VerificationError, InvalidHashError):
        ok = False
    return user if ok and user.active else None


def sign_in(engine: Engine, username: str, password: str, source: str | None, policy: Policy) -> str | None:
    """A new console session's cookie value, or None. Raises `Throttled` for the source.

    None is the one answer for an unknown name, a wrong password, a disabled user and a locked
    account, so none of them can be told apart. The password is checked outside any transaction
    (a hash takes ~0.1 s; SQLite's write lock and PostgreSQL's row locks are held only for the
    counting before and after), see `cloud.access.throttle`.
    """
    account, src, limits = throttle.account_key(username), throttle.source_key(source), policy.limits
    with write_session(engine) as session, session.begin():
        throttle.prune(session, limits, _now())
    with write_session(engine) as session, session.begin():
        decision = throttle.admit(session, account, src, limits, _now())
    if decision.throttled_until is not None:
        raise Throttled(decision.throttled_until)
    if not decision.check_password:
        return None
    user_id: int | None = None
    rehash = False
    with Session(engine) as session:
        user = verify_password(session, username, password)
        if user is not None:
            user_id, rehash = user.id, _hasher().check_needs_rehash(user.password_hash)
    with write_session(engine) as session, session.begin():
        if user_id is None:
            for scope, key, until in throttle.failed(session, account, src, limits, _now()):
                _audit_lock(session, scope, key, src, until, policy)
            return None
        throttle.succeeded(session, account, src)
        signed_in = session.get_one(User, user_id)
        if rehash:
            signed_in.password_hash = _hasher().hash(password)
        return start_session(session, signed_in, policy)


def _audit_lock(session: Session, scope: str, key: str, source: str, until: datetime, policy: Policy) -> None:
    actor, when = f"source:{source}", until.isoformat(timespec="seconds")
    if scope == throttle.PAIR:
        audit(session, actor, "user.lockout", "user", key, via="console",
              detail=f"{policy.max_failures} failed sign-ins from {source}; refused from there until {when}")
    elif scope == throttle.ACCOUNT:
        audit(session, actor, "user.lockout_all", "user", key, via="console",
              detail=f"{policy.account_max_failures} failed sign-ins from several addresses (the last from "
                     f"{source}); refused from every address until {when}")
    else:
        audit(session, actor, "source.throttle", "source", key, via="console",
              detail=f"{policy.source_max_failures} failed sign-ins across accounts; refused until {when}")


def lock_states(session: Session, usernames: Sequence[str]) -> dict[str, LockState]:
    """The sign-in locks in force of these users (absent: none)."""
    return throttle.lock_states(session, usernames, _now())


def unlock_user(session: Session, actor: str, username: str, *, via: str = "api") -> User:
    """Lift every sign-in lock of `username` (from each address and everywhere), audited."""
    user = get_user(session, username)
    before = throttle.lock_states(session, [username], _now()).get(username, LockState(None, ()))
    throttle.clear_account(session, username)
    audit(session, actor, "user.unlock", "user", username, before=before.as_dict(),
          after=LockState(None, ()).as_dict(), via=via)
    return user


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
