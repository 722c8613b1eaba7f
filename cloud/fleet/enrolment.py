"""Enrolment: tokens made in the console, the claim that turns a box in setup mode into a node, and
the life of its broker identity (revoke, reinstate, retire).

A claim runs in one transaction: the token is locked and checked, the node, its identity and its
first config are written, the broker is told to create the credential, and only then does the
transaction commit. A broker that refuses rolls everything back (the token stays usable); a commit
that fails after the broker confirmed leaves a credential nobody knows the password of, which the
next claim of that box replaces under a new node id. Every step is audited.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from broker import topics
from cloud.access.scope import NotFound, Principal, Scope, get_node, get_store
from cloud.access.service import InputError, audit, write_session
from cloud.engine import TaskContext
from cloud.fleet.identity import BrokerAdmin, BrokerAdminError, new_password, parse_public_key, seal
from cloud.fleet.models import EnrolToken, Identity, NodeConfigState
from cloud.models import Node, Store
from cloud.settings import Settings
from firmware_config import PROFILES, BrokerConfig, LocalApiConfig, NodeConfig, render_config

__all__ = [
    "ROLES",
    "ClaimRefused",
    "ClaimResult",
    "Refusal",
    "claim",
    "create_token",
    "first_config",
    "get_identity",
    "identity_sync",
    "list_tokens",
    "profile_for",
    "revoke_node",
    "revoke_token",
    "sync_identities",
]

log = logging.getLogger(__name__)

ROLES: dict[str, str] = {"kiosk": "k", "scan-station": "s", "signage": "d", "gateway": "g"}
"""A box's role → the letter its node ids carry (st0042-k1: the store's first kiosk)."""

ROLE_PROFILES: dict[str, str] = {"kiosk": "kiosk", "scan-station": "scan-station", "signage": "signage-player",
                                 "gateway": "gateway"}
"""A box's role → the firmware_config profile of that role on any hardware."""
TOKEN_PREFIX = "et_"
_TEXT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _now() -> datetime:
    return datetime.now(UTC)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _role(value: str, field: str = "role") -> str:
    if value not in ROLES:
        raise InputError(field, f"{value!r} is not a box role: expected one of {', '.join(ROLES)}")
    return value


def profile_for(role: str, model: str) -> str:
    """The firmware_config profile of a box: `<role profile>-<model>` when the hardware kind has its
    own (`kiosk-pi5`), else the role's (`kiosk`)."""
    base = ROLE_PROFILES[role]
    specific = f"{base}-{model.lower()}"
    return specific if specific in PROFILES else base


# -- tokens ------------------------------------------------------------------------------------------


def token_view(t: EnrolToken, now: datetime | None = None) -> dict[str, Any]:
    return {"id": t.id, "hint": t.hint, "store": t.store.code, "role": t.role, "state": token_state(t, now),
            "created_by": t.created_by, "created_at": t.created_at.isoformat(), "expires_at": t.expires_at.isoformat(),
            "used_at": t.used_at.isoformat() if t.used_at else None, "used_serial": t.used_serial, "node": t.node_id}


def token_state(t: EnrolToken, now: datetime | None = None) -> str:
    if t.revoked_at is not None:
        return "revoked"
    if t.used_at is not None:
        return "used"
    if t.expires_at <= (now or _now()):
        return "expired"
    return "usable"


def create_token(
    session: Session, principal: Principal, store: str, role: str, *, ttl_s: int, via: str = "api"
) -> tuple[EnrolToken, str]:
    """A new token for one store (in the caller's scope) and one role; returns it and its secret,
    which is never shown again."""
    target = get_store(session, principal.scope, store.strip().lower())
    _role(role)
    if not 60 <= ttl_s <= 7 * 24 * 3600:
        raise InputError("ttl_s", f"{ttl_s} s is not a token lifetime: expected 60 s to 7 days")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(24)
    now = _now()
    token = EnrolToken(token_hash=_hash(secret), hint=secret[:9], store=target, role=role, created_by=principal.actor,
                       created_at=now, expires_at=now + timedelta(seconds=ttl_s))
    session.add(token)
    session.flush()
    audit(session, principal.actor, "enrol_token.create", "enrol_token", str(token.id), after=token_view(token), via=via)
    return token, secret


def list_tokens(session: Session, scope: Scope, limit: int = 100) -> list[EnrolToken]:
    stmt = select(EnrolToken).join(Store, EnrolToken.store_id == Store.id).where(scope.store_clause())
    return list(session.scalars(stmt.order_by(EnrolToken.id.desc()).limit(limit)))


def revoke_token(session: Session, principal: Principal, token_id: int, *, via: str = "api") -> EnrolToken:
    token = session.scalars(
        select(EnrolToken).join(Store, EnrolToken.store_id == Store.id)
        .where(EnrolToken.id == token_id, principal.scope.store_clause())
    ).one_or_none()
    if token is None:
        raise NotFound(f"No enrolment token #{token_id} (unknown, or for a store outside your scope)")
    if token.used_at is not None:
        raise InputError("token", f"token #{token_id} was already used (box {token.used_serial}); retire the node instead")
    if token.revoked_at is None:
        before = token_view(token)
        token.revoked_at = _now()
        token.revoked_by = principal.actor
        audit(session, principal.actor, "enrol_token.revoke", "enrol_token", str(token_id), before=before,
              after=token_view(token), via=via)
    return token


# -- the claim ---------------------------------------------------------------------------------------


class Refusal(enum.StrEnum):
    UNKNOWN = "unknown"
    USED = "used"
    EXPIRED = "expired"
    REVOKED = "revoked"
    WRONG_STORE = "wrong_store"
    WRONG_ROLE = "wrong_role"
    ALREADY_ENROLLED = "already_enrolled"
    BROKER = "broker"


class ClaimRefused(Exception):
    """A claim the cloud will not make; `reason` for callers, the message for the technician."""

    def __init__(self, reason: Refusal, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ClaimResult:
    node_id: str
    store: str
    role: str
    profile: str
    config_yaml: str
    """The box's config file (firmware_config), password and CA referred to as files beside it."""
    sealed_password: str
    ca_pem: str | None


def _check_token(token: EnrolToken | None, store: str, role: str, now: datetime) -> EnrolToken:
    if token is None:
        raise ClaimRefused(Refusal.UNKNOWN, "enrolment token not recognised: check it was copied whole, or make a new one in the console")
    if token.revoked_at is not None:
        raise ClaimRefused(Refusal.REVOKED, f"enrolment token {token.hint}… was revoked at {token.revoked_at:%Y-%m-%d %H:%M} UTC by {token.revoked_by}: ask for a new one")
    if token.used_at is not None:
        raise ClaimRefused(Refusal.USED, f"enrolment token {token.hint}… was already used at {token.used_at:%Y-%m-%d %H:%M} UTC (box {token.used_serial}, node {token.node_id}): each token claims one box")
    if token.expires_at <= now:
        raise ClaimRefused(Refusal.EXPIRED, f"enrolment token {token.hint}… expired at {token.expires_at:%Y-%m-%d %H:%M} UTC: ask for a new one")
    if token.store.code != store:
        raise ClaimRefused(Refusal.WRONG_STORE, f"enrolment token {token.hint}… is for store {token.store.code}, not {store}")
    if token.role != role:
        raise ClaimRefused(Refusal.WRONG_ROLE, f"enrolment token {token.hint}… is for role {token.role}, not {role}")
    return token


def _next_node_id(session: Session, store: str, role: str) -> str:
    """The store's next free id for the role. Retired ids count too: an id is never issued twice."""
    prefix = f"{store}-{ROLES[role]}"
    taken = session.scalars(select(Node.id).where(Node.id.like(f"{prefix}%"))).all()
    numbers = [int(n[len(prefix):]) for n in taken if n[len(prefix):].isdigit()]
    node = f"{prefix}{max(numbers, default=0) + 1}"
    return topics.check_id(node, "node id")


def first_config(settings: Settings, node: str, store: str, profile: str) -> tuple[NodeConfig, str | None]:
    """The box's first config (validated by the firmware_config schema) and the CA it must trust."""
    url = settings.PROVISION_BROKER_URL or settings.BROKER_URL
    ca_file = settings.PROVISION_CA_FILE or settings.BROKER_CA_FILE
    ca_pem = Path(ca_file).read_text() if ca_file and url.startswith("mqtts://") else None
    cfg = NodeConfig(
        node_id=node, store_id=store, profile=profile,
        broker=BrokerConfig(url=url, password_file=Path("broker.secret"), ca_file=Path("ca.pem") if ca_pem else None),
        local_api=LocalApiConfig(port=settings.PROVISION_LOCAL_API_PORT),
    )
    return cfg, ca_pem


def _text(value: str, field: str) -> str:
    if not _TEXT.match(value):
        raise InputError(field, f"{value[:70]!r} is not a {field}: 1-64 characters of A-Z, a-z, 0-9, '.', '_' and '-'")
    return value


def claim(
    session: Session, settings: Settings, admin: BrokerAdmin | None, *, token: str, serial: str, model: str, store: str,
    role: str, public_key: str, via: str = "api",
) -> ClaimResult:
    """Enrol the box `serial` as a new node of `store` in `role` (see the module's docstring)."""
    serial, model = _text(serial, "serial"), _text(model, "model")
    store = store.strip().lower()
    _role(role)
    try:
        parse_public_key(public_key)
    except ValueError as exc:
        raise InputError("public_key", str(exc)) from None
    now = _now()
    row = session.scalars(select(EnrolToken).where(EnrolToken.token_hash == _hash(token)).with_for_update()).one_or_none()
    tok = _check_token(row, store, role, now)
    actor = f"token:{tok.hint}"
    active = session.scalars(select(Identity).where(Identity.serial == serial, Identity.status != "retired")).first()
    if active is not None:
        raise ClaimRefused(
            Refusal.ALREADY_ENROLLED,
            f"box {serial} is already enrolled as {active.node_id} ({active.status}): retire that node before claiming the box again",
        )
    node_id = _next_node_id(session, store, role)
    profile = profile_for(role, model)
    cfg, ca_pem = first_config(settings, node_id, store, profile)
    session.add(Node(id=node_id, store=tok.store))
    session.flush()
    identity = Identity(node_id=node_id, serial=serial, model=model, role=role, public_key=public_key, status="active",
                        broker_synced=False, credential_version=1, token_id=tok.id, enrolled_at=now, enrolled_by=actor)
    session.add(identity)
    session.add(NodeConfigState(node_id=node_id, desired_version=0, applied_version=0))
    tok.used_at, tok.used_serial, tok.node_id = now, serial, node_id
    audit(session, actor, "enrol_token.use", "enrol_token", str(tok.id), after={"serial": serial, "node": node_id}, via=via)
    audit(session, actor, "node.enrol", "node", node_id,
          after={"serial": serial, "model": model, "store": store, "role": role, "profile": profile}, via=via)
    password = new_password()
    if admin is None:
        raise ClaimRefused(Refusal.BROKER, "the cloud cannot create broker credentials: OMNISHELF_BROKER_ADMIN_SECRET_FILE "
                                           "is not set or not readable (the operator points it at the broker's dynsec-admin.secret)")
    try:
        admin.grant(node_id, password)
    except BrokerAdminError as exc:
        raise ClaimRefused(Refusal.BROKER, f"the broker did not take the new credential: {exc}") from None
    identity.broker_synced = True
    audit(session, actor, "broker.grant", "node", node_id, after={"topics": [topics.node_up_filter(node_id), topics.node_dn_filter(node_id)]}, via=via)
    return ClaimResult(node_id=node_id, store=store, role=role, profile=profile,
                       config_yaml=render_config(cfg, header=f"omnishelf box {serial}, claimed as {node_id} at {now:%Y-%m-%d %H:%M} UTC"),
                       sealed_password=seal(public_key, password.encode()), ca_pem=ca_pem)


def claim_status(session: Session, token: str) -> dict[str, Any]:
    """What the technician's laptop asks after a claim (authorised by the token it used)."""
    row = session.scalars(select(EnrolToken).where(EnrolToken.token_hash == _hash(token))).one_or_none()
    if row is None or row.node_id is None:
        raise NotFound("No claim made with this enrolment token")
    node = session.get(Node, row.node_id)
    identity = session.get(Identity, row.node_id)
    assert node is not None and identity is not None
    return {"node": node.id, "online": node.online, "first_birth_at": identity.first_birth_at.isoformat() if identity.first_birth_at else None,
            "status": identity.status}


# -- the identity's life -----------------------------------------------------------------------------


def identity_view(i: Identity) -> dict[str, Any]:
    return {"node": i.node_id, "serial": i.serial, "model": i.model, "role": i.role, "status": i.status,
            "broker_synced": i.broker_synced, "credential_version": i.credential_version,
            "enrolled_at": i.enrolled_at.isoformat(), "revoked_at": i.revoked_at.isoformat() if i.revoked_at else None,
            "revoked_reason": i.revoked_reason, "retired_at": i.retired_at.isoformat() if i.retired_at else None}


def get_identity(session: Session, scope: Scope, node_id: str) -> Identity:
    return _identity(session, scope, node_id)


def _identity(session: Session, scope: Scope, node_id: str) -> Identity:
    get_node(session, scope, node_id)  # NotFound outside the scope
    identity = session.get(Identity, node_id, with_for_update=True)
    if identity is None:
        raise InputError("node", f"box {node_id!r} has no enrolled identity (it was not claimed with `omnishelf provision claim`)")
    return identity


def _apply(admin: BrokerAdmin | None, identity: Identity) -> str | None:
    """Tell the broker what `identity.status` asks for; None when it confirmed, else why not."""
    if admin is None:
        return "not sent to the broker yet (the bus's reconciler sends it)"
    try:
        if identity.status == "revoked":
            admin.revoke(identity.node_id)
        elif identity.status == "retired":
            admin.retire(identity.node_id)
        elif identity.pending_password is not None:
            # The box acknowledged the sealed new password: switch the broker over (it drops the box,
            # whose next login uses the new one).
            admin.set_password(identity.node_id, admin.unwrap_pending(identity.node_id, identity.pending_password))
            identity.pending_password, identity.pending_command_id = None, None
            identity.credential_version += 1
        else:
            admin.reinstate(identity.node_id)
    except BrokerAdminError as exc:
        return str(exc)
    identity.broker_synced = True
    return None


def revoke_node(
    session: Session, principal: Principal, admin: BrokerAdmin | None, node_id: str, *, reason: str, via: str = "api"
) -> tuple[Identity, str | None]:
    """Disable the box's credential: the broker drops it at once and refuses it from then on (across
    restarts). Recorded even when the broker cannot be reached now: the bus's reconciler applies it
    within OMNISHELF_REVOKE_SYNC_S of the broker's return. Returns the identity and, if the broker
    did not confirm yet, why."""
    reason = reason.strip()
    if not 1 <= len(reason) <= 500:
        raise InputError("reason", "say why the box is revoked (1 to 500 characters): it is shown on the box's status")
    identity = _identity(session, principal.scope, node_id)
    if identity.status == "retired":
        raise InputError("node", f"box {node_id!r} is retired: its identity no longer exists")
    before = identity_view(identity)
    identity.status, identity.revoked_at, identity.revoked_reason, identity.broker_synced = "revoked", _now(), reason, False
    problem = _apply(admin, identity)
    audit(session, principal.actor, "node.revoke", "node", node_id, before=before, after=identity_view(identity),
          via=via, detail=problem)
    return identity, problem


def reinstate_node(
    session: Session, principal: Principal, admin: BrokerAdmin | None, node_id: str, *, via: str = "api"
) -> tuple[Identity, str | None]:
    identity = _identity(session, principal.scope, node_id)
    if identity.status != "revoked":
        raise InputError("node", f"box {node_id!r} is {identity.status}: only a revoked box can be reinstated")
    before = identity_view(identity)
    identity.status, identity.revoked_at, identity.revoked_reason, identity.broker_synced = "active", None, None, False
    problem = _apply(admin, identity)
    audit(session, principal.actor, "node.reinstate", "node", node_id, before=before, after=identity_view(identity),
          via=via, detail=problem)
    return identity, problem


def retire_identity(session: Session, actor: str, admin: BrokerAdmin | None, node_id: str, *, via: str) -> str | None:
    """Delete a retired node's credential for good (called by the fleet's retire)."""
    identity = session.get(Identity, node_id, with_for_update=True)
    if identity is None or identity.status == "retired":
        return None
    before = identity_view(identity)
    identity.status, identity.retired_at, identity.broker_synced = "retired", _now(), False
    problem = _apply(admin, identity)
    audit(session, actor, "broker.retire", "node", node_id, before=before, after=identity_view(identity), via=via,
          detail=problem)
    return problem


def sync_identities(session: Session, admin: BrokerAdmin) -> int:
    """Apply every identity change the broker has not confirmed; the number confirmed now."""
    done = 0
    for identity in session.scalars(select(Identity).where(Identity.broker_synced.is_(False)).with_for_update()):
        if _apply(admin, identity) is None:
            done += 1
            audit(session, "system:reconciler", "broker.sync", "node", identity.node_id, after={"status": identity.status})
    return done


def mark_first_birth(session: Session, node_id: str, now: datetime) -> None:
    session.execute(
        update(Identity).where(Identity.node_id == node_id, Identity.first_birth_at.is_(None)).values(first_birth_at=now)
    )


def _sync_once(ctx: TaskContext, admin: BrokerAdmin) -> int:
    with write_session(ctx.engine) as session, session.begin():
        return sync_identities(session, admin)


async def identity_sync(ctx: TaskContext) -> None:
    """The bus's reconciler: credential changes the broker did not confirm (it was down, say) are
    sent again every OMNISHELF_REVOKE_SYNC_S until it does."""
    try:
        admin = BrokerAdmin.from_settings(ctx.settings)
    except BrokerAdminError as exc:
        log.info("box identities are not reconciled with the broker: %s", exc)
        return
    while True:
        try:
            done = await asyncio.to_thread(_sync_once, ctx, admin)
            if done:
                log.info("broker confirmed %d pending identity change(s)", done)
        except Exception:
            log.exception("identity reconciliation failed; retrying in %.1f s", ctx.settings.REVOKE_SYNC_S)
        await asyncio.sleep(ctx.settings.REVOKE_SYNC_S)
