"""The clerks of each store: create, rename, reset a PIN, deactivate and reactivate, and the roster
that goes to the store's boxes.

Every read goes through the caller's `Scope` here and only here (`_clerks_in_scope`): an
out-of-scope clerk is answered like an unknown one. Every change is audited (never with a PIN or its
hash) and bumps the store's roster version, and the new roster is queued to each of the store's boxes
in the same transaction (the durable downlink; an older undelivered roster is superseded).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Select, func, select, update
from sqlalchemy.orm import Session, joinedload

from broker.envelope import MessageType
from broker.payloads import CLERK_ROSTER, ClerkRosterArgs, CommandData, RosterClerk
from broker.pins import WeakPin, hash_pin
from cloud.access.scope import NotFound, Principal, Scope, get_store
from cloud.access.service import InputError, audit
from cloud.bus import downlink
from cloud.models import DownlinkCommand, Node, Store
from cloud.staff.models import Clerk, Roster

__all__ = [
    "MAX_CLERKS",
    "ROSTER_EXPIRES",
    "clerk_view",
    "create_clerk",
    "get_clerk",
    "list_clerks",
    "reset_pin",
    "roster_args",
    "send_roster",
    "set_active",
    "update_clerk",
]

MAX_CLERKS = 500
"""Per store: what one roster command carries (`ClerkRosterArgs.clerks`)."""
ROSTER_EXPIRES = timedelta(days=3)
"""An undelivered roster stops being retried after this; the box's next birth gets the current one."""
_STAFF_NUMBER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,31}")


def _now() -> datetime:
    return datetime.now(UTC)


def _name(value: str) -> str:
    value = value.strip()
    if not 1 <= len(value) <= 200:
        raise InputError("name", f"a clerk's name is 1 to 200 characters: got {len(value)}")
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in value):
        raise InputError("name", "a clerk's name holds a control character: expected printable text")
    return value


def _staff_number(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    value = value.strip()
    if not _STAFF_NUMBER.fullmatch(value):
        raise InputError("staff_number", f"{value[:40]!r} is not a staff number: expected 1-32 letters, digits, "
                                         "'.', '_' or '-', starting with a letter or digit")
    return value


def _pin_hash(pin: str) -> str:
    try:
        return hash_pin(pin)
    except WeakPin as exc:
        raise InputError("pin", str(exc)) from None


def clerk_view(c: Clerk) -> dict[str, Any]:
    """What the audit log and the API say about a clerk (never the PIN hash)."""
    return {"id": c.id, "store": c.store.code, "name": c.name, "staff_number": c.staff_number, "active": c.active}


def _clerks_in_scope(scope: Scope) -> Select[Clerk]:
    return select(Clerk).join(Clerk.store).options(joinedload(Clerk.store)).where(scope.store_clause())


def list_clerks(session: Session, scope: Scope, *, store: str | None = None, active: bool | None = None
                ) -> Sequence[Clerk]:
    stmt = _clerks_in_scope(scope)
    if store is not None:
        stmt = stmt.where(Clerk.store_id == get_store(session, scope, store).id)
    if active is not None:
        stmt = stmt.where(Clerk.active.is_(active))
    return session.scalars(stmt.order_by(Store.code, Clerk.name, Clerk.id)).unique().all()


def get_clerk(session: Session, scope: Scope, clerk_id: int) -> Clerk:
    clerk = session.scalars(_clerks_in_scope(scope).where(Clerk.id == clerk_id)).unique().one_or_none()
    if clerk is None:
        raise NotFound(f"No clerk {clerk_id} (unknown, or in a store outside your regions and stores)")
    return clerk


def _unique_number(session: Session, store_id: int, number: str | None, clerk_id: int | None = None) -> None:
    if number is None:
        return
    other = session.scalars(select(Clerk.id).where(Clerk.store_id == store_id, Clerk.staff_number == number)).first()
    if other is not None and other != clerk_id:
        raise InputError("staff_number", f"staff number {number!r} is already clerk {other}'s in this store")


def create_clerk(session: Session, principal: Principal, store: str, name: str, pin: str, *,
                 staff_number: str | None = None, via: str = "api") -> Clerk:
    target = get_store(session, principal.scope, store)
    clean, number = _name(name), _staff_number(staff_number)
    _unique_number(session, target.id, number)
    count = session.scalar(select(func.count()).select_from(Clerk).where(Clerk.store_id == target.id)) or 0
    if count >= MAX_CLERKS:
        raise InputError("store", f"store {target.code!r} already has {count} clerks, the most one roster carries")
    now = _now()
    clerk = Clerk(store=target, name=clean, staff_number=number, active=True, pin_hash=_pin_hash(pin),
                  pin_set_at=now, created_at=now, created_by=principal.actor, updated_at=now)
    session.add(clerk)
    session.flush()
    audit(session, principal.actor, "clerk.create", "clerk", str(clerk.id), after=clerk_view(clerk), via=via)
    _publish(session, target.id, now)
    return clerk


def update_clerk(session: Session, principal: Principal, clerk_id: int, *, name: str | None = None,
                 staff_number: str | None = None, via: str = "api") -> Clerk:
    """Rename a clerk and/or change their staff number ("" clears it)."""
    clerk = get_clerk(session, principal.scope, clerk_id)
    before = clerk_view(clerk)
    if name is not None:
        clerk.name = _name(name)
    if staff_number is not None:
        number = _staff_number(staff_number)
        _unique_number(session, clerk.store_id, number, clerk.id)
        clerk.staff_number = number
    after = clerk_view(clerk)
    if after == before:
        return clerk
    clerk.updated_at = _now()
    audit(session, principal.actor, "clerk.update", "clerk", str(clerk.id), before=before, after=after, via=via)
    _publish(session, clerk.store_id, clerk.updated_at)
    return clerk


def reset_pin(session: Session, principal: Principal, clerk_id: int, pin: str, *, via: str = "api") -> Clerk:
    clerk = get_clerk(session, principal.scope, clerk_id)
    clerk.pin_hash = _pin_hash(pin)
    clerk.pin_set_at = clerk.updated_at = _now()
    # The audit entry says that the PIN changed, not what to: neither the PIN nor its hash is logged.
    audit(session, principal.actor, "clerk.reset_pin", "clerk", str(clerk.id), after=clerk_view(clerk), via=via)
    _publish(session, clerk.store_id, clerk.updated_at)
    return clerk


def set_active(session: Session, principal: Principal, clerk_id: int, active: bool, *, via: str = "api") -> Clerk:
    clerk = get_clerk(session, principal.scope, clerk_id)
    if clerk.active == active:
        return clerk
    before = clerk_view(clerk)
    clerk.active, clerk.updated_at = active, _now()
    audit(session, principal.actor, "clerk.activate" if active else "clerk.deactivate", "clerk", str(clerk.id),
          before=before, after=clerk_view(clerk), via=via)
    _publish(session, clerk.store_id, clerk.updated_at)
    return clerk


# -- the roster ------------------------------------------------------------------------------------


def _publish(session: Session, store_id: int, now: datetime) -> None:
    """Bump the store's roster version and queue the roster to each of its boxes."""
    session.flush()
    roster = session.get(Roster, store_id, with_for_update=True)
    if roster is None:
        roster = Roster(store_id=store_id, version=0, updated_at=now)
        session.add(roster)
    roster.version += 1
    roster.updated_at = now
    session.flush()
    conn = session.connection()
    args = roster_args(conn, store_id)
    assert args is not None
    nodes = session.scalars(select(Node.id).where(Node.store_id == store_id, Node.retired_at.is_(None))).all()
    for node in nodes:
        send_roster(conn, node, args, now=now)


def roster_args(conn: Connection, store_id: int) -> ClerkRosterArgs | None:
    """The store's current roster, or None if it never had a clerk (staff not in use there)."""
    version = conn.execute(select(Roster.version).where(Roster.store_id == store_id)).scalar()
    if version is None:
        return None
    code = conn.execute(select(Store.code).where(Store.id == store_id)).scalar_one()
    rows = conn.execute(select(Clerk.id, Clerk.name, Clerk.staff_number, Clerk.pin_hash, Clerk.active)
                        .where(Clerk.store_id == store_id).order_by(Clerk.id)).all()
    return ClerkRosterArgs(version=version, store=code, clerks=tuple(
        RosterClerk(id=r.id, name=r.name, staff_number=r.staff_number, pin_hash=r.pin_hash, active=r.active)
        for r in rows))


def send_roster(conn: Connection, node: str, args: ClerkRosterArgs, *, now: datetime, engine: str = "staff",
                birth: str | None = None) -> None:
    """Queue `args` to `node`, superseding any roster still undelivered to it (the newest wins).

    The key names the node and the version (a retried transaction sends it once); a birth adds its
    own id, so each birth gets the current roster again (a box whose disk was replaced has none)."""
    if not downlink.runs(conn, node, CLERK_ROSTER):
        return  # a box without the clerks component (a kiosk, a signage screen)
    prefix = f"staff-roster:{node}:"
    key = f"{prefix}{args.version}" + (f":{birth}" if birth else "")
    conn.execute(update(DownlinkCommand)
                 .where(DownlinkCommand.key.like(prefix + "%"), DownlinkCommand.key != key, DownlinkCommand.node == node,
                        DownlinkCommand.status.in_(downlink.ACTIVE))
                 .values(status="superseded", detail="a newer roster of the store replaced it"))
    downlink.send(conn, node, MessageType.COMMAND, CommandData(name=CLERK_ROSTER, args=args.model_dump(mode="json")),
                  engine=engine, key=key, now=now, expires_in=ROSTER_EXPIRES)
