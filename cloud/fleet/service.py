"""The fleet's service layer: regions, stores and boxes (read scoped, changed audited), and the
bus's operator views: commands per box, failed messages and their replay.

Every read goes through the caller's `Scope` (cloud.access.scope); every change takes the caller's
session and writes its audit entry in the same transaction. Bad input raises `InputError` naming
the field before anything is written; an id outside the caller's scope is `NotFound`, like an
unknown one.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from cloud.access.scope import Forbidden, NotFound, Principal, Scope, get_node, get_store, visible_nodes
from cloud.access.service import InputError, audit
from cloud.bus import downlink
from cloud.bus.dispatch import ReplayResult, discard, replay
from cloud.bus.ledger import reset_gap
from cloud.models import DownlinkCommand, FailedMessage, Node, Region, Store

__all__ = [
    "FailedFilter",
    "assign_node",
    "create_region",
    "create_store",
    "discard_failed",
    "get_failed",
    "list_commands",
    "list_failed",
    "replay_failed",
    "replay_ids",
    "reset_node_gap",
    "retire_node",
    "update_region",
    "update_store",
]

CODE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


def _now() -> datetime:
    return datetime.now(UTC)


# -- regions and stores ------------------------------------------------------------------------------


def _code(value: str, field: str) -> str:
    code = value.strip()
    if not CODE_RE.match(code):
        raise InputError(field, f"{value!r} is not a code: 1-32 characters of a-z, 0-9 and '-', starting with a letter or digit")
    return code


def _name(value: str, field: str = "name") -> str:
    name = value.strip()
    if not 1 <= len(name) <= 200:
        raise InputError(field, "1 to 200 characters")
    return name


def _timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InputError("timezone", f"{value!r} is not an IANA time zone name (e.g. 'Asia/Shanghai')") from None
    return value


def _coords(lat: float, lon: float) -> tuple[float, float]:
    if not -90 <= lat <= 90:
        raise InputError("lat", f"{lat} is outside -90..90")
    if not -180 <= lon <= 180:
        raise InputError("lon", f"{lon} is outside -180..180")
    return lat, lon


def region_view(r: Region) -> dict[str, Any]:
    return {"code": r.code, "name": r.name}


def store_view(s: Store) -> dict[str, Any]:
    return {"code": s.code, "name": s.name, "region": s.region.code, "lat": s.lat, "lon": s.lon,
            "timezone": s.timezone}


def _require_all(scope: Scope, what: str) -> None:
    # Not the request's fault but the caller's rights: 403, as for a role that may not do it at all.
    if not scope.all:
        raise Forbidden(f"{what} needs a principal that sees every region (admin or hq)")


def get_region(session: Session, scope: Scope, code: str) -> Region:
    region = session.scalars(select(Region).where(Region.code == code, scope.region_clause())).one_or_none()
    if region is None:
        raise NotFound(f"No region {code!r} (unknown, or outside your regions)")
    return region


def create_region(session: Session, principal: Principal, code: str, name: str, *, via: str = "api") -> Region:
    _require_all(principal.scope, "creating a region")
    code = _code(code, "code")
    if session.scalars(select(Region.id).where(Region.code == code)).first() is not None:
        raise InputError("code", f"region {code!r} already exists")
    region = Region(code=code, name=_name(name))
    session.add(region)
    session.flush()
    audit(session, principal.actor, "region.create", "region", code, after=region_view(region), via=via)
    return region


def update_region(session: Session, principal: Principal, code: str, *, name: str, via: str = "api") -> Region:
    _require_all(principal.scope, "renaming a region")
    region = get_region(session, principal.scope, code)
    before = region_view(region)
    region.name = _name(name)
    audit(session, principal.actor, "region.update", "region", code, before=before, after=region_view(region), via=via)
    return region


def create_store(
    session: Session, principal: Principal, code: str, name: str, region: str, lat: float, lon: float, timezone: str,
    *, via: str = "api",
) -> Store:
    code = _code(code, "code")
    target = get_region(session, principal.scope, region)
    if not principal.scope.all and target.id not in principal.scope.region_ids:
        raise InputError("region", f"you may add stores only to your own regions, not to {region!r}")
    if session.scalars(select(Store.id).where(Store.code == code)).first() is not None:
        raise InputError("code", f"store {code!r} already exists")
    lat, lon = _coords(lat, lon)
    store = Store(code=code, name=_name(name), region=target, lat=lat, lon=lon, timezone=_timezone(timezone))
    session.add(store)
    session.flush()
    audit(session, principal.actor, "store.create", "store", code, after=store_view(store), via=via)
    return store


def update_store(
    session: Session, principal: Principal, code: str, *, name: str | None = None, region: str | None = None,
    lat: float | None = None, lon: float | None = None, timezone: str | None = None, via: str = "api",
) -> Store:
    store = get_store(session, principal.scope, code)
    before = store_view(store)
    if name is not None:
        store.name = _name(name)
    if region is not None and region != store.region.code:
        target = get_region(session, principal.scope, region)
        if not principal.scope.all and target.id not in principal.scope.region_ids:
            raise InputError("region", f"you may move stores only into your own regions, not to {region!r}")
        store.region = target
    if lat is not None or lon is not None:
        store.lat, store.lon = _coords(store.lat if lat is None else lat, store.lon if lon is None else lon)
    if timezone is not None:
        store.timezone = _timezone(timezone)
    audit(session, principal.actor, "store.update", "store", code, before=before, after=store_view(store), via=via)
    return store


# -- boxes -------------------------------------------------------------------------------------------


def node_view(n: Node) -> dict[str, Any]:
    return {"id": n.id, "store": n.store.code if n.store else None,
            "retired_at": n.retired_at.isoformat() if n.retired_at else None}


def assign_node(session: Session, principal: Principal, node_id: str, store_code: str, *, via: str = "api") -> Node:
    """Put a box in a store (both must be in the caller's scope). Its catalogue follows the new
    store's region: the catalogue engine announces again for a changed region."""
    node = get_node(session, principal.scope, node_id)
    if node.retired_at is not None:
        raise InputError("node", f"box {node_id!r} is retired; it cannot be assigned")
    store = get_store(session, principal.scope, store_code)
    before = node_view(node)
    node.store = store
    session.flush()
    audit(session, principal.actor, "node.assign", "node", node_id, before=before, after=node_view(node), via=via)
    return node


def retire_node(session: Session, principal: Principal, node_id: str, *, via: str = "api") -> Node:
    """Take a box out of service: hidden from the fleet, its undelivered commands cancelled. What it
    still sends is stored (nothing accepted is dropped); revoking its broker credential is the
    broker's part (see the operator guide)."""
    node = get_node(session, principal.scope, node_id)
    if node.retired_at is not None:
        return node
    before = node_view(node)
    node.retired_at = _now()
    node.online = False
    session.execute(
        update(DownlinkCommand)
        .where(DownlinkCommand.node == node_id, DownlinkCommand.status.in_(downlink.ACTIVE))
        .values(status="cancelled", detail="the box was retired")
    )
    session.flush()
    audit(session, principal.actor, "node.retire", "node", node_id, before=before, after=node_view(node), via=via)
    # An enrolled box's credential is deleted for good: the bus's reconciler tells the broker
    # within OMNISHELF_REVOKE_SYNC_S (the id is never issued again).
    from cloud.fleet.enrolment import retire_identity

    retire_identity(session, principal.actor, None, node_id, via=via)
    return node


def reset_node_gap(session: Session, principal: Principal, node_id: str, *, via: str = "api") -> None:
    """Ask again for an abandoned gap (after the box was repaired, say)."""
    node = get_node(session, principal.scope, node_id)
    before = {"gap_abandoned_at": node.gap_abandoned_at.isoformat() if node.gap_abandoned_at else None,
              "rebirths": node.rebirths}
    reset_gap(session.connection(), node_id)
    audit(session, principal.actor, "node.reset_gap", "node", node_id, before=before, via=via)


# -- commands ----------------------------------------------------------------------------------------


def list_commands(
    session: Session, scope: Scope, *, node: str | None = None, status: str | None = None, limit: int = 100
) -> Sequence[DownlinkCommand]:
    stmt = select(DownlinkCommand)
    if node is not None:
        get_node(session, scope, node)  # NotFound outside the scope
        stmt = stmt.where(DownlinkCommand.node == node)
    elif not scope.all:
        stmt = stmt.where(DownlinkCommand.node.in_(select(Node.id).where(scope.node_clause())))
    if status:
        stmt = stmt.where(DownlinkCommand.status == status)
    return session.scalars(stmt.order_by(DownlinkCommand.id.desc()).limit(limit)).all()


def command_summary(session: Session, scope: Scope, nodes: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
    wanted = list(nodes) if nodes is not None else [n.id for n in visible_nodes(session, scope)]
    return downlink.node_summary(session, wanted)


# -- failed messages ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FailedFilter:
    status: str | None = "failed"
    node: str | None = None
    engine: str | None = None
    limit: int = 100


def _failed_scope(scope: Scope) -> Any:
    return True if scope.all else FailedMessage.node.in_(select(Node.id).where(scope.node_clause()))


def list_failed(session: Session, scope: Scope, f: FailedFilter = FailedFilter()) -> Sequence[FailedMessage]:
    stmt = select(FailedMessage).where(_failed_scope(scope))
    if f.status:
        stmt = stmt.where(FailedMessage.status == f.status)
    if f.node:
        stmt = stmt.where(FailedMessage.node == f.node)
    if f.engine:
        stmt = stmt.where(FailedMessage.engine == f.engine)
    return session.scalars(stmt.order_by(FailedMessage.id.desc()).limit(f.limit)).all()


def failed_counts(session: Session, scope: Scope) -> dict[str, int]:
    rows = session.execute(
        select(FailedMessage.status, func.count()).where(_failed_scope(scope)).group_by(FailedMessage.status)
    ).all()
    return {status: int(n) for status, n in rows}


def get_failed(session: Session, scope: Scope, failed_id: int) -> FailedMessage:
    row = session.scalars(select(FailedMessage).where(FailedMessage.id == failed_id, _failed_scope(scope))).one_or_none()
    if row is None:
        raise NotFound(f"No failed message #{failed_id} (unknown, or of a box outside your scope)")
    return row


def replay_failed(engine: Engine, principal: Principal, ids: Sequence[int], *, via: str = "api") -> list[ReplayResult]:
    """Replay each failed message in its own transaction (exactly once each), audited.

    An id that is unknown or outside the caller's scope is one `unknown` outcome among the others,
    not an error for the whole request: the ids before it are replayed and committed already, and
    the caller must hear about them."""
    from cloud.bus.worker import registry_of
    from cloud.engines import load_engines

    registry = registry_of(load_engines())
    results = []
    for failed_id in ids:
        with Session(engine.execution_options(omnishelf_write=True)) as session, session.begin():
            try:
                get_failed(session, principal.scope, failed_id)
            except NotFound as exc:
                results.append(ReplayResult(failed_id, "unknown", str(exc)))
                continue
            result = replay(session.connection(), failed_id, registry, principal.actor)
            audit(session, principal.actor, "failed.replay", "failed_message", str(failed_id),
                  after={"outcome": result.outcome, "error": result.error}, via=via)
        results.append(result)
    return results


def discard_failed(session: Session, principal: Principal, failed_id: int, *, via: str = "api") -> bool:
    get_failed(session, principal.scope, failed_id)
    done = discard(session.connection(), failed_id, principal.actor)
    if done:
        audit(session, principal.actor, "failed.discard", "failed_message", str(failed_id), via=via)
    return done


def replay_ids(engine: Engine, scope: Scope, f: FailedFilter) -> list[int]:
    with Session(engine) as session:
        return [row.id for row in list_failed(session, scope, f)]

